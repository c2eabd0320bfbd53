"""runc containers on lab hosts, and their migration by the engine in this process.

The same machine, runner and runc drivers the agents use, wired directly between two
lab hosts (as :mod:`haul.lab.migrate` does for process trees): ``RuncSource`` on the
source host, ``RuncDestination`` on the destination (its CRIU page server on the lab
network), ``LocalTransport`` for the images and the container's root filesystem. Each
lab host has its own runc root and cgroup path (lab hosts share one machine's cgroups).

With ``shared`` (a directory every lab host sees) the containers' root filesystems are
there and their migrations go as ``--shared-dir`` ones do through the agents: runc
checkpoints into ``shared/out/ID``, the destination's runc restores from there (no page
server, no image copied), and the root filesystem is used where it is.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from haul.agent.journal import Journal
from haul.criu.options import PageServer
from haul.criu.service import Criu
from haul.dest.runcdest import PlainHome, RuncDestination
from haul.engine.machine import Migration
from haul.engine.phases import Strategy
from haul.engine.ports import HooksPort
from haul.engine.runner import Outcome, run
from haul.engine.spec import MigrationSpec
from haul.engine.timeouts import DEFAULT_TIMEOUTS_S
from haul.lab.bundles import make_bundle
from haul.lab.spec import HostSpec, LabSpec
from haul.runtime.runc import Runc
from haul.source.runcsource import RuncSource
from haul.transport.local import LocalTransport


@dataclass(frozen=True, slots=True)
class LabContainers:
    """Containers named ``name`` on the hosts of ``lab``, run by haul's CRIU."""

    lab: LabSpec
    criu_path: Path
    shared: Path | None = None

    def runc(self, host: HostSpec) -> Runc:
        return Runc(host.workdir / "runc", criu=self.criu_path, host=host.ns)

    def rootfs(self, host: HostSpec, name: str) -> Path:
        """The container's root filesystem: in the host's data, where files move; or in
        the shared directory, the same for every host."""
        return self.shared / name if self.shared is not None else host.data_backing / name

    def bundle(self, host: HostSpec, name: str) -> Path:
        return host.workdir / "bundles" / name

    def cgroups_path(self, host: HostSpec, name: str) -> str:
        return f"/haul-lab/{self.lab.prefix}-{host.name}/{name}"

    async def start(self, host: HostSpec, name: str, argv: Sequence[str]) -> int:
        """A busybox container running ``argv`` on ``host``; its init PID."""
        bundle = self.bundle(host, name)
        await asyncio.to_thread(
            make_bundle,
            bundle,
            self.rootfs(host, name),
            argv=argv,
            cgroups_path=self.cgroups_path(host, name),
        )
        return await self.runc(host).run_detached(
            name, bundle, pid_file=host.workdir / f"{name}.pid"
        )

    async def migrate(
        self,
        name: str,
        src: HostSpec,
        dst: HostSpec,
        *,
        strategy: Strategy = Strategy.STOP_AND_COPY,
        hooks: HooksPort | None = None,
    ) -> Outcome:
        mid = "m" + secrets.token_hex(6)
        criu = Criu(self.criu_path)
        shared = self.shared
        source = RuncSource(
            criu.on(src.ns),
            self.runc(src),
            name,
            (shared if shared is not None else src.workdir) / "out" / mid,
            criu_config=self.bundle(src, name) / "criu.conf",
            # the shared root filesystem is the destination's after the commit
            files=self.rootfs(src, name) if shared is None else None,
            lazy_listen=PageServer(str(src.address.ip), 20000 + secrets.randbelow(20000)),
        )
        config = json.loads((self.bundle(src, name) / "config.json").read_text())
        dest = RuncDestination(
            criu.on(dst.ns),
            self.runc(dst),
            dst.workdir / "in" / mid,
            container_id=name,
            source_config=config,
            bundle=self.bundle(dst, name),
            home=PlainHome(self.rootfs(dst, name)),
            cgroups_path=self.cgroups_path(dst, name),
            data=dst.data_backing if shared is None else None,
            listen=PageServer(str(dst.address.ip), 0) if shared is None else None,
            lazy_source=source.lazy_listen,
            shared_images=source.images if shared is not None else None,
        )
        transport = LocalTransport(
            source.images,
            dest.images,
            source_data=self.rootfs(src, name) if shared is None else None,
            dest_data=self.rootfs(dst, name) if shared is None else None,
            images_shared=shared is not None,
        )
        migration = Migration(MigrationSpec(mid, name, src.name, dst.name, strategy=strategy))
        return await run(
            migration,
            source=source,
            dest=dest,
            transport=transport,
            journal=Journal(src.workdir / "journal"),
            timeouts=DEFAULT_TIMEOUTS_S,
            hooks=hooks,
        )
