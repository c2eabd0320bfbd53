"""Typed answers to CRIU requests."""

from __future__ import annotations

from dataclasses import dataclass

from haul.criu.stats import DumpStats, RestoreStats


@dataclass(frozen=True, slots=True, order=True)
class CriuVersion:
    major: int
    minor: int
    sublevel: int = 0
    extra: int = 0
    gitid: str = ""
    name: str = ""

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}"
        if self.sublevel or self.extra:
            text += f".{self.sublevel}"
        if self.extra:
            text += f".{self.extra}"
        return text

    def at_least(self, major: int, minor: int, sublevel: int = 0) -> bool:
        return (self.major, self.minor, self.sublevel) >= (major, minor, sublevel)


@dataclass(frozen=True, slots=True)
class CriuFeatures:
    """What this CRIU on this kernel can do (FEATURE_CHECK)."""

    mem_track: bool
    lazy_pages: bool
    pidfd_store: bool


@dataclass(frozen=True, slots=True)
class DumpResult:
    #: CRIU reports True when a dump was followed by a restore in place (not used by haul)
    restored: bool
    stats: DumpStats | None


@dataclass(frozen=True, slots=True)
class RestoreResult:
    #: the restored tree's root PID, as seen from the restoring process's PID namespace
    pid: int
    stats: RestoreStats | None


@dataclass(frozen=True, slots=True)
class PageServerInfo:
    pid: int
    port: int
