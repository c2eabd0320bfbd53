"""haul.runtime.dumpable: what makes a running container impossible to checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haul.runtime import dumpable

CONTAINER_MOUNTS = {301, 302, 303}


@pytest.mark.parametrize(
    ("fd", "link", "rdev", "mnt_id"),
    [
        (0, None, None, None),  # closed
        (0, "/dev/null", os.makedev(1, 3), 22),  # the host's /dev/null: runc maps it
        (1, "pipe:[4242]", None, 12),
        (2, "/data/log", None, 302),  # a file of the container's own mounts
    ],
)
def test_what_criu_can_dump_as_stdio(
    fd: int, link: str | None, rdev: int | None, mnt_id: int | None
) -> None:
    assert dumpable.stdio_problem(fd, link, rdev, mnt_id, CONTAINER_MOUNTS) is None


@pytest.mark.parametrize(
    ("fd", "link", "rdev", "mnt_id", "says"),
    [
        (
            1,
            "/tmp/runc-lab/BA.out",
            None,
            27,
            "its stdout is /tmp/runc-lab/BA.out, a file of the host",
        ),
        (2, "/dev/pts/3", os.makedev(136, 3), 25, "its stderr is a terminal (/dev/pts/3)"),
        (0, "/dev/tty", os.makedev(5, 0), 25, "its stdin is a terminal"),
        (0, "/dev/zero", os.makedev(1, 5), 25, "its stdin is the device /dev/zero"),
        (1, "socket:[99]", None, 9, "its stdout is a socket"),
        (2, "anon_inode:[eventfd]", None, 15, "its stderr is anon_inode:[eventfd]"),
        (1, "/data/log", None, None, "a file of the host"),  # no fdinfo: not provably inside
    ],
)
def test_what_it_cannot(
    fd: int, link: str, rdev: int | None, mnt_id: int | None, says: str
) -> None:
    problem = dumpable.stdio_problem(fd, link, rdev, mnt_id, CONTAINER_MOUNTS)
    assert problem is not None and says in problem, problem


def test_this_process_stdio_is_read_from_proc() -> None:
    """pytest's own stdio: whatever they are, each is named at most once, by its name."""
    problems = dumpable.stdio_problems(os.getpid())
    assert len(problems) <= 3
    assert all(p.startswith(("its stdin", "its stdout", "its stderr")) for p in problems)


def test_the_configured_network_namespace() -> None:
    assert dumpable.configured_netns({"linux": {"namespaces": [{"type": "pid"}]}}) is None
    assert dumpable.configured_netns({"linux": {"namespaces": [{"type": "network"}]}}) is None
    config = {"linux": {"namespaces": [{"type": "network", "path": "/run/netns/w"}]}}
    assert dumpable.configured_netns(config) == "/run/netns/w"


def test_a_process_in_the_hosts_network_namespace_is_fine() -> None:
    assert dumpable.netns_problem(os.getpid(), {}) == (None, None)


def test_the_freezer_cgroup_must_have_its_state_file(tmp_path: Path) -> None:
    path = dumpable.freezer_cgroup(os.getpid())
    if path is None:
        pytest.skip("this machine has no cgroup v1 freezer")
    problem = dumpable.freezer_problem(os.getpid(), freezer_root=tmp_path)
    assert problem is not None and "has no freezer.state" in problem
    state = tmp_path / path.lstrip("/") / "freezer.state"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("THAWED\n")
    assert dumpable.freezer_problem(os.getpid(), freezer_root=tmp_path) is None
