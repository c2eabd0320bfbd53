"""The rounds of a workload's files: what the destination holds after each, files that
change or vanish while a running round reads them, and the frozen round that must be
exact (through the lab's transport, haul/transport/local.py, and its local apply)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haul.errors import TransportError
from haul.transport.datasync import sync_tree
from haul.transport.fakes import DirNode, FifoNode, FileNode, LinkNode, build, snapshot
from haul.transport.local import LocalTransport
from haul.transport.rounds import UNSETTLED, Apply, FileRounds, Sent
from haul.transport.treeapply import apply_plan
from haul.transport.treeplan import Node, Plan
from haul.transport.treescan import Kind


def _transport(tmp_path: Path, **data: Path) -> LocalTransport:
    for d in ("img-src", "img-dst"):
        (tmp_path / d).mkdir()
    return LocalTransport(tmp_path / "img-src", tmp_path / "img-dst", **data)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir(mode=0o750)
    build(path, {"d": DirNode({"f": FileNode(b"one")}), "g": FileNode(b"two"), "p": FifoNode()})
    return path


@pytest.mark.asyncio
async def test_a_full_pass_then_deltas_then_the_frozen_delta(src: Path, tmp_path: Path) -> None:
    (tmp_path / "img-src").mkdir()
    (tmp_path / "img-src" / "core-1.img").write_bytes(b"core")
    (tmp_path / "img-dst").mkdir()
    dst = tmp_path / "dst"
    transport = LocalTransport(
        tmp_path / "img-src", tmp_path / "img-dst", source_data=src, dest_data=dst
    )
    assert transport.files is not None
    transport.files.racy_window_ns = 0  # these files are all seconds old in real life
    first = await transport.sync_files(1)
    assert (first.round, first.files, first.bytes_sent, first.removed) == (1, 2, 6, 0)
    assert snapshot(dst) == snapshot(src) and dst.stat().st_mode & 0o777 == 0o750
    nothing = await transport.sync_files(2)
    assert (nothing.files, nothing.bytes_sent, nothing.removed) == (0, 0, 0)
    (src / "g").write_bytes(b"TWO")
    (src / "d" / "f").unlink()
    (src / "l").symlink_to("g")
    frozen = await transport.transfer_images()
    assert (frozen.files, frozen.bytes_sent) == (2, 4 + 3)  # the image and g
    last = transport.files.history[-1]
    assert (last.round, last.files, last.bytes_sent, last.removed) == (3, 1, 3, 1)
    assert snapshot(dst) == snapshot(src)
    assert (tmp_path / "img-dst" / "core-1.img").read_bytes() == b"core"


@pytest.mark.asyncio
async def test_no_round_before_the_freeze_sends_every_file_frozen(
    src: Path, tmp_path: Path
) -> None:
    transport = _transport(tmp_path, source_data=src, dest_data=tmp_path / "dst")
    figures = await transport.transfer_images()
    assert (figures.files, figures.bytes_sent) == (2, 6)
    assert snapshot(tmp_path / "dst") == snapshot(src)


@pytest.mark.asyncio
async def test_without_a_data_directory_rounds_send_nothing(tmp_path: Path) -> None:
    transport = _transport(tmp_path)
    assert (await transport.sync_files(1)).files == 0
    assert (await transport.transfer_images()).files == 0


@pytest.mark.asyncio
async def test_a_destination_data_directory_that_exists_is_refused(
    src: Path, tmp_path: Path
) -> None:
    (tmp_path / "dst").mkdir()
    transport = _transport(tmp_path, source_data=src, dest_data=tmp_path / "dst")
    with pytest.raises(TransportError, match="already exists on the destination"):
        await transport.sync_files(1)


def _vanishing(src: Path, dst: Path, *gone: str) -> tuple[list[Plan], Apply]:
    """An apply that removes ``gone`` from the source right before it reads."""
    plans: list[Plan] = []

    async def apply(plan: Plan) -> Sent:
        plans.append(plan)
        for rel in gone:
            (src / rel).unlink(missing_ok=True)
        return apply_plan(src, dst, plan)

    return plans, apply


@pytest.mark.asyncio
async def test_a_file_gone_while_a_round_reads_it_is_settled_by_the_next_round(
    src: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    rounds = FileRounds(src, racy_window_ns=0)
    await rounds.run(1, _vanishing(src, dst)[1], frozen=False)
    (src / "g").write_bytes(b"changed")  # changed: the destination holds the old g
    (src / "new").write_bytes(b"new")  # new: the destination holds nothing
    figures = await rounds.run(2, _vanishing(src, dst, "g", "new")[1], frozen=False)
    assert (figures.files, figures.bytes_sent) == (0, 0)
    assert (dst / "g").read_bytes() == b"two" and not (dst / "new").exists()
    assert "new" not in rounds.held and rounds.held["g"].size == 3
    plans, apply = _vanishing(src, dst)
    third = await rounds.run(3, apply, frozen=True)
    assert plans[0].remove == ("g",) and third.removed == 1
    assert snapshot(dst) == snapshot(src)


@pytest.mark.asyncio
async def test_a_file_gone_in_the_frozen_round_fails_it_and_every_later_round(
    src: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    rounds = FileRounds(src)
    (src / "g").write_bytes(b"other")
    with pytest.raises(TransportError, match=r"1 of the workload's files changed while it was fro"):
        await rounds.run(1, _vanishing(src, dst, "g")[1], frozen=True)
    with pytest.raises(TransportError, match="an earlier round .* failed part-way"):
        await rounds.run(2, _vanishing(src, dst)[1], frozen=True)


@pytest.mark.asyncio
async def test_a_file_changed_just_before_a_scan_is_sent_again(src: Path, tmp_path: Path) -> None:
    """Within the racy window a file might change again in the same tick, unseen."""
    dst = tmp_path / "dst"
    dst.mkdir()
    rounds = FileRounds(src, racy_window_ns=3_600 * 10**9)
    _, apply = _vanishing(src, dst)
    await rounds.run(1, apply, frozen=False)
    assert {p for p, e in rounds.held.items() if e.ctime_ns == UNSETTLED} == {"d/f", "g"}
    again = await rounds.run(2, apply, frozen=False)
    assert again.files == 2
    rounds.racy_window_ns = 0
    await rounds.run(3, apply, frozen=False)
    assert (await rounds.run(4, apply, frozen=False)).files == 0


def test_local_apply_refuses_to_make_a_file(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="a file is sent, not made"):
        apply_plan(tmp_path, tmp_path, Plan(make=(Node("x", Kind.FILE, 0o644),)))
    build(tmp_path, {"l": LinkNode("x")})
    with pytest.raises(TransportError, match="is a link here"):
        apply_plan(tmp_path, tmp_path, Plan(modes=(Node("l", Kind.DIR, 0o755),)))


def test_a_one_pass_copy_of_a_tree(src: Path, tmp_path: Path) -> None:
    (src / "l").symlink_to("/etc")
    report = sync_tree(src, tmp_path / "new" / "data")
    assert (report.files, report.bytes) == (2, 6)
    assert snapshot(tmp_path / "new" / "data") == snapshot(src)
    assert (tmp_path / "new" / "data").stat().st_mode & 0o777 == 0o750
    with pytest.raises(TransportError, match="already exists on the destination"):
        sync_tree(src, tmp_path / "new" / "data")
    with pytest.raises(TransportError, match="does not exist on the source"):
        sync_tree(tmp_path / "absent", tmp_path / "other")
