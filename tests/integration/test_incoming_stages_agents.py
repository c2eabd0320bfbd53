"""The destination's incoming routes follow the migration's stage (docs/incoming.md), with
real agents in lab hosts and real CRIU: a call out of its stage is refused and the
migration goes on as it would have; each test ends with exactly one live copy, intact.
A name an incoming migration holds is no one else's until it is discarded.

The moments are held with a hook on the source (haul/lab/held.py): at ``post-commit``
(post-copy: the destination's copy runs while its pages still come from the frozen
source) or at ``restored`` (the copy waits stopped, nothing decided)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from haul.agent.client import AgentAccess, AgentClient
from haul.agent.migration_models import IncomingOpen
from haul.errors import PeerWrongState
from haul.lab.agents import agent_socket
from haul.lab.held import finish_cli, pause_at, pause_at_restored
from haul.lab.operator import (
    count,
    incoming,
    ps,
    run_counter,
    run_haul,
    state_file,
    verdict,
    wait_count_above,
)
from haul.lab.spec import LabSpec
from haul.procfs import alive, state

T = TypeVar("T")


def on_host(lab: LabSpec, host: str, call: Callable[[AgentClient], Awaitable[T]]) -> T:
    """``call`` with a client of ``host``'s agent (as its operator: its unix socket)."""

    async def run() -> T:
        async with AgentAccess(f"unix://{agent_socket(lab.prefix, host)}").client() as agent:
            return await call(agent)

    return asyncio.run(run())


def the_copy(lab: LabSpec, mid: str, stage: str) -> int:
    [row] = [r for r in incoming(lab, "host2") if r["id"] == mid]
    assert row["state"] == stage, row
    return int(row["restored_pid"])


def stopped(pid: int) -> bool:
    return state(pid) in ("T", "t")


def test_a_discard_in_the_lazy_phase_is_refused_and_one_copy_runs(
    lab_with_agents: tuple[LabSpec, Path], release: Path
) -> None:
    """Seen on lab hosts: one discard on host2 during a post-copy migration's lazy phase
    killed the running copy, the migration failed, host1's tree stayed frozen holding
    the pages, and no copy ran anywhere."""
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "big", mem_mib=512)
    [before] = ps(inventory)
    source_pid = int(before["root_pid"])
    mid, migrating = pause_at(
        lab, inventory, "big", release, point="post-commit", strategy="post-copy"
    )
    copy = the_copy(lab, mid, "resumed")
    assert alive(copy) and not stopped(copy), "host2's copy runs since the commit"
    with pytest.raises(PeerWrongState) as refused:
        on_host(lab, "host2", lambda agent: agent.incoming.discard(mid))
    assert "resumed" in str(refused.value) and "\n" not in str(refused.value)
    assert alive(copy) and not stopped(copy), "the refused discard left the copy running"
    release.touch()
    finish_cli(migrating, timeout_s=120)
    assert migrating.returncode == 0, migrating.stderr
    assert [(r["host"], r["name"], r["root_pid"]) for r in ps(inventory)] == [
        ("host2", "big", copy)
    ], "exactly one copy: host2's"
    assert not alive(source_pid), "host1's frozen tree was killed after the pages went"
    n = count(lab, "host2", "big")
    assert wait_count_above(lab, "host2", "big", n) > n
    assert verdict(lab, inventory, "host2", "big").startswith("PASS")


def test_replays_and_early_calls_at_the_restored_copy_change_nothing(
    lab_with_agents: tuple[LabSpec, Path], release: Path
) -> None:
    """A second restore gives the first answer (no second copy); finish before the
    resume adopts nothing; and the source's rollback then still discards the copy."""
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "big", mem_mib=64)
    mid, migrating = pause_at_restored(lab, inventory, "big", release)
    copy = the_copy(lab, mid, "restored")
    again = on_host(lab, "host2", lambda agent: agent.incoming.restore(mid, False))
    assert again.pid == copy, "the first restore's answer: no second copy"
    with pytest.raises(PeerWrongState, match="not resumed"):
        on_host(lab, "host2", lambda agent: agent.incoming.finish(mid))
    assert the_copy(lab, mid, "restored") == copy and stopped(copy)
    assert [r["name"] for r in ps(inventory) if r["host"] == "host2"] == []
    release.write_text("roll back\n")  # the hook fails: the source rolls back
    finish_cli(migrating, timeout_s=120)
    assert migrating.returncode == 1, migrating.stdout + migrating.stderr
    assert not alive(copy), "the rollback discarded host2's copy"
    assert incoming(lab, "host2") == []
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "big")]
    n = count(lab, "host1", "big")
    assert wait_count_above(lab, "host1", "big", n) > n
    assert verdict(lab, inventory, "host1", "big").startswith("PASS")


def test_a_name_arriving_is_nobody_else_s_and_its_discard_removes_only_its_own(
    lab_with_agents: tuple[LabSpec, Path],
) -> None:
    """Seen on a lab host2: POST /v1/incoming for a name, then POST /v1/workloads with it,
    then the migration's discard: the new workload ran on with its directory gone."""
    lab, inventory = lab_with_agents
    ask = IncomingOpen(id="m-names", workload="w1", strategy="post-copy", needed_bytes=0)
    on_host(lab, "host2", lambda agent: agent.incoming.open(ask))
    started = run_haul(inventory, "run", "--name", "w1", "--host", "host2", "--", "sleep", "60")
    assert started.returncode != 0 and "incoming migration m-names" in started.stderr
    assert started.stderr.count("\n") == 1, started.stderr
    on_host(lab, "host2", lambda agent: agent.incoming.discard("m-names"))
    run_counter(inventory, lab, "w1", host="host2")
    # a second migration bringing that name now: refused, and the counter's files stay
    with pytest.raises(Exception, match="a workload holds it"):
        on_host(
            lab, "host2", lambda agent: agent.incoming.open(ask.model_copy(update={"id": "m2"}))
        )
    on_host(lab, "host2", lambda agent: agent.incoming.discard("m2"))
    n = count(lab, "host2", "w1")
    assert wait_count_above(lab, "host2", "w1", n) > n
    assert state_file(lab, "host2", "w1").exists()
    assert verdict(lab, inventory, "host2", "w1").startswith("PASS")
