"""The demo the README runs: a workload moves host1 -> host2 -> host1 in a lab.

It starts the sample counter (a counter and a block of memory) on host1,
relocates it to host2 and back through CRIU, then stops it and reads its own
verdict: PASS with a count that kept growing across both moves, or FAIL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from haul.config import criu_binary
from haul.criu.service import Criu
from haul.lab.samples import Counter, start_counter
from haul.lab.netlab import lab_down, lab_up
from haul.lab.relocate import Endpoint, RelocationReport, relocate
from haul.lab.spec import LabSpec

DEMO_PREFIX = "demo"


@dataclass(frozen=True, slots=True)
class Hop:
    source: str
    dest: str
    count_before: int
    count_after: int
    report: RelocationReport


@dataclass(frozen=True, slots=True)
class DemoResult:
    mem_mib: int
    hops: tuple[Hop, ...]
    verdict: str  # the counter's own last line: "PASS <n>" or "FAIL <reason>"

    @property
    def passed(self) -> bool:
        return self.verdict.startswith("PASS")


async def run_demo(
    mem_mib: int = 64, say: Callable[[str], None] = lambda _: None
) -> DemoResult:
    await asyncio.to_thread(lab_down, DEMO_PREFIX)  # a demo lab left by a crash is ours
    spec = LabSpec(prefix=DEMO_PREFIX, hosts=2)
    say(f"lab up: {spec.host(1).netns}, {spec.host(2).netns} on a bridge")
    await lab_up(spec)
    try:
        return await _moves(spec, mem_mib, say)
    finally:
        await asyncio.to_thread(lab_down, DEMO_PREFIX)
        say("lab down: namespaces and directories removed")


async def _moves(spec: LabSpec, mem_mib: int, say: Callable[[str], None]) -> DemoResult:
    criu = Criu(criu_binary())
    host1, host2 = spec.host(1), spec.host(2)
    counter: Counter = await start_counter(spec, host1, mem_mib=mem_mib, interval_ms=50)
    say(f"started the counter ({mem_mib} MiB of memory) on host1, "
        f"root PID {counter.tree.root_pid}")
    hops: list[Hop] = []
    try:
        route = [(host1, host2), (host2, host1)]
        for n, (src, dst) in enumerate(route, start=1):
            before = counter.count()
            counter.tree, report = await relocate(
                counter.tree,
                Endpoint(criu.on(src.ns), src.workdir / f"move{n}", src.data_backing),
                Endpoint(criu.on(dst.ns), dst.workdir / f"move{n}", dst.data_backing),
                data_subdir=counter.subdir,
            )
            counter.host = dst
            after = await counter.wait_above(before)
            hops.append(Hop(src.name, dst.name, before, after, report))
            say(
                f"moved {src.name} -> {dst.name}: frozen {report.frozen_s * 1000:.0f} ms, "
                f"count {before} -> {after}"
            )
        verdict = await counter.stop_and_verdict()
    finally:
        if counter.tree.alive:
            await counter.tree.kill()
    return DemoResult(mem_mib=mem_mib, hops=tuple(hops), verdict=verdict)
