"""Container runtimes haul drives (runc), and the OCI images and bundles they run."""
