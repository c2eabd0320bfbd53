"""Read-only bind mounts of the host's directories into a container (``haul run --mount``).

A container from an image holds only what the image holds. A program the host has
(Python, for the demo's web service) is lent to it read-only: ``--mount SRC:DST[:ro]``
adds a bind mount of the host's SRC at DST to the container's ``config.json``. runc
checkpoints a bind mount as an external mount (CRIU records where it was, not what it
holds) and mounts the same SRC again at the restore, so every host the container moves
to must have SRC with the same content (the same packages; docs/containers.md).

Only read-only: what a container writes must land in its writable layer, which haul
moves with it; what it wrote into a writable bind mount would stay on the host it left.

SRC must lie in one of the agent's allowed roots (``[agent.runc] allowed_roots``), with
symbolic links resolved (the configuration names the resolved path): on the host that
starts the container, and again on each host it moves to (:func:`check_sources`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haul.errors import UsageError
from haul.runtime.bundle import inside_roots

#: how haul mounts a source: not recursively (what is mounted below SRC stays out),
#: read-only, no set-user-ID programs, no device files
BIND_OPTIONS = ("bind", "ro", "nosuid", "nodev")
#: the mode ``SRC:DST:MODE`` may name
READ_ONLY = "ro"


@dataclass(frozen=True, slots=True)
class BindMount:
    """A host path (``source``) mounted read-only at ``destination`` in the container."""

    source: Path
    destination: str

    @classmethod
    def parse(cls, text: str) -> BindMount:
        """``SRC:DST`` or ``SRC:DST:ro``, both absolute paths; a UsageError line otherwise."""
        parts = text.split(":")
        if len(parts) == 3 and parts[2] != READ_ONLY:
            raise UsageError(
                f"--mount {text}: only read-only mounts (:{READ_ONLY}): what a container "
                "writes must be in its own layer, which moves with it"
            )
        if len(parts) not in (2, 3):
            raise UsageError(f"--mount {text}: give SRC:DST or SRC:DST:{READ_ONLY}")
        source, destination = parts[0], parts[1]
        for what, path in (("SRC", source), ("DST", destination)):
            if not path.startswith("/"):
                raise UsageError(f"--mount {text}: {what} must be an absolute path")
            if any(part in (".", "..") for part in path.split("/")):
                raise UsageError(f"--mount {text}: {what} must not hold '.' or '..'")
        return cls(Path(source), destination)

    def entry(self) -> dict[str, Any]:
        """The mount as ``config.json`` names it."""
        return {
            "destination": self.destination,
            "type": "bind",
            "source": str(self.source),
            "options": list(BIND_OPTIONS),
        }


def _is_bind(entry: dict[str, Any]) -> bool:
    options = entry.get("options") or []
    return entry.get("type") == "bind" or "bind" in options or "rbind" in options


def bind_mounts(config: dict[str, Any]) -> list[BindMount]:
    """The bind mounts a runtime configuration names (the host paths it needs)."""
    return [
        BindMount(Path(str(entry.get("source", ""))), str(entry.get("destination", "")))
        for entry in config.get("mounts") or []
        if isinstance(entry, dict) and _is_bind(entry)
    ]


def check_sources(mounts: Sequence[BindMount], roots: Sequence[Path]) -> list[BindMount]:
    """``mounts`` with their sources resolved, if each lies in one of ``roots`` and
    exists; a UsageError line naming the first that does not."""
    checked = []
    for mount in mounts:
        real = inside_roots(mount.source, roots, "mount source")
        if not real.exists():
            raise UsageError(
                f"mount source {mount.source} (for {mount.destination}) does not exist on this host"
            )
        checked.append(BindMount(real, mount.destination))
    return checked


def add_mounts(config: dict[str, Any], mounts: Sequence[BindMount]) -> None:
    """Append ``mounts`` to ``config``'s; refused when a destination is mounted already."""
    entries = config.setdefault("mounts", [])
    taken = {str(e.get("destination", "")).rstrip("/") or "/" for e in entries}
    for mount in mounts:
        destination = mount.destination.rstrip("/") or "/"
        if destination == "/":
            raise UsageError("--mount: the root filesystem is the image's; mount elsewhere")
        if destination in taken:
            raise UsageError(f"--mount: the container mounts {destination} already")
        taken.add(destination)
        entries.append(mount.entry())
