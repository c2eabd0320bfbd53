"""What this host is: kernel, CPU, the CRIU it runs (asked, then kept a while), free space."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from haul.agent.models import CpuView, CriuFeaturesView, CriuView
from haul.criu.info import CriuInfo

CPUINFO = Path("/proc/cpuinfo")
#: how long an answer from CRIU is reused before CRIU is asked again
CRIU_TTL_S = 30.0

GatherCriu = Callable[[], Awaitable[CriuInfo]]


def cpu_of(text: str) -> CpuView:
    """The first processor's vendor, model and flags from /proc/cpuinfo text, and the count."""
    first: dict[str, str] = {}
    count = 0
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields:
            continue
        count += 1
        if not first:
            first = fields
    flags = first.get("flags") or first.get("Features") or ""
    return CpuView(
        vendor=first.get("vendor_id") or first.get("CPU implementer") or "",
        model=first.get("model name") or first.get("CPU part") or "",
        count=count,
        flags=sorted(flags.split()),
    )


def read_cpu() -> CpuView:
    return cpu_of(CPUINFO.read_text())


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def kernel_release() -> str:
    return os.uname().release


def criu_view(info: CriuInfo) -> CriuView:
    v = info.version
    return CriuView(
        path=info.path,
        version=str(v),
        major=v.major,
        minor=v.minor,
        sublevel=v.sublevel,
        features=CriuFeaturesView(**asdict(info.features)),
        check_ok=info.check_ok,
        check_error=info.check_error,
    )


class CriuProbe:
    """Asks CRIU what it is and can do, at most once per ``ttl_s`` (failures are not kept).

    Concurrent callers share one question.
    """

    def __init__(self, gather: GatherCriu, *, ttl_s: float = CRIU_TTL_S) -> None:
        self._gather = gather
        self.ttl_s = ttl_s
        self._cached: tuple[float, CriuInfo] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> CriuInfo:
        """CRIU's info; raises HaulError (ConfigError, CriuError) when CRIU cannot answer."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.ttl_s:
                return self._cached[1]
            info = await self._gather()
            self._cached = (time.monotonic(), info)
            return info

    def forget(self) -> None:
        self._cached = None
