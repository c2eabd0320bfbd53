"""Running a program inside a host's namespaces (network, and mount where the host has one).

A lab host is a network namespace plus a mount namespace in which the host's
own data directory is mounted at the common data path; a real host is the
machine itself (no prefix). Everything haul runs "on a host" (CRIU, workload
launchers) goes through :meth:`HostNs.prefix`, so nsenter opens the namespace
files from haul's own view and the program then sees the host's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True, slots=True)
class HostNs:
    #: the network namespace's name under /run/netns, or None for haul's own
    net: str | None = None
    #: a file holding the mount namespace (a bind mount of nsfs), or None for haul's own
    mnt: Path | None = None

    def prefix(self) -> list[str]:
        """The argv prefix that runs the rest of a command inside these namespaces."""
        if self.net is None and self.mnt is None:
            return []
        argv = ["nsenter"]
        if self.net is not None:
            argv.append(f"--net={NETNS_DIR / self.net}")
        if self.mnt is not None:
            argv.append(f"--mount={self.mnt}")
        return [*argv, "--"]

    def missing(self) -> str | None:
        """What of these namespaces does not exist, or None when all do."""
        if self.net is not None and not (NETNS_DIR / self.net).exists():
            return f"network namespace {self.net}"
        if self.mnt is not None and not self.mnt.exists():
            return f"mount namespace {self.mnt}"
        return None


HOST = HostNs()
