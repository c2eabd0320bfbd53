"""A container's writable state on storage that other hosts see too (``--shared-dir``).

``haul run --runtime runc --image ... --shared-dir SHARED`` puts the writable layer of
the container's overlay in ``SHARED/layers/NAME`` (:class:`SharedLayer`) instead of the
agent's state directory:

- ``upper/``: the overlay's writable layer, everything the container wrote (its
  whiteouts and opaque directories included: they are overlayfs's own, never copied);
- ``work.HOST/``: the overlay's work directory of each host that mounts it. overlayfs
  wants the work directory on the file system of ``upper/`` and cleans it at every
  mount, so two mounts must never share one: the source's mount stays (its container
  is frozen in it) while the destination mounts its own for the restore.

A migration with ``--shared-dir SHARED`` uses such a layer where it is: the destination
mounts an overlay of its own image cache and the same ``upper/``; nothing of it is sent.
So does a container whose whole root filesystem lies in SHARED (``--rootfs``,
``--bundle``, adopted). Why, and what overlayfs asks of the storage: docs/containers.md.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from haul.errors import UsageError

#: the subdirectory of a shared directory that holds containers' layers
LAYERS = "layers"


def lies_in(path: Path, directory: Path) -> bool:
    """Whether ``path`` is ``directory`` or below it, every symbolic link resolved."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(directory))


@dataclass(frozen=True, slots=True)
class SharedLayer:
    """One container's layer directory on shared storage."""

    directory: Path

    @classmethod
    def of(cls, shared_dir: Path, name: str) -> SharedLayer:
        return cls(shared_dir / LAYERS / name)

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    def work(self, host: str) -> Path:
        """``host``'s overlay work directory (one per host that mounts the layer)."""
        return self.directory / f"work.{host}"

    def _taken(self) -> UsageError:
        return UsageError(
            f"{self.directory} exists: a container of that name keeps its writable "
            "layer there (on this host or another); choose another name"
        )

    def check_free(self) -> None:
        """Refused when the layer's directory is there already."""
        if self.directory.exists() or self.directory.is_symlink():
            raise self._taken()

    def create(self) -> None:
        """A new, empty layer (refused as :meth:`check_free` says)."""
        self.directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.directory.mkdir(mode=0o700)
        except FileExistsError:
            raise self._taken() from None
        self.upper.mkdir(mode=0o755)

    def check_here(self) -> None:
        """The layer is visible on this host (the destination of a migration)."""
        if not self.upper.is_dir():
            raise UsageError(
                f"the container's writable layer {self.upper} is not on this host: "
                f"is {self.directory.parent.parent} shared with the source?"
            )

    def remove_work(self, host: str) -> None:
        """``host``'s work directory, once its overlay is unmounted."""
        shutil.rmtree(self.work(host), ignore_errors=True)

    def remove(self) -> None:
        """The whole layer: the container is gone, not moved."""
        shutil.rmtree(self.directory, ignore_errors=True)
