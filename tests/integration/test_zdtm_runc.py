"""CRIU's ZDTM programs inside runc containers, moved with ``haul migrate`` through the agents.

The programs test_zdtm.py moves as process trees (haul/lab/zdtm.py lists them), each run
as the command of a busybox container (its init a shell that runs the program in the
container's /data and forwards SIGTERM to it), the programs' directory and the host's
libraries bind-mounted read-only (``haul run --mount``). Each goes host1 -> host2 with
each strategy the kernel allows; then runc lists it on host2 only, host1 keeps nothing of
it, and ``runc kill NAME TERM`` on host2 makes the program check its state and write PASS.

Those that cannot pass inside a container are in EXPECTED_FAILURES with the reason and
what they (or haul) say when they fail (docs/containers.md). They are xfailed only when
they fail exactly so; a migration that fails must have rolled back, the program still
passing on host1 alone. One lab serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haul.lab.hostrunc import container_ids, host_runc, left_on
from haul.lab.netlab import lab_down, lab_up
from haul.lab.operator import run_haul, wait_until
from haul.lab.spec import LabSpec
from haul.lab.zdtm import (
    CONTAINER_RUN_DIR,
    ZDTM_PROGRAMS,
    container_argv,
    container_mounts,
)
from haul.runtime.images import ImageRef

STRATEGIES = ("stop-and-copy", "post-copy")


@dataclass(frozen=True, slots=True)
class Expected:
    #: what the program's outfile, or the migration's reason, says when it fails so
    says: str
    #: why it cannot pass inside a container
    reason: str


#: the programs that cannot pass inside a container (with either strategy), and why
EXPECTED_FAILURES: dict[str, Expected] = {
    "sockets00": Expected(
        says="chown (errno = 1 (Operation not permitted))",
        reason="it chowns its socket file to uid 18943, which needs CAP_CHOWN; the busybox "
        "image's runtime configuration (umoci's defaults, as runc's) keeps only "
        "CAP_AUDIT_WRITE, CAP_KILL and CAP_NET_BIND_SERVICE, so it exits before it is "
        "ready, on host1, before any migration",
    ),
    "inotify00": Expected(
        says="fsnotify: Can't dump that handle",
        reason="CRIU cannot dump its inotify watch on a file it has unlinked (and holds "
        "open): the file is on the container's overlay root, whose file handles (type 0xf8) "
        "CRIU cannot open (overlayfs decodes them only with nfs_export=on, off here), and "
        "its fallback (irmap) finds no path for an unlinked file; the checkpoint fails and "
        "the migration rolls back",
    ),
}


def _cases() -> list[object]:
    return [
        pytest.param(strategy, name, id=f"{strategy}-{name}")
        for strategy in STRATEGIES
        for name in sorted(ZDTM_PROGRAMS)
    ]


class ZdtmLab:
    """The module's lab: its hosts' agents, the busybox image and the programs where the
    agents may read them."""

    def __init__(self, lab: LabSpec, inventory: Path, image: ImageRef, programs: Path) -> None:
        self.lab, self.inventory, self.image, self.programs = lab, inventory, image, programs

    def run_dir(self, host: str, w: str) -> Path:
        """Container ``w``'s /data on ``host``, as seen from outside (in its writable
        layer, in the agent's state directory)."""
        upper = self.lab.member(host).data_backing / "agent" / "containers" / w / "upper"
        return upper / CONTAINER_RUN_DIR.lstrip("/")

    def status(self, host: str, w: str) -> str:
        """runc's status of container ``w`` on ``host``, or none."""
        done = host_runc(self.lab, host, "state", w)
        return str(json.loads(done.stdout)["status"]) if done.returncode == 0 else "none"

    def outfile(self, host: str, w: str, name: str) -> str:
        return (self.run_dir(host, w) / f"{name}.out").read_text()

    def wait_ready(self, w: str, name: str, timeout_s: float = 30.0) -> str | None:
        """Wait until program ``name`` in container ``w`` on host1 has written its
        pidfile (None). If it reports an error first (ZDTM's ``ERR:`` lines in its
        outfile: its first process may then wait forever, ZDTM's lib missing a child that
        fails at once) or its container ends, return what it wrote to its outfile."""
        run_dir = self.run_dir("host1", w)
        deadline = time.monotonic() + timeout_s
        while not (run_dir / f"{name}.pid").exists():
            assert time.monotonic() < deadline, f"{name} wrote no pidfile in {timeout_s:g} s"
            out = run_dir / f"{name}.out"
            said = out.read_text() if out.exists() else ""
            if " ERR: " in said or self.status("host1", w) != "running":
                return self.outfile("host1", w, name)
            time.sleep(0.05)
        return None

    def verdict(self, host: str, w: str, name: str) -> str:
        """``runc kill W TERM`` on ``host``; the program's outfile once its container has
        ended (its init ends when the program has)."""
        killed = host_runc(self.lab, host, "kill", w, "TERM")
        assert killed.returncode == 0, killed.stderr
        wait_until(f"{w} to end on {host}", lambda: self.status(host, w) == "stopped", 30)
        return self.outfile(host, w, name)


@pytest.fixture(scope="module")
def zdtm_lab(
    tmp_path_factory: pytest.TempPathFactory, busybox_image: ImageRef, zdtm_dir: Path
) -> Iterator[ZdtmLab]:
    lab = LabSpec(prefix="t" + secrets.token_hex(3), hosts=2)
    inventory = tmp_path_factory.mktemp("zdtm-runc") / "hosts.toml"
    try:
        asyncio.run(lab_up(lab, inventory=inventory))
        image = ImageRef(lab.root_dir / "images" / "busybox", busybox_image.tag)
        shutil.copytree(busybox_image.layout, image.layout)
        programs = lab.root_dir / "zdtm"  # where the agents may read them
        programs.mkdir()
        for name in ZDTM_PROGRAMS:
            shutil.copy2(zdtm_dir / name, programs / name)
        yield ZdtmLab(lab, inventory, image, programs)
    finally:
        lab_down(lab.prefix)


def _expected(name: str, said: str) -> None:
    """xfail when ``name`` is expected to fail and ``said`` is what it says then."""
    expected = EXPECTED_FAILURES.get(name)
    if expected is not None and expected.says in said:
        pytest.xfail(expected.reason)


@pytest.mark.parametrize(("strategy", "name"), _cases())
def test_a_zdtm_program_in_a_container_moves_and_passes(
    zdtm_lab: ZdtmLab, strategy: str, name: str
) -> None:
    lab, inventory = zdtm_lab.lab, zdtm_lab.inventory
    w = f"{'sc' if strategy == 'stop-and-copy' else 'pc'}-{name.replace('_', '-')}"
    started = run_haul(
        inventory,
        "run",
        "--name",
        w,
        "--host",
        "host1",
        "--runtime",
        "runc",
        "--image",
        f"oci:{zdtm_lab.image.layout}",
        *container_mounts(zdtm_lab.programs),
        "--",
        *container_argv(name),
    )
    assert started.returncode == 0, started.stderr
    try:
        ended = zdtm_lab.wait_ready(w, name)
        if ended is not None:
            _expected(name, ended)
            pytest.fail(f"{name} failed on host1 before it was ready:\n{ended[-2000:]}")
        moved = run_haul(
            inventory, "migrate", w, "--to", "host2", "--strategy", strategy, "-o", "json"
        )
        assert moved.stdout, f"haul migrate printed no result: {moved.stderr}"
        result = json.loads(moved.stdout)
        if result["outcome"] != "done":
            # the one rule: rolled back, it runs on host1 alone, intact
            assert (moved.returncode, result["outcome"]) == (1, "rolled-back"), moved.stdout
            assert w in container_ids(lab, "host1")
            assert left_on(lab, "host2", w) == []
            out = zdtm_lab.verdict("host1", w, name)
            assert "PASS" in out, f"{name} rolled back on host1 wrote:\n{out}"
            _expected(name, result["reason"])
            pytest.fail(f"{name}: {result['reason']}")
        assert moved.returncode == 0, moved.stderr + moved.stdout
        # runc lists it on host2 only; host1 keeps nothing of it
        assert w in container_ids(lab, "host2")
        assert left_on(lab, "host1", w) == []
        assert zdtm_lab.status("host2", w) == "running"
        out = zdtm_lab.verdict("host2", w, name)
        assert "PASS" in out, f"{name} in a container on host2 wrote:\n{out}"
        assert name not in EXPECTED_FAILURES, f"{name} passes now: take it off the list"
    finally:
        run_haul(inventory, "kill", w)
