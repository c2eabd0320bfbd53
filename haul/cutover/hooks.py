"""Hooks as executables (:class:`ScriptHooks`), and several hooks in a row (:class:`HookChain`).

Both implement the engine's :class:`~haul.engine.ports.HooksPort`; the runner
says when they are called and what a failure does (before the commit: the
migration rolls back; after it: a problem in the outcome).

What a hook script gets
    ``argv``: its own path, then the point (``pre-migrate``, ``pre-freeze``,
    ``restored``, ``post-commit``, ``rolled-back``). Its environment: the
    caller's (the source agent's), plus ``HAUL_POINT``, ``HAUL_MIGRATION_ID``,
    ``HAUL_WORKLOAD``, ``HAUL_SOURCE_HOST``, ``HAUL_DEST_HOST``,
    ``HAUL_SOURCE_ADDRESS``, ``HAUL_DEST_ADDRESS`` (empty when not known),
    ``HAUL_STRATEGY``, ``HAUL_PHASE`` (the migration's phase) and ``HAUL_REASON``
    (rolled-back: why; empty otherwise). Stdin is ``/dev/null``, the working
    directory ``/``. It runs in a session (process group) of its own.

What counts
    Exit status 0 is success; anything else fails, as one line naming the hook,
    the point, the status and the last line the hook wrote (stderr, else
    stdout). Each script has its own timeout: when it expires the whole process
    group is killed with SIGKILL, and that is a failure too; so is a cancellation
    (the migration was aborted), after which the group is killed as well. Output
    is captured (the last 64 KiB of each stream) and logged; when the hook has
    exited, processes it left holding its output are killed with its group.

Several scripts at one point run in order. Before the commit the first failure
stops the rest (the migration rolls back anyway); after it every script runs and
the failures are reported together. :class:`HookChain` does the same for any
hooks (scripts, then built-in cutovers such as HAProxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from haul.engine.ports import HookFacts, HookPoint, HooksPort
from haul.errors import HaulError, UsageError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
#: bytes of each output stream kept for the log and the error line
KEEP_BYTES = 64 * 1024
#: after a hook exited, how long its output may take to reach end-of-file
_DRAIN_GRACE_S = 0.5
_LINE_MAX = 300


class HookError(HaulError):
    """A hook failed; the message names the hook and the point."""


@dataclass(frozen=True, slots=True)
class HookScript:
    """One executable on this host, with its own time limit."""

    path: Path
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.path.is_absolute():
            raise ValueError(f"a hook's path must be absolute, not {self.path}")
        if not self.timeout_s > 0:
            raise ValueError(f"a hook's timeout must be > 0 s, not {self.timeout_s}")


def check_hook_path(path: str | Path, *, host: str) -> Path:
    """``path`` if it is an absolute path to an executable file here that root (or the
    agent's own user) owns and neither group nor others may write, else one UsageError
    line that says what is wrong and on which host (hooks run on the source host)."""
    text = str(path)
    if "\x00" in text:
        raise UsageError(f"hook {text!r}: a path may not contain a NUL byte")
    if not text.startswith("/") or any(part in (".", "..") for part in text.split("/")):
        raise UsageError(f"hook {text!r}: give an absolute path on {host}, where hooks run")
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise UsageError(f"hook {text}: no such file on {host}") from None
    except OSError as exc:
        raise UsageError(f"hook {text}: cannot check it on {host}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"hook {text}: not a regular file on {host}")
    if not os.access(text, os.X_OK):
        raise UsageError(f"hook {text}: not executable on {host} (chmod +x it)")
    # It runs as root: only root (or the user the agent runs as) may have made it
    # or be able to change it (docs/security.md).
    if st.st_uid not in (0, os.geteuid()):
        raise UsageError(f"hook {text}: owned by uid {st.st_uid}, not root, on {host}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(
            f"hook {text}: writable by group or others on {host} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod go-w it"
        )
    return Path(text)


def hook_env(point: HookPoint, facts: HookFacts, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with the hook's HAUL_* variables set (every one, empty when unknown)."""
    return {
        **base,
        "HAUL_POINT": point.value,
        "HAUL_MIGRATION_ID": facts.migration_id,
        "HAUL_WORKLOAD": facts.workload,
        "HAUL_SOURCE_HOST": facts.source_host,
        "HAUL_DEST_HOST": facts.dest_host,
        "HAUL_SOURCE_ADDRESS": facts.source_address,
        "HAUL_DEST_ADDRESS": facts.dest_address,
        "HAUL_STRATEGY": facts.strategy.value,
        "HAUL_PHASE": facts.phase.value,
        "HAUL_REASON": " ".join(facts.reason.split()),
    }


class ScriptHooks:
    """:class:`~haul.engine.ports.HooksPort` by running executables (see the module)."""

    def __init__(self, scripts: Sequence[HookScript]) -> None:
        self._scripts = tuple(scripts)

    @property
    def scripts(self) -> tuple[HookScript, ...]:
        return self._scripts

    def __repr__(self) -> str:
        return f"ScriptHooks({', '.join(str(s.path) for s in self._scripts)})"

    async def fire(self, point: HookPoint, facts: HookFacts) -> None:
        failures: list[str] = []
        for script in self._scripts:
            try:
                await run_script(script, point, facts)
            except HookError as exc:
                if point.aborts:
                    raise
                failures.append(exc.one_line())
        if failures:
            raise HookError("; ".join(failures))


class HookChain:
    """Several hooks, called in the order given, with the same rule as ScriptHooks:
    before the commit the first failure stops the chain; after it all are called
    and their failures are reported in one line."""

    def __init__(self, *hooks: HooksPort) -> None:
        self._hooks = hooks

    @property
    def hooks(self) -> tuple[HooksPort, ...]:
        return self._hooks

    async def fire(self, point: HookPoint, facts: HookFacts) -> None:
        failures: list[str] = []
        for hooks in self._hooks:
            try:
                await hooks.fire(point, facts)
            except HaulError as exc:
                if point.aborts:
                    raise
                failures.append(exc.one_line())
        if failures:
            raise HookError("; ".join(failures))


def chain(*hooks: HooksPort | None) -> HooksPort | None:
    """The hooks given (Nones left out): None, the one, or a HookChain of them."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else HookChain(*present)


# -- running one script ------------------------------------------------------------------------


async def run_script(script: HookScript, point: HookPoint, facts: HookFacts) -> None:
    """Run ``script`` at ``point``; HookError unless it exits 0 within its timeout."""
    name = f"hook {script.path} at {point.value}"
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        transport, hook = await loop.subprocess_exec(
            _HookProtocol,
            str(script.path),
            point.value,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=hook_env(point, facts, os.environ),
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:
        raise HookError(f"{name} could not be started: {exc.strerror or exc}") from None
    timed_out = False
    try:
        done, _ = await asyncio.wait({hook.exited}, timeout=script.timeout_s)
        if not done:
            timed_out = True
            _kill_group(transport)
            await hook.exited
        # It has exited; what still holds its output is of its group: kill that.
        done, _ = await asyncio.wait({hook.closed}, timeout=_DRAIN_GRACE_S)
        if not done:
            _kill_group(transport)
            await asyncio.wait({hook.closed}, timeout=_DRAIN_GRACE_S)
    except BaseException:  # cancelled: the migration is aborting; leave nothing running
        _kill_group(transport)
        raise
    finally:
        transport.close()
    out, err = hook.output[1], hook.output[2]
    _log_output(name, out, err)
    if timed_out:
        raise HookError(
            f"{name} timed out after {script.timeout_s:g} s and was killed" + _last_words(out, err)
        )
    status = transport.get_returncode()
    if status != 0:
        raise HookError(f"{name} {_how_it_ended(status)}{_last_words(out, err)}")
    log.info("%s: ok in %.2f s", name, time.monotonic() - started)


class _HookProtocol(asyncio.SubprocessProtocol):
    """Keeps the tail of each output stream; says when the hook exited and when its
    output closed (asyncio's Process.wait waits for both together)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.output = {1: bytearray(), 2: bytearray()}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        keep = self.output[fd]
        keep += data
        if len(keep) > KEEP_BYTES:
            del keep[:-KEEP_BYTES]

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _how_it_ended(status: int | None) -> str:
    if status is None or status >= 0:
        return f"exited with status {status}"
    try:
        return f"was killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"was killed by signal {-status}"


def _kill_group(transport: asyncio.SubprocessTransport) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(transport.get_pid(), signal.SIGKILL)


def _lines(data: bytearray) -> list[str]:
    return [
        " ".join(line.split())
        for line in data.decode(errors="replace").splitlines()
        if line.strip()
    ]


def _last_words(out: bytearray, err: bytearray) -> str:
    lines = _lines(err) or _lines(out)
    if not lines:
        return " (no output)"
    last = lines[-1]
    return ": " + (last if len(last) <= _LINE_MAX else last[:_LINE_MAX] + "...")


def _log_output(name: str, out: bytearray, err: bytearray) -> None:
    for stream, data in (("stdout", out), ("stderr", err)):
        for line in _lines(data)[-20:]:
            log.info("%s %s: %s", name, stream, line)


def _check_protocol(scripts: ScriptHooks, chained: HookChain) -> tuple[HooksPort, HooksPort]:
    """mypy checks here that both implement the engine's HooksPort."""
    return scripts, chained
