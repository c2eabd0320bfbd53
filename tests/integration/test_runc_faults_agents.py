"""Faults while a runc container migrates through the agents: the one rule holds.

Real runc, CRIU, umoci and agents in lab hosts; the container has an address of its own.
Each test checks both ends: runc lists the container on exactly one host, in the state it
should be in (``runc state``), it goes on counting there, and the other host keeps
nothing of it (runc state, mounts, namespace, cgroup, veth, directory, incoming
migration).

- The destination agent dies right after its copy is restored, stopped (the source is
  held at the ``restored`` hook point, haul/lab/held.py). If the source then rolls back,
  the restarted agent finds the copy, asks the source and discards it; if the source
  committed, the restarted agent asks, resumes it and registers it as a runc container.
  Or it dies while ``runc restore`` runs: the source rolls back, and the restarted agent
  waits for that restore, which outlives it, and removes the copy runc made.
- An abort (``haul jobs abort``, Ctrl-C) while runc's CRIU dumps the container (held
  stopped there, so the abort surely lands in the final dump): the migration waits for
  the checkpoint to end by itself (CRIU killed while it works inside the tasks leaves
  them to die of SIGTRAP), then the same container runs on the source again, not left
  paused, its address answers, and the next migration goes through with its memory
  intact.
- runc's CRIU killed while it dumps the container: the container stays frozen (paused)
  while the migration is held (the destination's agent does not answer, so the rollback
  waits on it), and runs again once the rollback resumes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul.lab.agents import agent_log_path, restart_agent
from haul.lab.faults import freezer_state, parent, runc_restoring, seizing_criu, stopped
from haul.lab.held import finish_cli, pause_at_restored
from haul.lab.hostrunc import container_ids, container_leftovers, host_runc
from haul.lab.images import add_memhog
from haul.lab.operator import (
    agent_pid,
    incoming,
    journal_dir,
    journal_phases,
    ps,
    run_haul,
    wait_until,
)
from haul.lab.spec import LabSpec
from haul.procfs import state
from haul.runtime.images import ImageRef

NAME = "fc1"
ADDRESS = "10.77.0.123"
#: memhog's memory: the final dump takes a moment (CRIU is found while it dumps)
MEMHOG_MIB = 128
STOP_AND_COPY_JSON = ("--strategy", "stop-and-copy", "-o", "json")


@pytest.fixture(scope="session")
def memhog_image(busybox_image: ImageRef, tmp_path_factory: pytest.TempPathFactory) -> ImageRef:
    """The busybox image with memhog in a layer of its own (tag ``memhog``)."""
    layout = tmp_path_factory.mktemp("oci-memhog") / "busybox"
    shutil.copytree(busybox_image.layout, layout)
    return add_memhog(ImageRef(layout, busybox_image.tag), tag="memhog")


@pytest.fixture
def migrations() -> Iterator[list[subprocess.Popen[str]]]:
    """``haul migrate`` processes a test starts, ended and reaped whatever happened."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _run(lab: LabSpec, inventory: Path, image: ImageRef, *argv: str) -> None:
    """Container NAME on host1 from ``image`` (copied where the agents may read it)."""
    layout = lab.root_dir / "images" / "busybox"
    if not layout.exists():
        shutil.copytree(image.layout, layout)
    args = ["--image", f"oci:{layout}:{image.tag}", "--ip", f"{ADDRESS}/24"]
    done = run_haul(
        inventory, "run", "--name", NAME, "--host", "host1", "--runtime", "runc", *args, *argv
    )
    assert done.returncode == 0, done.stderr


def _counter_file(lab: LabSpec, host: str) -> Path:
    """Where the container's count lands on ``host``: its writable layer (read from
    outside: ``runc exec`` into a paused container would hang)."""
    upper = lab.member(host).data_backing / "agent" / "containers" / NAME / "upper"
    return upper / "data" / "count" if (upper / "data" / "count").exists() else upper / "count"


def _count(lab: LabSpec, host: str) -> int:
    try:
        return int(_counter_file(lab, host).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _counting_on(lab: LabSpec, host: str, above: int) -> int:
    return wait_until(
        f"{NAME} counting on {host}", lambda: (n := _count(lab, host)) > above and n, timeout_s=30
    )


def _runc_status(lab: LabSpec, host: str) -> str | None:
    """``runc state``'s status of the container on ``host`` (None: runc has none)."""
    done = host_runc(lab, host, "state", NAME)
    return str(json.loads(done.stdout)["status"]) if done.returncode == 0 else None


def _pings(lab: LabSpec, host: str) -> bool:
    ping = ["ip", "netns", "exec", lab.member(host).netns, "ping", "-c", "1", "-W", "2", ADDRESS]
    return subprocess.run(ping, capture_output=True).returncode == 0


def _runs_only_on(lab: LabSpec, inventory: Path, host: str) -> None:
    """runc lists the container on ``host`` only, running; haul ps agrees; it counts."""
    other = "host2" if host == "host1" else "host1"
    assert container_ids(lab, host) == [NAME] and container_ids(lab, other) == []
    assert _runc_status(lab, host) == "running"
    assert freezer_state(lab, host, NAME) == "THAWED"
    assert [(r["host"], r["name"], r["runtime"]) for r in ps(inventory)] == [(host, NAME, "runc")]
    _counting_on(lab, host, _count(lab, host))


def _verdict(lab: LabSpec, host: str) -> str:
    """memhog's own check of its memory, on SIGTERM."""
    done = host_runc(lab, host, "kill", NAME, "TERM")
    assert done.returncode == 0, done.stderr
    upper = lab.member(host).data_backing / "agent" / "containers" / NAME / "upper"
    return wait_until(
        "memhog's verdict",
        lambda: (upper / "verdict").exists() and (upper / "verdict").read_text(),
        timeout_s=30,
    )


def _copy_pid(lab: LabSpec, mid: str) -> int:
    [row] = [r for r in incoming(lab, "host2") if r["id"] == mid]
    assert row["state"] == "restored" and state(row["restored_pid"]) in ("T", "t"), row
    return int(row["restored_pid"])


def _migrate(
    inventory: Path, migrations: list[subprocess.Popen[str]], to: str = "host2"
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "haul", "migrate", NAME, "--to", to, *STOP_AND_COPY_JSON],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HAUL_HOSTS": str(inventory)},
    )
    migrations.append(proc)
    return proc


def _new_migration(lab: LabSpec, before: set[Path]) -> str:
    found = wait_until(
        "the migration's journal", lambda: set(journal_dir(lab, "host1").glob("*.jsonl")) - before
    )
    return next(iter(found)).stem


def _seized_criu(lab: LabSpec, init: int) -> int:
    """runc's CRIU once it has seized the container whose init is ``init`` (its cgroup
    thawed by CRIU, every task in a ptrace stop): the middle of the final dump."""
    return wait_until(
        "runc's CRIU to seize the container",
        lambda: freezer_state(lab, "host1", NAME) == "THAWED" and seizing_criu(init),
        timeout_s=60,
    )


def _init_pid(lab: LabSpec, host: str) -> int:
    return int(json.loads(host_runc(lab, host, "state", NAME).stdout)["pid"])


def _moves_again(lab: LabSpec, inventory: Path) -> None:
    done = run_haul(inventory, "migrate", NAME, "--to", "host2", "--strategy", "stop-and-copy")
    assert done.returncode == 0, done.stderr + done.stdout
    _runs_only_on(lab, inventory, "host2")
    assert container_leftovers(lab, "host1", NAME) == []


# -- the destination agent dies with its copy restored, stopped ---------------------------------


def test_destination_agent_killed_at_restored_then_rolled_back(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef, release: Path
) -> None:
    lab, inventory = lab_with_agents
    _run(lab, inventory, busybox_image)
    _counting_on(lab, "host1", 0)
    mid, migrating = pause_at_restored(lab, inventory, NAME, release)
    copy = _copy_pid(lab, mid)
    assert container_ids(lab, "host2") == [NAME], "runc restored the copy on host2"
    # host2's agent dies; the restored hook fails, so host1 rolls back, but cannot tell
    # host2 to discard its copy.
    asyncio.run(restart_agent(lab, "host2", kill_only=True))
    release.write_text("fail\n")
    finish_cli(migrating)
    wait_until(
        "host1's rollback",
        lambda: journal_phases(lab, "host1", mid)[-1] in ("rolled-back", "failed"),
    )
    assert "commit" not in journal_phases(lab, "host1", mid)
    assert _runc_status(lab, "host1") == "running"
    _counting_on(lab, "host1", _count(lab, "host1"))
    assert state(copy) in ("T", "t"), "the copy stays stopped while nobody can ask"
    # host2's agent comes back, finds the copy, asks host1 ("rolled back") and discards
    # it: runc's container, its home, everything the migration left.
    asyncio.run(restart_agent(lab, "host2"))
    wait_until("host2 to discard its copy", lambda: state(copy) is None)
    wait_until("host2's incoming to empty", lambda: incoming(lab, "host2") == [])
    assert f"incoming migration {mid} ({NAME}): host1 says rolled back" in (
        agent_log_path(lab.host(2)).read_text()
    )
    assert container_leftovers(lab, "host2", NAME) == []
    _runs_only_on(lab, inventory, "host1")
    assert _pings(lab, "host2"), "its address answers from host2: host1 runs it, unlocked"
    _moves_again(lab, inventory)


def test_destination_agent_killed_at_restored_then_committed(
    lab_with_agents: tuple[LabSpec, Path], busybox_image: ImageRef, release: Path
) -> None:
    lab, inventory = lab_with_agents
    _run(lab, inventory, busybox_image)
    _counting_on(lab, "host1", 0)
    mid, migrating = pause_at_restored(lab, inventory, NAME, release)
    copy = _copy_pid(lab, mid)
    # host2's agent dies; host1 commits (the source container is killed), cannot tell
    # host2 to resume its copy, and gives up.
    asyncio.run(restart_agent(lab, "host2", kill_only=True))
    release.touch()
    wait_until("the commit record", lambda: "commit" in journal_phases(lab, "host1", mid))
    finish_cli(migrating)
    wait_until("host1's job to give up", lambda: journal_phases(lab, "host1", mid)[-1] == "failed")
    assert container_ids(lab, "host1") == [], "the committed source is gone"
    assert state(copy) in ("T", "t"), "nobody resumed the copy yet"
    stopped_at = _count(lab, "host2")
    # host2's agent comes back, finds the copy, asks host1 ("committed"), resumes it
    # and registers it as its runc container.
    asyncio.run(restart_agent(lab, "host2"))
    wait_until(
        "host2 to adopt the copy",
        lambda: [r for r in ps(inventory) if r["name"] == NAME and r["host"] == "host2"],
    )
    assert f"incoming migration {mid} ({NAME}): host1 says committed" in (
        agent_log_path(lab.host(2)).read_text()
    )
    rows = [(r["host"], r["name"], r["runtime"], r["root_pid"]) for r in ps(inventory)]
    assert rows == [("host2", NAME, "runc", copy)], "one copy: the restored one, on host2"
    assert incoming(lab, "host2") == []
    assert not list((lab.member("host2").data_backing / "agent" / "incoming").iterdir())
    _runs_only_on(lab, inventory, "host2")
    assert _count(lab, "host2") > stopped_at, "it goes on from where it was"
    assert _pings(lab, "host1"), "its address answers from host1: unlocked on host2"
    assert container_leftovers(lab, "host1", NAME) == []
    # it is host2's container now: haul kill removes it and everything made for it
    killed = run_haul(inventory, "kill", NAME, "--host", "host2")
    assert killed.returncode == 0, killed.stderr
    assert container_leftovers(lab, "host2", NAME) == []


def test_destination_agent_killed_while_runc_restores(
    lab_with_agents: tuple[LabSpec, Path],
    memhog_image: ImageRef,
    migrations: list[subprocess.Popen[str]],
) -> None:
    """host2's agent dies while ``runc restore`` runs (runc held stopped meanwhile); host1
    rolls back. runc restore outlives its agent (a session of its own): the restarted
    agent waits for it to end before it removes the container runc restored, which was
    never marked restored (its source cannot have committed), with everything made for
    it."""
    lab, inventory = lab_with_agents
    _run(lab, inventory, memhog_image, "--", "/bin/memhog", str(MEMHOG_MIB), "/count", "/verdict")
    _counting_on(lab, "host1", 0)
    before = set(journal_dir(lab, "host1").glob("*.jsonl"))
    migrating = _migrate(inventory, migrations)
    mid = _new_migration(lab, before)
    runc = wait_until("runc restore on host2", lambda: runc_restoring(mid), timeout_s=60)
    log = agent_log_path(lab.host(2))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with stopped(runc):
            asyncio.run(restart_agent(lab, "host2", kill_only=True))
            out, errs = migrating.communicate(timeout=120)
            assert migrating.returncode != 0, out + errs
            phases = journal_phases(lab, "host1", mid)
            assert "commit" not in phases and phases[-1] in ("rolled-back", "failed"), phases
            assert _runc_status(lab, "host1") == "running"
            _counting_on(lab, "host1", _count(lab, "host1"))
            # host2's agent comes back while runc restore still runs
            restarted = pool.submit(asyncio.run, restart_agent(lab, "host2"))
            wait_until(
                "host2's agent to wait for runc restore",
                lambda: (
                    f"container {NAME}: waits for what an earlier agent left" in (log.read_text())
                ),
            )
        restarted.result(timeout=60)
    assert runc_restoring(mid) is None
    assert container_leftovers(lab, "host2", NAME) == []
    assert f"removed what an earlier agent left of incoming migration {mid}" in log.read_text()
    _runs_only_on(lab, inventory, "host1")
    _moves_again(lab, inventory)
    assert _verdict(lab, "host2").startswith("PASS")


# -- the final dump interrupted ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["jobs-abort", "ctrl-c"])
def test_abort_during_the_final_dump_resumes_the_container(
    lab_with_agents: tuple[LabSpec, Path],
    memhog_image: ImageRef,
    migrations: list[subprocess.Popen[str]],
    how: str,
) -> None:
    lab, inventory = lab_with_agents
    _run(lab, inventory, memhog_image, "--", "/bin/memhog", str(MEMHOG_MIB), "/count", "/verdict")
    _counting_on(lab, "host1", 0)
    init = _init_pid(lab, "host1")
    before = set(journal_dir(lab, "host1").glob("*.jsonl"))
    migrating = _migrate(inventory, migrations)
    mid = _new_migration(lab, before)
    # CRIU has seized the container and dumps it; held there (stopped), the dump cannot
    # end before the abort lands. CRIU works inside the container's tasks then (killed,
    # it would leave them on its code, and they would die of SIGTRAP): the abort lets
    # runc's checkpoint end by itself, and the migration waits for it.
    log = agent_log_path(lab.host(1))
    with stopped(_seized_criu(lab, init)):
        if how == "jobs-abort":
            aborted = run_haul(inventory, "jobs", "abort", mid)
            assert aborted.returncode == 0, aborted.stderr
        else:
            migrating.send_signal(signal.SIGINT)
        wait_until(
            "the abort to reach runc's checkpoint",
            lambda: f"runc checkpoint {NAME} cancelled: waiting" in log.read_text(),
        )
        assert journal_phases(lab, "host1", mid)[-1] == "freeze", "it waits for CRIU"
    out, errs = migrating.communicate(timeout=120)
    assert migrating.returncode == 1, errs
    assert json.loads(out)["outcome"] == "rolled-back"
    assert _init_pid(lab, "host1") == init, "the same container, never restarted"
    phases = journal_phases(lab, "host1", mid)
    assert phases[phases.index("rolling-back") - 1] == "freeze", phases
    assert "commit" not in phases
    _runs_only_on(lab, inventory, "host1")
    assert _pings(lab, "host2"), "its address answers: no lock is left on it"
    assert container_leftovers(lab, "host2", NAME) == []
    _moves_again(lab, inventory)
    assert _verdict(lab, "host2").startswith("PASS")


def test_criu_killed_during_the_checkpoint_keeps_the_container_frozen(
    lab_with_agents: tuple[LabSpec, Path],
    memhog_image: ImageRef,
    migrations: list[subprocess.Popen[str]],
) -> None:
    lab, inventory = lab_with_agents
    _run(lab, inventory, memhog_image, "--", "/bin/memhog", str(MEMHOG_MIB), "/count", "/verdict")
    _counting_on(lab, "host1", 0)
    init = _init_pid(lab, "host1")
    before = set(journal_dir(lab, "host1").glob("*.jsonl"))
    migrating = _migrate(inventory, migrations)
    mid = _new_migration(lab, before)
    criu = _seized_criu(lab, init)
    # host2's agent does not answer: the rollback waits on it (it first asks whether
    # host2 ran out of room for the pages), so the migration is held there.
    with stopped(agent_pid(lab, "host2")):
        os.kill(criu, signal.SIGKILL)
        wait_until(
            "host1 to roll back",
            lambda: journal_phases(lab, "host1", mid)[-1:] == ["rolling-back"],
        )
        assert _runc_status(lab, "host1") == "paused", "held frozen while the rollback waits"
        held_at = _count(lab, "host1")
        time.sleep(0.5)
        assert _count(lab, "host1") == held_at, "it did not run"
        assert _runc_status(lab, "host1") == "paused"
    out, errs = migrating.communicate(timeout=120)
    assert migrating.returncode == 1, errs
    assert json.loads(out)["outcome"] == "rolled-back"
    _runs_only_on(lab, inventory, "host1")
    assert _pings(lab, "host2"), "its address answers: no lock is left on it"
    wait_until("host2's incoming to empty", lambda: incoming(lab, "host2") == [])
    assert container_leftovers(lab, "host2", NAME) == []
    _moves_again(lab, inventory)
    assert _verdict(lab, "host2").startswith("PASS")


def test_criu_killed_while_it_serves_pages_lets_nothing_run(
    lab_with_agents: tuple[LabSpec, Path], memhog_image: ImageRef, release: Path
) -> None:
    """Post-copy: runc's CRIU serves the pages with every task seized; the container is
    paused all the while, so a CRIU that dies lets nothing run, even before runc hears of
    it (runc held stopped here), until the rollback resumes it."""
    lab, inventory = lab_with_agents
    _run(lab, inventory, memhog_image, "--", "/bin/memhog", str(MEMHOG_MIB), "/count", "/verdict")
    _counting_on(lab, "host1", 0)
    init = _init_pid(lab, "host1")
    mid, migrating = pause_at_restored(lab, inventory, NAME, release, strategy="post-copy")
    copy = _copy_pid(lab, mid)
    criu = seizing_criu(init)
    assert criu, "runc's CRIU serves the pages, the container's tasks seized"
    assert _runc_status(lab, "host1") == "paused", "paused while CRIU serves its pages"
    runc = parent(criu)
    assert runc is not None
    with stopped(runc):
        os.kill(criu, signal.SIGKILL)
        wait_until("CRIU's end", lambda: seizing_criu(init) is None)
        held_at = _count(lab, "host1")
        time.sleep(0.5)
        assert _count(lab, "host1") == held_at, "it did not run"
        assert _runc_status(lab, "host1") == "paused"
    assert _runc_status(lab, "host1") == "paused"
    release.write_text("fail\n")
    finish_cli(migrating)
    wait_until(
        "host1's rollback",
        lambda: journal_phases(lab, "host1", mid)[-1] in ("rolled-back", "failed"),
    )
    assert "commit" not in journal_phases(lab, "host1", mid)
    wait_until("host2 to discard its copy", lambda: state(copy) is None)
    wait_until("host2's incoming to empty", lambda: incoming(lab, "host2") == [])
    assert container_leftovers(lab, "host2", NAME) == []
    _runs_only_on(lab, inventory, "host1")
    assert _pings(lab, "host2"), "its address answers: no lock is left on it"
    _moves_again(lab, inventory)
    assert _verdict(lab, "host2").startswith("PASS")
