"""``haul migrate --shared-dir`` moves a runc container whose writable layer is on storage
both hosts see: none of its files, images or blobs cross the agents' API.

Real runc, CRIU, umoci and agents in lab hosts. The shared directory is one the lab's
hosts both see (in the lab's directory, which their agents allow). The container runs
the session's busybox image (its command counts into /data/count), with an address of
its own, its writable layer in the shared directory (``haul run --shared-dir``). It goes
host1 -> host2 -> host1 with stop-and-copy (pre-copy cannot run on this kernel, post-copy
pulls pages from the source): after each move runc lists it on exactly one host,
``runc exec`` works there, the count goes on, a file written just before the move is
there, the destination's agent received 0 bytes over its API (its own counters), the
host it left keeps nothing of it, and its layer is where it was. A failure before the
commit (a hook that fails once the copy is restored, both hosts' overlays mounted on the
layer) leaves it running on the source with its files, nothing on host2. Bad input is
refused in one line, nothing touched, and ``haul check`` (``--shared-dir`` too) refuses
and passes what ``haul migrate`` does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from haul.lab.agents import shared_dir
from haul.lab.held import pause_at_restored
from haul.lab.hostrunc import container_ids, container_leftovers, host_runc, plain_bundle
from haul.lab.operator import (
    incoming,
    ps,
    received_bytes,
    run_container,
    run_haul,
    wait_until,
)
from haul.lab.spec import LabSpec
from haul.runtime.images import ImageRef

ADDRESS = "10.77.0.124"
NAME = "sc1"


def _lab_image(lab: LabSpec, image: ImageRef) -> ImageRef:
    layout = lab.root_dir / "images" / "busybox"
    shutil.copytree(image.layout, layout)
    return ImageRef(layout, image.tag)


def _shared(lab: LabSpec) -> Path:
    """The lab's shared directory: every host sees it, and each agent lets its peers
    name paths in it ([agent] shared_dirs) and its containers live there (allowed_roots)."""
    shared = shared_dir(lab.prefix)
    assert shared.is_dir() and not any(shared.iterdir())
    return shared


def _count(lab: LabSpec, host: str) -> int:
    done = host_runc(lab, host, "exec", NAME, "/bin/cat", "/data/count")
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip() or 0)


def _counting_on(lab: LabSpec, host: str, above: int) -> int:
    return wait_until(f"{NAME} counting on {host}", lambda: (n := _count(lab, host)) > above and n)


def _pings(lab: LabSpec, host: str) -> bool:
    ping = ["ip", "netns", "exec", lab.member(host).netns, "ping", "-c", "1", "-W", "2", ADDRESS]
    return subprocess.run(ping, capture_output=True).returncode == 0


def _migrate(inventory: Path, to: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_haul(inventory, "migrate", NAME, "--to", to, *argv, "-o", "json", timeout_s=180)


def test_a_container_on_shared_storage_moves_there_and_back_sending_none_of_it(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef
) -> None:
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    shared = _shared(lab)
    run_container(
        inventory, NAME, f"oci:{image.layout}", "--ip", f"{ADDRESS}/24", "--shared-dir", str(shared)
    )
    layer = shared / "layers" / NAME
    count = _counting_on(lab, "host1", 0)
    # what it writes is in the shared layer, not in the agent's directory
    assert (layer / "upper" / "data" / "count").is_file()
    assert sorted(p.name for p in layer.iterdir()) == ["upper", "work.host1"]
    blobs_dir = lab.member("host2").data_backing / "agent" / "images" / "layouts"
    for src, dst, marker in (("host1", "host2", "there"), ("host2", "host1", "back")):
        written = host_runc(lab, src, "exec", NAME, "/bin/sh", "-c", f"echo {marker} > /data/m")
        assert written.returncode == 0, written.stderr
        before = received_bytes(lab, dst)
        moved = _migrate(inventory, dst, "--shared-dir", str(shared))
        assert moved.returncode == 0, moved.stderr + moved.stdout
        result = json.loads(moved.stdout)
        assert result["outcome"] == "done", result["reason"]
        assert result["strategy"] == "stop-and-copy"
        # runc lists it on exactly one host, under the same ID
        assert container_ids(lab, dst) == [NAME]
        assert container_ids(lab, src) == []
        rows = [(r["host"], r["name"], r["runtime"]) for r in ps(inventory)]
        assert rows == [(dst, NAME, "runc")]
        # it goes on from where it was, with what it wrote just before the move
        count = _counting_on(lab, dst, count)
        seen = host_runc(lab, dst, "exec", NAME, "/bin/cat", "/data/m")
        assert seen.returncode == 0 and seen.stdout.strip() == marker
        assert _pings(lab, src), f"its address answers from {src}, where it is not"
        # nothing crossed the API: the destination's agent counted 0 bytes of images,
        # files and blobs; the source sent no file round and nothing frozen
        assert received_bytes(lab, dst) == before
        assert result["files_presync_bytes"] == 0 and result["transfer_bytes"] == 0
        shown = json.loads(run_haul(inventory, "jobs", "show", result["id"]).stdout)
        assert shown["stats"]["dump_bytes"] > 0, "runc's checkpoint wrote its images"
        # the host it left keeps nothing of it; the layer stays, with dst's work dir
        assert container_leftovers(lab, src, NAME) == []
        assert sorted(p.name for p in layer.iterdir()) == ["upper", f"work.{dst}"]
        assert (layer / "upper" / "data" / "m").read_text().strip() == marker
        home = lab.member(dst).data_backing / "agent" / "containers" / NAME
        assert home.is_dir() and not (home / "upper").exists(), "no copy of the layer"
        assert sorted(p.name for p in shared.iterdir()) == ["layers"], "the migration's dir"
    assert list(blobs_dir.iterdir()), "host2 lacked the image: its blobs came (not by the API)"
    killed = run_haul(inventory, "kill", NAME, "--host", "host1")
    assert killed.returncode == 0, killed.stderr
    assert container_ids(lab, "host1") == []
    assert not layer.exists(), "the container is gone: its layer goes with it"


def test_a_container_from_a_rootfs_on_shared_storage_moves_in_place(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef
) -> None:
    """A container run from a root filesystem (``--rootfs``) that lies in the shared
    directory: it runs there on each host, none of it is sent, and no host's cleanup
    removes it (it is the operator's)."""
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    shared = _shared(lab)
    rootfs = shared / "rootfs-sc1"
    shutil.move(plain_bundle(lab, "host1", image, NAME) / "rootfs", rootfs)
    script = "i=0; while true; do i=$((i+1)); echo $i > /data/count; sleep 0.1; done"
    done = run_haul(
        inventory,
        "run",
        "--name",
        NAME,
        "--host",
        "host1",
        "--runtime",
        "runc",
        "--rootfs",
        str(rootfs),
        "--",
        "/bin/sh",
        "-c",
        script,
    )
    assert done.returncode == 0, done.stderr
    count = _counting_on(lab, "host1", 0)
    for src, dst, marker in (("host1", "host2", "there"), ("host2", "host1", "back")):
        written = host_runc(lab, src, "exec", NAME, "/bin/sh", "-c", f"echo {marker} > /data/m")
        assert written.returncode == 0, written.stderr
        before = received_bytes(lab, dst)
        moved = _migrate(inventory, dst, "--shared-dir", str(shared))
        assert moved.returncode == 0, moved.stderr + moved.stdout
        assert container_ids(lab, dst) == [NAME] and container_ids(lab, src) == []
        count = _counting_on(lab, dst, count)
        seen = host_runc(lab, dst, "exec", NAME, "/bin/cat", "/data/m")
        assert seen.returncode == 0 and seen.stdout.strip() == marker
        assert received_bytes(lab, dst) == before
        assert container_leftovers(lab, src, NAME) == []
        assert (rootfs / "data" / "m").read_text().strip() == marker
        assert (rootfs / "bin" / "busybox").is_file()
        assert sorted(p.name for p in shared.iterdir()) == ["rootfs-sc1"]
    killed = run_haul(inventory, "kill", NAME, "--host", "host1")
    assert killed.returncode == 0, killed.stderr
    assert (rootfs / "bin" / "busybox").is_file(), "the operator's rootfs stays"


def test_a_failure_before_the_commit_leaves_it_on_the_source_with_its_files(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef, release: Path
) -> None:
    """The copy restored on host2, stopped, over the same layer as the frozen source:
    then the migration fails (its hook at ``restored``). host1's container runs on with
    every file; host2 keeps nothing, the layer keeps only host1's work directory, and
    the migration's directory in the shared directory is gone."""
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    shared = _shared(lab)
    run_container(
        inventory, NAME, f"oci:{image.layout}", "--ip", f"{ADDRESS}/24", "--shared-dir", str(shared)
    )
    layer = shared / "layers" / NAME
    count = _counting_on(lab, "host1", 0)
    written = host_runc(lab, "host1", "exec", NAME, "/bin/sh", "-c", "echo kept > /data/m")
    assert written.returncode == 0, written.stderr
    mid, migrating = pause_at_restored(
        lab, inventory, NAME, release, extra=("--shared-dir", str(shared))
    )
    # both overlays are on the layer now: host1's (frozen) and host2's (its copy, stopped)
    assert sorted(p.name for p in layer.iterdir()) == ["upper", "work.host1", "work.host2"]
    assert [r["state"] for r in incoming(lab, "host2") if r["id"] == mid] == ["restored"]
    assert (shared / mid).is_dir()
    release.write_text("fail\n")
    out, err = migrating.communicate(timeout=60)
    assert migrating.returncode == 1, out + err
    assert json.loads(out)["outcome"] == "rolled-back"
    assert container_ids(lab, "host1") == [NAME] and container_ids(lab, "host2") == []
    assert container_leftovers(lab, "host2", NAME) == []
    _counting_on(lab, "host1", count)
    seen = host_runc(lab, "host1", "exec", NAME, "/bin/cat", "/data/m")
    assert seen.returncode == 0 and seen.stdout.strip() == "kept"
    assert sorted(p.name for p in layer.iterdir()) == ["upper", "work.host1"]
    assert sorted(p.name for p in shared.iterdir()) == ["layers"]
    # and it moves when nothing fails
    moved = _migrate(inventory, "host2", "--shared-dir", str(shared))
    assert moved.returncode == 0, moved.stderr + moved.stdout
    assert container_ids(lab, "host2") == [NAME] and container_ids(lab, "host1") == []
    assert host_runc(lab, "host2", "exec", NAME, "/bin/cat", "/data/m").stdout.strip() == "kept"


def test_bad_shared_directories_are_refused_in_one_line(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef
) -> None:
    """Nothing is touched: the container runs on host1, host2 has nothing."""
    lab, inventory = lab_with_agents
    image = _lab_image(lab, busybox_image)
    shared = _shared(lab)
    run_container(inventory, NAME, f"oci:{image.layout}", "--shared-dir", str(shared))
    run_container(
        inventory, "plain1", f"oci:{image.layout}"
    )  # its writable layer in host1's agent directory
    refusals = [
        (
            _migrate(inventory, "host2", "--shared-dir", str(shared), "--strategy", "post-copy"),
            "post-copy pulls pages from the source",
        ),
        (
            _migrate(inventory, "host2", "--shared-dir", str(lab.root_dir / "nowhere")),
            "does not exist here",
        ),
        (_migrate(inventory, "host2"), f"move it with --shared-dir {shared}"),
        (
            run_haul(inventory, "migrate", "plain1", "--to", "host2", "--shared-dir", str(shared)),
            "start it with haul run --shared-dir",
        ),
        (
            run_haul(
                inventory,
                "run",
                "--name",
                NAME + "b",
                "--host",
                "host2",
                "--runtime",
                "runc",
                "--image",
                f"oci:{image.layout}",
                "--shared-dir",
                "/var/tmp",
            ),
            "outside the directories this agent allows",
        ),
    ]
    for done, why in refusals:
        assert done.returncode != 0, done.stdout
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0], done.stderr
    # haul check (and migrate --dry-run) refuse what migrate refuses, with its words
    checks = [
        (("--shared-dir", str(shared), "--strategy", "post-copy"), "post-copy pulls pages"),
        (("--shared-dir", str(lab.root_dir / "nowhere")), "does not exist here"),
        ((), f"move it with --shared-dir {shared}"),
    ]
    for argv, why in checks:
        for check in (("check", NAME), ("migrate", "--dry-run", NAME)):
            done = run_haul(inventory, *check, "--to", "host2", *argv)
            assert done.returncode == 3, done.stdout + done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("haul: refused: "), done.stderr
            assert why in lines[0], done.stderr
    plain = run_haul(inventory, "check", "plain1", "--to", "host2", "--shared-dir", str(shared))
    assert plain.returncode == 3 and "start it with haul run --shared-dir" in plain.stderr
    # with the flag, the check passes the move that migrate makes, touching nothing
    passes = run_haul(inventory, "check", NAME, "--to", "host2", "--shared-dir", str(shared))
    assert passes.returncode == 0, passes.stderr
    assert "would go by stop-and-copy" in passes.stdout, passes.stdout
    assert container_ids(lab, "host1") == sorted([NAME, "plain1"])
    assert container_ids(lab, "host2") == []
    assert container_leftovers(lab, "host2", NAME) == []
    assert sorted(p.name for p in shared.iterdir()) == ["layers"]
    assert sorted(p.name for p in (shared / "layers").iterdir()) == [NAME]
