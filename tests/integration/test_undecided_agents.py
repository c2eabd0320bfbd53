"""A destination agent that restored its copy but never heard the decision asks the
source agent, and never resumes on its own. Real agents in lab hosts, real CRIU.

The moment between "the destination restored" and "the source decided" is made
deterministic with a hook: at the ``restored`` point (the destination has
restored its copy stopped, nothing is decided yet) a hook script on the source
waits for the test to release it, and the test chooses what happens meanwhile:
the destination agent dies and the source goes on (it commits but cannot tell
the destination), or the source agent dies in the hook (nothing is committed).

With mutual TLS between the agents (``haul lab up --tls``) the destination must ask
the source's agent with haul's CA and its own certificate, as it calls it for
anything else: the last two tests hold the copy while host2's agent is down, host1
commits (or its hook fails and it rolls back), and host2, back, asks over TLS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from haul.lab.agents import agent_config_path, agent_log_path, restart_agent
from haul.lab.held import finish_cli, pause_at_restored
from haul.lab.operator import (
    count,
    incoming,
    journal_phases,
    ps,
    run_counter,
    run_haul,
    verdict,
    wait_count_above,
    wait_until,
)
from haul.lab.spec import LabSpec
from haul.procfs import alive, state


def set_ask_after(lab: LabSpec, host: str, seconds: float) -> None:
    """Restart ``host``'s agent with a shorter wait before it asks the source."""
    path = agent_config_path(lab.member(host))
    text = path.read_text().replace("[agent]\n", f"[agent]\nask_source_after_s = {seconds}\n", 1)
    path.write_text(text)
    asyncio.run(restart_agent(lab, host))


def copy_pid(lab: LabSpec, mid: str) -> int:
    [row] = [r for r in incoming(lab, "host2") if r["id"] == mid]
    assert row["state"] == "restored" and state(row["restored_pid"]) in ("T", "t"), row
    return int(row["restored_pid"])


@pytest.mark.parametrize("source", ["killed-after-the-commit", "alive"])
def test_committed_but_never_told_the_destination_asks_and_resumes_one_copy(
    lab_with_agents: tuple[LabSpec, Path], release: Path, source: str
) -> None:
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "big", mem_mib=512)
    mid, migrating = pause_at_restored(lab, inventory, "big", release)
    copy = copy_pid(lab, mid)
    # host2's agent dies with its copy restored and stopped; host1 goes on and commits,
    # but cannot tell host2 (its retries are refused).
    asyncio.run(restart_agent(lab, "host2", kill_only=True))
    assert state(copy) in ("T", "t"), "the copy outlives its agent, stopped"
    release.touch()
    wait_until("the commit record", lambda: "commit" in journal_phases(lab, "host1", mid))
    if source == "killed-after-the-commit":
        asyncio.run(restart_agent(lab, "host1", kill_only=True))
    finish_cli(migrating)
    assert state(copy) in ("T", "t"), "nobody resumed the copy yet"
    if source == "killed-after-the-commit":
        # The restarted source finishes from its journal: host2 cannot be told either.
        asyncio.run(restart_agent(lab, "host1"))
        wait_until(
            "host1's recovery", lambda: journal_phases(lab, "host1", mid)[-1] in ("done", "failed")
        )
    else:
        wait_until(
            "host1's job to give up", lambda: journal_phases(lab, "host1", mid)[-1] == "failed"
        )
    assert state(copy) in ("T", "t"), "still nobody resumed the copy"
    # host2's agent comes back, finds its stopped copy, asks host1: committed.
    asyncio.run(restart_agent(lab, "host2"))
    wait_until(
        "host2 to adopt the copy",
        lambda: [r for r in ps(inventory) if r["name"] == "big" and r["host"] == "host2"],
    )
    rows = [(r["host"], r["name"], r["root_pid"]) for r in ps(inventory)]
    assert rows == [("host2", "big", copy)], "exactly one copy: the restored one, on host2"
    assert state(copy) not in ("T", "t", None)
    assert incoming(lab, "host2") == []
    assert not list((lab.host(2).data_backing / "agent" / "incoming").iterdir())
    log = agent_log_path(lab.host(2)).read_text()
    assert f"incoming migration {mid} (big): host1 says committed" in log
    n = count(lab, "host2", "big")
    assert wait_count_above(lab, "host2", "big", n) > n
    assert verdict(lab, inventory, "host2", "big").startswith("PASS")


def test_never_committed_the_destination_waits_then_discards(
    lab_with_agents: tuple[LabSpec, Path], release: Path
) -> None:
    lab, inventory = lab_with_agents
    set_ask_after(lab, "host2", 1.0)
    run_counter(inventory, lab, "big", mem_mib=512)
    mid, migrating = pause_at_restored(lab, inventory, "big", release)
    copy = copy_pid(lab, mid)
    # host1's agent dies in the restored hook: nothing is decided. CRIU, held at
    # post-dump, lets the source tree go when the agent's socket closes, but the
    # migration's freezer hold keeps it frozen until an agent decides.
    asyncio.run(restart_agent(lab, "host1", kill_only=True))
    finish_cli(migrating)
    # host2 hears nothing, asks host1 after its deadline, gets no answer, says so,
    # asks again later, and keeps its copy stopped.
    rows = wait_until(
        "host2 to have asked twice", lambda: [r for r in incoming(lab, "host2") if r["asks"] >= 2]
    )
    assert rows[0]["problem"] and rows[0]["last_answer"] == "no answer", rows
    assert "cannot ask host1" in rows[0]["note"], rows
    assert "the copy stays stopped" in rows[0]["note"], rows
    assert rows[0]["next_ask_in_s"] is not None and rows[0]["source"] == "host1"
    assert state(copy) in ("T", "t"), "never resumed on its own"
    n = count(lab, "host1", "big")
    time.sleep(0.5)
    assert count(lab, "host1", "big") == n, "the source ran while its agent was down"
    # host1's restarted agent cannot tell host2 (whose agent is down too) ...
    asyncio.run(restart_agent(lab, "host2", kill_only=True))
    asyncio.run(restart_agent(lab, "host1"))
    wait_until("host1's recovery", lambda: journal_phases(lab, "host1", mid)[-1] == "rolled-back")
    assert wait_count_above(lab, "host1", "big", n) > n, "recovery thawed the source"
    assert state(copy) in ("T", "t")
    # ... so host2, back, asks host1, hears "rolled back" and discards its copy.
    asyncio.run(restart_agent(lab, "host2"))
    wait_until("host2 to discard its copy", lambda: state(copy) is None)
    wait_until("host2's incoming to empty", lambda: incoming(lab, "host2") == [])
    assert (
        f"incoming migration {mid} (big): host1 says rolled back"
        in agent_log_path(lab.host(2)).read_text()
    )
    assert not list((lab.host(2).data_backing / "agent" / "incoming").iterdir())
    assert not (lab.host(2).data_backing / "agent" / "workloads" / "big").exists()
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "big")]
    n = count(lab, "host1", "big")
    assert wait_count_above(lab, "host1", "big", n) > n
    done = run_haul(inventory, "migrate", "big", "--to", "host2", "--strategy", "stop-and-copy")
    assert done.returncode == 0, done.stderr
    assert verdict(lab, inventory, "host2", "big").startswith("PASS")


# -- the same question over mutual TLS --------------------------------------------------


def _after_asking(lab: LabSpec, what: str, check: Callable[[], object]) -> None:
    """``wait_until``, and on failure what host2 says of its copy (what asking host1 got)."""
    try:
        wait_until(what, check)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; host2's incoming: {incoming(lab, 'host2')}") from None


def _asked(lab: LabSpec, mid: str, answer: str) -> bool:
    return (
        f"incoming migration {mid} (big): host1 says {answer}"
        in agent_log_path(lab.host(2)).read_text()
    )


def test_committed_the_destination_asks_over_tls_and_resumes_its_copy(
    tls_lab: tuple[LabSpec, Path], release: Path
) -> None:
    lab, inventory = tls_lab
    run_counter(inventory, lab, "big", mem_mib=16)
    [source_pid] = [r["root_pid"] for r in ps(inventory) if r["name"] == "big"]
    mid, migrating = pause_at_restored(lab, inventory, "big", release)
    copy = copy_pid(lab, mid)
    # host2's agent dies with its copy restored and stopped; host1 commits but cannot
    # tell host2, and gives up.
    asyncio.run(restart_agent(lab, "host2", kill_only=True))
    release.touch()
    wait_until("the commit record", lambda: "commit" in journal_phases(lab, "host1", mid))
    finish_cli(migrating)
    wait_until("host1's job to give up", lambda: journal_phases(lab, "host1", mid)[-1] == "failed")
    assert state(copy) in ("T", "t"), "nobody resumed the copy yet"
    assert not alive(int(source_pid)), "the committed source is gone"  # type: ignore[call-overload]
    # host2's agent comes back, finds its stopped copy and asks host1 over mutual TLS.
    asyncio.run(restart_agent(lab, "host2"))
    _after_asking(
        lab,
        "host2 to adopt the copy",
        lambda: [r for r in ps(inventory) if r["name"] == "big" and r["host"] == "host2"],
    )
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
    run_counter(inventory, lab, "big", mem_mib=16)
    mid, migrating = pause_at_restored(lab, inventory, "big", release)
    copy = copy_pid(lab, mid)
    # host2's agent dies; the restored hook fails, so host1 rolls back: its workload
    # runs again there, but host2 cannot be told to discard its copy.
    asyncio.run(restart_agent(lab, "host2", kill_only=True))
    release.write_text("fail\n")
    finish_cli(migrating)
    wait_until(
        "host1's rollback",
        lambda: journal_phases(lab, "host1", mid)[-1] in ("rolled-back", "failed"),
    )
    assert "commit" not in journal_phases(lab, "host1", mid)
    n = count(lab, "host1", "big")
    assert wait_count_above(lab, "host1", "big", n) > n, "the source runs again"
    assert state(copy) in ("T", "t"), "the copy stays stopped"
    # host2's agent comes back, finds its stopped copy, asks host1 over mutual TLS,
    # hears "rolled back" and discards the copy.
    asyncio.run(restart_agent(lab, "host2"))
    _after_asking(lab, "host2 to discard its copy", lambda: state(copy) is None)
    wait_until("host2's incoming to empty", lambda: incoming(lab, "host2") == [])
    assert _asked(lab, mid, "rolled back")
    assert not list((lab.host(2).data_backing / "agent" / "incoming").iterdir())
    assert not (lab.host(2).data_backing / "agent" / "workloads" / "big").exists()
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "big")]
    n = count(lab, "host1", "big")
    assert wait_count_above(lab, "host1", "big", n) > n
    assert verdict(lab, inventory, "host1", "big").startswith("PASS")
