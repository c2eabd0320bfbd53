"""The CRIU configuration file runc reads for a container (docs/containers.md).

runc passes CRIU none of the options haul needs for a migration (nftables network
lock, leave the restored copy stopped, close the TCP connections of a container on
its host's network), but it names a CRIU configuration file when the container's
``config.json`` carries the ``org.criu.config`` annotation. haul writes that file
right before each checkpoint and restore: one option per line, without the leading
dashes; an option whose argument is optional takes it after ``=``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from haul.errors import ContainerError

ANNOTATION = "org.criu.config"


def config_path(bundle: Path) -> Path:
    """The file the bundle's ``org.criu.config`` annotation names; raises when it has none
    (runc would then read /etc/criu/runc.conf, which is every container's)."""
    try:
        config = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ContainerError(f"cannot read {bundle / 'config.json'}: {exc}") from exc
    named = (config.get("annotations") or {}).get(ANNOTATION)
    if not named:
        raise ContainerError(
            f"the container's config.json ({bundle}) has no {ANNOTATION} annotation: runc "
            "would give CRIU no nftables network lock"
        )
    return Path(named)


def dump_options(*, own_network: bool) -> list[str]:
    """A source's checkpoint: its network locked with nftables (no iptables tools here);
    a container on its host's network leaves its connections behind."""
    return ["network-lock nftables"] + ([] if own_network else ["tcp-close"])


def restore_options(*, own_network: bool) -> list[str]:
    """A destination's restore: the copy left stopped until the commit."""
    return ["leave-stopped", *dump_options(own_network=own_network)]


def write(path: Path, options: Sequence[str]) -> None:
    """Replace the file atomically (runc may read it at any time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in options))
    os.replace(tmp, path)
