"""A migration held at one of its hook points, from outside: for tests.

The moment between "the destination restored its copy, stopped" and "the source
decided" is made deterministic with a hook script on the source: at ``restored`` it
says so (a file) and waits until the test releases it (another file; with something
written in it the hook fails and the migration rolls back). Meanwhile the test chooses
what happens: an agent dies, the source goes on, and so on. :func:`pause_at` holds a
migration at another point the same way, e.g. ``post-commit``: the destination's copy
runs (post-copy: its pages still arriving) and the source waits, frozen.

The ``haul migrate`` processes started here are kept in :data:`STARTED` until
:func:`end_started` ends and reaps them (a test's fixture calls it, whatever happened).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from haul.lab.operator import incoming, journal_dir, journal_phases, wait_until
from haul.lab.spec import LabSpec

#: ``haul migrate`` processes started by :func:`pause_at_restored`, not yet reaped
STARTED: list[subprocess.Popen[str]] = []

WAIT_AT = """#!/bin/sh
# At "{point}", say so, then wait (at most 120 s) until the test releases us; a
# release file with something in it makes the hook fail (before the commit, the
# migration then rolls back).
[ "$1" = {point} ] || exit 0
touch {reached}
i=0
while [ ! -e {release} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
[ -s {release} ] && exit 1
exit 0
"""


def pause_at(
    lab: LabSpec,
    inventory: Path,
    name: str,
    release: Path,
    *,
    point: str,
    source: str = "host1",
    dest: str = "host2",
    strategy: str = "stop-and-copy",
    extra: tuple[str, ...] = (),
) -> tuple[str, subprocess.Popen[str]]:
    """Start ``name``'s migration ``source`` -> ``dest`` (``strategy``) with a hook that
    holds the source at hook point ``point`` until ``release`` exists; return the
    migration's ID and the ``haul migrate`` process once the source waits in the hook
    (at ``restored``: ``dest`` has restored its copy, stopped, nothing decided).
    ``extra``: more arguments of ``haul migrate``."""
    reached = release.with_name("reached")
    hook = release.with_name(f"wait-at-{point}")
    hook.write_text(WAIT_AT.format(point=point, reached=reached, release=release))
    hook.chmod(0o755)
    before = set(journal_dir(lab, source).glob("*.jsonl"))
    migrating = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "haul",
            "migrate",
            name,
            "--to",
            dest,
            "--strategy",
            strategy,
            "--hook",
            str(hook),
            "--hook-timeout",
            "150",
            *extra,
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HAUL_HOSTS": str(inventory)},
    )
    STARTED.append(migrating)
    path = wait_until(
        "the migration's journal", lambda: set(journal_dir(lab, source).glob("*.jsonl")) - before
    )
    mid = next(iter(path)).stem
    wait_until(f"the source to wait at the {point} hook", reached.exists, timeout_s=120)
    return mid, migrating


def pause_at_restored(
    lab: LabSpec,
    inventory: Path,
    name: str,
    release: Path,
    *,
    source: str = "host1",
    dest: str = "host2",
    strategy: str = "stop-and-copy",
    extra: tuple[str, ...] = (),
) -> tuple[str, subprocess.Popen[str]]:
    """:func:`pause_at` ``restored``: returns once ``dest`` has restored its copy
    (stopped) and the source waits in the hook, nothing decided. ``extra``: more
    arguments of ``haul migrate``."""
    mid, migrating = pause_at(
        lab,
        inventory,
        name,
        release,
        point="restored",
        source=source,
        dest=dest,
        strategy=strategy,
        extra=extra,
    )
    assert journal_phases(lab, source, mid)[-1] == "restore", "nothing is decided yet"
    wait_until(
        f"{dest}'s restored copy",
        lambda: [r for r in incoming(lab, dest) if r["id"] == mid and r["state"] == "restored"],
    )
    return mid, migrating


def finish_cli(migrating: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    """Wait for a ``haul migrate`` to end (killed after ``timeout_s``)."""
    try:
        migrating.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        migrating.kill()
        migrating.communicate()


def end_started() -> None:
    """End and reap every ``haul migrate`` :func:`pause_at_restored` started."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None and not proc.stdout.closed:
            proc.communicate()
