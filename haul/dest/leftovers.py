"""What an incoming migration leaves on disk, so that a restarted agent knows it.

Beside each migration's work directory ``ROOT/ID/``, a record ``ROOT/ID.json``
holds what the source said at prepare (workload, source host, argv, strategy)
and, once a copy is restored, its root PID and the kernel's start time of that
PID. CRIU's side writes ``ROOT/ID/restored.pid`` as soon as the copy exists.
A restarted agent keeps a migration whose copy still exists (the copy waits for
its source's decision) and removes everything else an earlier agent left.
An older agent wrote only ``ROOT/ID.workload`` (the workload's name); it is
still read.

A runc container's record also holds what the source said of the container (its
configuration and image, ``container``): the restarted agent rebuilds its arrival and
destination from it over the home the container has here (haul/agent/arrivals.py). A
container's migration that is not kept is not removed here: its runc container, mounts,
namespace and cgroup go through the registry's arrivals (:attr:`Sweep.containers`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haul.dest.criudest import RESTORED_MARK
from haul.engine.phases import Strategy
from haul.errors import TransportError
from haul.procfs import state

RECORD_SUFFIX = ".json"
LEGACY_SUFFIX = ".workload"


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    workload: str
    source: str | None = None
    argv: list[str] = field(default_factory=list)
    strategy: Strategy = Strategy.STOP_AND_COPY
    restored_pid: int | None = None
    #: field 22 of /proc/PID/stat of the restored root: tells it from a reused PID
    start_ticks: int | None = None
    #: the workload's own address (``10.77.0.100/24``) and port, when it has one
    net_address: str | None = None
    net_port: int | None = None
    #: a runc container arrives: what its source said of it (haul/agent/arrivals.py
    #: rebuilds its arrival from it); None for a process tree
    container: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "workload": self.workload,
                "source": self.source,
                "argv": self.argv,
                "strategy": self.strategy.value,
                "restored_pid": self.restored_pid,
                "start_ticks": self.start_ticks,
                "net_address": self.net_address,
                "net_port": self.net_port,
                "container": self.container,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> IncomingRecord:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("workload"), str):
            raise ValueError("not an incoming migration record")
        pid, ticks = data.get("restored_pid"), data.get("start_ticks")
        container = data.get("container")
        if container is not None and not isinstance(container, dict):
            raise ValueError("an incoming migration record with a bad container")
        return cls(
            workload=data["workload"],
            source=str(data["source"]) if data.get("source") else None,
            argv=[str(a) for a in data.get("argv") or []],
            strategy=Strategy(data.get("strategy", Strategy.STOP_AND_COPY.value)),
            restored_pid=int(pid) if pid is not None else None,
            start_ticks=int(ticks) if ticks is not None else None,
            net_address=str(data["net_address"]) if data.get("net_address") else None,
            net_port=int(data["net_port"]) if data.get("net_port") else None,
            container=container,
        )


def record_path(root: Path, migration_id: str) -> Path:
    return root / f"{migration_id}{RECORD_SUFFIX}"


def write_record(root: Path, migration_id: str, record: IncomingRecord) -> None:
    """Write the record atomically (a crash leaves the old one or the new one)."""
    path = record_path(root, migration_id)
    tmp = path.with_suffix(".tmp")
    try:
        with tmp.open("w") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TransportError(f"cannot write {path} on the destination: {exc.strerror}") from exc


def read_record(root: Path, migration_id: str) -> IncomingRecord | None:
    """The record of ``migration_id``, or None when there is none or it is unreadable."""
    try:
        return IncomingRecord.from_json(record_path(root, migration_id).read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError, TypeError):
        return None
    try:
        name = (root / f"{migration_id}{LEGACY_SUFFIX}").read_text().strip()
    except OSError:
        return None
    return IncomingRecord(workload=name) if name else None


def forget_record(root: Path, migration_id: str) -> None:
    for suffix in (RECORD_SUFFIX, LEGACY_SUFFIX, ".tmp"):
        (root / f"{migration_id}{suffix}").unlink(missing_ok=True)


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (None if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[19])


@dataclass(frozen=True, slots=True)
class RestoredCopy:
    """A copy an earlier agent restored here, still alive."""

    migration_id: str
    workdir: Path
    record: IncomingRecord
    pid: int
    #: the copy was left stopped (no decision heard); False: it runs (the commit was heard)
    stopped: bool


@dataclass(frozen=True, slots=True)
class ContainerLeft:
    """A container's incoming migration an earlier agent left whose copy is not kept
    (never restored, restored part way, or gone): everything made for it must go."""

    migration_id: str
    workdir: Path
    record: IncomingRecord


@dataclass(slots=True)
class Sweep:
    removed: list[str] = field(default_factory=list)
    kept: list[RestoredCopy] = field(default_factory=list)
    #: restored copies that are gone: their migration's files were removed
    lost: list[str] = field(default_factory=list)
    #: containers' migrations not kept, left for the registry to remove (not in removed)
    containers: list[ContainerLeft] = field(default_factory=list)


def _restored_pid(workdir: Path, record: IncomingRecord | None) -> int | None:
    if record is not None and record.restored_pid is not None:
        return record.restored_pid
    try:
        return int((workdir / RESTORED_MARK).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _live_copy(pid: int | None, record: IncomingRecord | None) -> str | None:
    """The copy's state letter if ``pid`` is still the restored copy, else None."""
    if pid is None:
        return None
    letter = state(pid)
    if letter is None or letter in ("Z", "X"):
        return None
    if (
        record is not None
        and record.start_ticks is not None
        and start_ticks(pid) != record.start_ticks
    ):
        return None  # the PID was reused
    return letter


def sweep(
    root: Path,
    data_root: Path | None,
    is_migration_id: Callable[[str], bool],
    *,
    taken: Callable[[str], bool] = lambda workload: False,
) -> Sweep:
    """At agent start: keep the migrations whose restored copy is alive, remove the rest
    (their work directory, their workload data directory, their record), except a
    container's, which is listed in :attr:`Sweep.containers` for its arrival to remove.
    The data directory of a workload whose name is ``taken`` (a workload registered
    here holds it) is never removed."""
    found = Sweep()
    if not root.is_dir():
        return found
    names = {p.name for p in root.iterdir() if p.is_dir()}
    names |= {
        p.name.removesuffix(s)
        for p in root.iterdir()
        for s in (RECORD_SUFFIX, LEGACY_SUFFIX)
        if p.is_file() and p.name.endswith(s)
    }
    for mid in sorted(n for n in names if is_migration_id(n)):
        workdir = root / mid
        record = read_record(root, mid)
        marked = (workdir / RESTORED_MARK).exists()
        pid = _restored_pid(workdir, record) if marked else None
        letter = _live_copy(pid, record)
        if marked and letter is not None and record is not None and pid is not None:
            found.kept.append(RestoredCopy(mid, workdir, record, pid, stopped=letter in "Tt"))
            continue
        if marked:
            found.lost.append(mid)
        if record is not None and record.container is not None:
            found.containers.append(ContainerLeft(mid, workdir, record))
            continue
        shutil.rmtree(workdir, ignore_errors=True)
        if (
            record is not None
            and data_root is not None
            and check_data_name(record.workload)
            and not taken(record.workload)
        ):
            shutil.rmtree(data_root / record.workload, ignore_errors=True)
        forget_record(root, mid)
        found.removed.append(mid)
    return found


def check_data_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name
