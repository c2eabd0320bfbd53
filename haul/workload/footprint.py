"""How many bytes a workload's files take, counted as the destination counts what
arrives for them (haul/dest/intake.py): each regular file its size, every other entry
(directory, link, FIFO) :data:`ENTRY_BYTES`. The source adds this to the workload's
resident memory for the pre-flight's claim, which sets the destination's budget."""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: what a directory, symbolic link or FIFO is counted as (a file system block)
ENTRY_BYTES = 4096


def files_bytes(root: Path) -> int:
    """The bytes of everything under ``root`` (not ``root`` itself; links not followed;
    0 when there is no such directory). Entries that vanish meanwhile are skipped."""
    total = 0
    todo = [root]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                continue
            total += ENTRY_BYTES
            if stat.S_ISDIR(st.st_mode):
                todo.append(Path(entry.path))
    return total
