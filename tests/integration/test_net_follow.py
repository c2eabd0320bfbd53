"""The network follows the workload: its address, its MAC and its TCP connections.

A checking echo server runs with an address of its own on host1; a client in
the lab's client namespace holds one TCP connection to it and streams records
through it while the server moves host1 -> host2 -> host1. Both ends check the
byte stream; the connection must never be reset or reopened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haul.lab.operator import ps, run_haul
from haul.lab.spec import LabSpec
from haul.net.spec import host_ifname

STREAM = Path(__file__).resolve().parents[2] / "haul" / "lab" / "samples" / "stream.py"
ADDRESS = "10.77.0.101"


def _links(lab: LabSpec, host: str) -> str:
    return subprocess.run(
        ["ip", "-n", lab.member(host).netns, "-br", "link"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _start_echo(inventory: Path, name: str = "echo", host: str = "host1") -> None:
    done = run_haul(
        inventory,
        "run",
        "--name",
        name,
        "--host",
        host,
        "--ip",
        f"{ADDRESS}/24",
        "--port",
        "9000",
        "--",
        sys.executable,
        "-S",
        "-E",
        str(STREAM),
        "serve",
        "verdict",
        "--port",
        "9000",
    )
    assert done.returncode == 0, done.stderr


def _client(lab: LabSpec, duration_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.client.netns,
            sys.executable,
            "-S",
            "-E",
            str(STREAM),
            "send",
            ADDRESS,
            "--port",
            "9000",
            "--duration",
            str(duration_s),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _verdict(lab: LabSpec, inventory: Path, host: str, name: str) -> str:
    rows = [r for r in ps(inventory) if r["name"] == name]
    assert [r["host"] for r in rows] == [host], rows
    os.kill(int(rows[0]["root_pid"]), signal.SIGTERM)  # type: ignore[call-overload]
    path = lab.member(host).data_backing / "agent" / "workloads" / name / "verdict"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{name} wrote no verdict on {host}")


@pytest.mark.root
def test_tcp_connection_survives_migration_there_and_back(
    lab_with_agents: tuple[LabSpec, Path],
) -> None:
    lab, inventory = lab_with_agents
    _start_echo(inventory)
    rows = ps(inventory)
    assert rows[0]["address"] == f"{ADDRESS}/24" and rows[0]["host"] == "host1"
    assert host_ifname("echo") in _links(lab, "host1")
    client = _client(lab, duration_s=9)
    try:
        time.sleep(1.5)
        for to, strategy in (("host2", "stop-and-copy"), ("host1", "post-copy")):
            done = run_haul(
                inventory, "migrate", "echo", "--to", to, "--strategy", strategy, "-o", "json"
            )
            assert done.returncode == 0, done.stderr
            result = json.loads(done.stdout)
            assert result["outcome"] == "done", result
            print(f"{strategy} to {to}: downtime {result['downtime_ms']} ms")
            # the address went along: only the host that runs it has the veth
            other = "host1" if to == "host2" else "host2"
            assert host_ifname("echo") in _links(lab, to)
            assert host_ifname("echo") not in _links(lab, other)
            time.sleep(1.0)
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    stream = json.loads(out.strip().splitlines()[-1])
    print("client:", stream)
    assert stream["error"] == "", (stream, err)
    assert stream["echoed"] == stream["sent"] > 100
    # the server saw the same stream, whole and in order, on one connection
    assert _verdict(lab, inventory, "host1", "echo") == f"PASS {stream['sent']}"


@pytest.mark.root
def test_run_with_an_address_refuses_bad_input_in_one_line(
    lab_with_agents: tuple[LabSpec, Path],
) -> None:
    _lab, inventory = lab_with_agents
    bad = run_haul(
        inventory, "run", "--name", "x", "--host", "host1", "--ip", ADDRESS, "--", "sleep", "100"
    )
    assert bad.returncode != 0 and "prefix length" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    _start_echo(inventory)
    taken = run_haul(
        inventory,
        "run",
        "--name",
        "y",
        "--host",
        "host1",
        "--ip",
        f"{ADDRESS}/24",
        "--",
        "sleep",
        "100",
    )
    assert taken.returncode != 0 and "taken by workload echo" in taken.stderr, taken.stderr
    assert [r["name"] for r in ps(inventory)] == ["echo"]


@pytest.mark.root
def test_the_network_is_locked_from_the_freeze_until_the_destination_resumes(
    lab_with_agents: tuple[LabSpec, Path], tmp_path: Path
) -> None:
    """At the restored point both copies exist: the frozen source's namespace carries
    CRIU's nftables lock and the restored copy's carries haul's; after the move the
    running copy's namespace has no lock left."""
    _lab, inventory = lab_with_agents
    _start_echo(inventory)
    seen = tmp_path / "tables"
    hook = tmp_path / "list-locks"
    hook.write_text(f"""#!/bin/sh
[ "$1" = restored ] || exit 0
for pid in $(pgrep -f 'stream.py serve verdict'); do
    echo "$pid $(nsenter --net=/proc/$pid/ns/net nft list tables | tr '\\n' ' ')" >> {seen}
done
""")
    hook.chmod(0o755)
    done = run_haul(
        inventory,
        "migrate",
        "echo",
        "--to",
        "host2",
        "--strategy",
        "stop-and-copy",
        "--hook",
        str(hook),
    )
    assert done.returncode == 0, done.stderr
    lines = seen.read_text().splitlines()
    print(lines)
    # each line: a process of either copy (launcher, init, server) and its netns' tables
    source = [line for line in lines if "table inet CRIU" in line]
    copy = [line for line in lines if "table inet haul_lock" in line]
    assert source and copy and len(source) + len(copy) == len(lines), lines
    [row] = [r for r in ps(inventory) if r["name"] == "echo"]
    tables = subprocess.run(
        ["nsenter", f"--net=/proc/{row['root_pid']}/ns/net", "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tables.strip() == "", tables
