"""The per-host daemon: HTTP API, auth, workloads, journal, metrics (issue: haul migrate).

Start at :mod:`haul.agent.app` (the application factory and its route
tables), :mod:`haul.agent.context` (what handlers share) and
:mod:`haul.agent.server` (listeners, signals, systemd).
"""
