"""The installer's record: which CRIU and runc haul runs, and where CRIU's source tree is.

The installer (deploy/install.sh) records the CRIU it verified in
``/etc/haul/install.toml``. haul uses that binary, never whatever ``criu``
happens to come first on PATH: a broken older one may sit in /usr/sbin.
``HAUL_CRIU`` overrides it (for development); ``HAUL_INSTALL_RECORD`` points
at another record (for tests of this module). runc is recorded the same way
(``[runc]``, ``HAUL_RUNC`` overrides it); haul always hands it the recorded
CRIU (``runc --criu``).
"""

from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from haul.errors import ConfigError

INSTALL_RECORD = Path("/etc/haul/install.toml")
#: where Debian's runc package puts it, for machines whose record names none
DEFAULT_RUNC = Path("/usr/sbin/runc")


@dataclass(frozen=True, slots=True)
class InstallRecord:
    criu_path: Path
    criu_version: str
    criu_source: Path | None
    #: runc, when the installer recorded it (records written before runc was: None)
    runc_path: Path | None = None
    runc_version: str = ""


def install_record_path() -> Path:
    return Path(os.environ.get("HAUL_INSTALL_RECORD", str(INSTALL_RECORD)))


def read_install_record(path: Path | None = None) -> InstallRecord | None:
    path = path or install_record_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the install record {path}: {exc}") from exc
    criu = data.get("criu")
    if not isinstance(criu, dict) or not isinstance(criu.get("path"), str):
        raise ConfigError(f"the install record {path} has no [criu] path")
    source = criu.get("source")
    runc = data.get("runc", {})
    if not isinstance(runc, dict) or not isinstance(runc.get("path", ""), str):
        raise ConfigError(f"the install record {path} has a malformed [runc] table")
    runc_path = runc.get("path")
    return InstallRecord(
        criu_path=Path(criu["path"]),
        criu_version=str(criu.get("version", "")),
        criu_source=Path(source) if isinstance(source, str) and source else None,
        runc_path=Path(runc_path) if runc_path else None,
        runc_version=str(runc.get("version", "")),
    )


def criu_binary() -> Path:
    """The CRIU binary haul runs (and hands to runc as ``--criu``)."""
    override = os.environ.get("HAUL_CRIU")
    if override:
        path = Path(override)
    else:
        record = read_install_record()
        if record is not None:
            path = record.criu_path
        else:
            found = shutil.which("criu")
            if found is None:
                raise ConfigError(
                    "no CRIU: run deploy/install.sh (it records the CRIU it verified "
                    f"in {INSTALL_RECORD}) or set HAUL_CRIU"
                )
            path = Path(found)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ConfigError(f"CRIU at {path} is not an executable file")
    return path


def criu_source() -> Path | None:
    """CRIU's source tree kept by the installer (for ZDTM test programs), if any."""
    override = os.environ.get("HAUL_CRIU_SOURCE")
    if override:
        return Path(override)
    record = read_install_record()
    return record.criu_source if record else None


def runc_binary() -> Path:
    """The runc binary haul runs: ``HAUL_RUNC``, else the recorded one, else Debian's."""
    override = os.environ.get("HAUL_RUNC")
    if override:
        path = Path(override)
    else:
        record = read_install_record()
        path = record.runc_path if record is not None and record.runc_path else DEFAULT_RUNC
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ConfigError(
            f"runc at {path} is not an executable file: run deploy/install.sh "
            "(it installs runc and records it) or set HAUL_RUNC"
        )
    return path
