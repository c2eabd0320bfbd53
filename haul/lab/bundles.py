"""Minimal OCI runtime bundles for tests: a busybox root filesystem and a config.json.

The root filesystem is ``busybox-static`` and its applet links; ``config.json`` starts
from ``runc spec`` and is made what a migration needs: no terminal (the container's
standard streams are /dev/null), a cgroup path of the host's own (lab hosts share one
machine's cgroups), the host's network or a namespace of its own, and the CRIU
configuration file annotation (:mod:`haul.runtime.criuconf`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haul.errors import LabError
from haul.runtime import criuconf

BUSYBOX = Path("/bin/busybox")
MEMHOG_C = Path(__file__).resolve().parent / "samples" / "memhog.c"
#: a counter: writes its count to /count 50 times a second (in the root filesystem)
COUNTER_ARGV = (
    "/bin/sh",
    "-c",
    "i=0; while :; do i=$((i+1)); echo $i > /count; usleep 20000; done",
)


def busybox_rootfs(rootfs: Path) -> None:
    """A root filesystem of busybox and its applets at ``rootfs`` (made; must not exist)."""
    if not BUSYBOX.is_file():
        raise LabError(f"{BUSYBOX} is missing (Debian's busybox-static: deploy/install.sh)")
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "root"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    done = subprocess.run(
        ["chroot", str(rootfs), "/bin/busybox", "--install", "-s", "/bin"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise LabError(f"busybox --install in {rootfs} failed: {done.stderr.strip()}")


def install_memhog(rootfs: Path) -> None:
    """Build the memory-holding counter (samples/memhog.c, static) into ``rootfs``'s /bin."""
    done = subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(rootfs / "bin" / "memhog"), str(MEMHOG_C)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise LabError(f"building memhog failed: {done.stderr.strip()}")


def memhog_argv(mib: int) -> list[str]:
    """memhog holding ``mib`` MiB, counting into /count, its verdict in /verdict."""
    return ["/bin/memhog", str(mib), "/count", "/verdict"]


def runc_spec() -> dict[str, Any]:
    """``runc spec``'s default configuration, as runc itself writes it."""
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            ["runc", "spec", "--bundle", scratch], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise LabError(f"runc spec failed: {done.stderr.strip()}")
        return dict(json.loads((Path(scratch) / "config.json").read_text()))


def bundle_config(
    *,
    rootfs: Path,
    argv: Sequence[str],
    cgroups_path: str,
    criu_config: Path,
    own_network: bool = False,
) -> dict[str, Any]:
    config = runc_spec()
    process = config["process"]
    process["terminal"] = False
    process["args"] = list(argv)
    config["root"] = {"path": str(rootfs), "readonly": False}
    linux = config["linux"]
    linux["cgroupsPath"] = cgroups_path
    if not own_network:
        linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
    config.setdefault("annotations", {})[criuconf.ANNOTATION] = str(criu_config)
    return config


def make_bundle(
    bundle: Path,
    rootfs: Path,
    *,
    argv: Sequence[str] = COUNTER_ARGV,
    cgroups_path: str,
    own_network: bool = False,
) -> Path:
    """A bundle directory (config.json and the CRIU configuration file) for a busybox
    container whose root filesystem is ``rootfs`` (made here, with memhog in /bin)."""
    busybox_rootfs(rootfs)
    install_memhog(rootfs)
    bundle.mkdir(parents=True, exist_ok=True)
    criu_config = bundle / "criu.conf"
    criuconf.write(criu_config, [])
    config = bundle_config(
        rootfs=rootfs,
        argv=argv,
        cgroups_path=cgroups_path,
        criu_config=criu_config,
        own_network=own_network,
    )
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    return bundle
