"""Default time limits per phase (seconds): every phase has one (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from haul.engine.phases import Phase

DEFAULT_TIMEOUTS_S: Mapping[Phase, float] = MappingProxyType(
    {
        Phase.PREFLIGHT: 60.0,
        Phase.PREPARE: 60.0,
        Phase.PRECOPY: 600.0,
        Phase.FREEZE: 300.0,
        Phase.TRANSFER: 600.0,
        Phase.RESTORE: 300.0,
        Phase.COMMIT: 60.0,
        Phase.LAZY_PAGES: 1800.0,
        Phase.CLEANUP: 120.0,
        Phase.ROLLING_BACK: 120.0,
    }
)


def scaled(total_s: float | None) -> Mapping[Phase, float]:
    """The defaults, each capped at ``total_s`` (the operator's --timeout)."""
    if total_s is None:
        return DEFAULT_TIMEOUTS_S
    return MappingProxyType({p: min(t, total_s) for p, t in DEFAULT_TIMEOUTS_S.items()})
