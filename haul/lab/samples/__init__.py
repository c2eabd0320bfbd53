"""Sample workloads for the demo and the tests, and handles to drive them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from haul.errors import WorkloadError
from haul.lab.spec import HostSpec, LabSpec
from haul.workload.proctree import ProcessTree, start_tree

COUNTER = Path(__file__).with_name("counter.py")
WEB = Path(__file__).with_name("web.py")


class Counter:
    """The counter sample (see counter.py) running as a workload tree in a lab host.

    Its state file lives in the workload's data directory, which moves with it;
    ``host`` is where it runs now (set it after a move).
    """

    def __init__(self, tree: ProcessTree, host: HostSpec, subdir: str) -> None:
        self.tree = tree
        self.host = host
        self.subdir = subdir

    @property
    def state(self) -> Path:
        """The state file, as haul sees it on the host the counter runs on now."""
        return self.host.data_backing / self.subdir / "state"

    def count(self) -> int:
        """The count the counter last wrote (``count N mem M``)."""
        words = self.state.read_text().split()
        if len(words) < 2 or words[0] != "count":
            raise WorkloadError(f"counter state {self.state} reads {' '.join(words)!r}")
        return int(words[1])

    async def wait_above(self, n: int, timeout_s: float = 20.0) -> int:
        """Wait until the counter has written a count greater than ``n``; return it."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    now = self.count()
                    if now > n:
                        return now
                except (FileNotFoundError, WorkloadError, ValueError):
                    pass
                if not self.tree.alive:
                    log = self.state.with_name("log")
                    tail = log.read_text()[-300:] if log.exists() else ""
                    raise WorkloadError(f"the counter exited: {' '.join(tail.split())}")
                await asyncio.sleep(0.01)

    async def stop_and_verdict(self, timeout_s: float = 30.0) -> str:
        """SIGTERM the tree and return the counter's last line: ``PASS n`` or ``FAIL ...``."""
        self.tree.terminate()
        await self.tree.wait(timeout_s=timeout_s)
        return self.state.read_text().strip()


async def start_counter(
    lab: LabSpec,
    host: HostSpec,
    *,
    subdir: str = "counter",
    mem_mib: int = 16,
    interval_ms: int = 20,
) -> Counter:
    """Start the counter in ``host`` and return once it has counted past 2."""
    (host.data_backing / subdir).mkdir(parents=True)
    inside = lab.data_path / subdir  # the same directory, as the host sees it
    tree = await start_tree(
        [
            sys.executable,
            "-S",
            "-E",
            str(COUNTER),
            str(inside / "state"),
            "--mem-mib",
            str(mem_mib),
            "--interval-ms",
            str(interval_ms),
        ],
        log_path=inside / "log",
        host=host.ns,
        cwd=inside,
    )
    counter = Counter(tree, host, subdir)
    try:
        # Filling the memory takes about 1 s per 200 MiB before counting starts.
        await counter.wait_above(2, timeout_s=30 + mem_mib / 50)
    except BaseException:
        await tree.kill()
        raise
    return counter


class Web:
    """The web sample (see web.py) running as a workload tree in a lab host.

    Its outfile (``ready port P ...`` once it listens, then its verdict) lives
    in the workload's data directory, which moves with it; ``host`` is where it
    runs now (set it after a move). It listens on every address of its network
    namespace, so ``url`` names the host's address only while it runs there.
    """

    def __init__(
        self, tree: ProcessTree, host: HostSpec, subdir: str, port: int, mem_mib: int, seed: str
    ) -> None:
        self.tree = tree
        self.host = host
        self.subdir = subdir
        self.port = port
        self.mem_mib = mem_mib
        self.seed = seed

    @property
    def outfile(self) -> Path:
        """The outfile, as haul sees it on the host the service runs on now."""
        return self.host.data_backing / self.subdir / "out"

    @property
    def url(self) -> str:
        return f"http://{self.host.address.ip}:{self.port}/"

    def _tail(self) -> str:
        log = self.outfile.with_name("log")
        return " ".join(log.read_text()[-300:].split()) if log.exists() else ""

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until the service has filled its memory and listens; learn its port."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    words = self.outfile.read_text().split()
                except FileNotFoundError:
                    words = []
                if words[:2] == ["ready", "port"]:
                    self.port = int(words[2])
                    return
                if not self.tree.alive:
                    raise WorkloadError(f"the web sample exited: {self._tail()}")
                await asyncio.sleep(0.02)

    async def stop_and_verdict(self, timeout_s: float = 30.0) -> str:
        """SIGTERM the tree and return the service's verdict: ``PASS n`` or ``FAIL ...``."""
        self.tree.terminate()
        await self.tree.wait(timeout_s=timeout_s)
        verdict = self.outfile.read_text().strip() if self.outfile.exists() else ""
        if not verdict.startswith(("PASS", "FAIL")):
            raise WorkloadError(
                f"the web sample wrote no verdict (outfile: {verdict!r}): {self._tail()}"
            )
        return verdict


async def start_web(
    lab: LabSpec,
    host: HostSpec,
    *,
    subdir: str = "web",
    port: int = 8080,
    mem_mib: int = 256,
    seed: str = "1",
) -> Web:
    """Start the web sample in ``host`` and return once it listens on ``port`` (0: any)."""
    (host.data_backing / subdir).mkdir(parents=True)
    inside = lab.data_path / subdir  # the same directory, as the host sees it
    tree = await start_tree(
        [
            sys.executable,
            "-S",
            "-E",
            str(WEB),
            "--outfile",
            str(inside / "out"),
            "--port",
            str(port),
            "--mem-mib",
            str(mem_mib),
            "--seed",
            seed,
        ],
        log_path=inside / "log",
        host=host.ns,
        cwd=inside,
    )
    web = Web(tree, host, subdir, port, mem_mib, seed)
    try:
        # Filling the memory takes 0.15 to 0.6 s per 100 MiB here (idle to busy machine).
        await web.wait_ready(timeout_s=30 + mem_mib / 20)
    except BaseException:
        await tree.kill()
        raise
    return web
