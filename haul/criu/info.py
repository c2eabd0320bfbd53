"""What the CRIU on this host is and can do: for `haul criu info` and pre-flight."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from haul.criu.results import CriuFeatures, CriuVersion
from haul.criu.service import Criu
from haul.errors import CriuError
from haul.nsexec import HOST, HostNs


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
