"""A workload's data directory through real agents in a lab: its files go in rounds while
it runs, and only what changed since goes in the frozen window; every kind of entry goes
with its owner and its whole mode, as CRIU needs them at the restore."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from haul.lab.operator import (
    count,
    ps,
    run_counter,
    run_haul,
    state_file,
    wait_count_above,
    wait_until,
)
from haul.lab.spec import LabSpec
from haul.transport.fakes import (
    DirNode,
    FifoNode,
    FileNode,
    LinkNode,
    SocketNode,
    Tree,
    build,
    snapshot,
)

#: 600 files of 8 KiB (4.7 MiB) in 30 directories, a link, a FIFO, an empty directory
FILES = 600
SIZE = 8192
TREE: Tree = {
    "store": DirNode(
        {
            f"d{d:02}": DirNode(
                {f"f{i:03}": FileNode(bytes([i % 251]) * SIZE, 0o640) for i in range(20)}
            )
            for d in range(FILES // 20)
        },
        0o750,
    ),
    "current": LinkNode("store/d00/f000"),
    "pipe": FifoNode(0o600),
    "spool": DirNode(mode=0o700),
}


def _data(lab: LabSpec, host: str, name: str) -> Path:
    return state_file(lab, host, name).parent


def test_files_go_in_rounds_and_the_frozen_window_sends_what_changed(
    lab_with_agents: tuple[LabSpec, Path], tmp_path: Path
) -> None:
    lab, inventory = lab_with_agents
    run_counter(inventory, lab, "files1", mem_mib=16)
    build(_data(lab, "host1", "files1"), TREE)
    time.sleep(1.2)  # older than a round's racy window (haul/transport/rounds.py)
    before = count(lab, "host1", "files1")
    done = run_haul(
        inventory, "migrate", "files1", "--to", "host2", "--strategy", "stop-and-copy", "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "done", result
    # the full pass went while the counter ran; then a round of what it changed
    # (its state file), small enough to stop (haul/engine/policy.py)
    assert result["files_rounds"] >= 2
    assert result["files_presync_bytes"] >= FILES * SIZE
    # frozen: the images and the counter's latest state, not the 4.7 MiB of files
    assert result["transfer_bytes"] < FILES * SIZE // 4
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host2", "files1")]
    arrived = snapshot(_data(lab, "host2", "files1"))
    expected = {
        p: seen
        for p, seen in arrived.items()
        if p.split("/")[0] in TREE  # the counter's own files aside
    }
    assert len(expected) == FILES + 30 + 4
    (tmp_path / "expected").mkdir()
    build(tmp_path / "expected", TREE)
    assert expected == snapshot(tmp_path / "expected")
    assert wait_count_above(lab, "host2", "files1", before) > before


#: a workload that holds open a set-gid file, a FIFO and a unix socket bound in its
#: directory; on SIGTERM it checks them and writes PASS or FAIL into "verdict"
HOLDER = """
import os, signal, socket, stat, sys, time
held = open("held", "rb")
fifo = os.open("pipe", os.O_RDWR)
os.write(fifo, b"in the pipe")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("run/sock")
def check(*_):
    ok = (
        held.read() == b"kept"
        and stat.S_IMODE(os.fstat(held.fileno()).st_mode) == 0o2644
        and os.read(fifo, 64) == b"in the pipe"
        and stat.S_ISSOCK(os.stat("run/sock").st_mode)
    )
    sock.sendto(b"x", "run/sock")
    ok = ok and sock.recv(8) == b"x"
    open("verdict", "w").write("PASS\\n" if ok else "FAIL\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, check)
open("ready", "w").close()
while True:
    time.sleep(0.1)
"""
#: what the holder's directory holds besides: other owners, set-id bits, an empty
#: directory, a socket's file nothing listens on, a link
FILES_OF_EVERY_KIND: Tree = {
    "held": FileNode(b"kept", 0o2644, (0, 1001)),
    "pipe": FifoNode(0o620, (1002, 1002)),
    "run": DirNode(mode=0o2770, owner=(1003, 1004)),
    "stale.sock": SocketNode(0o700, (1005, 0)),
    "empty": DirNode(mode=0o1777),
    "link": LinkNode("held", (1006, 1006)),
    "tool": FileNode(b"#!/bin/sh\n", 0o4755, (1007, 1007)),
}


def test_every_kind_of_entry_arrives_as_criu_needs_it(
    lab_with_agents: tuple[LabSpec, Path],
) -> None:
    """Before: set-id bits were dropped (CRIU then refuses to reopen the held file: "bad
    mode"), owners were not carried, and a socket's file was left behind."""
    lab, inventory = lab_with_agents
    home1 = lab.host(1).data_backing / "agent" / "workloads" / "holder"
    home1.mkdir(parents=True)  # haul run starts it in its directory, as it is
    build(home1, FILES_OF_EVERY_KIND)
    done = run_haul(
        inventory,
        "run",
        "--name",
        "holder",
        "--host",
        "host1",
        "--",
        sys.executable,
        "-S",
        "-E",
        "-c",
        HOLDER,
    )
    assert done.returncode == 0, done.stderr
    wait_until("the holder to be ready", lambda: (home1 / "ready").exists(), timeout_s=20)
    before = snapshot(home1)
    done = run_haul(
        inventory, "migrate", "holder", "--to", "host2", "--strategy", "stop-and-copy", "-o", "json"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = ps(inventory)
    assert (row["host"], row["name"]) == ("host2", "holder")
    home2 = lab.host(2).data_backing / "agent" / "workloads" / "holder"
    after = snapshot(home2)
    # the socket CRIU bound again is a new socket's file with the same mode and owner
    assert {p: seen for p, seen in after.items() if p != "log"} == {
        p: seen for p, seen in before.items() if p != "log"
    }
    os.kill(int(row["root_pid"]), signal.SIGTERM)
    verdict = wait_until("the holder's verdict", lambda: (home2 / "verdict").exists())
    assert verdict and (home2 / "verdict").read_text() == "PASS\n"
