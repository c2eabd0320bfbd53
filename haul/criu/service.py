"""An asyncio client for CRIU's RPC service (``criu swrk``).

Each :class:`CriuSession` is one ``criu swrk FD`` process talking over one end
of a SOCK_SEQPACKET socketpair. Most requests close the session when served;
pre-dumps keep it open so the next pre-dump or the final dump follows on the
same process (CRIU's pre-dump loop). :class:`Criu` is the entry point: it
knows the binary and where to run it (a network namespace, for lab hosts).

The rules this module keeps:
- one request in flight per session; NOTIFY messages are answered in order;
- a failed request raises :class:`CriuError` with CRIU's errno, message and
  the tail of its log file;
- if the caller is cancelled while CRIU waits on a notification, CRIU is told
  "failure" (so it rolls its own work back: a half-done dump resumes the
  tree) and the session is drained before the cancellation propagates;
- the swrk process never outlives its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from google.protobuf.message import DecodeError

from haul.criu.channel import ChannelClosed, Packet, SeqPacketChannel
from haul.criu.notify import Notification, NotifyHandler
from haul.criu.options import CriuOptions
from haul.criu.proto import rpc_pb2
from haul.criu.results import (
    CriuFeatures,
    CriuVersion,
    DumpResult,
    PageServerInfo,
    RestoreResult,
)
from haul.criu.stats import read_dump_stats, read_restore_stats
from haul.errors import CriuError, CriuProtocolError, HaulError
from haul.nsexec import HOST, HostNs

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
#: request types CRIU answers with another type
_ANSWER_TYPE = {rpc_pb2.PAGE_SERVER_CHLD: rpc_pb2.PAGE_SERVER}
#: how long a cancelled or failed session may take to wind down before it is killed
DRAIN_TIMEOUT_S = 30.0


def _type_name(value: int) -> str:
    try:
        name: str = rpc_pb2.criu_req_type.Name(value)
        return name.lower().replace("_", "-")
    except ValueError:
        return f"type-{value}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> tuple[str, ...]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ()
    return tuple(text.splitlines()[-lines:])


class _DirFds:
    """The images and work directory fds for one request, closed afterwards."""

    def __init__(self, opts: CriuOptions) -> None:
        self.images = self.work = -1
        try:
            self.images = os.open(opts.images_dir, os.O_RDONLY | os.O_DIRECTORY)
            if opts.work_dir is not None:
                self.work = os.open(opts.work_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            self.close()
            raise CriuError(
                f"cannot open {exc.filename}: {exc.strerror}", request="open-dirs"
            ) from exc

    def close(self) -> None:
        for fd in (self.images, self.work):
            if fd >= 0:
                os.close(fd)
        self.images = self.work = -1

    def proto(self, opts: CriuOptions) -> rpc_pb2.criu_opts:
        return opts.to_proto(self.images, self.work if self.work >= 0 else None)


class CriuSession:
    """One ``criu swrk`` process and its socket. Use as an async context manager."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._argv = tuple(argv)
        self._proc: asyncio.subprocess.Process | None = None
        self._chan: SeqPacketChannel | None = None
        self._broken = False
        # CRIU's stderr goes to a file, not a pipe: a page server that swrk forks
        # keeps it open long after swrk exits, and a pipe would hold us up.
        self._stderr: IO[bytes] | None = None

    async def __aenter__(self) -> CriuSession:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._stderr = tempfile.TemporaryFile(prefix="haul-criu-stderr-")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv,
                "swrk",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=self._stderr,
                start_new_session=True,
            )
        except BaseException as exc:
            # Cancelled or failed before the process ran: nothing to wind down.
            ours.close()
            self._stderr.close()
            self._stderr = None
            if isinstance(exc, OSError):
                raise CriuError(
                    f"cannot start {' '.join(self._argv)}: {exc.strerror}", request="swrk"
                ) from exc
            raise
        finally:
            theirs.close()
        self._chan = SeqPacketChannel(ours)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self._finish())

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def _finish(self) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            log.warning("criu swrk %d did not exit; killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    async def _stderr_text(self) -> str:
        """What CRIU (or nsenter before it) printed, once the process has exited."""
        proc, f = self._proc, self._stderr
        if proc is None or f is None:
            return ""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await proc.wait()
        f.seek(0)
        return " ".join(f.read(4096).decode("utf-8", "replace").split())

    async def request(
        self,
        req: rpc_pb2.criu_req,
        *,
        notify: NotifyHandler | None = None,
        log_path: Path | None = None,
    ) -> rpc_pb2.criu_resp:
        """Send one request, answer its notifications, return CRIU's final answer."""
        if self._chan is None or self._broken:
            raise CriuProtocolError("session is closed", request=_type_name(req.type))
        name = _type_name(req.type)
        await self._send(req, name, log_path)
        refusal: HaulError | None = None
        while True:
            resp, packet = await self._recv(name, log_path)
            if resp.type != rpc_pb2.NOTIFY:
                break
            refusal = await self._answer(resp, packet, notify, name, log_path) or refusal
        if resp.type != _ANSWER_TYPE.get(req.type, req.type):
            self._broken = True
            raise CriuProtocolError(
                f"answer of type {_type_name(resp.type)} to a {name} request",
                request=name,
            )
        if not resp.success:
            raise self._failure(name, resp, log_path, refusal)
        return resp

    async def _send(self, req: rpc_pb2.criu_req, name: str, log_path: Path | None) -> None:
        assert self._chan is not None
        try:
            await self._chan.send(req.SerializeToString())
        except ChannelClosed as exc:
            self._broken = True
            stderr = await self._stderr_text()
            raise CriuProtocolError(
                "criu swrk is gone (the connection is closed)" + (f" ({stderr})" if stderr else ""),
                request=name,
                log_path=str(log_path) if log_path else None,
                log_tail=log_tail(log_path) if log_path else (),
            ) from exc

    async def _recv(self, name: str, log_path: Path | None) -> tuple[rpc_pb2.criu_resp, Packet]:
        assert self._chan is not None
        try:
            packet = await self._chan.recv()
        except ChannelClosed as exc:
            self._broken = True
            stderr = await self._stderr_text()
            raise CriuProtocolError(
                "criu swrk closed the connection" + (f" ({stderr})" if stderr else ""),
                request=name,
                log_path=str(log_path) if log_path else None,
                log_tail=log_tail(log_path) if log_path else (),
            ) from exc
        resp = rpc_pb2.criu_resp()
        try:
            resp.ParseFromString(packet.data)
        except DecodeError as exc:
            packet.close_fds()
            self._broken = True
            raise CriuProtocolError("malformed answer from criu swrk", request=name) from exc
        if resp.type != rpc_pb2.NOTIFY:
            packet.close_fds()
        return resp, packet

    async def _answer(
        self,
        resp: rpc_pb2.criu_resp,
        packet: Packet,
        notify: NotifyHandler | None,
        name: str,
        log_path: Path | None,
    ) -> HaulError | None:
        """Run the handler and answer CRIU; return the handler's refusal, if any."""
        assert self._chan is not None
        note = Notification(
            name=resp.notify.script,
            pid=resp.notify.pid if resp.notify.HasField("pid") else None,
            fd=packet.fds[0] if packet.fds else None,
        )
        for extra in packet.fds[1:]:
            os.close(extra)
        failure: HaulError | None = None
        try:
            if notify is not None:
                await notify(note)
            else:
                note.close_fd()
        except HaulError as exc:
            log.info("refusing CRIU %s at %s: %s", name, note.name, exc)
            failure = exc
        except asyncio.CancelledError:
            # Tell CRIU to give up so it undoes what it did, wait for that, then go.
            await asyncio.shield(self._refuse_and_drain(name, log_path))
            raise
        reply = rpc_pb2.criu_req(type=rpc_pb2.NOTIFY, notify_success=failure is None)
        await self._send(reply, name, log_path)
        return failure

    async def _refuse_and_drain(self, name: str, log_path: Path | None) -> None:
        assert self._chan is not None
        try:
            reply = rpc_pb2.criu_req(type=rpc_pb2.NOTIFY, notify_success=False)
            await self._chan.send(reply.SerializeToString())
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while True:
                    resp, _ = await self._recv(name, log_path)
                    if resp.type != rpc_pb2.NOTIFY:
                        return
                    fail = rpc_pb2.criu_req(type=rpc_pb2.NOTIFY, notify_success=False)
                    await self._chan.send(fail.SerializeToString())
        except (HaulError, OSError, TimeoutError) as exc:
            log.warning("CRIU %s did not wind down cleanly after cancellation: %s", name, exc)
        finally:
            self._broken = True

    def _failure(
        self,
        name: str,
        resp: rpc_pb2.criu_resp,
        log_path: Path | None,
        refusal: HaulError | None,
    ) -> CriuError:
        message = "request failed"
        if refusal is not None:
            message = f"stopped at a notification: {refusal}"
        err = CriuError(
            message,
            request=name,
            errno=resp.cr_errno if resp.HasField("cr_errno") else 0,
            criu_message=resp.cr_errmsg if resp.HasField("cr_errmsg") else "",
            log_path=str(log_path) if log_path else None,
            log_tail=log_tail(log_path) if log_path else (),
        )
        if refusal is not None:
            err.__cause__ = refusal
        return err

    # -- requests that keep the session (the pre-dump loop) -----------------

    async def pre_dump(self, opts: CriuOptions, notify: NotifyHandler | None = None) -> DumpResult:
        """One pre-dump iteration; the session stays open for the next one or the dump."""
        return await self._dump_like(rpc_pb2.PRE_DUMP, opts, notify)

    async def dump(self, opts: CriuOptions, notify: NotifyHandler | None = None) -> DumpResult:
        return await self._dump_like(rpc_pb2.DUMP, opts, notify)

    async def _dump_like(
        self, kind: int, opts: CriuOptions, notify: NotifyHandler | None
    ) -> DumpResult:
        dirs = _DirFds(opts)
        try:
            req = rpc_pb2.criu_req(type=kind, opts=dirs.proto(opts))  # type: ignore[arg-type]
            resp = await self.request(req, notify=notify, log_path=opts.log_path)
        finally:
            dirs.close()
        return DumpResult(
            restored=resp.dump.restored if resp.HasField("dump") else False,
            stats=read_dump_stats(opts.work_dir or opts.images_dir),
        )


class Criu:
    """Where and how to run CRIU: a binary, on a host (its namespaces)."""

    def __init__(self, binary: str | Path, *, host: HostNs = HOST) -> None:
        self.binary = str(binary)
        self.host = host

    def argv(self) -> list[str]:
        return [*self.host.prefix(), self.binary]

    def on(self, host: HostNs) -> Criu:
        """The same CRIU, run inside another host's namespaces."""
        return Criu(self.binary, host=host)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[CriuSession]:
        async with CriuSession(self.argv()) as s:
            yield s

    async def _one(
        self,
        req: rpc_pb2.criu_req,
        *,
        notify: NotifyHandler | None = None,
        log_path: Path | None = None,
    ) -> rpc_pb2.criu_resp:
        async with self.session() as s:
            return await s.request(req, notify=notify, log_path=log_path)

    async def _with_dirs(
        self, kind: int, opts: CriuOptions, notify: NotifyHandler | None = None
    ) -> rpc_pb2.criu_resp:
        dirs = _DirFds(opts)
        try:
            req = rpc_pb2.criu_req(type=kind, opts=dirs.proto(opts))  # type: ignore[arg-type]
            return await self._one(req, notify=notify, log_path=opts.log_path)
        finally:
            dirs.close()

    async def version(self) -> CriuVersion:
        resp = await self._one(rpc_pb2.criu_req(type=rpc_pb2.VERSION))
        v = resp.version
        return CriuVersion(
            major=v.major_number,
            minor=v.minor_number,
            sublevel=v.sublevel,
            extra=v.extra,
            gitid=v.gitid,
            name=v.name,
        )

    async def check(self, work_dir: Path) -> None:
        """CRIU's own kernel check; raises CriuError naming what is missing."""
        await self._with_dirs(rpc_pb2.CHECK, CriuOptions(images_dir=work_dir, log_file="check.log"))

    async def features(self) -> CriuFeatures:
        ask = rpc_pb2.criu_features(mem_track=True, lazy_pages=True, pidfd_store=True)
        resp = await self._one(rpc_pb2.criu_req(type=rpc_pb2.FEATURE_CHECK, features=ask))
        f = resp.features
        return CriuFeatures(
            mem_track=f.mem_track, lazy_pages=f.lazy_pages, pidfd_store=f.pidfd_store
        )

    async def cpuinfo_dump(self, opts: CriuOptions) -> Path:
        """Write this CPU's description (cpuinfo.img) into ``opts.images_dir``."""
        await self._with_dirs(rpc_pb2.CPUINFO_DUMP, opts)
        return opts.images_dir / "cpuinfo.img"

    async def cpuinfo_check(self, opts: CriuOptions) -> None:
        """Raise CriuError unless images dumped elsewhere can run on this CPU."""
        await self._with_dirs(rpc_pb2.CPUINFO_CHECK, opts)

    async def dump(self, opts: CriuOptions, notify: NotifyHandler | None = None) -> DumpResult:
        async with self.session() as s:
            return await s.dump(opts, notify)

    async def restore(
        self, opts: CriuOptions, notify: NotifyHandler | None = None
    ) -> RestoreResult:
        resp = await self._with_dirs(rpc_pb2.RESTORE, opts, notify)
        return RestoreResult(
            pid=resp.restore.pid,
            stats=read_restore_stats(opts.work_dir or opts.images_dir),
        )

    async def page_server(self, opts: CriuOptions) -> PageServerInfo:
        """Start a page server that writes into ``opts.images_dir``.

        It listens on ``opts.page_server`` (port 0 picks one), serves one dump or
        pre-dump series, and exits when its sender closes the connection.
        haul asks for PAGE_SERVER_CHLD: CRIU 4.1 answers a PAGE_SERVER request
        with pid 0 (the daemon's PID is lost on the way), and haul needs the
        real PID to stop a page server whose migration was aborted.
        """
        if opts.page_server is None:
            raise ValueError("page_server needs opts.page_server (address and port)")
        resp = await self._with_dirs(rpc_pb2.PAGE_SERVER_CHLD, opts)
        return PageServerInfo(pid=resp.ps.pid, port=resp.ps.port)
