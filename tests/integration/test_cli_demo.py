"""The README's main job, `haul demo`, and `haul criu info`, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _haul(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "haul", *args], capture_output=True,
                          text=True, timeout=300)


def test_demo_moves_the_counter_there_and_back_and_cleans_up() -> None:
    done = _haul("demo", "--mem-mib", "16", "-o", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verdict"].startswith("PASS")
    hops = result["hops"]
    assert [(h["source"], h["dest"]) for h in hops] == [("host1", "host2"), ("host2", "host1")]
    for h in hops:
        assert h["count_after"] > h["count_before"]
        assert h["report"]["bytes_copied"] >= 16 << 20
        assert h["report"]["frozen_s"] > 0
    assert hops[1]["count_before"] >= hops[0]["count_after"], "the count never went back"
    assert int(result["verdict"].split()[1]) >= hops[1]["count_after"]
    left = [n for n in os.listdir("/run/netns") if n.startswith("demo-")]
    assert left == []


def test_criu_info_reports_a_working_criu() -> None:
    done = _haul("criu", "info", "-o", "json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["check_ok"] is True
    assert (info["version"]["major"], info["version"]["minor"]) >= (4, 1)
    assert set(info["features"]) == {"mem_track", "lazy_pages", "pidfd_store"}
