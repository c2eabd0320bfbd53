"""runc containers as workloads of lab hosts' agents: run, list, exec, kill, adopt, refuse.

Real runc, real umoci, real agents; the image is the session's busybox layout (its
command counts into /data/count ten times a second), copied into the lab's directory,
where the lab's agents allow images and bundles. Each test checks that what a container
made (its runc state, overlay mount, network namespace, veth, cgroup, directory) is gone
when it is removed; the lab's removal deletes any container a failing test left.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul.lab.agents import lab_cgroup_parent, restart_agent
from haul.lab.hostrunc import container_ids, host_runc, host_runc_argv
from haul.lab.operator import agent_pid, ps, run_haul, wait_until
from haul.lab.spec import LabSpec
from haul.net.spec import host_ifname
from haul.runtime.bundle import cgroup_mounts
from haul.runtime.images import ImageRef, blob_path, resolve

ADDRESS = "10.77.0.120"


def _lab_image(lab: LabSpec, image: ImageRef, name: str = "busybox") -> ImageRef:
    """The session's image, copied into the lab's directory (where agents may read it)."""
    layout = lab.root_dir / "images" / name
    shutil.copytree(image.layout, layout)
    return ImageRef(layout, image.tag)


def _agent_dir(lab: LabSpec, host: str) -> Path:
    """The agent's state directory as this process sees it."""
    return lab.member(host).data_backing / "agent"


def _agent_mounts(lab: LabSpec, host: str) -> list[str]:
    """Mount points in the host's mount namespace (the agent's) under its state dir."""
    state = str(lab.data_path / "agent") + "/"
    text = Path(f"/proc/{agent_pid(lab, host)}/mountinfo").read_text()
    return [line.split()[4] for line in text.splitlines() if line.split()[4].startswith(state)]


def _cgroups(lab: LabSpec, host: str, name: str) -> list[Path]:
    parent = lab_cgroup_parent(lab, host).strip("/")
    return [m / parent / name for m in cgroup_mounts() if (m / parent / name).exists()]


def _links(lab: LabSpec, host: str) -> str:
    return subprocess.run(
        ["ip", "-n", lab.member(host).netns, "-br", "link"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _leftovers(lab: LabSpec, host: str, name: str) -> list[str]:
    """What of container ``name`` is still on ``host``."""
    left = [f"mount {m}" for m in _agent_mounts(lab, host) if f"/containers/{name}/" in m]
    if (_agent_dir(lab, host) / "containers" / name).exists():
        left.append("its directory")
    if name in container_ids(lab, host):
        left.append("runc state")
    left += [f"cgroup {c}" for c in _cgroups(lab, host, name)]
    if host_ifname(name) in _links(lab, host):
        left.append("its veth")
    return left


def _exec_count(lab: LabSpec, host: str, name: str) -> int:
    done = host_runc(lab, host, "exec", name, "/bin/cat", "/data/count")
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def cleanup() -> Iterator[list[tuple[LabSpec, str, str, Path | None]]]:
    """Containers a test starts outside haul: (lab, host, ID, runc root); deleted at the
    end even when the test fails (the lab's removal covers only the agents' root)."""
    started: list[tuple[LabSpec, str, str, Path | None]] = []
    yield started
    for lab, host, cid, root in started:
        host_runc(lab, host, "delete", "--force", cid, root=root)


@pytest.mark.root
def test_a_container_from_an_image_runs_is_listed_and_leaves_nothing(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef
) -> None:
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    started = time.monotonic()
    done = run_haul(
        inventory,
        "run",
        "--name",
        "c1",
        "--host",
        "host1",
        "--runtime",
        "runc",
        "--image",
        f"oci:{image.layout}",
        "-o",
        "json",
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert (view["runtime"], view["image"], view["status"]) == ("runc", str(image), "running")
    print(f"haul run --runtime runc --image (first, unpack included): {took:.3f} s")

    # haul ps shows it with its runtime and image; runc lists it under host1's root
    (row,) = [r for r in ps(inventory) if r["name"] == "c1"]
    assert (row["host"], row["runtime"], row["image"]) == ("host1", "runc", str(image))
    listed = json.loads(host_runc(lab, "host1", "list", "--format", "json").stdout)
    assert [(c["id"], c["status"], c["pid"]) for c in listed] == [
        ("c1", "running", row["root_pid"])
    ]
    text = run_haul(inventory, "ps", "--host", "host1")
    assert "runc" in text.stdout and "busybox" in text.stdout, text.stdout

    # it counts (runc exec reads its /data/count), and its writes land in the upper dir only
    first = wait_until("c1 counting", lambda: _exec_count(lab, "host1", "c1") > 2, 10.0)
    assert first
    later = wait_until(
        "c1 counting on", lambda: (n := _exec_count(lab, "host1", "c1")) > 5 and n, 10.0
    )
    agent = _agent_dir(lab, "host1")
    upper = agent / "containers" / "c1" / "upper"
    assert int((upper / "data" / "count").read_text()) >= later
    digest = resolve(image).digest
    lower = agent / "images" / digest.replace(":", "-") / "rootfs"
    assert (lower / "bin" / "busybox").is_file()
    assert list((lower / "data").iterdir()) == []  # the image's rootfs is untouched
    assert [m for m in _agent_mounts(lab, "host1") if m.endswith("/containers/c1/bundle/rootfs")]
    assert _cgroups(lab, "host1", "c1")  # its own cgroup, under the lab host's parent
    config = json.loads((agent / "containers" / "c1" / "bundle" / "config.json").read_text())
    assert config["process"]["terminal"] is False
    assert "network" not in [ns["type"] for ns in config["linux"]["namespaces"]]

    # runc's paused is the workload's paused
    assert host_runc(lab, "host1", "pause", "c1").returncode == 0
    assert [r["status"] for r in ps(inventory)] == ["paused"]
    assert host_runc(lab, "host1", "resume", "c1").returncode == 0
    assert [r["status"] for r in ps(inventory)] == ["running"]

    # a second container of the same image starts from the cache
    started = time.monotonic()
    second = run_haul(
        inventory, "run", "--name", "c2", "--host", "host1", "--runtime", "runc",
        "--image", str(image), "--", "/bin/sleep", "1000",
    )  # fmt: skip
    print(f"haul run --runtime runc --image (cached image): {time.monotonic() - started:.3f} s")
    assert second.returncode == 0, second.stderr
    assert [(r["name"], r["argv"]) for r in ps(inventory)] == [
        ("c1", list(config["process"]["args"])),
        ("c2", ["/bin/sleep", "1000"]),
    ]
    assert len(list((agent / "images").iterdir())) == 1

    log = (lab.member("host1").workdir / "agent.log").read_text().splitlines()
    print(*[line for line in log if "started container" in line], sep="\n")
    for name in ("c1", "c2"):
        killed = run_haul(inventory, "kill", name)
        assert killed.returncode == 0, killed.stderr
        assert _leftovers(lab, "host1", name) == []
    assert ps(inventory) == []
    assert container_ids(lab, "host1") == []
    parent = lab_cgroup_parent(lab, "host1").strip("/")
    assert [m for m in cgroup_mounts() if (m / parent).exists()] == []


@pytest.mark.root
def test_a_container_with_its_own_address_answers_from_another_host(
    lab_with_agents: tuple[LabSpec, Path],
) -> None:
    lab, inventory = lab_with_agents
    # the demo's way to an image: haul lab image builds one in the lab's directory
    built = run_haul(inventory, "lab", "image", "--prefix", lab.prefix)
    assert built.returncode == 0, built.stderr
    image = ImageRef.parse(built.stdout.strip())
    assert image.layout.is_relative_to(lab.root_dir) and resolve(image).layer_digests
    done = run_haul(
        inventory, "run", "--name", "web", "--host", "host1", "--runtime", "runc",
        "--image", str(image), "--ip", f"{ADDRESS}/24", "-o", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["address"] == f"{ADDRESS}/24"
    ping = ["ip", "netns", "exec", lab.member("host2").netns, "ping", "-c", "1", "-W", "2"]
    answered = subprocess.run([*ping, ADDRESS], capture_output=True, text=True)
    assert answered.returncode == 0, answered.stdout + answered.stderr
    agent = _agent_dir(lab, "host1")
    netns = lab.data_path / "agent" / "containers" / "web" / "netns"
    assert str(netns) in _agent_mounts(lab, "host1")
    config = json.loads((agent / "containers" / "web" / "bundle" / "config.json").read_text())
    assert {"type": "network", "path": str(netns)} in config["linux"]["namespaces"]
    criu_conf = (agent / "containers" / "web" / "criu.conf").read_text().splitlines()
    assert criu_conf == ["network-lock nftables", "tcp-established"]
    assert config["annotations"]["org.criu.config"] == str(netns.with_name("criu.conf"))
    # the container is in that namespace: its eth0 holds the address
    inside = host_runc(lab, "host1", "exec", "web", "/bin/ip", "-o", "addr", "show", "eth0")
    assert f"inet {ADDRESS}/24" in inside.stdout, inside.stdout + inside.stderr
    assert host_ifname("web") in _links(lab, "host1")

    killed = run_haul(inventory, "kill", "web")
    assert killed.returncode == 0, killed.stderr
    assert _leftovers(lab, "host1", "web") == []
    assert subprocess.run([*ping, ADDRESS], capture_output=True).returncode != 0


def _plain_bundle(lab: LabSpec, image: ImageRef, name: str) -> Path:
    """A bundle unpacked by hand from ``image``, as someone would for ``runc run``: no
    terminal, the host's network, a cgroup under the lab host's parent."""
    bundle = lab.root_dir / "plain" / name
    bundle.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["umoci", "unpack", "--image", image.umoci_image, str(bundle)],
        check=True,
        capture_output=True,
    )
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["linux"]["namespaces"] = [
        ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"
    ]
    config["linux"]["cgroupsPath"] = f"{lab_cgroup_parent(lab, 'host1')}/{name}"
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def _runc_run(lab: LabSpec, bundle: Path, cid: str, root: Path, stdout: Path | None) -> None:
    """``runc run -d`` in host1, its stdout ``stdout`` (a file of the host) or /dev/null."""
    argv = host_runc_argv(
        lab, lab.member("host1"), "run", "-d", "--bundle", str(bundle), cid, root=root
    )
    with open(stdout or "/dev/null", "ab") as out:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL, timeout=30
        )
    assert done.returncode == 0


@pytest.mark.root
def test_a_container_from_a_bundle_and_from_a_rootfs_uses_them_as_they_are(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef
) -> None:
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    given = _plain_bundle(lab, image, "given")
    bare = _plain_bundle(lab, image, "bare") / "rootfs"
    runc = ("--host", "host1", "--runtime", "runc")
    done = run_haul(inventory, "run", "--name", "b1", *runc, "--bundle", str(given))
    assert done.returncode == 0, done.stderr
    script = "echo hello > /data/hello; exec /bin/sleep 1000"
    done = run_haul(
        inventory,
        "run",
        "--name",
        "r1",
        *runc,
        "--rootfs",
        str(bare),
        "--",
        "/bin/sh",
        "-c",
        script,
    )
    assert done.returncode == 0, done.stderr
    assert [(r["name"], r["status"], r["image"]) for r in ps(inventory)] == [
        ("b1", "running", None),
        ("r1", "running", None),
    ]
    # the given rootfs is written to as it is (no overlay); the counter counts there
    wait_until("b1 counting", lambda: (given / "rootfs" / "data" / "count").exists(), 10.0)
    wait_until("r1 writing", lambda: (bare / "data" / "hello").exists(), 10.0)
    assert [m for m in _agent_mounts(lab, "host1") if "/containers/" in m] == []
    agent = _agent_dir(lab, "host1")
    config = json.loads((agent / "containers" / "b1" / "bundle" / "config.json").read_text())
    assert config["root"]["path"] == str(given / "rootfs")
    assert config["linux"]["cgroupsPath"] == f"{lab_cgroup_parent(lab, 'host1')}/b1"
    # runc's default configuration for a bare rootfs: the host's network, writable
    config = json.loads((agent / "containers" / "r1" / "bundle" / "config.json").read_text())
    assert "network" not in [ns["type"] for ns in config["linux"]["namespaces"]]
    assert config["root"] == {"path": str(bare), "readonly": False}
    # the containers outlive their agent; a restarted one knows them from its registry
    asyncio.run(restart_agent(lab, "host1"))
    assert [(r["name"], r["status"]) for r in ps(inventory)] == [
        ("b1", "running"),
        ("r1", "running"),
    ]
    for name in ("b1", "r1"):
        killed = run_haul(inventory, "kill", name)
        assert killed.returncode == 0, killed.stderr
        assert _leftovers(lab, "host1", name) == []
    assert (given / "config.json").is_file() and (bare / "bin" / "busybox").is_file()


@pytest.mark.root
def test_adopt_takes_a_plain_runc_container_and_refuses_one_it_could_not_move(
    lab_with_agents: tuple[LabSpec, Path],
    busybox_image: ImageRef,
    cleanup: list[tuple[LabSpec, str, str, Path | None]],
) -> None:
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    root = lab.root_dir / "plain" / "runc"
    good, bad = _plain_bundle(lab, image, "a1"), _plain_bundle(lab, image, "a2")
    cleanup += [(lab, "host1", "a1", root), (lab, "host1", "a2", root)]
    _runc_run(lab, good, "a1", root, None)
    _runc_run(lab, bad, "a2", root, lab.root_dir / "plain" / "a2.out")

    done = run_haul(
        inventory, "adopt", "runc:a1", "--runc-root", str(root), "--host", "host1", "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert (view["name"], view["runtime"], view["image"], view["status"]) == (
        "a1",
        "runc",
        None,
        "running",
    )
    assert [r["name"] for r in ps(inventory)] == ["a1"]

    refused = run_haul(inventory, "adopt", "runc:a2", "--runc-root", str(root), "--host", "host1")
    line = _one_line_error(refused)
    assert "a2 cannot be adopted" in line and "its stdout is" in line, line
    assert "a file of the host" in line, line
    assert [r["name"] for r in ps(inventory)] == ["a1"]  # nothing changed
    assert sorted(container_ids(lab, "host1", root)) == ["a1", "a2"]

    killed = run_haul(inventory, "kill", "a1")
    assert killed.returncode == 0, killed.stderr
    assert container_ids(lab, "host1", root) == ["a2"]
    assert _cgroups(lab, "host1", "a1") == []
    assert (good / "config.json").is_file()  # the bundle is its owner's, not haul's
    assert ps(inventory) == []


@pytest.mark.root
def test_bad_input_is_one_line_and_changes_nothing(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef, tmp_path: Path
) -> None:
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    broken = _lab_image(lab, busybox_image, "broken")
    for layer in resolve(broken).layer_digests:
        blob_path(broken.layout, layer).write_bytes(b"not a layer")
    outside = tmp_path / "bundle"
    shutil.copytree(_plain_bundle(lab, image, "outside"), outside, symlinks=True)
    runc = ("--name", "x", "--host", "host1", "--runtime", "runc")

    unknown = run_haul(inventory, "adopt", "runc:nosuch", "--host", "host1")
    assert "no container 'nosuch' under runc root /run/runc" in _one_line_error(unknown)

    not_allowed = run_haul(inventory, "run", *runc, "--bundle", str(outside))
    line = _one_line_error(not_allowed)
    assert f"bundle {outside} is outside the directories this agent allows" in line, line

    unpack = run_haul(inventory, "run", *runc, "--image", str(broken))
    line = _one_line_error(unpack)
    assert f"image {broken} does not unpack: " in line and "unpack rootfs" in line, line

    both = run_haul(inventory, "run", *runc, "--image", str(image), "--bundle", str(outside))
    assert both.returncode == 2
    assert "not --image and --bundle" in _one_line_error(both)

    assert ps(inventory) == []
    agent = _agent_dir(lab, "host1")
    assert not (agent / "containers").exists() or list((agent / "containers").iterdir()) == []
    assert not (agent / "images").exists() or list((agent / "images").iterdir()) == []
    assert _agent_mounts(lab, "host1") == []
    assert container_ids(lab, "host1") == []
    assert _cgroups(lab, "host1", "x") == []
