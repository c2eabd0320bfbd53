"""Copying a workload's data directory to a new place on this machine, in one pass.

The plan of a full round (haul/transport/treeplan.py against nothing) applied
locally (haul/transport/treeapply.py): regular files copied with a SHA-256 each
and verified where they land; directories (empty ones too), symbolic links (never
followed), FIFOs (empty) and unix sockets' files (no socket listens there: CRIU
binds a restored socket to its path again, haul/transport/treescan.py) made as they
are; each with its owner and its whole mode; devices refused.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from haul.errors import TransportError
from haul.transport.imagecopy import CopyReport
from haul.transport.treeapply import apply_plan
from haul.transport.treeplan import diff
from haul.transport.treescan import scan


def sync_tree(src: Path, dst: Path) -> CopyReport:
    """Copy the tree ``src`` to ``dst`` (which must not exist) and verify every file.
    ``src`` must not change meanwhile (its workload is frozen, or not running)."""
    started = time.monotonic()
    if dst.exists() or dst.is_symlink():
        raise TransportError(f"data directory {dst} already exists on the destination")
    if not src.is_dir():
        raise TransportError(f"data directory {src} does not exist on the source")
    plan = diff({}, scan(src))
    dst.mkdir(parents=True)
    st = src.stat()
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    sent = apply_plan(src, dst, plan)
    if sent.unsent:
        raise TransportError(f"{src / sent.unsent[0]} changed while it was copied")
    return CopyReport(sent.files, sent.bytes_sent, time.monotonic() - started)
