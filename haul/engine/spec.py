"""What one migration is asked to do: an immutable spec, checked when it is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from haul.engine.figures import PAGE_SIZE
from haul.engine.phases import Strategy


@dataclass(frozen=True, slots=True)
class MigrationSpec:
    """One migration: what moves where, how, and the limits the policy works to.

    Raises ``ValueError`` on construction if a limit makes no sense. Configuration
    and flags should be validated (with ``ConfigError``) before they get here.
    """

    migration_id: str
    #: the workload's name (container or process-tree name) on the source host
    workload: str
    source_host: str
    dest_host: str
    #: AUTO picks the best the pre-flight report allows
    strategy: Strategy = Strategy.AUTO
    #: the frozen window the pre-copy policy aims for
    max_downtime_ms: float = 300.0
    #: pre-copy rounds at most (P.Haul's limit was 8)
    max_iterations: int = 8
    #: the fixed part of the frozen window: freeze, final dump of everything but
    #: memory, the non-page images' transfer, restore and resume
    freeze_cost_ms: float = 150.0
    #: pre-copy stops once a round writes at least this share of the round before
    shrink_threshold: float = 0.9
    page_size: int = PAGE_SIZE
    #: after the commit, how many times a failed step is tried again before FAILED
    max_retries: int = 3
    #: where the workload answers on each host ("" = not known); told to the hooks
    source_address: str = ""
    dest_address: str = ""
    #: pre-flight only (``haul check``, ``--dry-run``): end CHECKED, touch nothing
    dry_run: bool = False
    #: the container runtime the workload runs with (e.g. ``runc``; None: a process
    #: tree): the destination must run it, at the source's version or newer
    container_runtime: str | None = None

    def __post_init__(self) -> None:
        for name in ("migration_id", "workload", "source_host", "dest_host"):
            if not getattr(self, name):
                raise ValueError(f"MigrationSpec.{name} must not be empty")
        if self.source_host == self.dest_host:
            raise ValueError(f"source and destination are the same host ({self.source_host})")
        if not (math.isfinite(self.max_downtime_ms) and self.max_downtime_ms > 0):
            raise ValueError(f"max_downtime_ms must be > 0, not {self.max_downtime_ms}")
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, not {self.max_iterations}")
        if not (math.isfinite(self.freeze_cost_ms) and self.freeze_cost_ms >= 0):
            raise ValueError(f"freeze_cost_ms must be >= 0, not {self.freeze_cost_ms}")
        if not 0 < self.shrink_threshold <= 1:
            raise ValueError(f"shrink_threshold must be in (0, 1], not {self.shrink_threshold}")
        if self.page_size <= 0:
            raise ValueError(f"page_size must be > 0, not {self.page_size}")
        if self.container_runtime == "":
            raise ValueError("MigrationSpec.container_runtime must be None or a name")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {self.max_retries}")
