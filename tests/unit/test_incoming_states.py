"""An incoming migration follows its stages: opened -> receiving -> restored (stopped) ->
resumed -> finished, or discarded before the resume. Each call is taken only in the
stages it belongs to; a call asked again gets the first answer and does nothing more,
or is refused (StateError: 409 on the wire) in one line.

No CRIU: the registry's destinations are stand-ins whose restore starts a stopped
``sleep`` in a PID namespace of its own (haul/dest/fakes.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from haul.criu.options import PageServer
from haul.criu.service import Criu
from haul.dest.fakes import StandInCopy, StandInDestination, StandIns
from haul.dest.incoming import Incoming, IncomingRegistry, IncomingState
from haul.dest.undecided import AskPolicy
from haul.engine.phases import Strategy
from haul.errors import StateError, UsageError, WorkloadError
from haul.procfs import alive, state
from haul.workload.proctree import ProcessTree

pytestmark = pytest.mark.asyncio

#: nobody asks the source during these tests
QUIET = AskPolicy(deadline_s=3600.0)


class Adoptions:
    def __init__(self) -> None:
        self.done: list[tuple[str, int]] = []

    async def __call__(
        self, name: str, tree: ProcessTree, argv: list[str], net: object, holder: str
    ) -> None:
        self.done.append((name, tree.root_pid))


@pytest.fixture
def standins() -> Iterator[StandIns]:
    try:
        StandInCopy().close()
    except WorkloadError as exc:
        pytest.skip(exc.one_line())
    made = StandIns()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def adopt() -> Adoptions:
    return Adoptions()


@pytest_asyncio.fixture
async def reg(
    tmp_path: Path, standins: StandIns, adopt: Adoptions
) -> AsyncIterator[IncomingRegistry]:
    registry = IncomingRegistry(
        Criu("/bin/true"),
        tmp_path / "incoming",
        data_root=tmp_path / "workloads",
        listen_address="127.0.0.1",
        adopt=adopt,
        policy=QUIET,
        destination=standins,
    )
    try:
        yield registry
    finally:
        await registry.aclose()


async def _open(reg: IncomingRegistry, mid: str = "m1", workload: str = "web1") -> Incoming:
    return await reg.open(
        mid, workload, Strategy.POST_COPY, 0, PageServer("127.0.0.1", 9), argv=["counter"]
    )


def _dest(item: Incoming) -> StandInDestination:
    assert isinstance(item.dest, StandInDestination)
    return item.dest


def _copy_pid(item: Incoming) -> int:
    assert item.dest.tree is not None
    return item.dest.tree.root_pid


def _stopped(pid: int) -> bool:
    return state(pid) in ("T", "t")


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _image(reg: IncomingRegistry, name: str, data: bytes, mid: str = "m1") -> int:
    return await reg.receive_image(mid, name, _chunks(data), hashlib.sha256(data).hexdigest())


async def _resumed(reg: IncomingRegistry) -> Incoming:
    item = await _open(reg)
    await reg.restore("m1", lazy=True)
    await reg.resume("m1")
    return item


async def test_the_stages_of_a_migration_that_goes_through(
    reg: IncomingRegistry, adopt: Adoptions, tmp_path: Path
) -> None:
    item = await _open(reg)
    assert item.state is IncomingState.OPENED
    await _image(reg, "core-1.img", b"core")
    assert item.state is IncomingState.RECEIVING
    figures = await reg.restore("m1", lazy=True)
    assert item.state is IncomingState.RESTORED and _stopped(figures.dest_pid)
    await reg.resume("m1")
    assert item.state is IncomingState.RESUMED and not _stopped(figures.dest_pid)
    _dest(item).pages.set()
    await reg.wait_pages("m1")
    assert await reg.finish("m1") is item
    assert item.state is IncomingState.FINISHED
    assert adopt.done == [("web1", figures.dest_pid)] and alive(figures.dest_pid)
    assert reg.items() == [] and (tmp_path / "workloads" / "web1").is_dir()


async def test_a_discard_after_the_resume_is_refused_and_the_copy_runs_on(
    reg: IncomingRegistry, adopt: Adoptions
) -> None:
    """Seen on lab hosts: a discard in post-copy's lazy phase killed the only running copy."""
    item = await _resumed(reg)
    pid = _copy_pid(item)
    with pytest.raises(StateError) as refused:
        await reg.discard("m1")
    assert "resumed" in refused.value.one_line() and "\n" not in refused.value.one_line()
    assert alive(pid) and not _stopped(pid), "the copy runs on"
    assert item.state is IncomingState.RESUMED and _dest(item).workdir.is_dir()
    # the migration still finishes as it would have
    _dest(item).pages.set()
    await reg.wait_pages("m1")
    await reg.finish("m1")
    assert adopt.done == [("web1", pid)]


async def test_a_discard_before_the_resume_kills_the_copy_and_again_does_nothing(
    reg: IncomingRegistry, tmp_path: Path
) -> None:
    item = await _open(reg)
    figures = await reg.restore("m1", lazy=False)
    await reg.discard("m1")
    assert not alive(figures.dest_pid) and item.state is IncomingState.DISCARDED
    assert not _dest(item).workdir.exists() and not (tmp_path / "workloads" / "web1").exists()
    await reg.discard("m1")  # asked again: the same answer, nothing more
    for late in (
        lambda: reg.resume("m1"),
        lambda: reg.finish("m1"),
        lambda: reg.restore("m1", lazy=False),
    ):
        with pytest.raises(StateError, match="discarded"):
            await late()
    assert _dest(item).restores == 1


async def test_a_second_restore_answers_as_the_first_and_restores_nothing(
    reg: IncomingRegistry, standins: StandIns
) -> None:
    item = await _open(reg)
    first = await reg.restore("m1", lazy=True)
    again = await reg.restore("m1", lazy=True)
    assert again == first
    assert _dest(item).restores == 1 and len(standins.copies) == 1
    with pytest.raises(StateError, match="restored"):
        await reg.restore("m1", lazy=False)  # not the same request
    await reg.resume("m1")
    with pytest.raises(StateError, match="resumed"):
        await reg.restore("m1", lazy=True)
    assert _dest(item).restores == 1


async def test_a_restore_that_fails_leaves_no_copy_and_takes_only_a_discard(
    reg: IncomingRegistry, standins: StandIns
) -> None:
    standins.fail_restore = "the restore failed half way"
    item = await _open(reg)
    with pytest.raises(WorkloadError, match="half way"):
        await reg.restore("m1", lazy=False)
    [copy] = standins.copies
    assert not alive(copy.pid), "what the failed restore made is gone"
    assert item.state is IncomingState.RESTORE_FAILED
    standins.fail_restore = None
    for refused in (
        lambda: reg.restore("m1", lazy=False),
        lambda: reg.resume("m1"),
        lambda: reg.finish("m1"),
        lambda: _image(reg, "core-2.img", b"x"),
    ):
        with pytest.raises(StateError, match="restore failed"):
            await refused()
    assert len(standins.copies) == 1 and _dest(item).restores == 1
    await reg.discard("m1")
    assert item.state is IncomingState.DISCARDED and not _dest(item).workdir.exists()


async def test_finish_before_the_resume_is_refused_and_the_rollback_still_discards(
    reg: IncomingRegistry, adopt: Adoptions
) -> None:
    item = await _open(reg)
    figures = await reg.restore("m1", lazy=False)
    with pytest.raises(StateError, match="not resumed"):
        await reg.finish("m1")
    assert adopt.done == [] and item.state is IncomingState.RESTORED
    assert _stopped(figures.dest_pid), "a stopped copy is never adopted"
    await reg.discard("m1")  # the source's rollback
    assert not alive(figures.dest_pid) and adopt.done == []


async def test_resume_and_wait_pages_before_any_restore_are_refused(
    reg: IncomingRegistry,
) -> None:
    item = await _open(reg)
    for early in (
        lambda: reg.resume("m1"),
        lambda: reg.wait_pages("m1"),
        lambda: reg.finish("m1"),
    ):
        with pytest.raises(StateError, match="opened"):
            await early()
    assert item.state is IncomingState.OPENED and _dest(item).resumes == 0
    await reg.restore("m1", lazy=True)
    with pytest.raises(StateError, match="not resumed"):
        await reg.wait_pages("m1")


async def test_resume_and_finish_asked_again_change_nothing(
    reg: IncomingRegistry, adopt: Adoptions
) -> None:
    item = await _resumed(reg)
    await reg.resume("m1")
    assert _dest(item).resumes == 1
    _dest(item).pages.set()
    await reg.wait_pages("m1")
    assert await reg.finish("m1") is item
    assert await reg.finish("m1") is None
    await reg.resume("m1")
    await reg.wait_pages("m1")
    assert adopt.done == [("web1", _copy_pid(item))] and _dest(item).resumes == 1
    with pytest.raises(StateError, match="committed"):
        await reg.discard("m1")
    assert alive(_copy_pid(item))


async def test_a_discard_during_the_restore_waits_for_it_and_leaves_no_copy(
    reg: IncomingRegistry, standins: StandIns
) -> None:
    standins.hold_restore = asyncio.Event()
    item = await _open(reg)
    restoring = asyncio.create_task(reg.restore("m1", lazy=False))
    while _dest(item).restores == 0:
        await asyncio.sleep(0.001)
    assert item.state is IncomingState.RESTORING
    with pytest.raises(StateError, match="restoring"):
        await _image(reg, "core-1.img", b"late")
    discarding = asyncio.create_task(reg.discard("m1"))
    await asyncio.sleep(0.05)
    assert not discarding.done(), "the discard waits for the restore under way"
    standins.hold_restore.set()
    figures = await restoring
    await discarding
    assert not alive(figures.dest_pid), "the copy that restore made went with the discard"
    assert item.state is IncomingState.DISCARDED


async def test_open_asked_again_answers_as_the_first_while_nothing_arrived(
    reg: IncomingRegistry, standins: StandIns
) -> None:
    item = await _open(reg)
    assert await _open(reg) is item and len(standins.made) == 1
    with pytest.raises(StateError, match="already open"):
        await _open(reg, workload="web2")  # not the same request
    await _image(reg, "core-1.img", b"core")
    with pytest.raises(StateError, match="receiving"):
        await _open(reg)
    await reg.discard("m1")
    with pytest.raises(StateError, match="discarded"):
        await _open(reg)
    assert len(standins.made) == 1


async def test_an_image_sent_again_is_taken_once(reg: IncomingRegistry) -> None:
    item = await _open(reg)
    assert await _image(reg, "core-1.img", b"core") == 4
    assert await _image(reg, "core-1.img", b"core") == 4
    with pytest.raises(StateError, match="other content"):
        await _image(reg, "core-1.img", b"else")
    assert (item.dest.images / "core-1.img").read_bytes() == b"core"


async def test_an_unknown_migration_is_discarded_as_nothing_and_refused_otherwise(
    reg: IncomingRegistry,
) -> None:
    await reg.discard("m9")
    with pytest.raises(UsageError, match="no incoming migration"):
        await reg.resume("m9")
