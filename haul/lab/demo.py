"""The demo the README runs: a workload moves host1 -> host2 -> host1 in a lab.

It starts the sample counter (a counter and a block of memory) on host1,
relocates it to host2 and back through CRIU, then stops it and reads its own
verdict: PASS with a count that kept growing across both moves, or FAIL.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from haul.config import criu_binary
from haul.criu.service import Criu
from haul.errors import WorkloadError
from haul.lab import samples
from haul.lab.netlab import lab_down, lab_up
from haul.lab.relocate import Endpoint, RelocationReport, relocate
from haul.lab.spec import LabSpec
from haul.source.proctree import ProcessTree, start_tree

COUNTER = Path(samples.__file__).with_name("counter.py")
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


def read_count(state_file: Path) -> int:
    """The count the counter last wrote (``count N mem M``)."""
    words = state_file.read_text().split()
    if len(words) < 2 or words[0] != "count":
        raise WorkloadError(f"counter state {state_file} reads {' '.join(words)!r}")
    return int(words[1])


async def wait_count(state_file: Path, above: int, timeout_s: float = 10.0) -> int:
    """Wait until the counter has written a count greater than ``above``."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                n = read_count(state_file)
                if n > above:
                    return n
            except (FileNotFoundError, WorkloadError, ValueError):
                pass
            await asyncio.sleep(0.02)


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
    state = spec.root_dir / "counter.state"
    tree: ProcessTree = await start_tree(
        [sys.executable, "-S", "-E", str(COUNTER), str(state), "--mem-mib", str(mem_mib)],
        log_path=host1.workdir / "counter.log",
        netns=host1.netns,
    )
    say(f"started the counter ({mem_mib} MiB of memory) on host1, root PID {tree.root_pid}")
    hops: list[Hop] = []
    try:
        before = await wait_count(state, 5, timeout_s=60)
        route = [(host1, host2), (host2, host1)]
        for n, (src, dst) in enumerate(route, start=1):
            before = read_count(state)
            tree, report = await relocate(
                tree,
                Endpoint(criu.in_netns(src.netns), src.workdir / f"move{n}"),
                Endpoint(criu.in_netns(dst.netns), dst.workdir / f"move{n}"),
            )
            after = await wait_count(state, before)
            hops.append(Hop(src.name, dst.name, before, after, report))
            say(
                f"moved {src.name} -> {dst.name}: frozen {report.frozen_s * 1000:.0f} ms, "
                f"count {before} -> {after}"
            )
        tree.terminate()
        await tree.wait(timeout_s=30)
    finally:
        if tree.alive:
            await tree.kill()
    verdict = state.read_text().strip()
    return DemoResult(mem_mib=mem_mib, hops=tuple(hops), verdict=verdict)
