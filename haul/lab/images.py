"""A tiny OCI image layout built from busybox-static, for tests and the demo (no registry).

The layout holds one image (a few hundred KiB): busybox with its applets linked in
``/bin`` and the directories a container needs (``/data`` for what it writes,
``/proc``, ``/sys``, ``/dev``, ``/tmp``, ``/etc``). It is made with umoci the way an
operator would: ``init``, ``new``, ``unpack`` (an empty rootfs), busybox copied in and
``busybox --install -s`` run in it, ``repack``, and ``config --config.cmd`` for the
command. :func:`set_command` gives an image of the same layout another command,
under another tag; :func:`add_memhog` adds the memory-holding sample in a layer of its
own, under another tag. Every step needs root (umoci unpacks as root, chroot).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from haul.errors import LabError
from haul.lab.bundles import install_memhog
from haul.runtime.images import DEFAULT_TAG, TAG_RE, UMOCI, ImageRef, resolve

BUSYBOX = Path("/bin/busybox")
#: the default command: count into /data/count ten times a second, each count written
#: aside and renamed into place (a reader never sees the file empty between two)
COUNTER_CMD = (
    "/bin/sh",
    "-c",
    "i=0; while true; do i=$((i+1)); echo $i > /data/count.new; "
    "mv /data/count.new /data/count; sleep 0.1; done",
)
ROOTFS_DIRS = ("data", "proc", "sys", "dev", "tmp", "etc", "root")


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise LabError(f"{' '.join(argv[:3])} ... failed: {message[0]}")


def _umoci(*args: str) -> None:
    _run(str(UMOCI), *args)


def _config_cmd(cmd: Sequence[str]) -> list[str]:
    args: list[str] = []
    for part in cmd:
        args += ["--config.cmd", part]
    return args


def _check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise LabError(f"bad image tag {tag!r}")
    return tag


def build_busybox_image(
    layout: Path, *, tag: str = DEFAULT_TAG, cmd: Sequence[str] = COUNTER_CMD
) -> ImageRef:
    """Make ``layout`` (it must not exist) with a busybox image tagged ``tag`` whose
    command is ``cmd``; return its reference."""
    _check_tag(tag)
    if layout.exists():
        raise LabError(f"{layout} exists; an image layout is built in a new directory")
    if not (BUSYBOX.is_file() and os.access(BUSYBOX, os.X_OK)):
        raise LabError(f"no {BUSYBOX}: install busybox-static (deploy/install.sh does)")
    layout.parent.mkdir(parents=True, exist_ok=True)
    try:
        _umoci("init", "--layout", str(layout))
        _umoci("new", "--image", f"{layout}:{tag}")
        with tempfile.TemporaryDirectory(dir=layout.parent, prefix=".busybox-") as work:
            bundle = Path(work) / "bundle"
            _umoci("unpack", "--image", f"{layout}:{tag}", str(bundle))
            rootfs = bundle / "rootfs"
            (rootfs / "bin").mkdir(parents=True, exist_ok=True)
            shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
            _run("chroot", str(rootfs), "/bin/busybox", "--install", "-s", "/bin")
            for name in ROOTFS_DIRS:
                (rootfs / name).mkdir(exist_ok=True)
            _umoci("repack", "--image", f"{layout}:{tag}", str(bundle))
        _umoci("config", "--image", f"{layout}:{tag}", *_config_cmd(cmd))
        _umoci("gc", "--layout", str(layout))
    except BaseException:
        shutil.rmtree(layout, ignore_errors=True)
        raise
    return ImageRef(layout, tag)


def set_command(image: ImageRef, cmd: Sequence[str], *, tag: str) -> ImageRef:
    """The same image with command ``cmd``, under ``tag`` in the same layout."""
    _umoci("config", "--image", image.umoci_image, "--tag", _check_tag(tag), *_config_cmd(cmd))
    return ImageRef(image.layout, tag)


def add_memhog(image: ImageRef, *, tag: str) -> ImageRef:
    """The same image with memhog (haul/lab/samples/memhog.c, static) in ``/bin``, as a
    new layer, under ``tag`` in the same layout; its command stays the image's."""
    with tempfile.TemporaryDirectory(dir=image.layout.parent, prefix=".memhog-") as work:
        bundle = Path(work) / "bundle"
        _umoci("unpack", "--image", image.umoci_image, str(bundle))
        install_memhog(bundle / "rootfs")
        _umoci("repack", "--image", f"{image.layout}:{_check_tag(tag)}", str(bundle))
    _umoci("gc", "--layout", str(image.layout))
    return ImageRef(image.layout, tag)


def ensure_busybox_image(layout: Path, *, tag: str = DEFAULT_TAG) -> ImageRef:
    """The busybox image in ``layout``, built there unless the layout already has
    ``tag`` (a cache: tests build it once per session, the demo once per machine)."""
    if (layout / "index.json").is_file():
        ref = ImageRef(layout, tag)
        resolve(ref)  # raises ImageError when the cached layout is broken
        return ref
    return build_busybox_image(layout, tag=tag)
