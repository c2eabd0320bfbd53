"""CRIU's own ZDTM test programs as the oracle: each is started on host1, moved
to host2 by the engine (in this process; test_migrate_agents.py moves the same
programs through the agents), then SIGTERM'ed there, and must write PASS."""

from __future__ import annotations

from pathlib import Path

import pytest

from haul.criu.service import Criu
from haul.engine.phases import Phase, Strategy
from haul.lab.migrate import migrate_in_lab
from haul.lab.spec import LabSpec
from haul.lab.zdtm import ZDTM_PROGRAMS, wait_for_file
from haul.procfs import netns_inode, ns_inode
from haul.workload.proctree import start_tree

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("name", sorted(ZDTM_PROGRAMS))
async def test_zdtm_program_survives_an_engine_migration(
    name: str, criu: Criu, lab: LabSpec, zdtm_dir: Path
) -> None:
    """Through the engine's stop-and-copy (page server on host2)."""
    h1, h2 = lab.host(1), lab.host(2)
    subdir = f"zdtm-{name}"
    (h1.data_backing / subdir).mkdir()
    run = lab.data_path / subdir  # as the hosts see it; the programs' file names are relative
    tree = await start_tree(
        [
            str(zdtm_dir / name),
            f"--pidfile={run}/{name}.pid",
            f"--outfile={run}/{name}.out",
            *ZDTM_PROGRAMS[name],
        ],
        log_path=run / "stdio.log",
        host=h1.ns,
        cwd=run,
    )
    await wait_for_file(h1.data_backing / subdir / f"{name}.pid", tree)
    result = await migrate_in_lab(criu, tree, subdir, h1, h2, strategy=Strategy.STOP_AND_COPY)
    assert result.outcome.phase is Phase.DONE, result.outcome.reason
    moved = result.new_tree
    assert moved is not None and not tree.alive
    assert ns_inode(moved.root_pid, "net") == netns_inode(h2.netns)
    moved.terminate()
    await moved.wait(timeout_s=30)
    out = (h2.data_backing / subdir / f"{name}.out").read_text()
    assert "PASS" in out, f"{name} on host2 wrote:\n{out}"
