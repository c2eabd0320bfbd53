"""runc, driven through its command line: one runc root, the CRIU haul installed.

Every call is ``runc --root ROOT [--criu CRIU] VERB ...`` run with an argument list
(never a shell), inside the host's namespaces when the agent runs in one (it inherits
them). A failure raises :class:`~haul.errors.ContainerError` with runc's own last line;
for checkpoint and restore, whose runc errors say little ("criu failed: type NOTIFY
errno 0"), the first error line of CRIU's log in the work directory is quoted too.

What runc keeps per container is only ``ROOT/ID/state.json``: a restore rebuilds it
from the bundle and the images (docs/containers.md).

A call whose caller gives up (cancelled) ends runc's process group, runc and the CRIU
it started, with SIGKILL; at once, or, for a checkpoint (:class:`OnCancel`), once runc
has ended by itself or its time limit is up: CRIU, killed while it works inside the
container's tasks (injected system calls, its parasite), leaves them on its code, and
they die of SIGTRAP (seen: an abort during the final dump lost the container).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from haul.errors import ContainerError, NoSuchContainer
from haul.nsexec import HOST, HostNs

log = logging.getLogger(__name__)

RUNC = Path("/usr/sbin/runc")
#: what a container's ID may be (runc's own rule is looser; haul uses workload names)
CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
#: how long one runc call may take (a checkpoint of a large container is longer: its own)
CALL_TIMEOUT_S = 60.0
CRIU_CALL_TIMEOUT_S = 900.0


@dataclass(frozen=True, slots=True)
class ContainerState:
    """What ``runc state`` says of one container."""

    id: str
    #: created, running, paused, stopped
    status: str
    pid: int
    bundle: Path
    #: the annotations it was created with (runc's own copy: what its checkpoint reads)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckpointOptions:
    """How ``runc checkpoint`` dumps (docs/containers.md explains each choice)."""

    image_path: Path
    work_path: Path
    #: keep the (paused) container alive after the dump: haul holds it frozen
    leave_running: bool = True
    tcp_established: bool = False
    file_locks: bool = True
    #: ADDRESS:PORT of the destination's page server, or (lazy) where to serve pages
    page_server: str | None = None
    lazy_pages: bool = False
    #: a descriptor runc writes one byte to once the lazy page server is up
    status_fd: int | None = None
    #: a pre-copy round: memory only, the container runs on (needs soft-dirty tracking)
    pre_dump: bool = False
    #: the images of the round before, relative to ``image_path`` (``../pre1``)
    parent_path: str | None = None


@dataclass(slots=True)
class OnCancel:
    """What a cancelled runc call does. ``wait``: runc goes on until it ends by itself
    (within the call's time limit), then the cancellation goes on; else runc and its
    CRIU are killed at once. A checkpoint waits while its CRIU may be inside the
    container's tasks, and stops waiting (its owner sets ``wait`` to False) once they
    hold none of its code: a post-copy dump that is written and serves its pages."""

    wait: bool = False


@dataclass(frozen=True, slots=True)
class RestoreOptions:
    bundle: Path
    image_path: Path
    work_path: Path
    tcp_established: bool = False
    file_locks: bool = True
    lazy_pages: bool = False
    pid_file: Path | None = None


class Runc:
    """One runc root. ``criu``: the CRIU binary for checkpoint and restore (runc would
    otherwise take whatever ``criu`` comes first on PATH)."""

    def __init__(
        self, root: Path, *, criu: Path | None = None, binary: Path = RUNC, host: HostNs = HOST
    ) -> None:
        self.root = root
        self.criu = criu
        self.binary = binary
        #: the host's namespaces runc runs in (an agent inside a lab host is in them already)
        self.host = host

    def __repr__(self) -> str:
        return f"<Runc root={self.root}>"

    async def _run(
        self,
        *args: str,
        timeout_s: float = CALL_TIMEOUT_S,
        pass_fds: Sequence[int] = (),
        what: str = "",
        log_dir: Path | None = None,
        detached_log: Path | None = None,
        env: Mapping[str, str] | None = None,
        on_cancel: OnCancel | None = None,
    ) -> str:
        """Run runc; its standard output. ``detached_log``: the call leaves a container
        running that would inherit runc's standard streams (``run -d``, ``restore -d``):
        they are /dev/null, and runc logs to this file instead. ``env``: variables added
        to runc's environment (the CRIU it starts inherits them). ``on_cancel``: see
        :class:`OnCancel` (default: killed at once)."""
        argv = [*self.host.prefix(), str(self.binary), "--root", str(self.root)]
        if self.criu is not None:
            argv += ["--criu", str(self.criu)]
        if detached_log is not None:
            detached_log.unlink(missing_ok=True)
            argv += ["--log", str(detached_log), "--log-format", "json"]
        argv += list(args)
        streams = asyncio.subprocess.DEVNULL if detached_log else asyncio.subprocess.PIPE
        call = f"runc {what or args[0]} {args[-1]}"
        deadline = asyncio.get_running_loop().time() + timeout_s
        spawning = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=streams,
                stderr=streams,
                pass_fds=tuple(pass_fds),
                env={**os.environ, **env} if env else None,
                # its own process group: ending runc ends the CRIU it started too
                start_new_session=True,
            )
        )
        try:
            proc = await asyncio.shield(spawning)
            async with asyncio.timeout_at(deadline):
                out, err = await proc.communicate()
        except TimeoutError:
            await _end(proc)
            raise ContainerError(
                f"runc {what or args[0]} did not finish within {timeout_s:g} s"
            ) from None
        except asyncio.CancelledError:
            # runc may run already even when the cancellation came while it started
            await _unstoppable(
                asyncio.ensure_future(_end_cancelled(spawning, on_cancel, deadline, call))
            )
            raise
        if proc.returncode != 0:
            said = err.decode(errors="replace") if err else _log_errors(detached_log)
            if not said.strip() and detached_log is not None:
                said = f"no message (runc's log: {detached_log})"
            raise self._failed(what or args[0], said, log_dir)
        return out.decode(errors="replace") if out else ""

    def _failed(self, what: str, stderr: str, log_dir: Path | None) -> ContainerError:
        line = _last_line(stderr) or "no message"
        if "does not exist" in line or "container not found" in line.lower():
            return NoSuchContainer(f"runc {what}: {line}")
        criu = _criu_error(log_dir) if log_dir is not None else None
        if criu:
            line += f"; CRIU: {criu}"
        return ContainerError(f"runc {what}: {line}")

    async def version(self) -> str:
        """runc's version number, e.g. ``1.1.5``."""
        out = await self._run("--version", what="--version")
        match = re.search(r"runc version (\S+)", out)
        return match.group(1) if match else out.strip().splitlines()[0]

    async def spec(self, bundle: Path) -> None:
        """``runc spec``: write runc's default config.json into ``bundle`` (it must have none)."""
        await self._run("spec", "--bundle", str(bundle), what="spec")

    async def state(self, container_id: str) -> ContainerState:
        """Raises :class:`NoSuchContainer` when runc knows no such container here."""
        raw = json.loads(await self._run("state", container_id))
        return _state_of(raw)

    async def list(self) -> list[ContainerState]:
        out = await self._run("list", "--format", "json")
        rows = json.loads(out) if out.strip() else None
        return [_state_of(r) for r in rows or []]

    async def run_detached(self, container_id: str, bundle: Path, *, pid_file: Path) -> int:
        """``runc run -d``: create and start; returns the container's init PID. The
        container's standard streams are /dev/null (what CRIU can dump); runc's log is
        next to the PID file."""
        await self._run(
            "run",
            "--detach",
            "--bundle",
            str(bundle),
            "--pid-file",
            str(pid_file),
            container_id,
            what="run",
            detached_log=pid_file.with_suffix(".runc.log"),
        )
        return int(pid_file.read_text().strip())

    async def kill(
        self,
        container_id: str,
        sig: signal.Signals = signal.SIGKILL,
        *,
        all_processes: bool = False,
    ) -> None:
        args = ["kill"] + (["--all"] if all_processes else []) + [container_id, sig.name]
        await self._run(*args, what="kill")

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        await self._run("delete", *(["--force"] if force else []), container_id, what="delete")

    async def pause(self, container_id: str) -> None:
        await self._run("pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self._run("resume", container_id)

    async def exec(self, container_id: str, argv: Sequence[str]) -> str:
        """Run ``argv`` in the container; its output."""
        return await self._run("exec", container_id, *argv, what="exec")

    async def checkpoint(
        self,
        container_id: str,
        opts: CheckpointOptions,
        *,
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        on_cancel: OnCancel | None = None,
    ) -> None:
        args = [
            "checkpoint",
            "--image-path",
            str(opts.image_path),
            "--work-path",
            str(opts.work_path),
        ]
        if opts.leave_running:
            args.append("--leave-running")
        if opts.tcp_established:
            args.append("--tcp-established")
        if opts.file_locks:
            args.append("--file-locks")
        if opts.page_server is not None:
            args += ["--page-server", opts.page_server]
        if opts.lazy_pages:
            args.append("--lazy-pages")
        if opts.pre_dump:
            args.append("--pre-dump")
        if opts.parent_path is not None:
            args += ["--parent-path", opts.parent_path]
        if opts.status_fd is not None:
            args += ["--status-fd", str(opts.status_fd)]
        await self._run(
            *args,
            container_id,
            timeout_s=CRIU_CALL_TIMEOUT_S,
            pass_fds=pass_fds,
            what="checkpoint",
            log_dir=opts.work_path,
            env=env,
            on_cancel=on_cancel,
        )

    async def restore(self, container_id: str, opts: RestoreOptions) -> None:
        """``runc restore --detach``; the copy's state (stopped or running) is what the
        CRIU configuration named by the bundle asks for."""
        args = [
            "restore",
            "--detach",
            "--bundle",
            str(opts.bundle),
            "--image-path",
            str(opts.image_path),
            "--work-path",
            str(opts.work_path),
        ]
        if opts.tcp_established:
            args.append("--tcp-established")
        if opts.file_locks:
            args.append("--file-locks")
        if opts.lazy_pages:
            args.append("--lazy-pages")
        if opts.pid_file is not None:
            args += ["--pid-file", str(opts.pid_file)]
        await self._run(
            *args,
            container_id,
            timeout_s=CRIU_CALL_TIMEOUT_S,
            what="restore",
            log_dir=opts.work_path,
            detached_log=opts.work_path / "runc.log",
        )


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Kill runc and whatever it started (CRIU), and reap runc."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


async def _unstoppable(task: asyncio.Future[None]) -> None:
    """Await ``task`` to its end however often the caller is cancelled meanwhile (the
    caller is cancelled all the same once it returns)."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()


async def _end_cancelled(
    spawning: asyncio.Future[asyncio.subprocess.Process],
    on_cancel: OnCancel | None,
    deadline: float,
    call: str,
) -> None:
    """A cancelled call: runc (once started; nothing if it could not start) left to end
    by itself while ``on_cancel`` says to wait, up to ``deadline``, then ended."""
    try:
        proc = await spawning
    except OSError:
        return  # it never ran
    if on_cancel is not None and on_cancel.wait and proc.returncode is None:
        log.warning(
            "%s cancelled: waiting for it to end by itself (its CRIU, killed part way, "
            "could leave its code in the container's tasks)",
            call,
        )
        loop = asyncio.get_running_loop()
        while proc.returncode is None and on_cancel.wait and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.1, max(0.0, deadline - loop.time()))):
                    await proc.wait()
        if proc.returncode is None and on_cancel.wait:
            log.error("%s did not end by its time limit; killing it and its CRIU", call)
    await _end(proc)


def _log_errors(path: Path | None) -> str:
    """The error messages of runc's JSON log, one per line."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                lines.append(str(entry.get("msg", "")))
    return "\n".join(lines)


def _state_of(raw: dict[str, object]) -> ContainerState:
    annotations = raw.get("annotations")
    return ContainerState(
        id=str(raw["id"]),
        status=str(raw["status"]),
        pid=int(str(raw.get("pid") or 0)),
        bundle=Path(str(raw.get("bundle") or "")),
        annotations=(
            {str(k): str(v) for k, v in annotations.items()}
            if isinstance(annotations, dict)
            else {}
        ),
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    # runc logs as logfmt: level=error msg="..."
    match = re.search(r'msg="((?:[^"\\]|\\.)*)"', last)
    return match.group(1).replace('\\"', '"') if match else last


def _criu_error(log_dir: Path) -> str | None:
    """The first ``Error`` line of the CRIU logs runc left in ``log_dir``."""
    for name in ("dump.log", "restore.log"):
        path = log_dir / name
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "Error (" in line and "rlimit" not in line.lower():
                return line.split("): ", 1)[-1].strip()
    return None
