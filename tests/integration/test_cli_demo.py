"""The README's main job, `haul demo`, and `haul criu info`, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haul.lab.agents import lab_cgroup_parent
from haul.lab.spec import LabSpec
from haul.runtime.bundle import cgroup_mounts


def _haul(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haul", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("runtime", "strategy", "mem_mib"),
    [
        ("process", "stop-and-copy", 64),
        ("process", "post-copy", 64),
        # in a runc container: the busybox image, the host's Python mounted read-only
        ("runc", "stop-and-copy", 32),
    ],
)
def test_demo_moves_the_web_service_under_load_with_no_failed_request(
    runtime: str, strategy: str, mem_mib: int, tmp_path: Path
) -> None:
    """HTTP through HAProxy while the service moves A->B->A, its address following it."""
    done = _haul(
        "demo",
        "--runtime",
        runtime,
        "--mem-mib",
        str(mem_mib),
        "--strategy",
        strategy,
        "--out",
        str(tmp_path),
        "-o",
        "json",
    )
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(done.stdout)
    # the agent where it ended ran it so (a container's verdict is read from its layer)
    assert result["runtime"] == runtime
    moves = result["moves"]
    assert [(m["source"], m["dest"], m["outcome"]) for m in moves] == [
        ("host1", "host2", "done"),
        ("host2", "host1", "done"),
    ]
    assert all(m["strategy"] == strategy and m["frozen_ms"] > 0 for m in moves)
    load = result["load"]
    print(
        runtime,
        strategy,
        "largest gap ms:",
        load["largest_gap_ms"],
        "frozen ms:",
        [m["frozen_ms"] for m in moves],
    )
    assert load["failed"] == 0 and load["ok"] == load["requests"] > 100
    # the service counted exactly the requests the client saw answered, and its memory
    # is the seed's after two moves
    assert result["check"].startswith("PASS")
    assert result["verdict"].startswith("PASS") and result["served"] == load["ok"]
    assert (tmp_path / "haul-demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "haul-demo.tsv").read_text().splitlines()
    assert len(rows) == load["requests"] + 1  # a header, then one line per request
    left = [n for n in os.listdir("/run/netns") if n.startswith("demo-")]
    assert left == []
    lab = LabSpec(prefix="demo")
    assert not lab.root_dir.exists()  # runc roots, layers, image, the copy of web.py: gone
    parents = [lab_cgroup_parent(lab, h).strip("/") for h in ("host1", "host2")]
    assert [m / p for m in cgroup_mounts() for p in parents if (m / p).exists()] == []


def test_criu_info_reports_a_working_criu() -> None:
    done = _haul("criu", "info", "-o", "json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["check_ok"] is True
    assert (info["version"]["major"], info["version"]["minor"]) >= (4, 1)
    assert set(info["features"]) == {"mem_track", "lazy_pages", "pidfd_store"}
