"""What a runc container removed from its image stays removed wherever it moves.

overlayfs keeps a container's removals in its writable layer: a whiteout (a character
device 0:0) where it deleted a file of its image, and a directory of the image it
removed and made again is opaque (``trusted.overlay.opaque`` "y"): the image's files
under it are hidden. Both must cross with the layer over the agents' API, or the image's
files come back on the destination.

Real runc, CRIU, umoci and agents. The image is the session's busybox with a layer that
adds ``/etc/motd`` and ``/opt/keep/{one,two}``; the container deletes the first and
replaces the second with a directory of its own, then goes host1 -> host2 -> host1
with each strategy that moves it over HTTP. After each move, inside it (``runc exec``)
``/etc/motd`` is gone and ``/opt/keep`` holds only its own file, and its layer there
holds the whiteout and the opaque mark.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from haul.lab.hostrunc import container_ids, host_runc
from haul.lab.operator import run_container, run_haul
from haul.lab.spec import LabSpec
from haul.runtime.images import ImageRef

NAME = "wc1"
TAG = "files"


def _image_with_files(lab: LabSpec, image: ImageRef) -> ImageRef:
    """The busybox image, copied where the agents may read it, with a layer of files."""
    layout = lab.root_dir / "images" / "busybox"
    shutil.copytree(image.layout, layout)
    with tempfile.TemporaryDirectory(dir=layout.parent) as work:
        bundle = Path(work) / "bundle"
        umoci = ["umoci", "unpack", "--image", f"{layout}:{image.tag}", str(bundle)]
        subprocess.run(umoci, check=True, capture_output=True)
        rootfs = bundle / "rootfs"
        (rootfs / "etc" / "motd").write_text("from the image\n")
        (rootfs / "opt" / "keep").mkdir(parents=True)
        for name in ("one", "two"):
            (rootfs / "opt" / "keep" / name).write_text(f"{name} from the image\n")
        repack = ["umoci", "repack", "--image", f"{layout}:{TAG}", str(bundle)]
        subprocess.run(repack, check=True, capture_output=True)
    return ImageRef(layout, TAG)


def _upper(lab: LabSpec, host: str) -> Path:
    return lab.member(host).data_backing / "agent" / "containers" / NAME / "upper"


def _layer_keeps_the_removals(lab: LabSpec, host: str) -> None:
    upper = _upper(lab, host)
    motd = os.lstat(upper / "etc" / "motd")
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0, "a whiteout"
    assert os.getxattr(upper / "opt" / "keep", "trusted.overlay.opaque") == b"y"


def _inside(lab: LabSpec, host: str) -> list[str]:
    script = "ls /opt/keep; test -e /etc/motd || echo gone; cat /opt/keep/only"
    seen = host_runc(lab, host, "exec", NAME, "/bin/sh", "-c", script)
    assert seen.returncode == 0, seen.stderr
    return seen.stdout.split("\n")[:-1]


@pytest.mark.parametrize("strategy", ["stop-and-copy", "post-copy"])
def test_what_a_container_removed_from_its_image_stays_removed_there_and_back(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef, strategy: str
) -> None:
    lab, inventory = lab_with_agents
    image = _image_with_files(lab, busybox_image)
    run_container(inventory, NAME, f"oci:{image.layout}:{image.tag}")
    before = host_runc(lab, "host1", "exec", NAME, "/bin/ls", "/opt/keep")
    assert before.stdout.split() == ["one", "two"], before.stdout + before.stderr
    changed = host_runc(
        lab,
        "host1",
        "exec",
        NAME,
        "/bin/sh",
        "-c",
        "rm /etc/motd && rm -r /opt/keep && mkdir /opt/keep && echo mine > /opt/keep/only",
    )
    assert changed.returncode == 0, changed.stderr
    assert _inside(lab, "host1") == ["only", "gone", "mine"]
    _layer_keeps_the_removals(lab, "host1")
    for src, dst in (("host1", "host2"), ("host2", "host1")):
        moved = run_haul(
            inventory, "migrate", NAME, "--to", dst, "--strategy", strategy, "-o", "json"
        )
        assert moved.returncode == 0, moved.stderr + moved.stdout
        assert container_ids(lab, dst) == [NAME] and container_ids(lab, src) == []
        assert _inside(lab, dst) == ["only", "gone", "mine"], f"on {dst}"
        _layer_keeps_the_removals(lab, dst)
    killed = run_haul(inventory, "kill", NAME, "--host", "host1")
    assert killed.returncode == 0, killed.stderr
