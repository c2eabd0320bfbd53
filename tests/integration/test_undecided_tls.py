"""A destination that holds an undecided restored copy asks its source over mutual TLS.

Agents with certificates from one CA (``haul lab up --tls``) refuse a caller without
one, so the destination must ask the source's agent with the CA and its own
certificate, as it calls it for anything else. Real agents in lab hosts, real CRIU.
As in test_undecided_agents.py, a hook holds the source at ``restored`` (the
destination restored its copy stopped, nothing is decided) while the destination's
agent dies; the source then commits, or its hook fails and it rolls back, and cannot
tell the destination. The destination's agent, back, finds the stopped copy and
asks: committed, it resumes the copy; rolled back, it discards it. Both ends are
checked: exactly one live copy, its state intact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from test_migrate_agents import count, ps, start_counter, verdict, wait_count_above
from test_undecided_agents import (  # noqa: F401 - release is a fixture
    copy_pid,
    finish_cli,
    incoming,
    journal_phases,
    pause_at_restored,
    release,
    until,
)

from haul.lab.agents import agent_log_path, restart_agent
from haul.lab.spec import LabSpec
from haul.procfs import alive, state


def _after_asking(lab: LabSpec, what: str, check: Callable[[], object]) -> None:
    """``until``, and on failure what host2 says of its copy (what asking host1 got)."""
    try:
        until(what, check)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; host2's incoming: {incoming(lab, 'host2')}") from None


def _asked(lab: LabSpec, mid: str, answer: str) -> bool:
    return f"incoming migration {mid} (big): host1 says {answer}" in \
        agent_log_path(lab.host(2)).read_text()


def test_committed_the_destination_asks_over_tls_and_resumes_its_copy(
    tls_lab: tuple[LabSpec, Path], release: Path
) -> None:
    lab, inventory = tls_lab
    start_counter(inventory, lab, "big", mem_mib=16)
    [source_pid] = [r["root_pid"] for r in ps(inventory) if r["name"] == "big"]
    mid, migrating = pause_at_restored(lab, inventory, "big", release)
    copy = copy_pid(lab, mid)
    # host2's agent dies with its copy restored and stopped; host1 commits but cannot
    # tell host2, and gives up.
    asyncio.run(restart_agent(lab, "host2", kill_only=True))
    release.touch()
    until("the commit record", lambda: "commit" in journal_phases(lab, "host1", mid))
    finish_cli(migrating)
    until("host1's job to give up",
          lambda: journal_phases(lab, "host1", mid)[-1] == "failed")
    assert state(copy) in ("T", "t"), "nobody resumed the copy yet"
    assert not alive(int(source_pid)), "the committed source is gone"  # type: ignore[call-overload]
    # host2's agent comes back, finds its stopped copy and asks host1 over mutual TLS.
    asyncio.run(restart_agent(lab, "host2"))
    _after_asking(lab, "host2 to adopt the copy", lambda: [
        r for r in ps(inventory) if r["name"] == "big" and r["host"] == "host2"])
    assert _asked(lab, mid, "committed")
    rows = [(r["host"], r["name"], r["root_pid"]) for r in ps(inventory)]
    assert rows == [("host2", "big", copy)], "exactly one copy: the restored one, on host2"
    assert state(copy) not in ("T", "t", None)
    assert incoming(lab, "host2") == []
    assert not list((lab.host(2).data_backing / "agent" / "incoming").iterdir())
    n = count(lab, "host2", "big")
    assert wait_count_above(lab, "host2", "big", n) > n
    assert verdict(lab, inventory, "host2", "big").startswith("PASS")


def test_rolled_back_the_destination_asks_over_tls_and_discards_its_copy(
    tls_lab: tuple[LabSpec, Path], release: Path
) -> None:
    lab, inventory = tls_lab
    start_counter(inventory, lab, "big", mem_mib=16)
    mid, migrating = pause_at_restored(lab, inventory, "big", release)
    copy = copy_pid(lab, mid)
    # host2's agent dies; the restored hook fails, so host1 rolls back: its workload
    # runs again there, but host2 cannot be told to discard its copy.
    asyncio.run(restart_agent(lab, "host2", kill_only=True))
    release.write_text("fail\n")
    finish_cli(migrating)
    until("host1's rollback", lambda: journal_phases(lab, "host1", mid)[-1]
          in ("rolled-back", "failed"))
    assert "commit" not in journal_phases(lab, "host1", mid)
    n = count(lab, "host1", "big")
    assert wait_count_above(lab, "host1", "big", n) > n, "the source runs again"
    assert state(copy) in ("T", "t"), "the copy stays stopped"
    # host2's agent comes back, finds its stopped copy, asks host1 over mutual TLS,
    # hears "rolled back" and discards the copy.
    asyncio.run(restart_agent(lab, "host2"))
    _after_asking(lab, "host2 to discard its copy", lambda: state(copy) is None)
    until("host2's incoming to empty", lambda: incoming(lab, "host2") == [])
    assert _asked(lab, mid, "rolled back")
    assert not list((lab.host(2).data_backing / "agent" / "incoming").iterdir())
    assert not (lab.host(2).data_backing / "agent" / "workloads" / "big").exists()
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "big")]
    n = count(lab, "host1", "big")
    assert wait_count_above(lab, "host1", "big", n) > n
    assert verdict(lab, inventory, "host1", "big").startswith("PASS")
