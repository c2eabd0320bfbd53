"""Faults put into a lab's migrations from outside, and what tests read meanwhile.

- :func:`seizing_criu`: the CRIU that has seized a process (ptraces it), as runc's
  CRIU does with every task of a container it checkpoints (it renames itself ``dump
  --rpc``, so it is found by what it traces, not by its command line); its
  :func:`parent` is the ``runc checkpoint`` that reports its end.
- :func:`runc_restoring`: a ``runc restore`` of a migration, found by the migration's
  images directory on its command line (received, or in a shared directory).
- :func:`freezer_state`: the cgroup v1 freezer state of a lab host's container, read
  where the kernel keeps it (``runc exec`` into a frozen container would hang).
- :func:`stopped`: a process held with SIGSTOP for the duration of a ``with`` (an agent
  that does not answer), continued on the way out whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from haul.lab.agents import lab_cgroup_parent
from haul.lab.spec import LabSpec
from haul.runtime.bundle import cgroup_mounts


def parent(pid: int) -> int | None:
    """The parent of ``pid``, or None when ``pid`` is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def runc_restoring(migration_id: str) -> int | None:
    """The PID of a ``runc restore`` of migration ``migration_id`` (its images directory
    is the migration's, on its command line), or None while there is none."""
    images = f"/{migration_id}/images"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "restore" in words and any(w.endswith(images) for w in words):
            return int(entry.name)
    return None


def tracer(pid: int) -> int | None:
    """The PID that ptraces ``pid`` (0: none), or None when ``pid`` is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def seizing_criu(pid: int) -> int | None:
    """The CRIU that has seized ``pid`` (ptraces it), or None while none has."""
    found = tracer(pid)
    if not found:
        return None
    try:
        exe = os.readlink(f"/proc/{found}/exe")
    except OSError:
        return None
    return found if Path(exe).name == "criu" else None


def freezer_state(spec: LabSpec, host: str, name: str) -> str | None:
    """FROZEN, FREEZING or THAWED: container ``name``'s freezer cgroup on lab host
    ``host``; None when it has none (cgroup v2, or the container is gone)."""
    relative = Path(lab_cgroup_parent(spec, host).strip("/")) / name / "freezer.state"
    for mount in cgroup_mounts():
        with contextlib.suppress(OSError):
            return (mount / relative).read_text().strip()
    return None


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """``pid`` stopped (SIGSTOP) inside the ``with``, continued (SIGCONT) after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
