"""The per-host daemon: HTTP API, auth, jobs, events, metrics (issue: haul migrate)."""
