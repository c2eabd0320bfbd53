"""A container someone started with plain ``runc run -d`` moves once haul adopted it.

The container's bundle was unpacked by hand from the session's busybox image into the
lab's directory (outside haul's), with no ``org.criu.config`` annotation, and runs under
a runc root of its own. ``haul adopt runc:ID`` takes it; ``haul migrate`` moves it to
host2 and back with runc's checkpoint and restore, CRIU getting haul's options through
``CRIU_CONFIG_FILE`` (docs/containers.md). After each move runc lists it on exactly one
host (where it arrived, under the agent's root), it counts on with what it wrote just
before the move, and the host it left keeps nothing of it; the bundle it was started
from stays, its owner's. runc itself manages it where it runs (list, exec, kill, delete).
A container in a network namespace haul did not make is adopted, but a move of it is
refused at the pre-flight: haul could not give it its address on another host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul.lab.hostrunc import container_ids, host_runc, left_on, plain_bundle, run_plain
from haul.lab.operator import ps, run_haul, wait_until
from haul.lab.spec import LabSpec
from haul.runtime.images import ImageRef


def _lab_image(lab: LabSpec, image: ImageRef) -> ImageRef:
    layout = lab.root_dir / "images" / "busybox"
    shutil.copytree(image.layout, layout)
    return ImageRef(layout, image.tag)


def _count(lab: LabSpec, host: str, cid: str, root: Path | None = None) -> int:
    done = host_runc(lab, host, "exec", cid, "/bin/cat", "/data/count", root=root)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip() or 0)


def _counting_on(lab: LabSpec, host: str, above: int) -> int:
    return wait_until("a1 counting on", lambda: (n := _count(lab, host, "a1")) > above and n)


@pytest.fixture
def plain_root(lab_with_agents: tuple[LabSpec, Path]) -> Iterator[Path]:
    """The runc root the plain containers run under: whatever is still there at the end
    is deleted (the lab's removal deletes only what its agents' roots hold)."""
    lab = lab_with_agents[0]
    root = lab.root_dir / "plain" / "runc"
    yield root
    for cid in container_ids(lab, "host1", root):
        host_runc(lab, "host1", "delete", "--force", cid, root=root)


@pytest.mark.root
def test_an_adopted_plain_runc_container_moves_there_and_back_and_runc_still_manages_it(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef, plain_root: Path
) -> None:
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    bundle = plain_bundle(lab, "host1", image, "a1")
    assert "org.criu.config" not in json.loads((bundle / "config.json").read_text()).get(
        "annotations", {}
    )
    run_plain(lab, "host1", bundle, "a1", plain_root)
    adopted = run_haul(
        inventory, "adopt", "runc:a1", "--runc-root", str(plain_root), "--host", "host1"
    )
    assert adopted.returncode == 0, adopted.stderr
    count = wait_until("a1 counting", lambda: (n := _count(lab, "host1", "a1", plain_root)) and n)
    roots: dict[str, Path | None] = {"host1": plain_root, "host2": None}
    for src, dst, marker in (("host1", "host2", "there"), ("host2", "host1", "back")):
        script = f"echo {marker} > /data/m"
        wrote = host_runc(lab, src, "exec", "a1", "/bin/sh", "-c", script, root=roots[src])
        assert wrote.returncode == 0, wrote.stderr
        moved = run_haul(inventory, "migrate", "a1", "--to", dst, "-o", "json", timeout_s=180)
        assert moved.returncode == 0, moved.stderr + moved.stdout
        result = json.loads(moved.stdout)
        assert result["outcome"] == "done", result["reason"]
        print(f"adopted a1 {src} -> {dst}: {result['strategy']}, {result['total_ms']} ms")
        # where it arrived, runc lists it under the agent's root; the other host has none
        roots[dst] = None
        assert container_ids(lab, dst) == ["a1"]
        assert container_ids(lab, src) == [] and container_ids(lab, src, plain_root) == []
        assert [(r["host"], r["name"], r["runtime"]) for r in ps(inventory)] == [
            (dst, "a1", "runc")
        ]
        count = _counting_on(lab, dst, count)
        seen = host_runc(lab, dst, "exec", "a1", "/bin/cat", "/data/m")
        assert seen.stdout.strip() == marker
        assert left_on(lab, src, "a1", plain_root) == []
    # the bundle it was started from is its owner's: still there, as it was
    assert (bundle / "config.json").is_file() and (bundle / "rootfs" / "bin" / "busybox").exists()

    # runc manages it where it runs: list, kill, delete
    (listed,) = json.loads(host_runc(lab, "host1", "list", "--format", "json").stdout)
    assert (listed["id"], listed["status"]) == ("a1", "running")
    assert host_runc(lab, "host1", "kill", "a1", "KILL").returncode == 0
    wait_until(
        "a1 stopped",
        lambda: json.loads(host_runc(lab, "host1", "state", "a1").stdout)["status"] == "stopped",
    )
    assert host_runc(lab, "host1", "delete", "a1").returncode == 0
    assert container_ids(lab, "host1") == []
    assert ps(inventory) == []  # haul sees it gone
    assert run_haul(inventory, "kill", "a1").returncode == 0  # and forgets it
    assert left_on(lab, "host1", "a1") == []


@pytest.mark.root
def test_an_adopted_container_in_a_namespace_haul_did_not_make_is_refused_at_the_preflight(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef, plain_root: Path
) -> None:
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    bundle = plain_bundle(lab, "host1", image, "n1")
    netns = lab.root_dir / "plain" / "n1.netns"
    netns.touch()
    enter = lab.member("host1").ns.prefix()
    subprocess.run([*enter, "unshare", f"--net={netns}", "true"], check=True)
    try:
        config = json.loads((bundle / "config.json").read_text())
        config["linux"]["namespaces"].append({"type": "network", "path": str(netns)})
        (bundle / "config.json").write_text(json.dumps(config))
        run_plain(lab, "host1", bundle, "n1", plain_root)
        adopted = run_haul(
            inventory, "adopt", "runc:n1", "--runc-root", str(plain_root), "--host", "host1"
        )
        assert adopted.returncode == 0, adopted.stderr
        count = wait_until("n1 counting", lambda: _count(lab, "host1", "n1", plain_root))
        says = "has a network namespace haul did not make (it was adopted)"
        for verb in ("check", "migrate"):
            done = run_haul(inventory, verb, "n1", "--to", "host2")
            assert done.returncode == 3, done.stdout + done.stderr
            (line,) = done.stderr.strip().splitlines()
            assert line.startswith("haul: refused: ") and says in line, line
        assert container_ids(lab, "host1", plain_root) == ["n1"]
        assert container_ids(lab, "host2") == [] and left_on(lab, "host2", "n1") == []
        assert wait_until("n1 counting on", lambda: _count(lab, "host1", "n1", plain_root) > count)
        assert run_haul(inventory, "kill", "n1").returncode == 0
        assert container_ids(lab, "host1", plain_root) == []
    finally:
        host_runc(lab, "host1", "delete", "--force", "n1", root=plain_root)
        subprocess.run([*enter, "umount", str(netns)], capture_output=True)
        netns.unlink(missing_ok=True)
