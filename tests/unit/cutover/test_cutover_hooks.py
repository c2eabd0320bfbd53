"""ScriptHooks and HookChain with real small scripts in a temporary directory (no root)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from haul.cutover.hooks import (
    KEEP_BYTES,
    HookChain,
    HookError,
    HookScript,
    ScriptHooks,
    chain,
    check_hook_path,
)
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookFacts, HookPoint
from haul.errors import HaulError, UsageError
from haul.procfs import alive, wait_gone

FACTS = HookFacts("m1", "web1", "host1", "host2", "10.0.0.1", "", Strategy.POST_COPY, Phase.RESTORE)


def script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def hooks(*paths: Path, timeout_s: float = 10.0) -> ScriptHooks:
    return ScriptHooks([HookScript(p, timeout_s) for p in paths])


async def wait_for_file(path: Path) -> str:
    for _ in range(500):
        if path.exists() and path.read_text():
            return path.read_text()
        await asyncio.sleep(0.01)
    pytest.fail(f"{path} never appeared")


def gone(pid: int) -> bool:
    return wait_gone([pid], 10.0) == []


# -- what a hook gets ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_hook_gets_the_point_the_facts_dev_null_and_a_session_of_its_own(
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen.json"
    probe = tmp_path / "probe"
    probe.write_text(f"""#!/usr/bin/env python3
import json, os, sys
json.dump({{
    "argv": sys.argv,
    "env": {{k: v for k, v in os.environ.items() if k.startswith("HAUL_")}},
    "stdin": sys.stdin.read(),
    "stdin_target": os.readlink("/proc/self/fd/0"),
    "cwd": os.getcwd(),
    "leader": os.getpgid(0) == os.getpid() == os.getsid(0),
}}, open({str(seen)!r}, "w"))
""")
    probe.chmod(0o755)
    facts = HookFacts(
        "m1",
        "web1",
        "host1",
        "host2",
        "10.0.0.1",
        "10.0.0.2",
        Strategy.STOP_AND_COPY,
        Phase.ROLLING_BACK,
        reason="dest host2: restore failed;\n  rollback complete",
    )
    await hooks(probe).fire(HookPoint.ROLLED_BACK, facts)
    got = json.loads(seen.read_text())
    assert got["argv"] == [str(probe), "rolled-back"]
    assert got["env"] == {
        "HAUL_POINT": "rolled-back",
        "HAUL_MIGRATION_ID": "m1",
        "HAUL_WORKLOAD": "web1",
        "HAUL_SOURCE_HOST": "host1",
        "HAUL_DEST_HOST": "host2",
        "HAUL_SOURCE_ADDRESS": "10.0.0.1",
        "HAUL_DEST_ADDRESS": "10.0.0.2",
        "HAUL_STRATEGY": "stop-and-copy",
        "HAUL_PHASE": "rolling-back",
        "HAUL_REASON": "dest host2: restore failed; rollback complete",
    }
    assert got["stdin"] == "" and got["stdin_target"] == "/dev/null"
    assert got["cwd"] == "/"
    assert got["leader"], "the hook leads a session and process group of its own"


@pytest.mark.asyncio
async def test_hook_keeps_the_callers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_TEST_SETTING", "kept")
    out = tmp_path / "out"
    await hooks(script(tmp_path, "h", f'echo "$HOOK_TEST_SETTING" > {out}\n')).fire(
        HookPoint.PRE_MIGRATE, FACTS
    )
    assert out.read_text() == "kept\n"


# -- how a hook fails ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_non_zero_exit_is_one_line_with_hook_point_status_and_last_stderr_line(
    tmp_path: Path,
) -> None:
    gate = script(
        tmp_path,
        "gate",
        "echo checking 10.0.0.2\n"
        "echo 'first complaint' >&2\necho 'port 80 does not answer' >&2\nexit 3\n",
    )
    with pytest.raises(HookError) as raised:
        await hooks(gate).fire(HookPoint.RESTORED, FACTS)
    assert str(raised.value) == (
        f"hook {gate} at restored exited with status 3: port 80 does not answer"
    )


@pytest.mark.asyncio
async def test_failure_without_stderr_quotes_stdout_or_says_no_output(tmp_path: Path) -> None:
    loud = script(tmp_path, "loud", "echo one\necho '  the   reason  '\nexit 1\n")
    quiet = script(tmp_path, "quiet", "exit 1\n")
    with pytest.raises(HookError, match=r"exited with status 1: the reason$"):
        await hooks(loud).fire(HookPoint.PRE_FREEZE, FACTS)
    with pytest.raises(HookError, match=r"exited with status 1 \(no output\)$"):
        await hooks(quiet).fire(HookPoint.PRE_FREEZE, FACTS)


@pytest.mark.asyncio
async def test_long_output_keeps_its_tail(tmp_path: Path) -> None:
    chatty = script(
        tmp_path,
        "chatty",
        f"head -c {4 * KEEP_BYTES} /dev/zero | tr '\\0' x >&2\n"
        "echo >&2\necho 'the last word' >&2\nexit 2\n",
    )
    with pytest.raises(HookError, match=r"status 2: the last word$"):
        await hooks(chatty).fire(HookPoint.RESTORED, FACTS)


@pytest.mark.asyncio
async def test_killed_by_a_signal_says_which(tmp_path: Path) -> None:
    crash = script(tmp_path, "crash", "kill -SEGV $$\n")
    with pytest.raises(HookError, match=r"at pre-migrate was killed by SIGSEGV"):
        await hooks(crash).fire(HookPoint.PRE_MIGRATE, FACTS)


@pytest.mark.asyncio
async def test_hook_that_cannot_start_says_why(tmp_path: Path) -> None:
    plain = script(tmp_path, "plain", "exit 0\n")
    plain.chmod(0o644)  # executable when configured, not any more when called
    with pytest.raises(HookError, match=r"at restored could not be started: Permission denied"):
        await hooks(plain).fire(HookPoint.RESTORED, FACTS)


@pytest.mark.asyncio
async def test_timeout_kills_the_hook_and_its_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    slow = script(
        tmp_path, "slow", f"sleep 60 &\necho $$ $! > {pids}\necho 'still waiting' >&2\nwait\n"
    )
    with pytest.raises(HookError) as raised:
        await hooks(slow, timeout_s=0.5).fire(HookPoint.PRE_FREEZE, FACTS)
    assert str(raised.value) == (
        f"hook {slow} at pre-freeze timed out after 0.5 s and was killed: still waiting"
    )
    hook_pid, child_pid = (int(p) for p in pids.read_text().split())
    assert gone(hook_pid) and gone(child_pid)


@pytest.mark.asyncio
async def test_cancellation_kills_the_hook_and_its_group_and_propagates(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    slow = script(tmp_path, "slow", f"sleep 60 &\necho $$ $! > {pids}\nwait\n")
    task = asyncio.create_task(hooks(slow).fire(HookPoint.RESTORED, FACTS))
    hook_pid, child_pid = (int(p) for p in (await wait_for_file(pids)).split())
    assert alive(child_pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(hook_pid) and gone(child_pid)


@pytest.mark.asyncio
async def test_what_a_finished_hook_leaves_holding_its_output_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    leaves = script(tmp_path, "leaves", f"sleep 60 &\necho $! > {pids}\nexit 0\n")
    await hooks(leaves).fire(HookPoint.POST_COMMIT, FACTS)
    assert gone(int(pids.read_text()))


# -- several hooks ---------------------------------------------------------------------------


def marker_script(directory: Path, name: str, log: Path, status: int) -> Path:
    return script(
        directory,
        name,
        f'echo "{name} $1" >> {log}\n'
        f"[ {status} = 0 ] || echo '{name} says no' >&2\nexit {status}\n",
    )


@pytest.mark.asyncio
async def test_before_the_commit_the_first_failing_script_stops_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "log"
    scripts = [marker_script(tmp_path, n, log, s) for n, s in (("a", 0), ("b", 1), ("c", 0))]
    with pytest.raises(HookError, match=r"hook .*/b at restored exited with status 1: b says no$"):
        await hooks(*scripts).fire(HookPoint.RESTORED, FACTS)
    assert log.read_text() == "a restored\nb restored\n"


@pytest.mark.asyncio
async def test_after_the_commit_every_script_runs_and_failures_come_together(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    scripts = [marker_script(tmp_path, n, log, s) for n, s in (("a", 4), ("b", 0), ("c", 5))]
    with pytest.raises(HookError) as raised:
        await hooks(*scripts).fire(HookPoint.POST_COMMIT, FACTS)
    assert log.read_text() == "a post-commit\nb post-commit\nc post-commit\n"
    assert str(raised.value) == (
        f"hook {scripts[0]} at post-commit exited with status 4: a says no; "
        f"hook {scripts[2]} at post-commit exited with status 5: c says no"
    )


class Recorder:
    def __init__(self, name: str, calls: list[str], fail_at: set[HookPoint]) -> None:
        self.name, self.calls, self.fail_at = name, calls, fail_at

    async def fire(self, point: HookPoint, facts: HookFacts) -> None:
        self.calls.append(f"{self.name} {point.value}")
        if point in self.fail_at:
            raise HaulError(f"{self.name} at {point.value}: refused")


@pytest.mark.asyncio
@pytest.mark.parametrize("point", list(HookPoint))
async def test_chain_runs_in_order_with_the_commit_rule(point: HookPoint) -> None:
    calls: list[str] = []
    first = Recorder("scripts", calls, {point})
    second = Recorder("haproxy", calls, {point})
    with pytest.raises(HaulError) as raised:
        await HookChain(first, second).fire(point, FACTS)
    if point.aborts:
        assert calls == [f"scripts {point.value}"]
        assert str(raised.value) == f"scripts at {point.value}: refused"
    else:
        assert calls == [f"scripts {point.value}", f"haproxy {point.value}"]
        assert str(raised.value) == (
            f"scripts at {point.value}: refused; haproxy at {point.value}: refused"
        )


@pytest.mark.asyncio
async def test_chain_of_good_hooks_calls_each_once() -> None:
    calls: list[str] = []
    await HookChain(Recorder("a", calls, set()), Recorder("b", calls, set())).fire(
        HookPoint.PRE_MIGRATE, FACTS
    )
    assert calls == ["a pre-migrate", "b pre-migrate"]


def test_chain_helper_drops_nones() -> None:
    a, b = Recorder("a", [], set()), Recorder("b", [], set())
    assert chain() is None and chain(None, None) is None
    assert chain(None, a) is a
    both = chain(a, None, b)
    assert isinstance(both, HookChain) and both.hooks == (a, b)


def test_aborting_points_are_the_ones_before_the_commit() -> None:
    assert [p.value for p in HookPoint if p.aborts] == ["pre-migrate", "pre-freeze", "restored"]


# -- checking a hook's path ------------------------------------------------------------------


def test_check_hook_path_accepts_an_absolute_executable(tmp_path: Path) -> None:
    good = script(tmp_path, "good", "exit 0\n")
    assert check_hook_path(str(good), host="host1") == good


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: "relative/hook", "hook 'relative/hook': give an absolute path on host1"),
        (lambda d: f"{d}/../x", "give an absolute path on host1"),
        (lambda d: f"{d}/missing", "/missing: no such file on host1"),
        (lambda d: str(d), ": not a regular file on host1"),
        (
            lambda d: str(script(d, "plain", "exit 0\n").chmod(0o644) or d / "plain"),
            "/plain: not executable on host1 (chmod +x it)",
        ),
    ],
)
def test_check_hook_path_refuses_in_one_line(
    tmp_path: Path, make: Callable[[Path], str], message: str
) -> None:
    with pytest.raises(UsageError) as raised:
        check_hook_path(make(tmp_path), host="host1")
    text = str(raised.value)
    assert message in text and "\n" not in text


def test_hook_script_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        HookScript(Path("rel"))
    with pytest.raises(ValueError):
        HookScript(Path("/bin/true"), timeout_s=0)
