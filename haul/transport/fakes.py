"""Trees of files for tests: described as data, made on disk, changed in place (only
what differs, so what stays keeps its inode and times), and read back to compare.

A tree is a mapping of names to nodes: :class:`FileNode`, :class:`DirNode` (opaque or
not, as an overlay's upper directory), :class:`LinkNode`, :class:`FifoNode`,
:class:`SocketNode` (a socket's file, as a socket bound there and closed leaves it),
:class:`WhiteoutNode` (an overlay's whiteout), each with its mode and owner. Owners
other than this process's own, whiteouts and opaque marks need root. haul itself never
imports this module.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from haul.transport.http import IncomingUploads
from haul.transport.treeplan import Node
from haul.transport.treescan import OPAQUE

#: (uid, gid) of what a test makes unless it says otherwise: this process's own
ME = (os.geteuid(), os.getegid())


@dataclass(frozen=True)
class FileNode:
    data: bytes = b""
    mode: int = 0o644
    owner: tuple[int, int] = ME


@dataclass(frozen=True)
class DirNode:
    children: Mapping[str, TreeNode] = field(default_factory=dict)
    mode: int = 0o755
    owner: tuple[int, int] = ME
    #: its trusted.overlay.opaque attribute ("y"), or None
    opaque: str | None = None


@dataclass(frozen=True)
class LinkNode:
    target: str
    owner: tuple[int, int] = ME


@dataclass(frozen=True)
class FifoNode:
    mode: int = 0o644
    owner: tuple[int, int] = ME


@dataclass(frozen=True)
class SocketNode:
    mode: int = 0o755
    owner: tuple[int, int] = ME


@dataclass(frozen=True)
class WhiteoutNode:
    mode: int = 0
    owner: tuple[int, int] = ME


TreeNode = FileNode | DirNode | LinkNode | FifoNode | SocketNode | WhiteoutNode
Tree = Mapping[str, TreeNode]


def build(root: Path, tree: Tree) -> None:
    """Make ``tree`` in the existing directory ``root``."""
    morph(root, {}, tree)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _same_kind(a: TreeNode, b: TreeNode) -> bool:
    if isinstance(a, LinkNode) and isinstance(b, LinkNode):
        return a.target == b.target
    return type(a) is type(b)


def _owned(path: Path, was: TreeNode | None, node: TreeNode) -> None:
    """Set ``node``'s owner, then its mode (a new owner clears set-id bits), on ``path``
    when they differ from ``was``'s."""
    if was is None or was.owner != node.owner:
        os.chown(path, *node.owner, follow_symlinks=False)
        was = None
    if not isinstance(node, LinkNode) and (
        not isinstance(was, type(node)) or was.mode != node.mode
    ):
        os.chmod(path, node.mode)


def morph(root: Path, old: Tree, new: Tree, *, same_tick: bool = False) -> None:
    """Change ``root``, which holds ``old``, into ``new``: remove what went or changed
    kind, rewrite changed files in place (same inode), set changed owners and modes.
    With ``same_tick`` a rewritten file keeps its mtime, as a rewrite within one mtime
    tick does (only its ctime tells)."""
    for name, gone in old.items():
        if name not in new or not _same_kind(gone, new[name]):
            _remove(root / name)
    for name, node in new.items():
        path = root / name
        was: TreeNode | None = old.get(name)
        if was is not None and not _same_kind(was, node):
            was = None
        if isinstance(node, DirNode):
            if was is None:
                path.mkdir()
            children = was.children if isinstance(was, DirNode) else {}
            # the children first: a directory closed to its owner is closed last
            os.chmod(path, 0o700)
            morph(path, children, node.children, same_tick=same_tick)
            _owned(path, None, node)
            if node.opaque is not None:
                os.setxattr(path, OPAQUE, node.opaque.encode())
            elif isinstance(was, DirNode) and was.opaque is not None:
                os.removexattr(path, OPAQUE)
            continue
        if isinstance(node, FileNode):
            if not isinstance(was, FileNode) or was.data != node.data:
                before = os.lstat(path) if was is not None else None
                with open(path, "r+b" if was is not None else "wb") as f:
                    f.truncate(0)
                    f.write(node.data)
                if same_tick and before is not None:
                    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
                if isinstance(was, FileNode) and stat.S_IMODE(os.lstat(path).st_mode) != was.mode:
                    was = None  # writing cleared its set-id bits: set the mode again
        elif isinstance(node, LinkNode):
            if was is None:
                os.symlink(node.target, path)
        elif isinstance(node, FifoNode):
            if was is None:
                os.mkfifo(path)
        elif isinstance(node, WhiteoutNode):
            if was is None:
                os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        elif was is None:
            os.mknod(path, stat.S_IFSOCK | 0o600)
        _owned(path, was, node)


#: one entry as read back: kind, permission bits (a link's: 0), then a file's bytes or a
#: link's target, then its owner's uid and gid
Seen = tuple[str, int, bytes | str | None, int, int]


def snapshot(root: Path) -> dict[str, Seen]:
    """Everything under ``root`` by relative path, links not followed."""
    seen: dict[str, Seen] = {}
    for current, dirs, files in os.walk(root):
        for name in sorted(dirs) + sorted(files):
            path = Path(current) / name
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            mode, bits, owner = st.st_mode, stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
            if stat.S_ISLNK(mode):
                seen[rel] = ("symlink", 0, os.readlink(path), *owner)
            elif stat.S_ISDIR(mode):
                seen[rel] = ("dir", bits, _opaque(path), *owner)
            elif stat.S_ISREG(mode):
                seen[rel] = ("file", bits, path.read_bytes(), *owner)
            elif stat.S_ISFIFO(mode):
                seen[rel] = ("fifo", bits, None, *owner)
            elif stat.S_ISSOCK(mode):
                seen[rel] = ("socket", bits, None, *owner)
            elif stat.S_ISCHR(mode) and st.st_rdev == 0:
                seen[rel] = ("whiteout", bits, None, *owner)
            else:
                seen[rel] = ("other", bits, None, *owner)
    return seen


def _opaque(path: Path) -> str | None:
    try:
        return os.getxattr(path, OPAQUE).decode()
    except OSError:
        return None


@dataclass
class MeddlingUploads:
    """The uploads of a real agent client (haul/transport/http.py's IncomingUploads),
    with ``meddle(rel)`` run right before each data file is sent, once per path: what
    a running workload does to a file between its hashing and its sending."""

    inner: IncomingUploads
    meddle: Callable[[str], None]
    meddled: list[str] = field(default_factory=list)

    async def put_image(self, migration_id: str, name: str, path: Path, sha256: str) -> None:
        await self.inner.put_image(migration_id, name, path, sha256)

    async def put_data(
        self,
        migration_id: str,
        rel: str,
        source: Path | BinaryIO,
        sha256: str,
        mode: int,
        owner: tuple[int, int] | None = None,
    ) -> None:
        if rel not in self.meddled:
            self.meddled.append(rel)
            self.meddle(rel)
        await self.inner.put_data(migration_id, rel, source, sha256, mode, owner)

    async def make_entries(self, migration_id: str, nodes: Sequence[Node]) -> None:
        await self.inner.make_entries(migration_id, nodes)

    async def remove_entries(self, migration_id: str, paths: Sequence[str]) -> int:
        return await self.inner.remove_entries(migration_id, paths)
