"""Lab hosts: what 'up' makes, that they reach each other, and that 'down'
removes exactly that, even after a crash half way through 'up'."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from haul.errors import LabError
from haul.lab.ledger import Ledger, known_prefixes
from haul.lab.netlab import lab_down, lab_status, lab_up
from haul.lab.spec import LabSpec

pytestmark = pytest.mark.asyncio


def _fresh() -> LabSpec:
    return LabSpec(prefix="t" + secrets.token_hex(3), hosts=3)


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _ping(src: str, addr: str) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", src, "ping", "-c", "1", "-W", "2", addr],
        capture_output=True,
    )
    return done.returncode == 0


async def test_up_makes_hosts_that_reach_each_other_and_down_removes_all() -> None:
    spec = _fresh()
    before_ns, before_mounts = _netns(), _mounts()
    try:
        status = await lab_up(spec)
        assert status.complete
        assert [m.name for m in status.members] == ["host1", "host2", "host3", "client"]
        assert [m.address for m in status.members] == [
            "10.77.0.1/24",
            "10.77.0.2/24",
            "10.77.0.3/24",
            "10.77.0.250/24",
        ]
        assert _ping(spec.host(1).netns, "10.77.0.3")
        assert _ping(spec.client.netns, "10.77.0.2")
        # Each host sees its own data directory at the common data path.
        for i in (1, 2):
            h = spec.host(i)
            subprocess.run(
                [
                    "nsenter",
                    f"--mount={h.mntns}",
                    "--",
                    "sh",
                    "-c",
                    f"echo {h.name} > {spec.data_path}/who",
                ],
                check=True,
            )
            assert (h.data_backing / "who").read_text().strip() == h.name
        assert not (spec.data_path / "who").exists(), "haul's own view is not a host's"
    finally:
        removed = lab_down(spec.prefix)
    assert spec.host(1).netns in removed
    assert _netns() == before_ns
    assert _mounts().count(str(spec.mntns_dir)) == 0
    assert _mounts().count(spec.prefix) == before_mounts.count(spec.prefix) == 0
    assert not spec.root_dir.exists() and not spec.mntns_dir.exists()
    assert Ledger.load(spec.prefix) is None
    assert lab_down(spec.prefix) == [], "down twice is harmless"


async def test_down_kills_processes_left_in_the_hosts() -> None:
    spec = _fresh()
    try:
        await lab_up(spec, agents=False)
        sleeper = subprocess.Popen(["ip", "netns", "exec", spec.host(2).netns, "sleep", "600"])
        await asyncio.sleep(0.2)
        assert lab_status(spec.prefix).members[1].processes == 1
    finally:
        lab_down(spec.prefix)
    assert sleeper.wait(timeout=10) != 0


async def test_down_after_a_crash_in_up_removes_what_was_made() -> None:
    spec = _fresh()
    # A crash after the switch and host1 namespaces were made: their ledger says so.
    ledger = Ledger(prefix=spec.prefix, hosts=spec.hosts)
    ledger.save()
    for name in (spec.switch_netns, spec.host(1).netns):
        ledger.record_netns(name)
        subprocess.run(["ip", "netns", "add", name], check=True)
    ledger.record_netns(spec.host(2).netns)  # recorded, never made
    try:
        with pytest.raises(LabError, match="already up"):
            await lab_up(spec)
    finally:
        removed = lab_down(spec.prefix)
    assert sorted(removed) == sorted([spec.switch_netns, spec.host(1).netns])
    assert not {spec.switch_netns, spec.host(1).netns} & _netns()


async def test_up_refuses_a_name_taken_by_someone_else_and_leaves_it() -> None:
    spec = _fresh()
    subprocess.run(["ip", "netns", "add", spec.host(2).netns], check=True)
    try:
        with pytest.raises(LabError, match="already exists"):
            await lab_up(spec)
        assert spec.host(2).netns in _netns(), "a namespace up did not make is not removed"
        assert spec.switch_netns not in _netns(), "what up made before failing is gone"
        assert Ledger.load(spec.prefix) is None
    finally:
        subprocess.run(["ip", "netns", "del", spec.host(2).netns], check=False)
        lab_down(spec.prefix)


def _haul(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haul", *args], capture_output=True, text=True, timeout=120
    )


async def test_cli_lab_up_status_down() -> None:
    prefix = "t" + secrets.token_hex(3)
    try:
        up = _haul("lab", "up", "--prefix", prefix, "--hosts", "2", "-o", "json")
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout)["complete"] is True
        st = _haul("lab", "status", "--prefix", prefix, "-o", "json")
        hosts = {m["name"]: m for m in json.loads(st.stdout)["members"]}
        assert hosts["host2"]["address"] == "10.77.0.2/24" and hosts["host2"]["present"]
        again = _haul("lab", "up", "--prefix", prefix)
        assert again.returncode == 1
        assert again.stderr.count("\n") == 1 and "already up" in again.stderr
    finally:
        down = _haul("lab", "down", "--prefix", prefix)
    assert down.returncode == 0, down.stderr
    gone = _haul("lab", "status", "--prefix", prefix)
    assert gone.returncode == 1 and "not up" in gone.stderr


async def test_cli_rejects_a_bad_prefix_in_one_line() -> None:
    bad = _haul("lab", "up", "--prefix", "../etc")
    assert bad.returncode == 2
    assert bad.stderr.startswith("haul: error:") and bad.stderr.count("\n") == 1


async def test_the_last_lab_down_puts_the_pipe_size_back_whoever_raised_it() -> None:
    """Lab A raises fs.pipe-max-size; lab B finds it raised and records nothing; A goes
    down first (B still relies on it), then B: the machine's value comes back."""
    knob = Path("/proc/sys/fs/pipe-max-size")
    machine = knob.read_text().strip()
    if known_prefixes():
        pytest.skip("another lab is up: the machine-wide setting is not this test's")
    low = "1048576"
    knob.write_text(low)
    first = LabSpec(prefix="t" + secrets.token_hex(3), hosts=1)
    second = LabSpec(prefix="t" + secrets.token_hex(3), hosts=1)
    try:
        await lab_up(first, agents=False)
        await lab_up(second, agents=False)
        assert int(knob.read_text()) >= 4 << 20
        await asyncio.to_thread(lab_down, first.prefix)
        assert int(knob.read_text()) >= 4 << 20, "the second lab still relies on it"
        await asyncio.to_thread(lab_down, second.prefix)
        assert knob.read_text().strip() == low
    finally:
        await asyncio.to_thread(lab_down, first.prefix)
        await asyncio.to_thread(lab_down, second.prefix)
        knob.write_text(machine)
