"""What the CRIU on this host is and can do: for `haul criu info` and pre-flight.

Both sides of a migration report :func:`host_capabilities` to the engine.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from haul.criu.results import CriuFeatures, CriuVersion
from haul.criu.service import Criu
from haul.engine.figures import Capabilities
from haul.errors import CriuError
from haul.nsexec import HOST, HostNs

#: CRIU's lazy transfer (post-copy) resizes its pipes to this many bytes
PIPE_MAX_SIZE_NEEDED = 4 << 20


@dataclass(frozen=True, slots=True)
class CriuInfo:
    path: str
    version: CriuVersion
    features: CriuFeatures
    check_ok: bool
    check_error: str


async def gather(binary: Path, host: HostNs = HOST) -> CriuInfo:
    criu = Criu(binary, host=host)
    version = await criu.version()
    features = await criu.features()
    with tempfile.TemporaryDirectory(prefix="haul-check-") as d:
        try:
            await criu.check(Path(d))
            ok, error = True, ""
        except CriuError as exc:
            ok, error = False, exc.one_line()
    return CriuInfo(str(binary), version, features, ok, error)


def lazy_pipe_ok() -> bool:
    """Whether fs.pipe-max-size lets CRIU's lazy transfer resize its pipes: without
    CAP_SYS_RESOURCE (root lacks it on these machines, see docs/environment.md) the
    limit must be at least PIPE_MAX_SIZE_NEEDED."""
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text()) >= PIPE_MAX_SIZE_NEEDED
    except (OSError, ValueError):
        return False


async def host_capabilities(criu: Criu) -> Capabilities:
    """What this host's kernel and ``criu`` allow a migration, for the engine's pre-flight."""
    version = await criu.version()
    features = await criu.features()
    return Capabilities(
        criu_version=str(version),
        mem_track=features.mem_track,
        lazy_pages=features.lazy_pages,
        lazy_pipe_ok=lazy_pipe_ok(),
    )
