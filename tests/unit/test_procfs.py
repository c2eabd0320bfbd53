"""haul.procfs on this test process and on short-lived children of it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul import procfs


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _wait_exited_unreaped(pid: int) -> None:
    """Block until the child has exited, leaving it a zombie."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def test_state_of_self_is_running() -> None:
    # A process reading its own stat is on a CPU doing so.
    assert procfs.state(os.getpid()) == "R"
    assert procfs.alive(os.getpid())


def test_reaped_child_is_gone() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert procfs.state(proc.pid) is None
    assert procfs.alive(proc.pid) is False
    assert procfs.ns_inode(proc.pid, "net") is None


def test_unreaped_child_is_a_zombie_and_not_alive() -> None:
    proc = subprocess.Popen(["true"])
    try:
        _wait_exited_unreaped(proc.pid)
        assert procfs.state(proc.pid) == "Z"
        assert procfs.alive(proc.pid) is False
        assert procfs.wait_gone([proc.pid], timeout_s=0.0) == []
    finally:
        proc.wait()
    assert procfs.state(proc.pid) is None


def test_stopped_child_is_alive(sleeper: subprocess.Popen[bytes]) -> None:
    os.kill(sleeper.pid, signal.SIGSTOP)
    os.waitpid(sleeper.pid, os.WUNTRACED)
    assert procfs.state(sleeper.pid) == "T"
    assert procfs.alive(sleeper.pid)
    os.kill(sleeper.pid, signal.SIGCONT)


def test_state_survives_a_command_name_with_parentheses(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    odd = tmp_path / "x) Z (y"  # comm is taken from the executed file's name
    os.symlink(os.path.realpath(sleep), odd)
    proc = subprocess.Popen([str(odd), "30"])
    try:
        comm = Path(f"/proc/{proc.pid}/comm").read_text().rstrip("\n")
        if comm != odd.name:
            pytest.skip(f"this sleep does not run under another name (comm {comm!r})")
        assert procfs.state(proc.pid) in ("R", "S")
        assert procfs.alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_wait_gone_returns_survivors(sleeper: subprocess.Popen[bytes]) -> None:
    assert procfs.wait_gone([sleeper.pid], timeout_s=0.05) == [sleeper.pid]
    sleeper.kill()
    assert procfs.wait_gone([sleeper.pid], timeout_s=5.0) == []


def test_ns_inode_of_self_matches_proc_self() -> None:
    for kind in ("net", "pid", "mnt"):
        assert procfs.ns_inode(os.getpid(), kind) == os.stat(f"/proc/self/ns/{kind}").st_ino


def test_ns_inode_of_an_unknown_kind_is_none() -> None:
    assert procfs.ns_inode(os.getpid(), "no-such-ns") is None


def test_pids_in_ns_finds_this_process_and_its_child(sleeper: subprocess.Popen[bytes]) -> None:
    inode = procfs.ns_inode(os.getpid(), "pid")
    assert inode is not None
    members = procfs.pids_in_ns("pid", inode)
    assert os.getpid() in members and sleeper.pid in members
    assert members == sorted(members)


def test_tree_pids_refuses_a_pid_in_our_own_pid_namespace(
    sleeper: subprocess.Popen[bytes],
) -> None:
    with pytest.raises(ValueError, match=str(os.getpid())):
        procfs.tree_pids(os.getpid())
    with pytest.raises(ValueError, match="own PID namespace"):
        procfs.tree_pids(sleeper.pid)


def test_tree_pids_of_a_gone_process_is_empty() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert procfs.tree_pids(proc.pid) == []
    assert procfs.signal_tree(proc.pid, signal.SIGTERM) == 0


def test_netns_inode_of_an_unknown_name_is_none() -> None:
    assert procfs.netns_inode(f"haul-unit-test-absent-{os.getpid()}") is None


def test_naming_finds_the_processes_whose_arguments_are_under_a_path(tmp_path: Path) -> None:
    work = tmp_path / "m1"
    proc = subprocess.Popen(["sh", "-c", "sleep 30; :", "sh", "--work-path", str(work / "work")])
    other = subprocess.Popen(["sh", "-c", "sleep 30; :", "sh", f"{work}-not-under"])
    try:
        assert procfs.naming(work) == [proc.pid]
        assert procfs.naming(work / "work") == [proc.pid]
        assert procfs.naming(tmp_path / "m2") == []
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()
