"""A runc container's incoming migration as a restarted destination agent finds it: its
record keeps what the source said of the container, so the agent rebuilds the arrival
over the home it has here and removes it with everything made for it (never restored,
or its source rolled back), or resumes and registers the restored copy (its source
committed). No runc, no CRIU: the arrivals are haul/dest/fakes.py's, the copy a stopped
``sleep`` in a PID namespace of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haul.criu.service import Criu
from haul.dest import leftovers
from haul.dest.criudest import RESTORED_MARK
from haul.dest.fakes import FakeArrivals, StandInCopy
from haul.dest.incoming import IncomingRegistry, IncomingState
from haul.dest.leftovers import IncomingRecord
from haul.dest.undecided import AskPolicy, SourceAnswer, Verdict
from haul.engine.phases import Strategy
from haul.errors import TransportError, WorkloadError
from haul.procfs import alive, state
from haul.workload.proctree import ProcessTree

POLICY = AskPolicy(deadline_s=0.01, again_s=0.01, retry_min_s=0.01, retry_max_s=0.02)
MOVE: dict[str, Any] = {
    "config": {"process": {"args": ["/bin/sh"]}},
    "image": "oci:/images/busybox",
    "image_digest": "sha256:" + "a" * 64,
    "blobs": [],
    "argv": ["/bin/sh"],
}


@pytest.fixture
def copy() -> Iterator[StandInCopy]:
    try:
        c = StandInCopy()
    except WorkloadError as exc:
        pytest.skip(exc.one_line())
    try:
        yield c
    finally:
        c.close()


class Answer:
    def __init__(self, answer: SourceAnswer) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, source: str, migration_id: str) -> SourceAnswer:
        self.asked.append((source, migration_id))
        return self.answer


class TreeAdoptions:
    """The registry's adoption of process trees: a container must never come here."""

    def __init__(self) -> None:
        self.done: list[str] = []

    async def __call__(self, name: str, tree: ProcessTree, argv: list[str], net: object) -> None:
        self.done.append(name)


UNKNOWN = SourceAnswer(Verdict.UNKNOWN)


def setup(
    tmp_path: Path, answer: SourceAnswer = UNKNOWN
) -> tuple[IncomingRegistry, FakeArrivals, TreeAdoptions]:
    criu = Criu("/bin/true")
    arrivals = FakeArrivals(criu, tmp_path / "containers")
    adopt = TreeAdoptions()
    reg = IncomingRegistry(
        criu,
        tmp_path / "incoming",
        data_root=tmp_path / "workloads",
        listen_address="127.0.0.1",
        ask=Answer(answer),
        adopt=adopt,
        policy=POLICY,
        arrivals=arrivals,
    )
    return reg, arrivals, adopt


def left_by_an_earlier_agent(
    tmp_path: Path, mid: str, *, pid: int | None = None, container: dict[str, Any] = MOVE
) -> Path:
    """What an agent leaves of a container's incoming migration: its record, its work
    directory, the container's home (and, restored: the mark and the copy's PID)."""
    root = tmp_path / "incoming"
    (root / mid / "images").mkdir(parents=True)
    (tmp_path / "containers" / "c1" / "upper").mkdir(parents=True)
    leftovers.write_record(
        root,
        mid,
        IncomingRecord(
            workload="c1",
            source="host1",
            strategy=Strategy.STOP_AND_COPY,
            restored_pid=pid,
            start_ticks=leftovers.start_ticks(pid) if pid else None,
            net_address="10.77.0.123/24",
            container=container,
        ),
    )
    if pid is not None:
        (root / mid / RESTORED_MARK).write_text(f"{pid}\n")
    return root


async def settled(reg: IncomingRegistry, mid: str) -> None:
    [item] = [i for i in reg.items() if i.migration_id == mid]
    assert item.watch is not None
    await asyncio.wait_for(item.watch, 10)


def test_the_record_keeps_the_container(tmp_path: Path) -> None:
    root = left_by_an_earlier_agent(tmp_path, "m1")
    record = leftovers.read_record(root, "m1")
    assert record is not None and record.container == MOVE and record.workload == "c1"
    leftovers.record_path(root, "m1").write_text('{"workload": "c1", "container": [1]}')
    assert leftovers.read_record(root, "m1") is None, "a bad container is an unreadable record"


def test_the_sweep_leaves_a_containers_migration_to_its_arrival(tmp_path: Path) -> None:
    root = left_by_an_earlier_agent(tmp_path, "m1")
    found = leftovers.sweep(root, tmp_path / "workloads", lambda name: True)
    assert found.removed == [] and found.kept == []
    assert [(c.migration_id, c.record.workload) for c in found.containers] == [("m1", "c1")]
    assert (root / "m1").is_dir() and leftovers.record_path(root, "m1").exists()


@pytest.mark.asyncio
async def test_a_container_never_restored_goes_with_its_home(tmp_path: Path) -> None:
    root = left_by_an_earlier_agent(tmp_path, "m1")
    reg, arrivals, _ = setup(tmp_path)
    found = await reg.sweep()
    assert found.removed == ["m1"] and reg.items() == []
    assert arrivals.rebuilt == [("c1", MOVE, None)]
    [(dest, arrival)] = arrivals.made
    assert dest.discarded == 1 and arrival.released >= 1
    assert arrival.net is not None and str(arrival.net.address) == "10.77.0.123/24"
    assert list(root.iterdir()) == [] and not (tmp_path / "containers" / "c1").exists()
    await reg.aclose()


@pytest.mark.asyncio
async def test_a_container_whose_home_stays_keeps_its_record(tmp_path: Path) -> None:
    root = left_by_an_earlier_agent(tmp_path, "m1")
    reg, arrivals, _ = setup(tmp_path)
    arrivals.fail_release = "umount: target is busy"
    found = await reg.sweep()
    assert found.removed == [] and reg.items() == []
    assert leftovers.record_path(root, "m1").exists(), "the next agent tries again"
    await reg.aclose()


@pytest.mark.asyncio
async def test_an_unreadable_container_record_is_left_as_it_is(tmp_path: Path) -> None:
    root = left_by_an_earlier_agent(tmp_path, "m1", container={**MOVE, "bad": True})
    reg, arrivals, _ = setup(tmp_path)
    found = await reg.sweep()
    assert found.removed == [] and arrivals.made == []
    assert leftovers.record_path(root, "m1").exists()
    assert (tmp_path / "containers" / "c1").is_dir()
    await reg.aclose()


@pytest.mark.asyncio
async def test_a_kept_container_copy_is_resumed_and_registered_when_committed(
    tmp_path: Path, copy: StandInCopy
) -> None:
    root = left_by_an_earlier_agent(tmp_path, "m1", pid=copy.pid)
    reg, arrivals, trees = setup(tmp_path, SourceAnswer(Verdict.COMMITTED, running=False))
    found = await reg.sweep()
    assert [c.migration_id for c in found.kept] == ["m1"] and found.removed == []
    [item] = reg.items()
    assert item.state is IncomingState.RESTORED and item.arrival is not None
    assert arrivals.rebuilt == [("c1", MOVE, copy.pid)]
    reg.start_watches()
    await settled(reg, "m1")
    [(dest, arrival)] = arrivals.made
    assert dest.resumed == 1 and arrival.adopted == [copy.pid], "registered as a container"
    assert trees.done == [], "not as a process tree"
    assert state(copy.pid) not in ("T", "t", None), "the copy runs"
    assert arrival.released == 0 and (tmp_path / "containers" / "c1").is_dir()
    assert list(root.iterdir()) == []
    await reg.aclose()


@pytest.mark.asyncio
async def test_a_kept_container_copy_goes_with_its_home_when_rolled_back(
    tmp_path: Path, copy: StandInCopy
) -> None:
    root = left_by_an_earlier_agent(tmp_path, "m1", pid=copy.pid)
    reg, arrivals, _ = setup(tmp_path, SourceAnswer(Verdict.ROLLED_BACK))
    await reg.sweep()
    reg.start_watches()
    await settled(reg, "m1")
    [(dest, arrival)] = arrivals.made
    assert dest.discarded == 1 and arrival.released >= 1 and arrival.adopted == []
    assert not alive(copy.pid)
    assert list(root.iterdir()) == [] and not (tmp_path / "containers" / "c1").exists()
    await reg.aclose()


@pytest.mark.asyncio
async def test_the_record_is_written_as_the_home_is_claimed(tmp_path: Path) -> None:
    reg, arrivals, _ = setup(tmp_path)
    root = tmp_path / "incoming"
    await reg.open("m1", "c1", Strategy.STOP_AND_COPY, 0, None, source="host1", container=MOVE)
    record = leftovers.read_record(root, "m1")
    assert record is not None and record.container == MOVE and record.source == "host1"
    await reg.discard("m1")
    assert not leftovers.record_path(root, "m1").exists()
    assert not (tmp_path / "containers" / "c1").exists()
    # one that cannot be prepared leaves neither record nor home (the limits' room
    # check at the open is told there is room: the destination's own check says not)
    reg.free_bytes = lambda path: 1 << 62
    with pytest.raises(TransportError, match="not enough room"):
        await reg.open("m2", "c2", Strategy.STOP_AND_COPY, 1 << 60, None, container=MOVE)
    assert not leftovers.record_path(root, "m2").exists()
    assert not (tmp_path / "containers" / "c2").exists()
    assert len(arrivals.made) == 2
    await reg.aclose()


@pytest.mark.asyncio
async def test_the_budget_counts_what_the_images_blobs_weigh(tmp_path: Path) -> None:
    """Blobs the destination lacks come over HTTP: its budget for the migration counts
    what the source says they weigh, besides the pre-flight's claim."""
    reg, _, _ = setup(tmp_path)
    move = MOVE | {"blob_bytes": 5000}
    await reg.open("m1", "c1", Strategy.POST_COPY, 1000, None, container=move)
    assert reg.get("m1").intake.budget_bytes == reg.limits.budget(6000)
    await reg.discard("m1")
    await reg.aclose()
