"""Source-host side: workload drivers, dumps, network lock, rootfs out."""
