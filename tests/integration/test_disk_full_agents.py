"""The destination's disk fills up during a migration through the agents (`haul migrate`).

A small tmpfs is mounted, inside host2's mount namespace only, over the directory
host2's agent writes incoming images to. It has room at pre-flight; once the source
has frozen the workload (its journal records the freeze phase), host2's agent is
held with SIGSTOP while the test fills the tmpfs to the last byte, so every write
of the migration from then on fails for lack of room: the CRIU page server's pages
(stop-and-copy), the images sent over the agents' API (both strategies).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul.lab.operator import (
    agent_pid,
    count,
    incoming,
    journal_dir,
    journal_phases,
    ps,
    run_counter,
    run_haul,
    verdict,
    wait_count_above,
    wait_until,
)
from haul.lab.spec import LabSpec
from haul.procfs import netns_inode, pids_in_ns

TMPFS_SIZE = "256m"


class SmallDisk:
    """A tmpfs over host2's incoming directory, as host2's agent sees it."""

    def __init__(self, lab: LabSpec) -> None:
        self.host = lab.host(2)
        self.path = lab.data_path / "agent" / "incoming"  # as the host sees it
        self.backing = self.host.data_backing / "agent" / "incoming"  # underneath, here
        self.mounted = False

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--mount={self.host.mntns}", "--", *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def mount(self) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        done = self.run(
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={TMPFS_SIZE},mode=0700",
            "haul-test-full",
            str(self.path),
        )
        assert done.returncode == 0, done.stderr
        self.mounted = True

    def umount(self) -> str:
        if not self.mounted:
            return ""
        done = self.run("umount", str(self.path))
        if done.returncode != 0:  # still busy: detach it, it goes when nothing uses it
            done = self.run("umount", "-l", str(self.path))
        self.mounted = done.returncode != 0
        return done.stderr.strip()

    def seen_by(self, pid: int) -> Path:
        """The tmpfs through ``pid``'s root (a process of host2's mount namespace)."""
        return Path(f"/proc/{pid}/root") / self.path.relative_to("/")

    def listing(self, pid: int) -> list[str]:
        return sorted(p.name for p in self.seen_by(pid).iterdir())

    def fill(self, pid: int) -> None:
        """Take every free byte (the page server may be writing meanwhile)."""
        target = self.seen_by(pid)
        fd = os.open(target / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            while True:
                st = os.statvfs(target)
                free = st.f_bavail * st.f_frsize
                if free == 0:
                    return
                try:
                    os.posix_fallocate(fd, 0, size + free)
                    size += free
                except OSError:  # someone took some meanwhile: ask again
                    continue
        finally:
            os.close(fd)


@pytest.fixture
def small_disk(lab_with_agents: tuple[LabSpec, Path]) -> Iterator[SmallDisk]:
    disk = SmallDisk(lab_with_agents[0])
    disk.mount()
    try:
        yield disk
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent_pid(lab_with_agents[0], "host2"), signal.SIGCONT)
        problem = disk.umount()
        assert not disk.mounted, f"the test tmpfs could not be unmounted: {problem}"


def others_in_netns(lab: LabSpec, host: str, but: int) -> list[int]:
    inode = netns_inode(lab.member(host).netns)
    assert inode is not None
    return [p for p in pids_in_ns("net", inode) if p != but]


@pytest.mark.parametrize("strategy", ["stop-and-copy", "post-copy"])
def test_destination_disk_full_mid_transfer_rolls_back_through_the_agents(
    lab_with_agents: tuple[LabSpec, Path], small_disk: SmallDisk, strategy: str
) -> None:
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "web", mem_mib=64)
    dest_agent = agent_pid(lab, "host2")
    assert others_in_netns(lab, "host2", dest_agent) == []
    before = set(journal_dir(lab, "host1").glob("*.jsonl"))
    migrating = subprocess.Popen(  # as an operator runs it: text, the verdict on stderr
        [sys.executable, "-m", "haul", "migrate", "web", "--to", "host2", "--strategy", strategy],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HAUL_HOSTS": str(inventory)},
    )
    new = wait_until(
        "the migration's journal", lambda: set(journal_dir(lab, "host1").glob("*.jsonl")) - before
    )
    mid = next(iter(new)).stem
    wait_until("the freeze phase", lambda: "freeze" in journal_phases(lab, "host1", mid))
    os.kill(dest_agent, signal.SIGSTOP)
    try:
        small_disk.fill(dest_agent)
    finally:
        os.kill(dest_agent, signal.SIGCONT)
    _, errs = migrating.communicate(timeout=180)
    assert migrating.returncode == 1, errs
    assert errs.count("\n") == 1, f"one line: {errs!r}"
    assert errs.startswith("haul: rolled-back: ") and "web runs on host1" in errs, errs
    # the page server's pages (stop-and-copy, in the freeze) or the images sent over
    # the agents' API, whichever the full disk stopped first: either way, said plainly
    # (what comes over the API is refused before it eats into the journal's reserve)
    assert (
        "destination host2 has no room left for the pages" in errs
        or ("host2: writing" in errs and "No space left on device" in errs)
        or (
            "destination host2: no room for incoming migration" in errs
            and "kept for the journal ([agent.limits] journal_reserve_bytes)" in errs
        )
    ), errs
    print(f"\n{strategy}: {errs.strip()}")
    # the workload runs on the source, and nothing of it is left on the destination
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "web")]
    n = count(lab, "host1", "web")
    assert wait_count_above(lab, "host1", "web", n) > n
    assert small_disk.listing(dest_agent) == ["filler"], "the partial copy is gone"
    assert incoming(lab, "host2") == []
    assert not (lab.host(2).data_backing / "agent" / "workloads" / "web").exists()
    assert others_in_netns(lab, "host2", dest_agent) == [], "no copy, no page server"
    # with room again, the next migration succeeds
    (small_disk.seen_by(dest_agent) / "filler").unlink()
    assert small_disk.umount() == "" and not small_disk.mounted
    assert not list(small_disk.backing.iterdir()), "nothing was written under the tmpfs"
    done = run_haul(inventory, "migrate", "web", "--to", "host2", "--strategy", strategy)
    assert done.returncode == 0, done.stderr
    assert verdict(lab, inventory, "host2", "web").startswith("PASS")


def test_fill_is_really_full(lab_with_agents: tuple[LabSpec, Path], small_disk: SmallDisk) -> None:
    """The test's own instrument: after fill, not one more byte fits."""
    lab, _ = lab_with_agents
    pid = agent_pid(lab, "host2")
    small_disk.fill(pid)
    with pytest.raises(OSError) as caught:
        (small_disk.seen_by(pid) / "one-more").write_bytes(b"x" * 4096)
    assert caught.value.errno == errno.ENOSPC
