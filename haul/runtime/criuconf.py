"""The CRIU configuration files runc's CRIU reads for a container (docs/containers.md).

runc passes CRIU none of the options haul needs for a migration (nftables network
lock, leave the restored copy stopped, close the TCP connections of a container on
its host's network). CRIU reads them from configuration files, one option per line
without the leading dashes (an option whose argument is optional takes it after
``=``), in this order, a later one overriding an earlier one:

- the file ``CRIU_CONFIG_FILE`` names in its environment, which it inherits from runc:
  haul writes one per checkpoint (:data:`ENV`), so every container gets haul's
  options, whoever made its bundle;
- the file runc names over the RPC: the one the container's ``org.criu.config``
  annotation names (haul's own for the containers it starts or restores, written
  right before each checkpoint and restore), or ``/etc/criu/runc.conf`` when the
  container has no such annotation. For a container haul adopted, that file is its
  owner's: haul never writes it, and what it says wins over haul's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

ANNOTATION = "org.criu.config"
#: the environment variable CRIU reads a configuration file from
ENV = "CRIU_CONFIG_FILE"


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
