"""``haul migrate`` moves a runc container between lab hosts through their agents.

Real runc, CRIU, umoci and agents. The container runs the session's busybox image (its
command counts into /data/count), with an address of its own that moves with it. It goes
host1 -> host2 -> host1 with each strategy the kernel allows: after each move runc lists
it on exactly one host, under the same ID; ``runc exec`` works there and the count goes on
from where it was; a file written just before the move is there; its address answers
from the other host; the host it left keeps nothing of it (runc state, mounts,
namespace, cgroup, directory). The image's blobs cross only to a host that lacks them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from haul.lab.agents import agent_log_path
from haul.lab.hostrunc import container_ids, container_leftovers, host_runc
from haul.lab.operator import ps, run_haul, wait_until
from haul.lab.spec import LabSpec
from haul.runtime.images import ImageRef

ADDRESS = "10.77.0.122"
NAME = "mc1"


def _lab_image(lab: LabSpec, image: ImageRef) -> ImageRef:
    layout = lab.root_dir / "images" / "busybox"
    shutil.copytree(image.layout, layout)
    return ImageRef(layout, image.tag)


def _count(lab: LabSpec, host: str) -> int:
    done = host_runc(lab, host, "exec", NAME, "/bin/cat", "/data/count")
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip() or 0)


def _counting_on(lab: LabSpec, host: str, above: int) -> int:
    return wait_until(f"{NAME} counting on {host}", lambda: (n := _count(lab, host)) > above and n)


def _paused_again(lab: LabSpec, host: str) -> list[tuple[str, str]]:
    """(level, message) of each time ``host``'s agent paused a container again after
    runc's CRIU had thawed it (haul/source/runcsource.py)."""
    said = []
    for line in agent_log_path(lab.member(host)).read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("logger") == "haul.source.runcsource" and "paused it again" in str(
            entry.get("message")
        ):
            said.append((str(entry["level"]), str(entry["message"])))
    return said


def _pings(lab: LabSpec, host: str) -> bool:
    ping = ["ip", "netns", "exec", lab.member(host).netns, "ping", "-c", "1", "-W", "2", ADDRESS]
    return subprocess.run(ping, capture_output=True).returncode == 0


@pytest.mark.parametrize("strategy", ["stop-and-copy", "post-copy"])
def test_a_runc_container_moves_there_and_back_through_the_agents(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef, strategy: str
) -> None:
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    done = run_haul(
        inventory,
        "run",
        "--name",
        NAME,
        "--host",
        "host1",
        "--runtime",
        "runc",
        "--image",
        f"oci:{image.layout}",
        "--ip",
        f"{ADDRESS}/24",
        "-o",
        "json",
    )
    assert done.returncode == 0, done.stderr
    count = _counting_on(lab, "host1", 0)
    blobs_dir = lab.member("host2").data_backing / "agent" / "images" / "layouts"
    for src, dst, marker in (("host1", "host2", "there"), ("host2", "host1", "back")):
        written = host_runc(lab, src, "exec", NAME, "/bin/sh", "-c", f"echo {marker} > /data/m")
        assert written.returncode == 0, written.stderr
        moved = run_haul(
            inventory,
            "migrate",
            NAME,
            "--to",
            dst,
            "--strategy",
            strategy,
            "-o",
            "json",
            timeout_s=180,
        )
        assert moved.returncode == 0, moved.stderr + moved.stdout
        result = json.loads(moved.stdout)
        assert result["outcome"] == "done", result["reason"]
        # runc lists it on exactly one host, under the same ID
        assert container_ids(lab, dst) == [NAME]
        assert container_ids(lab, src) == []
        rows = [(r["host"], r["name"], r["runtime"]) for r in ps(inventory)]
        assert rows == [(dst, NAME, "runc")]
        # it goes on from where it was, with what it wrote just before the move
        count = _counting_on(lab, dst, count)
        seen = host_runc(lab, dst, "exec", NAME, "/bin/cat", "/data/m")
        assert seen.stdout.strip() == marker
        assert _pings(lab, src), f"its address answers from {src}, where it is not"
        assert container_leftovers(lab, src, NAME) == []
        # a post-copy dump serves its pages with the cgroup thawed, and the container
        # is paused again: the normal path, not a checkpoint that ended part way
        serving = f"container {NAME}: its dump is written and its CRIU serves the pages"
        assert _paused_again(lab, src) == (
            [("info", f"{serving}; paused it again")] if strategy == "post-copy" else []
        ), "paused again only while its CRIU serves pages, and said so as info"
    assert list(blobs_dir.iterdir()), "host2 lacked the image: its blobs came"
    killed = run_haul(inventory, "kill", NAME, "--host", "host1")
    assert killed.returncode == 0, killed.stderr
    assert container_ids(lab, "host1") == []
