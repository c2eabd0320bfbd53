"""What the destination must do to turn the tree it holds into the source's tree now.

``diff(held, now)`` compares two manifests (haul/transport/treescan.py) and gives a
plan that applies cleanly in its own order:

1. ``remove``: entries that are gone or whose kind changed (a symbolic link whose
   target changed too), deepest first, so a directory is empty when it goes;
2. ``make``: new directories, symbolic links, FIFOs, sockets' files and overlay
   whiteouts, parents first, each with its owner; a directory is made with its
   owner's rwx, so what goes into it can;
3. ``send``: regular files that are new or changed (size, mtime_ns, ctime_ns,
   inode, mode or owner differ: ctime catches a rewrite of the same size within one
   mtime tick), each with its mode and owner;
4. ``modes``: owners and permission bits set last, deepest first: entries whose mode
   or owner alone changed (a link's owner only: a link has no mode of its own), or a
   directory whether it is opaque (an overlay's), and new directories whose mode
   lacks the owner's rwx.

A regular file whose mode or owner changed is sent again (both change its ctime
anyway). Modes keep their set-id and sticky bits; the owner is set before the mode
(a new owner clears set-id bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from haul.transport.treescan import Entry, Kind, Manifest

OWNER_RWX = 0o700


@dataclass(frozen=True, slots=True)
class Node:
    """One entry as the destination makes it, or sets its mode."""

    path: str
    kind: Kind
    mode: int
    target: str | None = None
    uid: int = 0
    gid: int = 0
    #: a directory's opaque mark (haul/transport/treescan.py), or None
    opaque: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    remove: tuple[str, ...] = ()
    make: tuple[Node, ...] = ()
    send: tuple[Node, ...] = ()
    modes: tuple[Node, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.remove or self.make or self.send or self.modes)


def _parts(path: str) -> tuple[str, ...]:
    return PurePosixPath(path).parts


def _deepest_first(path: str) -> tuple[int, tuple[str, ...]]:
    parts = _parts(path)
    return -len(parts), parts


def replaced(was: Entry, now: Entry) -> bool:
    """The destination's entry must go before the new one is made."""
    return was.kind is not now.kind or (now.kind is Kind.SYMLINK and was.target != now.target)


def file_changed(was: Entry, now: Entry) -> bool:
    """A regular file is sent again when anything the scan saw of it changed."""
    return (was.size, was.mtime_ns, was.ctime_ns, was.inode, was.mode, was.uid, was.gid) != (
        now.size,
        now.mtime_ns,
        now.ctime_ns,
        now.inode,
        now.mode,
        now.uid,
        now.gid,
    )


def attrs_changed(was: Entry, now: Entry) -> bool:
    """The owner, or (but for a link) the mode, of an entry that stays changed."""
    return (
        (was.uid, was.gid) != (now.uid, now.gid)
        or (now.kind is not Kind.SYMLINK and was.mode != now.mode)
        or was.opaque != now.opaque
    )


def node_of(path: str, entry: Entry, mode: int | None = None) -> Node:
    return Node(
        path,
        entry.kind,
        entry.mode if mode is None else mode,
        entry.target,
        entry.uid,
        entry.gid,
        entry.opaque,
    )


def diff(held: Manifest, now: Manifest) -> Plan:
    remove = [p for p, was in held.items() if p not in now or replaced(was, now[p])]
    make: list[Node] = []
    send: list[Node] = []
    modes: list[Node] = []
    for path in sorted(now, key=_parts):
        entry = now[path]
        was = held.get(path)
        node = node_of(path, entry)
        if entry.kind is Kind.FILE:
            if was is None or replaced(was, entry) or file_changed(was, entry):
                send.append(node)
        elif was is None or replaced(was, entry):
            if entry.kind is Kind.DIR:
                make.append(node_of(path, entry, entry.mode | OWNER_RWX))
                if entry.mode | OWNER_RWX != entry.mode:
                    modes.append(node)
            else:
                make.append(node)
        elif attrs_changed(was, entry):
            modes.append(node)
    return Plan(
        remove=tuple(sorted(remove, key=_deepest_first)),
        make=tuple(make),
        send=tuple(send),
        modes=tuple(sorted(modes, key=lambda n: _deepest_first(n.path))),
    )
