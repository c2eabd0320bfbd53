"""The demo the README runs: a web service moves host1 -> host2 -> host1 under load.

One lab with an agent in each host and HAProxy in the client namespace, in
front of the sample web service (haul/lab/samples/web.py: it holds a few
hundred MiB of seeded memory and counts its requests). The service has an
address of its own (10.77.0.100), which moves with it (haul/net). A keep-alive
client in the client namespace (haul/lab/loadgen.py) sends requests through
HAProxy the whole time and records every request's start and latency. The
service is migrated A->B and back through the agents, exactly as ``haul
migrate`` does it. At the end the service checks its memory (``/check``),
then writes its own verdict on SIGTERM; its request count must equal what the
client saw answered. The result: a table, the client's TSV (ab -g style) and
a PNG of latency over time with the migrations shaded. Everything the demo
made is removed, also on failure or Ctrl-C.

With ``runtime="runc"`` (``haul demo --runtime runc``) the service runs in a runc
container of the lab's busybox image, the host's Python lent to it by read-only bind
mounts, and moves as a container (haul/lab/demoservice.py, docs/containers.md); the
rest is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from haul.agent.client import AgentAccess
from haul.agent.migration_models import MigrateAsk
from haul.agent.models import Runtime
from haul.engine.phases import Strategy
from haul.errors import HaulError, WorkloadError
from haul.inventory import load_inventory
from haul.lab.demoservice import SERVICE, DemoService
from haul.lab.haproxy import LbConfig, LbServer, start_haproxy, stop_haproxy
from haul.lab.loadgen import LoadGen, http_get, netns_connector
from haul.lab.loadrun import LoadRun, Summary
from haul.lab.netlab import lab_down, lab_up
from haul.lab.plot import write_latency_png
from haul.lab.spec import LabSpec

DEMO_PREFIX = "demo"
SERVICE_ADDRESS = "10.77.0.100/24"
SERVICE_PORT = 8080
FRONTEND_PORT = 80
#: HAProxy's ``timeout server`` in the demo. The service's address follows it and its
#: TCP connections move with it, so a request in flight at the freeze is answered by
#: the copy; HAProxy must not replay it after a timeout (retry-on response-timeout,
#: haul/cutover/haproxy.py), or the service counts it twice. So: longer than any frozen
#: window plus restore here (0.4 to 1.5 s measured, more on a busy machine), and than
#: /check at 256 MiB on a busy core (about 1.5 s), which the lab's default 1 s is not.
SERVER_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class Move:
    label: str
    source: str
    dest: str
    outcome: str
    strategy: str
    frozen_ms: float | None
    total_ms: float
    #: seconds since the load started
    start_s: float
    end_s: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DemoResult:
    mem_mib: int
    moves: tuple[Move, ...]
    load: Summary
    #: the service's own answers: /check after the moves, and its verdict on SIGTERM
    check: str
    verdict: str
    #: requests the service counted (its verdict) and answered requests the client saw
    served: int
    png: Path
    tsv: Path
    #: how the service ran, as its host's agent said at the end: process or runc
    runtime: str = "process"

    @property
    def passed(self) -> bool:
        return (
            all(m.outcome == "done" for m in self.moves)
            and self.load.failed == 0
            and self.verdict.startswith("PASS")
            and self.check.startswith("PASS")
        )


async def run_demo(
    mem_mib: int = 256,
    *,
    strategy: Strategy = Strategy.AUTO,
    out_dir: Path = Path("."),
    settle_s: float = 2.0,
    connections: int = 2,
    moves: int = 2,
    runtime: Runtime = "process",
    say: Callable[[str], None] = lambda _: None,
) -> DemoResult:
    """``moves``: how many migrations (host1 -> host2, then back, and so on); 0 runs the
    same load with no migration (a baseline for bench/gaps.py). ``runtime``: the service
    as a process tree, or in a runc container (haul/lab/demoservice.py)."""
    await asyncio.to_thread(lab_down, DEMO_PREFIX)  # a demo lab left by a crash is ours
    spec = LabSpec(prefix=DEMO_PREFIX, hosts=2)
    with tempfile.TemporaryDirectory(prefix="haul-demo-") as tmp:
        inventory = Path(tmp) / "hosts.toml"
        say(
            f"lab up: {spec.host(1).netns} and {spec.host(2).netns} with an agent each, "
            f"{spec.client.netns} for HAProxy and the client"
        )
        await lab_up(spec, inventory=inventory)
        try:
            service = DemoService(spec, runtime, mem_mib, SERVICE_PORT, SERVICE_ADDRESS)
            return await _demo(
                service, inventory, strategy, out_dir, settle_s, connections, moves, say
            )
        finally:
            await asyncio.shield(asyncio.to_thread(lab_down, DEMO_PREFIX))
            say("lab down: agents, HAProxy, the service, namespaces and directories removed")


async def _demo(
    service: DemoService,
    inventory: Path,
    strategy: Strategy,
    out_dir: Path,
    settle_s: float,
    connections: int,
    moves: int,
    say: Callable[[str], None],
) -> DemoResult:
    spec, mem_mib = service.spec, service.mem_mib
    inv = load_inventory(inventory)
    host1, host2 = spec.host(1).name, spec.host(2).name
    async with AgentAccess.of_entry(inv.host(host1)).client() as agent:
        view = await service.start(agent, sys.executable)
    await _wait_ready(service.outfile(host1), timeout_s=30 + mem_mib / 20)
    ip = SERVICE_ADDRESS.split("/")[0]
    where_it_runs = "in a runc container " if service.runtime == "runc" else ""
    say(
        f"started the web service {where_it_runs}on {host1} at {ip}:{SERVICE_PORT} holding "
        f"{mem_mib} MiB (root PID {view.root_pid})"
    )
    proxy = await start_haproxy(
        spec,
        LbConfig(
            servers=(LbServer(SERVICE, ip, SERVICE_PORT),),
            frontend_port=FRONTEND_PORT,
            check_path="/health",
            server_timeout_ms=SERVER_TIMEOUT_MS,
        ),
    )
    say(f"HAProxy in {spec.client.netns}: {proxy.url} -> {ip}:{SERVICE_PORT}")
    try:
        load = LoadGen(
            proxy.url, connections=connections, connect=netns_connector(spec.client.netns)
        )
        running = asyncio.create_task(load.run())
        done_moves: list[Move] = []
        route = [("A->B", host1, host2), ("B->A", host2, host1)] * (moves // 2 + 1)
        try:
            await asyncio.sleep(settle_s)
            say(
                f"load: {connections} keep-alive connections through HAProxy, "
                f"{load.completed} requests so far"
            )
            if not moves:
                await asyncio.sleep(settle_s)  # the baseline: as long, with no migration
            for label, src, dst in route[:moves]:
                # The built-in HAProxy cutover finds the server by the workload's
                # address; the address moves with it, so it is the same server, kept in
                # service (its health checks paused) through the frozen window.
                ask = MigrateAsk(
                    workload=SERVICE,
                    to=dst,
                    strategy=strategy,
                    lb=f"haproxy:{proxy.socket}:{proxy.backend}/*",
                )
                load.begin(label)
                started = time.monotonic()
                async with AgentAccess.of_entry(inv.host(src)).client() as agent:
                    mid = (await agent.migrations.start(ask)).id
                    done = await agent.migrations.watch(mid, say=say)
                window = load.end(label)
                done_moves.append(
                    Move(
                        label,
                        src,
                        dst,
                        done.outcome,
                        done.strategy,
                        done.stats.frozen_ms,
                        (time.monotonic() - started) * 1000,
                        window.start_s,
                        window.end_s,
                        done.reason,
                    )
                )
                frozen = f"{done.stats.frozen_ms:.0f} ms" if done.stats.frozen_ms else "-"
                say(
                    f"migrated {src} -> {dst} ({done.strategy}): {done.outcome}, frozen "
                    f"{frozen}; {load.failed} failed requests so far"
                )
                if done.outcome != "done":
                    break
                await asyncio.sleep(settle_s)
        finally:
            load.stop()
            run: LoadRun = await running
        where = (
            done_moves[-1].dest
            if done_moves and done_moves[-1].outcome == "done"
            else (done_moves[-1].source if done_moves else host1)
        )
        check = await _check(proxy.url, spec)
        verdict, served, runtime = await _verdict(service, inventory, where)
    finally:
        await stop_haproxy(spec, proxy)
    out_dir.mkdir(parents=True, exist_ok=True)
    tsv, png = out_dir / "haul-demo.tsv", out_dir / "haul-demo.png"
    run.write_tsv(tsv)
    summary = run.summary()
    what = "web service in a runc container" if runtime == "runc" else "web service"
    write_latency_png(png, run, title=f"haul demo: a {mem_mib} MiB {what} moved A->B->A under load")
    return DemoResult(
        mem_mib, tuple(done_moves), summary, check, verdict, served, png, tsv, runtime
    )


async def _wait_ready(outfile: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if outfile.read_text().startswith("ready"):
                return
        await asyncio.sleep(0.05)
    raise WorkloadError(f"the web service did not get ready within {timeout_s:.0f} s ({outfile})")


async def _check(url: str, spec: LabSpec) -> str:
    try:
        status, body = await http_get(url + "check", connect=netns_connector(spec.client.netns))
    except (OSError, TimeoutError, HaulError) as exc:
        return f"FAIL /check: {exc}"
    return body.decode(errors="replace").strip() if status == 200 else f"FAIL HTTP {status}"


async def _verdict(service: DemoService, inventory: Path, host: str) -> tuple[str, int, str]:
    """SIGTERM the service where it runs; its verdict line, the requests it counted, and
    its runtime as the agent there knows it."""
    async with AgentAccess.of_entry(load_inventory(inventory).host(host)).client() as agent:
        view = await agent.workload(SERVICE)
    # a process tree's init forwards it to the service; in a container the service is
    # the init (PID 1 there), which takes the signals it has a handler for
    os.kill(view.root_pid, signal.SIGTERM)
    outfile = service.outfile(host)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            text = outfile.read_text().strip()
            if text.startswith(("PASS", "FAIL")):
                words = text.split()
                served = int(words[-1]) if words[-1].isdigit() else -1
                return text, served, view.runtime
        await asyncio.sleep(0.05)
    return "FAIL no verdict within 30 s", -1, view.runtime
