"""HTTP through HAProxy while a web service that shares its host's network moves:
its address changes (10.77.0.1 -> 10.77.0.2), and the built-in cutover
(`haul migrate --lb haproxy:SOCKET:web/web-{host}`) moves the traffic. Real
agents, real CRIU, real HAProxy; the client in the lab's client namespace."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from haul.cutover.haproxy_runtime import HaproxyRuntime
from haul.lab.haproxy import LabHaproxy, LbConfig, lab_servers, start_haproxy, stop_haproxy
from haul.lab.loadgen import LoadGen, netns_connector
from haul.lab.loadrun import LoadRun
from haul.lab.operator import ps, run_haul
from haul.lab.samples import WEB
from haul.lab.spec import LabSpec

PORT = 8080


def _start_web(lab: LabSpec, inventory: Path) -> Path:
    done = run_haul(
        inventory,
        "run",
        "--name",
        "web",
        "--host",
        "host1",
        "--",
        sys.executable,
        "-S",
        "-E",
        str(WEB),
        "--outfile",
        "verdict",
        "--port",
        str(PORT),
        "--mem-mib",
        "64",
    )
    assert done.returncode == 0, done.stderr
    return lab.host(1).data_backing / "agent" / "workloads" / "web" / "verdict"


async def _ready(outfile: Path) -> None:
    deadline = time.monotonic() + 60
    while not (outfile.exists() and outfile.read_text().startswith("ready")):
        assert time.monotonic() < deadline, "the web service did not get ready"
        await asyncio.sleep(0.05)


async def _proxy(lab: LabSpec) -> LabHaproxy:
    return await start_haproxy(
        lab, LbConfig(servers=lab_servers(lab, PORT, enabled=(1,)), check_path="/health")
    )


async def _under_load(
    lab: LabSpec, proxy: LabHaproxy, moves: list[list[str]]
) -> tuple[LoadRun, list[int]]:
    """Run ``haul`` with each argv in ``moves`` (one after the other) while the client
    sends requests through HAProxy; the return codes."""
    load = LoadGen(proxy.url, connections=2, connect=netns_connector(lab.client.netns))
    running = asyncio.create_task(load.run())
    codes: list[int] = []
    try:
        await asyncio.sleep(1.0)
        for argv in moves:
            done = await asyncio.to_thread(run_haul, *argv)
            print(done.stdout, done.stderr)
            codes.append(done.returncode)
            await asyncio.sleep(1.0)
    finally:
        load.stop()
        run = await running
    return run, codes


def _verdict(lab: LabSpec, inventory: Path, host: str) -> str:
    rows = [r for r in ps(inventory) if r["name"] == "web"]
    assert [r["host"] for r in rows] == [host], rows
    os.kill(int(rows[0]["root_pid"]), signal.SIGTERM)  # type: ignore[call-overload]
    path = lab.member(host).data_backing / "agent" / "workloads" / "web" / "verdict"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.startswith(("PASS", "FAIL")):
            return text.strip()
        time.sleep(0.05)
    raise AssertionError("no verdict")


@pytest.mark.asyncio
async def test_address_change_with_haproxy_cutover_fails_no_request(
    lab_with_agents: tuple[LabSpec, Path],
) -> None:
    lab, inventory = lab_with_agents
    await _ready(_start_web(lab, inventory))
    proxy = await _proxy(lab)
    try:
        lb = f"haproxy:{proxy.socket}:{proxy.backend}/web-{{host}}"
        run, codes = await _under_load(
            lab,
            proxy,
            [
                [str(inventory), "migrate", "web", "--to", "host2", "--lb", lb],
                [str(inventory), "migrate", "web", "--to", "host1", "--lb", lb],
            ],
        )
        servers = {s.name: s for s in await HaproxyRuntime(proxy.socket).servers("web")}
    finally:
        await stop_haproxy(lab, proxy)
    summary = run.summary()
    print("address change + HAProxy cutover:", summary.as_json())
    assert codes == [0, 0]
    assert summary.failed == 0 and summary.ok > 100
    # traffic ends where the workload is: host1 in rotation, host2 in maintenance
    assert servers["web-host1"].serving and servers["web-host2"].in_maint
    verdict = _verdict(lab, inventory, "host1")
    # every answered request was counted once by the one copy that answered it
    assert verdict == f"PASS {summary.ok}"


@pytest.mark.asyncio
async def test_a_failing_hook_before_the_commit_leaves_haproxy_on_the_live_copy(
    lab_with_agents: tuple[LabSpec, Path], tmp_path: Path
) -> None:
    lab, inventory = lab_with_agents
    hook = tmp_path / "refuse-restored"
    hook.write_text('#!/bin/sh\n[ "$1" = restored ] && { echo "not today" >&2; exit 1; }\nexit 0\n')
    hook.chmod(0o755)
    await _ready(_start_web(lab, inventory))
    proxy = await _proxy(lab)
    try:
        lb = f"haproxy:{proxy.socket}:{proxy.backend}/web-{{host}}"
        run, codes = await _under_load(
            lab,
            proxy,
            [
                [
                    str(inventory),
                    "migrate",
                    "web",
                    "--to",
                    "host2",
                    "--lb",
                    lb,
                    "--hook",
                    str(hook),
                ],
            ],
        )
        servers = {s.name: s for s in await HaproxyRuntime(proxy.socket).servers("web")}
    finally:
        await stop_haproxy(lab, proxy)
    summary = run.summary()
    print("failing restored hook:", summary.as_json())
    assert codes == [1]
    assert summary.failed == 0 and summary.ok > 100
    assert servers["web-host1"].serving and servers["web-host1"].check_enabled
    assert servers["web-host2"].in_maint
    assert not (lab.host(2).data_backing / "agent" / "workloads" / "web").exists()
    assert _verdict(lab, inventory, "host1") == f"PASS {summary.ok}"
