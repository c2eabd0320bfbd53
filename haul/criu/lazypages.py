"""CRIU's lazy-pages daemon: the destination side of post-copy.

CRIU has no RPC request for it, so haul runs ``criu lazy-pages`` as a child
process on the destination host. It connects to the page server that a lazy
dump leaves running on the source, serves the restored tree's page faults
(userfaultfd) and fetches the remaining pages in the background, and exits
when every page has arrived. A restore with ``lazy_pages`` finds it through
the ``lazy-pages.socket`` in the shared work directory. Readiness is read
from ``--status-fd``, not guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from types import TracebackType

from haul.criu.options import PageServer, TlsFiles
from haul.criu.service import Criu, log_tail
from haul.errors import CriuError

START_TIMEOUT_S = 30.0


class LazyPagesDaemon:
    """``async with LazyPagesDaemon(...) as d:`` starts it and waits until it listens."""

    def __init__(
        self,
        criu: Criu,
        *,
        images_dir: Path,
        work_dir: Path,
        source: PageServer,
        tls: TlsFiles | None = None,
        log_file: str = "lazy-pages.log",
    ) -> None:
        self._criu = criu
        self.images_dir = images_dir
        self.work_dir = work_dir
        self.source = source
        self.tls = tls
        self.log_path = work_dir / log_file
        self._proc: asyncio.subprocess.Process | None = None

    def argv(self, status_fd: int) -> list[str]:
        argv = [
            *self._criu.argv(),
            "lazy-pages",
            "--page-server",
            "--address",
            self.source.address,
            "--port",
            str(self.source.port),
            "--images-dir",
            str(self.images_dir),
            "--work-dir",
            str(self.work_dir),
            "--log-file",
            self.log_path.name,
            "-v4",
            "--status-fd",
            str(status_fd),
        ]
        if self.tls is not None:
            argv += [
                "--tls",
                "--tls-cacert",
                str(self.tls.cacert),
                "--tls-cert",
                str(self.tls.cert),
                "--tls-key",
                str(self.tls.key),
            ]
            if self.tls.no_cn_verify:
                argv.append("--tls-no-cn-verify")
        return argv

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        rfd, wfd = os.pipe()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv(wfd),
                pass_fds=(wfd,),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(rfd)
            raise CriuError(f"cannot start: {exc.strerror}", request="lazy-pages") from exc
        finally:
            os.close(wfd)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await asyncio.to_thread(os.read, rfd, 1)
        except TimeoutError:
            ready = b""
        finally:
            os.close(rfd)
        if ready != b"\0":
            await self.stop()
            raise self._error("did not become ready")

    async def wait(self, timeout_s: float | None = None) -> None:
        """Wait until every page has been delivered and the daemon exited."""
        if self._proc is None:
            return
        async with asyncio.timeout(timeout_s):
            code = await self._proc.wait()
        if code != 0:
            raise self._error(f"exited with status {code}")

    async def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        await proc.wait()

    def _error(self, what: str) -> CriuError:
        return CriuError(
            what,
            request="lazy-pages",
            log_path=str(self.log_path),
            log_tail=log_tail(self.log_path),
        )

    async def __aenter__(self) -> LazyPagesDaemon:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.stop())
