"""What an incoming migration takes in over HTTP, and where it puts it.

Images hold the workload's memory and state, so what arrives is root's alone,
whatever the agent's umask: directories 0700 (:func:`private_dir`), image files
0600.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the mode of every directory an incoming migration's images pass through
PRIVATE_DIR = 0o700
#: the mode of a received image file
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a directory only root may enter: made 0700 with whatever it lacks
    above it (each 0700 too), or set to 0700 when it is there already."""
    missing = []
    here = path
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile, by another request that sets its mode
        os.chmod(d, PRIVATE_DIR)  # a umask may have taken bits root needs none of
    os.chmod(path, PRIVATE_DIR)
    return path
