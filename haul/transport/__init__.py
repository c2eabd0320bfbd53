"""Moving images and pages between hosts: local copy, TCP, SSH, shared storage."""
