"""A migration between two lab hosts driven by the engine, in this process.

The same machine, runner and CRIU adapters the agents use, wired directly:
CriuSource on the source host, CriuDestination on the destination host (its
CRIU page server on the lab network), LocalTransport for the images and the
workload's data, a journal in the source's work directory. The agents put
HTTP between the runner and the destination; this module is how the engine
and the adapters are tested against real CRIU without them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from haul.agent.journal import Journal
from haul.criu.options import PageServer
from haul.criu.service import Criu
from haul.dest.criudest import CriuDestination
from haul.engine.events import Event
from haul.engine.machine import Migration
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HooksPort
from haul.engine.runner import Outcome, run
from haul.engine.spec import MigrationSpec
from haul.engine.timeouts import DEFAULT_TIMEOUTS_S
from haul.lab.spec import HostSpec
from haul.source.criusource import CriuSource
from haul.transport.local import LocalTransport
from haul.workload.proctree import ProcessTree


@dataclass(frozen=True, slots=True)
class LabMigration:
    migration: Migration
    outcome: Outcome
    source: CriuSource
    dest: CriuDestination

    @property
    def new_tree(self) -> ProcessTree | None:
        return self.dest.tree


async def migrate_in_lab(
    criu: Criu,
    tree: ProcessTree,
    workload: str,
    src: HostSpec,
    dst: HostSpec,
    *,
    strategy: Strategy = Strategy.AUTO,
    max_downtime_ms: float = 300.0,
    timeouts: Mapping[Phase, float] | None = None,
    on_event: Callable[[Phase, Event], None] | None = None,
    dest_workdir: Path | None = None,
    hooks: HooksPort | None = None,
) -> LabMigration:
    mid = "m" + secrets.token_hex(6)
    source = CriuSource(
        criu.on(src.ns),
        tree,
        src.workdir / "out" / mid,
        lazy_listen=PageServer(str(src.address.ip), 20000 + secrets.randbelow(20000)),
        data_dir=src.data_backing / workload,
    )
    dest = CriuDestination(
        criu.on(dst.ns),
        (dest_workdir or dst.workdir / "in") / mid,
        data=dst.data_backing,
        listen=PageServer(str(dst.address.ip), 0),
        lazy_source=source.lazy_listen,
    )
    transport = LocalTransport(
        source.images,
        dest.images,
        source_data=src.data_backing / workload,
        dest_data=dst.data_backing / workload,
    )
    spec = MigrationSpec(
        migration_id=mid,
        workload=workload,
        source_host=src.name,
        dest_host=dst.name,
        strategy=strategy,
        max_downtime_ms=max_downtime_ms,
        source_address=str(src.address.ip),
        dest_address=str(dst.address.ip),
    )
    migration = Migration(spec)
    outcome = await run(
        migration,
        source=source,
        dest=dest,
        transport=transport,
        journal=Journal(src.workdir / "journal"),
        timeouts=timeouts if timeouts is not None else DEFAULT_TIMEOUTS_S,
        on_event=on_event,
        hooks=hooks,
    )
    return LabMigration(migration, outcome, source, dest)
