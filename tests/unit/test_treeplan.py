"""The plan between two manifests: what goes, what is made, what is sent, in which order."""

from __future__ import annotations

from dataclasses import replace

from haul.transport.treeplan import Node, Plan, diff
from haul.transport.treescan import Entry, Kind

F = Entry(Kind.FILE, 0o644, size=3, mtime_ns=10, ctime_ns=10, inode=7)
D = Entry(Kind.DIR, 0o755)
P = Entry(Kind.FIFO, 0o600)
S = Entry(Kind.SOCKET, 0o755)


def link(target: str) -> Entry:
    return Entry(Kind.SYMLINK, 0o777, target=target)


def test_nothing_changed_is_an_empty_plan() -> None:
    held = {"d": D, "d/f": F, "l": link("x"), "p": P}
    assert diff(held, dict(held)).empty
    assert not Plan(remove=("x",)).empty


def test_a_file_changed_by_any_of_size_mtime_ctime_inode_mode_is_sent() -> None:
    for changed in (
        replace(F, size=4),
        replace(F, mtime_ns=11),
        replace(F, ctime_ns=11),  # the same size rewritten within one mtime tick
        replace(F, inode=8),
        replace(F, mode=0o600),
        replace(F, mode=0o4644),
        replace(F, uid=1000),
        replace(F, gid=1000),
    ):
        assert diff({"f": F}, {"f": changed}) == Plan(
            send=(Node("f", Kind.FILE, changed.mode, uid=changed.uid, gid=changed.gid),)
        )


def test_modes_alone_are_set_last_deepest_first() -> None:
    held = {"d": D, "d/e": D, "p": P}
    now = {"d": replace(D, mode=0o700), "d/e": replace(D, mode=0o711), "p": replace(P, mode=0o640)}
    assert diff(held, now) == Plan(
        modes=(
            Node("d/e", Kind.DIR, 0o711),
            Node("d", Kind.DIR, 0o700),
            Node("p", Kind.FIFO, 0o640),
        )
    )


def test_removals_go_deepest_first_and_a_changed_kind_is_removed_then_made() -> None:
    held = {"a": D, "a/b": D, "a/b/f": F, "a/g": F, "l": link("x"), "m": F}
    now = {"a": F, "l": link("y"), "m": D}
    plan = diff(held, now)
    assert plan.remove == ("a/b/f", "a/b", "a/g", "a", "l", "m")
    assert plan.make == (Node("l", Kind.SYMLINK, 0o777, "y"), Node("m", Kind.DIR, 0o755))
    assert plan.send == (Node("a", Kind.FILE, 0o644),)


def test_new_entries_come_parents_first_and_a_closed_directory_is_closed_last() -> None:
    now = {
        "z": Entry(Kind.DIR, 0o500),
        "z/f": F,
        "z/sub": D,
        "z/sub/p": P,
        "a-file": F,
        "z/l": link("/etc"),
    }
    plan = diff({}, now)
    assert plan.make == (
        Node("z", Kind.DIR, 0o700),  # made with its owner's rwx: what goes in can
        Node("z/l", Kind.SYMLINK, 0o777, "/etc"),
        Node("z/sub", Kind.DIR, 0o755),
        Node("z/sub/p", Kind.FIFO, 0o600),
    )
    assert plan.send == (Node("a-file", Kind.FILE, 0o644), Node("z/f", Kind.FILE, 0o644))
    assert plan.modes == (Node("z", Kind.DIR, 0o500),)
    assert plan.remove == ()


def test_a_new_owner_alone_is_set_last_and_a_link_keeps_no_mode() -> None:
    held = {"d": D, "l": link("x"), "p": P, "s": S}
    now = {
        "d": replace(D, uid=1000),
        "l": replace(link("x"), gid=7),
        "p": replace(P, uid=5, gid=6),
        "s": replace(S, mode=0o700),
    }
    assert diff(held, now) == Plan(
        modes=(
            Node("d", Kind.DIR, 0o755, uid=1000),
            Node("l", Kind.SYMLINK, 0o777, "x", gid=7),
            Node("p", Kind.FIFO, 0o600, uid=5, gid=6),
            Node("s", Kind.SOCKET, 0o700),
        )
    )


def test_whiteouts_are_made_and_an_opaque_mark_is_set_or_taken_last() -> None:
    w = Entry(Kind.WHITEOUT, 0)
    held = {"d": D, "e": replace(D, opaque="y")}
    now = {"d": replace(D, opaque="y"), "e": D, "e/w": w, "f": w}
    plan = diff(held, now)
    assert plan.make == (Node("e/w", Kind.WHITEOUT, 0), Node("f", Kind.WHITEOUT, 0))
    assert plan.modes == (Node("d", Kind.DIR, 0o755, opaque="y"), Node("e", Kind.DIR, 0o755))
    # a directory made again where the image had one: made opaque at once
    assert diff({"x": w}, {"x": replace(D, opaque="y")}) == Plan(
        remove=("x",), make=(Node("x", Kind.DIR, 0o755, opaque="y"),)
    )


def test_sockets_files_are_made_with_their_owner_and_a_link_that_moved_is_made_again() -> None:
    now = {"s": replace(S, uid=3, gid=4), "d": replace(D, uid=1), "d/s": S}
    plan = diff({}, now)
    assert plan.make == (
        Node("d", Kind.DIR, 0o755, uid=1),
        Node("d/s", Kind.SOCKET, 0o755),
        Node("s", Kind.SOCKET, 0o755, uid=3, gid=4),
    )
    assert plan.send == () and plan.modes == ()
    # a socket replaced by a FIFO (another kind) goes first
    assert diff({"s": S}, {"s": P}) == Plan(remove=("s",), make=(Node("s", Kind.FIFO, 0o600),))
