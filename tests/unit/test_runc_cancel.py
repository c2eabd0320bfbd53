"""A cancelled runc call: killed at once, or, for a checkpoint (``OnCancel(wait=True)``),
let end by itself (its CRIU, killed part way, can leave the container's tasks on its
code). The "runc" here is a script standing in for it (no runc, no CRIU): it marks that
it started, waits for a file ``go``, then marks that it ended by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from haul.runtime.runc import CheckpointOptions, OnCancel, Runc

SCRIPT = """#!/bin/sh
: > "$MARKS/started"
while [ ! -e "$MARKS/go" ]; do sleep 0.01; done
: > "$MARKS/ended"
"""


@pytest.fixture
def runc(tmp_path: Path) -> Runc:
    script = tmp_path / "runc"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    return Runc(tmp_path / "root", binary=script)


async def _started(runc: Runc, marks: Path, on_cancel: OnCancel | None) -> asyncio.Task[None]:
    opts = CheckpointOptions(image_path=marks / "images", work_path=marks / "work")
    call = asyncio.create_task(
        runc.checkpoint("c1", opts, env={"MARKS": str(marks)}, on_cancel=on_cancel)
    )
    while not (marks / "started").exists():
        await asyncio.sleep(0.01)
    return call


async def _cancelled(call: asyncio.Task[None]) -> None:
    with pytest.raises(asyncio.CancelledError):
        await call


@pytest.mark.asyncio
async def test_a_cancelled_checkpoint_that_waits_ends_by_itself(runc: Runc, tmp_path: Path) -> None:
    call = await _started(runc, tmp_path, OnCancel(wait=True))
    call.cancel()
    await asyncio.sleep(0.3)
    assert not call.done(), "it waits for runc"
    call.cancel()  # cancelled again: it still waits
    await asyncio.sleep(0.1)
    assert not call.done()
    (tmp_path / "go").touch()
    await _cancelled(call)
    assert (tmp_path / "ended").exists(), "runc ran to its end, not killed"


@pytest.mark.asyncio
async def test_it_stops_waiting_once_its_owner_says_so(runc: Runc, tmp_path: Path) -> None:
    on_cancel = OnCancel(wait=True)
    call = await _started(runc, tmp_path, on_cancel)
    call.cancel()
    await asyncio.sleep(0.2)
    assert not call.done()
    on_cancel.wait = False  # e.g. a post-copy dump that is written and serves its pages
    await _cancelled(call)
    assert not (tmp_path / "ended").exists(), "killed"


@pytest.mark.asyncio
async def test_any_other_cancelled_call_is_killed_at_once(runc: Runc, tmp_path: Path) -> None:
    call = await _started(runc, tmp_path, None)
    call.cancel()
    async with asyncio.timeout(10):  # it does not wait for "go"
        await _cancelled(call)
    (tmp_path / "go").touch()
    await asyncio.sleep(0.1)
    assert not (tmp_path / "ended").exists(), "killed, so it never ended by itself"
