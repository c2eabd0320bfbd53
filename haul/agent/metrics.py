"""The agent's Prometheus metrics, in a registry of its own (one per app, so tests
and several apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "haul_agent_requests",
            "HTTP requests served, by route template, method and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "haul_agent_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ("route",),
            registry=self.registry,
            buckets=(0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0),
        )
        self.workloads = Gauge(
            "haul_agent_workloads",
            "Workloads registered on this host",
            registry=self.registry,
        )
        self.migrations_active = Gauge(
            "haul_agent_migrations_active",
            "Migrations this agent takes part in now",
            registry=self.registry,
        )
        self.received_bytes = Counter(
            "haul_agent_received_bytes",
            "Bytes of incoming migrations received over the API, by what they were "
            "(image: CRIU's images; data: the workload's files; blob: a container "
            "image's blobs)",
            ("what",),
            registry=self.registry,
        )
        for what in ("image", "data", "blob"):
            self.received_bytes.labels(what)
        self.migrations = Counter(
            "haul_agent_migrations",
            "Migrations finished, by outcome (done, rolled-back, refused, failed)",
            ("outcome",),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
