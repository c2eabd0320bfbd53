"""A workload's data directory through real agents in a lab: its files go in rounds while
it runs, and only what changed since goes in the frozen window."""

from __future__ import annotations

import json
import time
from pathlib import Path

from haul.lab.operator import count, ps, run_counter, run_haul, state_file, wait_count_above
from haul.lab.spec import LabSpec
from haul.transport.fakes import DirNode, FifoNode, FileNode, LinkNode, Tree, build, snapshot

#: 600 files of 8 KiB (4.7 MiB) in 30 directories, a link, a FIFO, an empty directory
FILES = 600
SIZE = 8192
TREE: Tree = {
    "store": DirNode(
        {
            f"d{d:02}": DirNode(
                {f"f{i:03}": FileNode(bytes([i % 251]) * SIZE, 0o640) for i in range(20)}
            )
            for d in range(FILES // 20)
        },
        0o750,
    ),
    "current": LinkNode("store/d00/f000"),
    "pipe": FifoNode(0o600),
    "spool": DirNode(mode=0o700),
}


def _data(lab: LabSpec, host: str, name: str) -> Path:
    return state_file(lab, host, name).parent


def test_files_go_in_rounds_and_the_frozen_window_sends_what_changed(
    lab_with_agents: tuple[LabSpec, Path], tmp_path: Path
) -> None:
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "files1", mem_mib=16)
    build(_data(lab, "host1", "files1"), TREE)
    time.sleep(1.2)  # older than a round's racy window (haul/transport/rounds.py)
    before = count(lab, "host1", "files1")
    done = run_haul(
        inventory, "migrate", "files1", "--to", "host2", "--strategy", "stop-and-copy", "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "done", result
    # the full pass went while the counter ran; then a round of what it changed
    # (its state file), small enough to stop (haul/engine/policy.py)
    assert result["files_rounds"] >= 2
    assert result["files_presync_bytes"] >= FILES * SIZE
    # frozen: the images and the counter's latest state, not the 4.7 MiB of files
    assert result["transfer_bytes"] < FILES * SIZE // 4
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host2", "files1")]
    arrived = snapshot(_data(lab, "host2", "files1"))
    expected = {
        p: seen
        for p, seen in arrived.items()
        if p.split("/")[0] in TREE  # the counter's own files aside
    }
    assert len(expected) == FILES + 30 + 4
    (tmp_path / "expected").mkdir()
    build(tmp_path / "expected", TREE)
    assert expected == snapshot(tmp_path / "expected")
    assert wait_count_above(lab, "host2", "files1", before) > before
