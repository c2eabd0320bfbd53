"""haul migrate through real agents in lab hosts: the README's operator story.

Each test checks both ends: exactly one live copy, its state intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haul.lab.agents import shared_dir
from haul.lab.operator import (
    count,
    ps,
    run_counter,
    run_haul,
    state_file,
    verdict,
    wait_count_above,
)
from haul.lab.samples import COUNTER
from haul.lab.spec import LabSpec
from haul.lab.zdtm import ZDTM_PROGRAMS


@pytest.mark.parametrize("strategy", ["stop-and-copy", "post-copy"])
def test_migrate_there_and_back(lab_with_agents: tuple[LabSpec, Path], strategy: str) -> None:
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "web1")
    for src, dst in (("host1", "host2"), ("host2", "host1")):
        before = count(lab, src, "web1")
        done = run_haul(
            inventory, "migrate", "web1", "--to", dst, "--strategy", strategy, "-o", "json"
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["outcome"] == "done" and result["strategy"] == strategy
        assert result["source"] == src and result["dest"] == dst
        assert result["downtime_ms"] > 0 and result["total_ms"] >= result["downtime_ms"]
        # its 32 MiB of memory reached the destination (post-copy: fetched lazily)
        assert result["bytes_sent"] >= 32 << 20 and result["pages_sent"] >= 32 << 20 >> 12
        where = [(r["host"], r["name"]) for r in ps(inventory)]
        assert where == [(dst, "web1")], "exactly one copy, on the destination"
        assert not state_file(lab, src, "web1").exists(), "nothing left on the source"
        assert wait_count_above(lab, dst, "web1", before) > before
    assert verdict(lab, inventory, "host1", "web1").startswith("PASS")


def test_wrong_token_is_refused_and_nothing_moves(
    lab_with_agents: tuple[LabSpec, Path], tmp_path: Path
) -> None:
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "web2")
    # From the lab's client machine, over TCP, with a token that is off by one character.
    import tomllib

    hosts = tomllib.loads(inventory.read_text())["hosts"]
    lines = []
    for name, entry in hosts.items():
        lines += [
            f"[hosts.{name}]",
            f'url = "{entry["peer_url"]}"',
            f'token = "{entry["token"]}x"',
            "",
        ]
    bad = tmp_path / "bad.toml"
    bad.write_text("\n".join(lines))
    done = run_haul(
        bad, "migrate", "web2", "--to", "host2", "--from", "host1", netns=lab.client.netns
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "token is not valid" in done.stderr
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "web2")]
    n = count(lab, "host1", "web2")
    assert wait_count_above(lab, "host1", "web2", n) > n
    # and the right token still works
    done = run_haul(inventory, "migrate", "web2", "--to", "host2", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert verdict(lab, inventory, "host2", "web2").startswith("PASS")


def test_unknown_workload_and_host_fail_in_one_line(lab_with_agents: tuple[LabSpec, Path]) -> None:
    _, inventory = lab_with_agents
    done = run_haul(inventory, "migrate", "nope", "--to", "host2")
    assert done.returncode == 3 and done.stderr.startswith("haul: refused:")  # at pre-flight
    assert "nope" in done.stderr and done.stderr.count("\n") == 1
    done = run_haul(inventory, "migrate", "nope", "--to", "host9")
    assert done.returncode == 2 and "host9" in done.stderr


def _start_migration(
    inventory: Path, workload: str, to: str, strategy: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "haul",
            "migrate",
            workload,
            "--to",
            to,
            "--strategy",
            strategy,
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HAUL_HOSTS": str(inventory)},
    )


def _wait_phase(inventory: Path, phases: set[str], timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = run_haul(inventory, "jobs", "list", "-o", "json")
        if done.returncode == 0:
            running = [j for j in json.loads(done.stdout) if not j["finished"]]
            if running and running[-1]["phase"] in phases:
                return str(running[-1]["id"])
        time.sleep(0.02)
    raise AssertionError(f"no migration reached {phases}")


def test_abort_during_the_final_dump_rolls_back(lab_with_agents: tuple[LabSpec, Path]) -> None:
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "big", mem_mib=512)
    migrating = _start_migration(inventory, "big", "host2", "stop-and-copy")
    mid = _wait_phase(inventory, {"freeze"})
    aborted = run_haul(inventory, "jobs", "abort", mid)
    assert aborted.returncode == 0, aborted.stderr
    out, errs = migrating.communicate(timeout=120)
    assert migrating.returncode == 1, errs
    assert json.loads(out)["outcome"] == "rolled-back"
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "big")]
    assert not list((lab.host(2).data_backing / "agent").glob("incoming/*")), "host2 is clean"
    n = count(lab, "host1", "big")
    assert wait_count_above(lab, "host1", "big", n) > n
    done = run_haul(inventory, "migrate", "big", "--to", "host2", "--strategy", "post-copy")
    assert done.returncode == 0, done.stderr
    assert verdict(lab, inventory, "host2", "big").startswith("PASS")


def test_destination_agent_killed_mid_migration(lab_with_agents: tuple[LabSpec, Path]) -> None:
    import asyncio

    from haul.lab.agents import restart_agent

    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "big2", mem_mib=512)
    migrating = _start_migration(inventory, "big2", "host2", "stop-and-copy")
    _wait_phase(inventory, {"freeze"})
    asyncio.run(restart_agent(lab, "host2", kill_only=True))
    out, _errs = migrating.communicate(timeout=180)
    result = json.loads(out)
    # Before the commit: the source runs again. The destination could not be told to
    # discard its copy (its agent is gone), so the rollback says so.
    assert result["outcome"] in ("rolled-back", "failed"), result
    assert migrating.returncode in (1, 4)
    host1 = [(r["host"], r["name"]) for r in ps_host(inventory, "host1")]
    assert host1 == [("host1", "big2")]
    n = count(lab, "host1", "big2")
    assert wait_count_above(lab, "host1", "big2", n) > n
    # The agent comes back, sweeps what was left, and the next migration succeeds.
    asyncio.run(restart_agent(lab, "host2"))
    assert not list((lab.host(2).data_backing / "agent").glob("incoming/*"))
    assert not (lab.host(2).data_backing / "agent" / "workloads" / "big2").exists()
    done = run_haul(inventory, "migrate", "big2", "--to", "host2")
    assert done.returncode == 0, done.stderr
    assert verdict(lab, inventory, "host2", "big2").startswith("PASS")


def ps_host(inventory: Path, host: str) -> list[dict[str, object]]:
    done = run_haul(inventory, "ps", "--host", host, "-o", "json")
    assert done.returncode == 0, done.stderr
    return [r for r in json.loads(done.stdout) if r.get("status") != "gone"]


def test_check_and_dry_run_touch_nothing(lab_with_agents: tuple[LabSpec, Path]) -> None:
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "web3", mem_mib=16)
    done = run_haul(inventory, "check", "web3", "--to", "host2", "-o", "json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["ok"] and view["strategy"] == "post-copy"  # auto, on this kernel
    assert "no memory change tracking (soft-dirty)" in view["strategy_reason"]
    assert view["workload_bytes"] >= 16 << 20
    journal = lab.host(1).data_backing / "agent" / "journal"
    assert not list(journal.glob("check-*")), "a check journals nothing"
    refused = run_haul(
        inventory, "migrate", "web3", "--to", "host2", "--strategy", "pre-copy", "--dry-run"
    )
    assert refused.returncode == 3
    assert "soft-dirty" in refused.stderr
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "web3")]
    assert not list((lab.host(2).data_backing / "agent").glob("incoming/*"))
    done = run_haul(inventory, "jobs", "list", "-o", "json")
    assert json.loads(done.stdout) == [], "a check starts no migration"


def test_ctrl_c_before_the_commit_rolls_back(lab_with_agents: tuple[LabSpec, Path]) -> None:
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "big3", mem_mib=512)
    migrating = _start_migration(inventory, "big3", "host2", "stop-and-copy")
    _wait_phase(inventory, {"freeze"})
    migrating.send_signal(signal.SIGINT)
    out, errs = migrating.communicate(timeout=120)
    assert migrating.returncode == 1, errs
    assert "aborting" in errs
    assert json.loads(out)["outcome"] == "rolled-back"
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "big3")]
    n = count(lab, "host1", "big3")
    assert wait_count_above(lab, "host1", "big3", n) > n
    assert verdict(lab, inventory, "host1", "big3").startswith("PASS")


def test_zdtm_programs_through_the_agents(
    lab_with_agents: tuple[LabSpec, Path], zdtm_dir: Path
) -> None:
    """CRIU's own oracle, the operator's way: haul run, haul migrate, SIGTERM, PASS."""
    lab, inventory = lab_with_agents
    programs = ZDTM_PROGRAMS
    for name in sorted(programs):
        w = f"z-{name.replace('_', '-')}"
        done = run_haul(
            inventory,
            "run",
            "--name",
            w,
            "--host",
            "host1",
            "--",
            str(zdtm_dir / name),
            f"--pidfile={name}.pid",
            f"--outfile={name}.out",
            *programs[name],
        )
        assert done.returncode == 0, done.stderr
        wdir = lab.host(1).data_backing / "agent" / "workloads" / w
        deadline = time.monotonic() + 30
        while not (wdir / f"{name}.pid").exists():
            assert time.monotonic() < deadline, f"{name} never became ready"
            time.sleep(0.02)
    for name in sorted(programs):
        w = f"z-{name.replace('_', '-')}"
        done = run_haul(
            inventory, "migrate", w, "--to", "host2", "--strategy", "stop-and-copy", "-o", "json"
        )
        assert done.returncode == 0, f"{name}: {done.stdout} {done.stderr}"
    rows = {r["name"]: r for r in ps(inventory)}
    for name in sorted(programs):
        w = f"z-{name.replace('_', '-')}"
        assert rows[w]["host"] == "host2"
        os.kill(int(rows[w]["root_pid"]), signal.SIGTERM)  # type: ignore[call-overload]
    for name in sorted(programs):
        w = f"z-{name.replace('_', '-')}"
        out = lab.host(2).data_backing / "agent" / "workloads" / w / f"{name}.out"
        deadline = time.monotonic() + 30
        while not out.exists():
            assert time.monotonic() < deadline, f"{name} wrote no verdict on host2"
            time.sleep(0.05)
        assert "PASS" in out.read_text(), f"{name}: {out.read_text()}"


def test_source_agent_killed_mid_migration_recovers_on_restart(
    lab_with_agents: tuple[LabSpec, Path],
) -> None:
    import asyncio

    from haul.lab.agents import restart_agent

    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "big4", mem_mib=512)
    migrating = _start_migration(inventory, "big4", "host2", "stop-and-copy")
    mid = _wait_phase(inventory, {"freeze"})
    asyncio.run(restart_agent(lab, "host1", kill_only=True))
    migrating.communicate(timeout=120)
    assert migrating.returncode != 0, "the watch lost its agent"
    # Before the commit, CRIU resumes the tree itself when the agent's socket closes
    # (the agent died while CRIU waited at post-dump); the restarted agent closes the
    # journal and has the destination discard its part.
    asyncio.run(restart_agent(lab, "host1"))
    deadline = time.monotonic() + 30
    journal = lab.host(1).data_backing / "agent" / "journal" / f"{mid}.jsonl"
    while time.monotonic() < deadline:
        last = json.loads(journal.read_text().splitlines()[-1])
        if last["phase"] == "rolled-back":
            break
        time.sleep(0.1)
    assert last["phase"] == "rolled-back" and last["cause"] == "recovered", last
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "big4")]
    n = count(lab, "host1", "big4")
    assert wait_count_above(lab, "host1", "big4", n) > n, "the restarted agent resumed it"
    assert not list((lab.host(2).data_backing / "agent").glob("incoming/m*/")), (
        "the destination discarded its part"
    )
    done = run_haul(inventory, "migrate", "big4", "--to", "host2")
    assert done.returncode == 0, done.stderr
    assert verdict(lab, inventory, "host2", "big4").startswith("PASS")


def test_migrate_by_pid(lab_with_agents: tuple[LabSpec, Path], tmp_path: Path) -> None:
    """`haul migrate pid:PID --from HOST`: a tree haul did not start, moved by its PID."""
    from haul.workload.proctree import PIDINIT

    lab, inventory = lab_with_agents
    state = tmp_path / "state"  # outside the hosts' data: both hosts see it
    launcher = subprocess.Popen(
        [
            *lab.host(1).ns.prefix(),
            "unshare",
            "--pid",
            "--ipc",
            "--uts",
            "--fork",
            "--",
            sys.executable,
            "-S",
            "-E",
            str(PIDINIT),
            "--log",
            str(tmp_path / "log"),
            "--cwd",
            str(tmp_path),
            "--",
            sys.executable,
            "-S",
            "-E",
            str(COUNTER),
            str(state),
            "--mem-mib",
            "8",
        ]
    )
    deadline = time.monotonic() + 20
    while not state.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    root_pid = int(children[0])
    plain = subprocess.Popen(["sleep", "60"])
    try:
        refused = run_haul(
            inventory, "migrate", f"pid:{plain.pid}", "--from", "host1", "--to", "host2"
        )
        assert refused.returncode == 1 and "own PID namespace" in refused.stderr
    finally:
        plain.kill()
        plain.wait()
    no_from = run_haul(inventory, "migrate", f"pid:{root_pid}", "--to", "host2")
    assert no_from.returncode == 2 and "--from" in no_from.stderr
    done = run_haul(
        inventory, "migrate", f"pid:{root_pid}", "--from", "host1", "--to", "host2", "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["workload"] == f"pid-{root_pid}"
    rows = ps(inventory)
    assert [(r["host"], r["name"]) for r in rows] == [("host2", f"pid-{root_pid}")]
    before = int(state.read_text().split()[1])
    time.sleep(0.3)
    assert int(state.read_text().split()[1]) > before
    os.kill(int(rows[0]["root_pid"]), signal.SIGTERM)  # type: ignore[call-overload]
    deadline = time.monotonic() + 30
    while not state.read_text().startswith(("PASS", "FAIL")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state.read_text().startswith("PASS")
    launcher.wait(timeout=10)  # its tree was killed at the commit; it has exited


def test_memory_through_a_shared_directory(lab_with_agents: tuple[LabSpec, Path]) -> None:
    lab, inventory = lab_with_agents
    # outside the hosts' private data, both see it, and their agents let a peer name it
    shared = shared_dir(lab.prefix)
    run_counter(inventory, lab, "web5", mem_mib=32)
    before = count(lab, "host1", "web5")
    done = run_haul(
        inventory, "migrate", "web5", "--to", "host2", "--shared-dir", str(shared), "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "done" and result["strategy"] == "stop-and-copy"
    shown = json.loads(run_haul(inventory, "jobs", "show", result["id"]).stdout)
    assert shown["stats"]["transfer_bytes"] < 4 << 20, "the pages did not go over the API"
    assert shown["stats"]["dump_bytes"] >= 32 << 20, "they were written to the shared dir"
    assert list(shared.iterdir()) == [], "the shared directory is cleaned up"
    assert wait_count_above(lab, "host2", "web5", before) > before
    refused = run_haul(
        inventory,
        "migrate",
        "web5",
        "--to",
        "host1",
        "--shared-dir",
        str(shared),
        "--strategy",
        "post-copy",
    )
    assert refused.returncode == 1 and "post-copy" in refused.stderr
    assert verdict(lab, inventory, "host2", "web5").startswith("PASS")


def _http_status(lab: LabSpec, url: str) -> int:
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.client.netns,
            sys.executable,
            "-c",
            f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).status)",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(done.stdout.strip()) if done.returncode == 0 else -1


def test_a_listening_server_moves_and_answers_on_the_destination(
    lab_with_agents: tuple[LabSpec, Path], criu_path: Path
) -> None:
    version = subprocess.run(
        [str(criu_path), "--version"], capture_output=True, text=True
    ).stdout.split()[1]
    if tuple(int(x) for x in version.split(".")[:2]) < (4, 2):
        pytest.skip(f"CRIU {version} cannot dump TCP sockets on this kernel (4.2 can)")
    lab, inventory = lab_with_agents
    done = run_haul(
        inventory,
        "run",
        "--name",
        "www",
        "--host",
        "host1",
        "--",
        sys.executable,
        "-m",
        "http.server",
        "8000",
    )
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 20
    while _http_status(lab, "http://10.77.0.1:8000/") != 200:
        assert time.monotonic() < deadline, "the server never answered on host1"
        time.sleep(0.1)
    done = run_haul(inventory, "migrate", "www", "--to", "host2", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert _http_status(lab, "http://10.77.0.2:8000/") == 200
    assert _http_status(lab, "http://10.77.0.1:8000/") == -1, "nothing answers on host1"
