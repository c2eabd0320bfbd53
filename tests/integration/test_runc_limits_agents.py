"""A container's cgroup limits come along when it moves.

``haul run --runtime runc --memory --cpus --pids-limit`` writes them into the
container's ``linux.resources``; the configuration moves with the container, and runc's
restore sets them on the cgroup the destination's agent gives it (under that agent's
cgroup parent). Read from the cgroup v1 files on each host: memory.limit_in_bytes,
cpu.cfs_quota_us and cpu.cfs_period_us, pids.max, with the container's init in that
cgroup; the host it left keeps no cgroup of it. There (stop-and-copy) and back
(post-copy); a bad limit is refused in one line before any agent is asked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from haul.lab.agents import lab_cgroup_parent
from haul.lab.hostrunc import cgroup_value, container_ids, host_runc, left_on
from haul.lab.operator import run_haul, wait_until
from haul.lab.spec import LabSpec
from haul.runtime.images import ImageRef

NAME = "lim1"
#: what the cgroup files say for --memory 48M --cpus 0.5 --pids-limit 24
LIMITS = {
    ("memory", "memory.limit_in_bytes"): str(48 << 20),
    ("cpu", "cpu.cfs_quota_us"): "50000",
    ("cpu", "cpu.cfs_period_us"): "100000",
    ("pids", "pids.max"): "24",
}


def _count(lab: LabSpec, host: str) -> int:
    done = host_runc(lab, host, "exec", NAME, "/bin/cat", "/data/count")
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip() or 0)


def _limits_on(lab: LabSpec, host: str) -> dict[tuple[str, str], str]:
    """The container's limits as its cgroup on ``host`` says them, after checking that
    its init is in that cgroup."""
    state = json.loads(host_runc(lab, host, "state", NAME).stdout)
    cgroups = Path(f"/proc/{state['pid']}/cgroup").read_text().splitlines()
    own = f"{lab_cgroup_parent(lab, host)}/{NAME}"
    for controller in ("memory", "cpu", "pids"):
        (line,) = [c for c in cgroups if controller in c.split(":")[1].split(",")]
        assert line.split(":")[2] == own, line
    return {key: cgroup_value(lab, host, NAME, *key) for key in LIMITS}


@pytest.mark.root
def test_a_containers_limits_are_set_again_where_it_arrives(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef
) -> None:
    lab, inventory = lab_with_agents
    layout = lab.root_dir / "images" / "busybox"
    shutil.copytree(busybox_image.layout, layout)
    runc = ("--name", NAME, "--host", "host1", "--runtime", "runc", "--image", f"oci:{layout}")
    bad = run_haul(inventory, "run", *runc, "--memory", "lots")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--memory 'lots'" in bad.stderr
    tiny = run_haul(inventory, "run", *runc, "--memory", "1M")
    assert tiny.returncode == 2 and "memory_bytes" in tiny.stderr, tiny.stderr
    assert container_ids(lab, "host1") == []

    done = run_haul(
        inventory, "run", *runc, "--memory", "48M", "--cpus", "0.5", "--pids-limit", "24"
    )
    assert done.returncode == 0, done.stderr
    assert _limits_on(lab, "host1") == LIMITS
    count = wait_until("counting", lambda: _count(lab, "host1"))
    for src, dst, strategy in (
        ("host1", "host2", "stop-and-copy"),
        ("host2", "host1", "post-copy"),
    ):
        moved = run_haul(
            inventory, "migrate", NAME, "--to", dst, "--strategy", strategy, "-o", "json",
            timeout_s=180,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr + moved.stdout
        result = json.loads(moved.stdout)
        assert result["outcome"] == "done", result["reason"]
        print(f"{NAME} {src} -> {dst} ({strategy}): {result['total_ms']} ms")
        assert (container_ids(lab, src), container_ids(lab, dst)) == ([], [NAME])
        assert _limits_on(lab, dst) == LIMITS
        assert left_on(lab, src, NAME) == []  # no cgroup of it left there either
        count = wait_until("counting on", lambda h=dst, c=count: (n := _count(lab, h)) > c and n)
    killed = run_haul(inventory, "kill", NAME)
    assert killed.returncode == 0, killed.stderr
    assert left_on(lab, "host1", NAME) == []
