"""haul: live migration of Linux containers and process trees, built on CRIU."""

__version__ = "0.1.0"
