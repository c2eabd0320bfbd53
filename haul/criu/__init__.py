"""CRIU over its RPC protocol (criu swrk), features, notifications, stats images."""
