"""Destination side: page server, restore, network rewiring, rootfs in."""
