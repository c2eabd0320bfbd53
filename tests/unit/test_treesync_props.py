"""Properties of the workload's file rounds, on random trees and random changes (files,
directories, empty ones too, symbolic links, FIFOs and sockets' files, with set-id bits
and, as root, other owners, overlay whiteouts and opaque directories):

- the plan between two scans, applied to a copy of the old tree, gives the new tree;
- rounds through the lab's transport (haul/transport/local.py) leave the destination
  equal to the source after the frozen round, whatever changed in between.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haul.transport.fakes import (
    ME,
    DirNode,
    FifoNode,
    FileNode,
    LinkNode,
    SocketNode,
    Tree,
    TreeNode,
    WhiteoutNode,
    build,
    morph,
    snapshot,
)
from haul.transport.local import LocalTransport
from haul.transport.treeapply import apply_plan
from haul.transport.treeplan import diff
from haul.transport.treescan import scan

#: few names, so that later trees reuse them with other kinds and contents
NAMES = st.sampled_from(["a", "b", "c", "d.txt"])
#: the owner keeps rw (rwx for directories), so the test's own changes never need root;
#: set-id and sticky bits too (CRIU checks the whole mode of a file it reopens)
FILE_MODES = st.sampled_from([0o600, 0o644, 0o640, 0o755, 0o700, 0o4755, 0o2750, 0o1644])
DIR_MODES = st.sampled_from([0o700, 0o755, 0o750, 0o711, 0o1777, 0o2775])
#: other owners need root: without it, only this process's own
ROOT = os.geteuid() == 0
OWNERS = st.sampled_from([ME, (0, 0), (1000, 1000), (65534, 65534), (1000, 0)] if ROOT else [ME])
#: a directory's overlay mark: only root may set trusted attributes
OPAQUE = st.sampled_from([None, "y"] if ROOT else [None])
#: short contents: rewrites of the same size are frequent
DATA = st.binary(max_size=6)
TARGETS = st.sampled_from(["a", "b/c", "../up", "/etc/passwd", "d.txt"])

LEAVES: st.SearchStrategy[TreeNode] = st.one_of(
    st.builds(FileNode, DATA, FILE_MODES, OWNERS),
    st.builds(LinkNode, TARGETS, OWNERS),
    st.builds(FifoNode, FILE_MODES, OWNERS),
    st.builds(SocketNode, FILE_MODES, OWNERS),
    *([st.builds(WhiteoutNode, st.just(0), OWNERS)] if ROOT else []),
)


def _dirs(children: st.SearchStrategy[TreeNode]) -> st.SearchStrategy[TreeNode]:
    return st.builds(
        DirNode, st.dictionaries(NAMES, children, max_size=4), DIR_MODES, OWNERS, OPAQUE
    )


NODES: st.SearchStrategy[TreeNode] = st.recursive(LEAVES, _dirs, max_leaves=24)
TREES: st.SearchStrategy[Tree] = st.dictionaries(NAMES, NODES, max_size=4)


def _edited(draw: st.DrawFn, node: TreeNode) -> TreeNode:
    """``node`` changed within its kind: a file rewritten (often to the same size)."""
    owner = draw(st.one_of(st.just(node.owner), OWNERS))
    if isinstance(node, FileNode):
        size = len(node.data)
        data = draw(st.one_of(st.binary(min_size=size, max_size=size), DATA))
        return FileNode(data, draw(FILE_MODES), owner)
    if isinstance(node, DirNode):
        return DirNode(draw(changes(node.children)), draw(DIR_MODES), owner, draw(OPAQUE))
    if isinstance(node, LinkNode):
        return LinkNode(draw(TARGETS), owner)
    if isinstance(node, FifoNode):
        return FifoNode(draw(FILE_MODES), owner)
    if isinstance(node, WhiteoutNode):
        return WhiteoutNode(0, owner)
    return SocketNode(draw(FILE_MODES), owner)


@st.composite
def changes(draw: st.DrawFn, tree: Tree) -> Tree:
    """``tree`` after a workload's random changes: entries kept, edited, dropped,
    replaced by another kind, added."""
    out: dict[str, TreeNode] = {}
    for name, node in tree.items():
        what = draw(st.sampled_from(["keep", "keep", "edit", "edit", "drop", "replace"]))
        if what == "keep":
            out[name] = node
        elif what == "edit":
            out[name] = _edited(draw, node)
        elif what == "replace":
            out[name] = draw(NODES)
    for name, node in draw(st.dictionaries(NAMES, NODES, max_size=2)).items():
        out.setdefault(name, node)
    return out


@st.composite
def histories(draw: st.DrawFn, rounds: int) -> list[Tree]:
    """A tree and what the workload made of it before each of ``rounds`` more rounds."""
    trees = [draw(TREES)]
    for _ in range(rounds):
        trees.append(draw(changes(trees[-1])))
    return trees


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(trees=histories(1), same_tick=st.booleans())
def test_the_plan_applied_to_a_copy_of_the_old_tree_gives_the_new_tree(
    trees: list[Tree], same_tick: bool
) -> None:
    old, new = trees
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        src.mkdir()
        dst.mkdir()
        build(src, old)
        held = scan(src)
        apply_plan(src, dst, diff({}, held))
        assert snapshot(dst) == snapshot(src)
        morph(src, old, new, same_tick=same_tick)
        now = scan(src)
        plan = diff(held, now)
        sent = apply_plan(src, dst, plan)
        assert snapshot(dst) == snapshot(src)
        assert sent.unsent == ()
        # only what changed went: an unchanged file keeps its scan entry
        unchanged = {p for p, e in now.items() if held.get(p) == e}
        assert not unchanged & {n.path for n in plan.send}
        assert not unchanged & set(plan.remove)


@SETTINGS
@given(trees=st.integers(0, 3).flatmap(histories))
def test_rounds_leave_the_destination_equal_to_the_source(trees: list[Tree]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("src", "images-src", "images-dst"):
            (root / d).mkdir()
        src, dst = root / "src", root / "dst"
        transport = LocalTransport(
            root / "images-src", root / "images-dst", source_data=src, dest_data=dst
        )
        build(src, trees[0])

        async def rounds() -> None:
            for i, (before, after) in enumerate(itertools.pairwise(trees), 1):
                await transport.sync_files(i)
                morph(src, before, after)
            await transport.transfer_images()

        asyncio.run(rounds())
        assert snapshot(dst) == snapshot(src)
        assert transport.files is not None
        assert [f.round for f in transport.files.history] == list(range(1, len(trees) + 1))
