"""An asyncio client of an agent's HTTP API, made from an :class:`AgentAccess`.

An error answer raises the :class:`haul.errors.PeerError` subclass of the
agent's wire code (:func:`haul.errors.peer_error`) with its one-line message;
no answer at all (refused, reset, TLS handshake refused, timeout) raises
:class:`haul.errors.TransportError`. The calls are grouped by area of the API:
the agent's own (health, workloads) here, ``client.migrations`` (this agent
as a migration's source) and ``client.incoming`` (as its destination).
"""

from __future__ import annotations

import errno
import json
import ssl
import time
from collections.abc import AsyncIterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
from pydantic import BaseModel, ValidationError

from haul.agent.client.access import CONNECT_TIMEOUT_S, AgentAccess
from haul.agent.client.incoming import IncomingCalls
from haul.agent.client.migrations import MigrationCalls
from haul.agent.models import (
    AdoptSpec,
    AgentInfo,
    Health,
    MountSpec,
    NetSpec,
    Readiness,
    Runtime,
    WorkloadList,
    WorkloadSpec,
    WorkloadView,
)
from haul.agent.routing import describe_validation
from haul.agent.wire import ErrorBody, one_line
from haul.errors import PeerError, TransportError, UsageError, peer_error

M = TypeVar("M", bound=BaseModel)


def body_of(model: type[M], what: str, **fields: Any) -> M:
    """A request body made here: fields it refuses are a UsageError in one line (naming
    ``what``), as the agent would answer them, never a pydantic error."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise UsageError(f"{what}: {describe_validation(exc)}") from None


class AgentClient:
    """One agent's API. Use ``async with access.client() as agent:``; no I/O before."""

    def __init__(self, access: AgentAccess, *, name: str = "") -> None:
        self.access = access
        self.url = access.url
        #: how errors name the agent; unnamed, they name its URL and the call
        self.name = name
        if urlsplit(access.url).scheme == "unix":
            self._socket_path: str | None = urlsplit(access.url).path
            self._base = "http://agent"
        else:
            self._socket_path = None
            self._base = access.url.rstrip("/")
        self._ssl = access.ssl_context()  # a ConfigError here, before any call
        total = access.timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=total, sock_connect=min(CONNECT_TIMEOUT_S, total or CONNECT_TIMEOUT_S)
        )
        self._session: aiohttp.ClientSession | None = None
        self.migrations = MigrationCalls(self)
        self.incoming = IncomingCalls(self)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self._socket_path is not None:
                connector = aiohttp.UnixConnector(path=self._socket_path)
            else:
                connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
            headers = {"Accept": "application/json"}
            if self.access.token is not None:
                headers["Authorization"] = f"Bearer {self.access.token}"
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers, timeout=self._timeout
            )
        return self._session

    def _where(self, method: str, path: str) -> str:
        return self.name or f"agent {self.url}: {method} {path}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        data: AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        ok: Sequence[int] = (200,),
    ) -> tuple[int, bytes]:
        """Send one request (a JSON ``body``, or a stream of ``data``); return (status,
        body) for an ``ok`` status, raise otherwise."""
        session = self._open()
        sent: bytes | AsyncIterable[bytes] | None = data
        extra = dict(headers or {})
        if body is not None:
            sent = body.model_dump_json(exclude_none=True).encode()
            extra["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            async with session.request(
                method, self._base + path, data=sent, headers=extra, params=params
            ) as response:
                status = response.status
                raw = await response.read()
        except TimeoutError:
            raise TransportError(
                f"{self._unreachable(method, path)}: timed out after "
                f"{time.monotonic() - started:.0f} s"
            ) from None
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            detail = one_line(str(exc)) or type(exc).__name__
            if self._ssl is not None and _dropped(exc):
                # TLS 1.3: a server that refuses the client's certificate says so only
                # after the handshake, by closing or resetting the connection
                detail += (
                    " (over TLS this is how an agent refuses a client certificate "
                    "it does not trust: check that the CA that signed this client's "
                    "certificate is the agent's)"
                )
            raise TransportError(f"{self._unreachable(method, path)}: {detail}") from exc
        if status not in ok:
            raise self._error(method, path, status, raw)
        return status, raw

    def _unreachable(self, method: str, path: str) -> str:
        if self.name:
            return f"{self.name} unreachable ({self.url}): {method} {path}"
        return f"agent {self.url}: {method} {path}"

    def _error(self, method: str, path: str, status: int, raw: bytes) -> PeerError:
        try:
            error = ErrorBody.model_validate_json(raw).error
            code, message = error.code, error.message
        except ValidationError:
            code = f"http_{status}"
            message = one_line(raw.decode(errors="replace"))[:200] or f"HTTP {status}"
        return peer_error(code, f"{self._where(method, path)}: {message}", status=status)

    def parse(self, model: type[M], raw: bytes) -> M:
        """An answer's body as ``model``; TransportError if it is not one."""
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise TransportError(
                f"{self.name or f'agent {self.url}'}: unexpected answer for "
                f"{model.__name__}: {one_line(str(exc))[:200]}"
            ) from None

    async def call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        body: BaseModel | None = None,
        ok: Sequence[int] = (200,),
    ) -> M:
        """One request whose answer is ``model``."""
        _, raw = await self.request(method, path, body=body, ok=ok)
        return self.parse(model, raw)

    # ---------------------------------------------------------------- health

    async def health(self) -> Health:
        return await self.call("GET", "/healthz", Health)

    async def readiness(self) -> Readiness:
        """The readiness checks (whether the agent answered 200 or 503)."""
        return await self.call("GET", "/readyz", Readiness, ok=(200, 503))

    async def info(self) -> AgentInfo:
        return await self.call("GET", "/v1/info", AgentInfo)

    async def metrics_text(self) -> str:
        _, raw = await self.request("GET", "/metrics")
        return raw.decode()

    async def openapi(self) -> dict[str, Any]:
        _, raw = await self.request("GET", "/v1/openapi.json")
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise TransportError(f"agent {self.url}: the OpenAPI document is not an object")
        return doc

    # ---------------------------------------------------------------- workloads

    async def start_workload(
        self,
        name: str,
        argv: Sequence[str],
        data_dir: str | None = None,
        net: NetSpec | None = None,
        *,
        runtime: Runtime = "process",
        image: str | None = None,
        bundle: str | None = None,
        rootfs: str | None = None,
        mounts: Sequence[MountSpec] = (),
        memory_bytes: int | None = None,
        cpus: float | None = None,
        pids_limit: int | None = None,
        shared_dir: str | None = None,
    ) -> WorkloadView:
        """Start a process tree, or (``runtime="runc"``) a container from one of
        ``image``, ``bundle`` or ``rootfs`` (``argv``, if any, overrides its command),
        with ``mounts`` (the host's paths, read-only) and these cgroup limits if given;
        an image's container with its writable layer in ``shared_dir`` if given."""
        spec = body_of(
            WorkloadSpec,
            f"workload {name!r}",
            name=name,
            argv=list(argv),
            data_dir=data_dir,
            net=net,
            runtime=runtime,
            image=image,
            bundle=bundle,
            rootfs=rootfs,
            mounts=list(mounts),
            memory_bytes=memory_bytes,
            cpus=cpus,
            pids_limit=pids_limit,
            shared_dir=shared_dir,
        )
        return await self.call("POST", "/v1/workloads", WorkloadView, body=spec, ok=(201,))

    async def adopt(self, pid: int, name: str | None = None) -> WorkloadView:
        """Register the process tree rooted at ``pid`` on that host as a workload."""
        spec = body_of(AdoptSpec, f"pid {pid}", pid=pid, name=name)
        return await self.call("POST", "/v1/workloads/adopt", WorkloadView, body=spec, ok=(201,))

    async def adopt_container(
        self, container: str, *, runc_root: str | None = None, name: str | None = None
    ) -> WorkloadView:
        """Register the runc container ``container`` (under ``runc_root``, default runc's
        own) on that host as a workload, if it can be checkpointed there."""
        spec = body_of(
            AdoptSpec,
            f"container {container!r}",
            container=container,
            runc_root=runc_root,
            name=name,
        )
        return await self.call("POST", "/v1/workloads/adopt", WorkloadView, body=spec, ok=(201,))

    async def workloads(self) -> list[WorkloadView]:
        return (await self.call("GET", "/v1/workloads", WorkloadList)).workloads

    async def workload(self, name: str) -> WorkloadView:
        return await self.call("GET", f"/v1/workloads/{quote(name, safe='')}", WorkloadView)

    async def delete_workload(self, name: str) -> WorkloadView:
        return await self.call("DELETE", f"/v1/workloads/{quote(name, safe='')}", WorkloadView)


def _dropped(exc: BaseException) -> bool:
    """The server closed or reset the connection without an answer."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET
