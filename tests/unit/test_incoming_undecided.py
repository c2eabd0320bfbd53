"""What a restarted destination agent finds of its incoming migrations, and how a kept
restored copy is settled by its source's answer (no CRIU: the "restored copy" is a
stopped ``sleep`` in a PID namespace of its own, haul/dest/fakes.py)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul.criu.service import Criu
from haul.dest import leftovers
from haul.dest.criudest import RESTORED_MARK
from haul.dest.fakes import StandInCopy as Copy
from haul.dest.incoming import IncomingRegistry, IncomingState
from haul.dest.leftovers import IncomingRecord
from haul.dest.undecided import AskPolicy, SourceAnswer, Verdict
from haul.engine.phases import Strategy
from haul.errors import StateError, TransportError, WorkloadError
from haul.procfs import alive, state
from haul.workload.proctree import ProcessTree

POLICY = AskPolicy(deadline_s=0.01, again_s=0.01, retry_min_s=0.01, retry_max_s=0.02)


@pytest.fixture
def copy() -> Iterator[Copy]:
    try:
        c = Copy()
    except WorkloadError as exc:
        pytest.skip(exc.one_line())
    try:
        yield c
    finally:
        c.close()


def left_by_an_earlier_agent(tmp_path: Path, mid: str, pid: int | None) -> tuple[Path, Path]:
    """What an agent leaves of an incoming migration (restored when ``pid`` is given)."""
    root, data = tmp_path / "incoming", tmp_path / "workloads"
    (root / mid / "images").mkdir(parents=True)
    (data / "web1").mkdir(parents=True, exist_ok=True)
    (data / "web1" / "state").write_text("42\n")
    leftovers.write_record(
        root,
        mid,
        IncomingRecord(
            workload="web1",
            source="host1",
            argv=["counter"],
            strategy=Strategy.STOP_AND_COPY,
            restored_pid=pid,
            start_ticks=leftovers.start_ticks(pid) if pid else None,
        ),
    )
    if pid is not None:
        (root / mid / RESTORED_MARK).write_text(f"{pid}\n")
    return root, data


class Source:
    def __init__(self, answer: SourceAnswer | Exception) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, source: str, migration_id: str) -> SourceAnswer:
        self.asked.append((source, migration_id))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Adoptions:
    def __init__(self) -> None:
        self.done: list[tuple[str, int, list[str]]] = []

    async def __call__(
        self, name: str, tree: ProcessTree, argv: list[str], net: object, holder: str
    ) -> None:
        self.done.append((name, tree.root_pid, argv))


def registry(root: Path, data: Path, source: Source, adopt: Adoptions) -> IncomingRegistry:
    return IncomingRegistry(
        Criu("/bin/true"),
        root,
        data_root=data,
        listen_address="127.0.0.1",
        ask=source,
        adopt=adopt,
        policy=POLICY,
    )


async def settled(reg: IncomingRegistry, mid: str) -> None:
    """Wait until asking settled ``mid`` (its watch ended, and with it the action)."""
    [item] = [i for i in reg.items() if i.migration_id == mid]
    assert item.watch is not None
    await asyncio.wait_for(item.watch, 10)


# -- the sweep -------------------------------------------------------------------------------


def test_sweep_removes_what_never_restored_and_what_lost_its_copy(tmp_path: Path) -> None:
    root, data = left_by_an_earlier_agent(tmp_path, "m-never", None)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left_by_an_earlier_agent(tmp_path, "m-lost", dead.pid)
    (root / "m-old.workload").write_text("web1\n")  # what an older agent wrote
    found = leftovers.sweep(root, data, lambda name: name.startswith("m"))
    assert sorted(found.removed) == ["m-lost", "m-never", "m-old"]
    assert found.lost == ["m-lost"] and found.kept == []
    assert list(root.iterdir()) == [] and not (data / "web1").exists()


def test_sweep_keeps_a_restored_copy_and_knows_whom_to_ask(tmp_path: Path, copy: Copy) -> None:
    root, data = left_by_an_earlier_agent(tmp_path, "m1", copy.pid)
    found = leftovers.sweep(root, data, lambda name: True)
    assert found.removed == [] and len(found.kept) == 1
    kept = found.kept[0]
    assert (kept.migration_id, kept.pid, kept.stopped) == ("m1", copy.pid, True)
    assert (kept.record.workload, kept.record.source, kept.record.argv) == (
        "web1",
        "host1",
        ["counter"],
    )
    assert (data / "web1" / "state").exists()


def test_a_reused_pid_is_not_taken_for_the_copy(tmp_path: Path, copy: Copy) -> None:
    root, data = left_by_an_earlier_agent(tmp_path, "m1", copy.pid)
    record = leftovers.read_record(root, "m1")
    assert record is not None and record.start_ticks is not None
    leftovers.write_record(
        root,
        "m1",
        IncomingRecord(
            workload="web1",
            source="host1",
            restored_pid=copy.pid,
            start_ticks=record.start_ticks + 1,
        ),
    )
    found = leftovers.sweep(root, data, lambda name: True)
    assert found.lost == ["m1"] and found.kept == []
    assert alive(copy.pid), "a process that is not the copy is left alone"


# -- settled by the source's answer ----------------------------------------------------------


@pytest.mark.asyncio
async def test_committed_resumes_and_adopts_the_kept_copy(tmp_path: Path, copy: Copy) -> None:
    root, data = left_by_an_earlier_agent(tmp_path, "m1", copy.pid)
    source, adopt = Source(SourceAnswer(Verdict.COMMITTED, running=False)), Adoptions()
    reg = registry(root, data, source, adopt)
    await reg.sweep()
    assert [i.state for i in reg.items()] == [IncomingState.RESTORED]
    reg.start_watches()
    await settled(reg, "m1")
    assert source.asked == [("host1", "m1")]
    assert adopt.done == [("web1", copy.pid, ["counter"])]
    assert state(copy.pid) not in ("T", "t", None), "the copy runs"
    assert list(root.iterdir()) == [] and (data / "web1" / "state").exists()
    # the source's own calls, arriving late, find it done
    await reg.resume("m1")
    assert await reg.finish("m1") is None
    with pytest.raises(StateError, match="was committed here"):
        await reg.discard("m1")
    await reg.aclose()


@pytest.mark.asyncio
async def test_rolled_back_discards_the_kept_copy(tmp_path: Path, copy: Copy) -> None:
    root, data = left_by_an_earlier_agent(tmp_path, "m1", copy.pid)
    adopt = Adoptions()
    reg = registry(root, data, Source(SourceAnswer(Verdict.ROLLED_BACK)), adopt)
    await reg.sweep()
    reg.start_watches()
    await settled(reg, "m1")
    assert not alive(copy.pid) and adopt.done == []
    assert list(root.iterdir()) == [] and not (data / "web1").exists()
    await reg.discard("m1")  # again: nothing happens
    with pytest.raises(StateError, match="discarded"):
        await reg.resume("m1")
    await reg.aclose()


@pytest.mark.asyncio
async def test_an_unreachable_source_leaves_the_copy_stopped(tmp_path: Path, copy: Copy) -> None:
    root, data = left_by_an_earlier_agent(tmp_path, "m1", copy.pid)
    source = Source(TransportError("source host1 unreachable: connection refused"))
    reg = registry(root, data, source, Adoptions())
    await reg.sweep()
    reg.start_watches()
    while len(source.asked) < 5:
        await asyncio.sleep(0.01)
    [item] = reg.items()
    assert item.asking.problem and "cannot ask host1" in item.asking.note
    assert item.asking.last_answer == "no answer"
    assert state(copy.pid) in ("T", "t"), "never resumed on its own"
    assert (root / "m1" / RESTORED_MARK).exists()
    # the source's own word still settles it
    await reg.resume("m1")
    assert item.state is IncomingState.RESUMED and state(copy.pid) not in ("T", "t")
    source.answer = SourceAnswer(Verdict.COMMITTED, running=False)
    await reg.finish("m1")
    assert reg.items() == []
    await reg.aclose()
