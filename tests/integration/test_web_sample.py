"""The web sample under the load client: every answer the client saw is one the service
counted, its memory checks out, and it survives a migration between lab hosts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from haul.criu.service import Criu
from haul.engine.phases import Phase, Strategy
from haul.lab.loadgen import LoadGen, http_get, netns_connector
from haul.lab.loadrun import LoadRun
from haul.lab.migrate import migrate_in_lab
from haul.lab.samples import WEB, Web, start_web
from haul.lab.spec import LabSpec

pytestmark = pytest.mark.asyncio

REPO = Path(__file__).resolve().parents[2]


class LocalWeb:
    """web.py as a plain child process on 127.0.0.1 (no namespaces)."""

    def __init__(self, proc: asyncio.subprocess.Process, outfile: Path) -> None:
        self.proc = proc
        self.outfile = outfile
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 30) in (0, 1)
        return self.outfile.read_text().strip()


@pytest_asyncio.fixture
async def local_web(tmp_path: Path) -> AsyncIterator[LocalWeb]:
    outfile = tmp_path / "out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-S",
        "-E",
        str(WEB),
        "--outfile",
        str(outfile),
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--mem-mib",
        "32",
        "--seed",
        "local",
        stdout=asyncio.subprocess.DEVNULL,
    )
    web = LocalWeb(proc, outfile)
    try:
        async with asyncio.timeout(30):
            while not (outfile.exists() and outfile.read_text().startswith("ready ")):
                assert proc.returncode is None, "web.py exited before it listened"
                await asyncio.sleep(0.02)
        web.port = int(outfile.read_text().split()[2])
        yield web
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def served_counts(run: LoadRun) -> list[int]:
    counts = [s.served for s in run.samples if s.ok]
    assert None not in counts
    return sorted(c for c in counts if c is not None)


async def test_every_answer_seen_is_one_counted_and_memory_checks(local_web: LocalWeb) -> None:
    run = await LoadGen(local_web.url, connections=3).run(duration_s=2.0)
    s = run.summary()
    assert s.failed == 0 and s.ok > 0
    assert s.reconnects == 0  # keep-alive held all three connections
    assert {x.conn for x in run.samples} == {0, 1, 2}
    # the service answered 1, 2, ... n, each number exactly once, to this client
    assert served_counts(run) == list(range(1, s.ok + 1))
    status, body = await http_get(local_web.url + "check")
    assert (status, body.decode()) == (200, f"PASS count {s.ok}\n")
    # GET / after /check: /check did not count itself
    status, body = await http_get(local_web.url)
    assert status == 200 and body.decode().startswith(f"count {s.ok + 1} mem_mib 32 seed local")
    assert await local_web.stop() == f"PASS {s.ok + 1}"


async def test_a_stalled_service_gives_timeouts_that_are_never_retried(
    local_web: LocalWeb,
) -> None:
    load = LoadGen(local_web.url, connections=2, timeout_s=0.2, retry_pause_s=0.02)
    task = asyncio.create_task(load.run(duration_s=2.0))
    await asyncio.sleep(0.4)
    local_web.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(0.8)
    finally:
        local_web.proc.send_signal(signal.SIGCONT)
    run = await task
    s = run.summary()
    failures = run.failures()
    assert failures and {f.error for f in failures} == {"timeout"}
    assert s.reconnects >= 1
    # Each timed-out request was delivered; the service answered it after SIGCONT (to a
    # closed connection). A client that retried would have made the service count more.
    status, body = await http_get(local_web.url + "check")
    assert (status, body.decode()) == (200, f"PASS count {s.ok + s.failed}\n")
    assert len(set(served_counts(run))) == s.ok
    assert await local_web.stop() == f"PASS {s.ok + s.failed}"


async def _loadgen_cli(
    lab: LabSpec, url: str, tmp_path: Path, *args: str, stdin: bytes | None = None
) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        lab.client.netns,
        sys.executable,
        "-m",
        "haul.lab.loadgen",
        url,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        if stdin is not None:
            assert proc.stdin is not None
            for line in stdin.splitlines(keepends=True):
                proc.stdin.write(line)
                await proc.stdin.drain()
                await asyncio.sleep(0.3)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


async def _check(web: Web, lab: LabSpec) -> str:
    status, body = await http_get(web.url + "check", connect=netns_connector(lab.client.netns))
    return f"{status} {body.decode().strip()}"


async def test_web_in_a_lab_host_under_load_from_the_client_namespace(
    lab: LabSpec, tmp_path: Path
) -> None:
    web = await start_web(lab, lab.host(1), mem_mib=64, seed="lab")
    try:
        # the command line, as the demo can run it inside the client namespace
        tsv, png = tmp_path / "run.tsv", tmp_path / "run.png"
        cli = await _loadgen_cli(
            lab,
            web.url,
            tmp_path,
            "--duration",
            "1.5",
            "--connections",
            "2",
            "--tsv",
            str(tsv),
            "--png",
            str(png),
        )
        assert cli["failed"] == 0 and isinstance(cli["ok"], int) and cli["ok"] > 0
        assert len(tsv.read_text().splitlines()) == 1 + cli["ok"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # in-process, connections opened in the client namespace
        run = await LoadGen(web.url, connections=2, connect=netns_connector(lab.client.netns)).run(
            duration_s=1.0
        )
        assert run.summary().failed == 0
        assert served_counts(run)[0] == cli["ok"] + 1
        # windows from the command line's stdin, stamped as the lines arrive
        controlled = await _loadgen_cli(
            lab, web.url, tmp_path, "--control-stdin", stdin=b"begin A->B\nend A->B\nmark x\nstop\n"
        )
        windows = controlled["windows"]
        assert isinstance(windows, list) and [w["label"] for w in windows] == ["A->B"]
        assert 0 < windows[0]["start_s"] < windows[0]["end_s"]
        assert controlled["failed"] == 0 and isinstance(controlled["ok"], int)
        total = cli["ok"] + run.summary().ok + controlled["ok"]
        assert await _check(web, lab) == f"200 PASS count {total}"
        assert await web.stop_and_verdict() == f"PASS {total}"
    finally:
        if web.tree.alive:
            await web.tree.kill()


async def _no_client_sockets(web: Web) -> None:
    """Wait until the service holds no connection (only its listening socket)."""
    async with asyncio.timeout(10):
        while True:
            sockets = 0
            for pid in web.tree.pids():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    for fd in Path(f"/proc/{pid}/fd").iterdir():
                        with contextlib.suppress(FileNotFoundError):
                            sockets += os.readlink(fd).startswith("socket:")
            if sockets <= 1:
                return
            await asyncio.sleep(0.02)


async def test_web_keeps_its_count_and_memory_across_a_criu_move(criu: Criu, lab: LabSpec) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    web = await start_web(lab, h1, mem_mib=64, seed="move")
    connect = netns_connector(lab.client.netns)
    try:
        before = await LoadGen(web.url, connect=connect).run(duration_s=0.5)
        await _no_client_sockets(web)  # CRIU would refuse an established connection
        result = await migrate_in_lab(
            criu, web.tree, web.subdir, h1, h2, strategy=Strategy.STOP_AND_COPY
        )
        assert result.outcome.phase is Phase.DONE, result.outcome.reason
        assert result.new_tree is not None and not web.tree.alive
        web.tree, web.host = result.new_tree, h2
        assert result.outcome.stats.bytes_sent >= 64 << 20, "its memory went to host2"
        after = await LoadGen(web.url, connect=connect).run(duration_s=0.5)
        assert before.summary().failed == after.summary().failed == 0
        # the count continues where it was, on the new host's address
        assert served_counts(after)[0] == before.summary().ok + 1
        total = before.summary().ok + after.summary().ok
        assert await _check(web, lab) == f"200 PASS count {total}"
        assert await web.stop_and_verdict() == f"PASS {total}"
    finally:
        if web.tree.alive:
            await web.tree.kill()
