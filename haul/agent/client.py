"""An asyncio client of an agent's HTTP API.

The agent is addressed as ``http://host:port``, ``https://host:port`` (with
an SSL context from :func:`haul.agent.ca.client_ssl_context`, which also
carries a client certificate) or ``unix:///path/to/agent.sock``. An error
answer raises :class:`haul.errors.PeerError` with the agent's wire code and
its one-line message; no answer at all (refused, reset, TLS handshake
refused, timeout) raises :class:`haul.errors.TransportError`.
"""

from __future__ import annotations

import asyncio
import errno
import json
import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
from pydantic import BaseModel, ValidationError

from haul.agent.models import (
    AgentInfo,
    Health,
    NetSpec,
    Readiness,
    WorkloadList,
    WorkloadSpec,
    WorkloadView,
)
from haul.agent.routing import describe_validation
from haul.agent.wire import ErrorBody, one_line
from haul.errors import PeerError, TransportError, UsageError

M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT_S = 60.0


class AgentClient:
    """One agent's API. Use ``async with AgentClient(url, ...) as agent:``; no I/O before."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme == "unix":
            if not parts.path:
                raise UsageError(f"agent address {base_url!r} names no socket path")
            self._socket_path: str | None = parts.path
            self._base = "http://agent"
        elif parts.scheme in ("http", "https") and parts.hostname:
            self._socket_path = None
            self._base = f"{parts.scheme}://{parts.netloc}"
        else:
            raise UsageError(f"agent address {base_url!r} is not http(s)://HOST:PORT "
                             "or unix:///PATH")
        if ssl_context is not None and parts.scheme != "https":
            raise UsageError(f"a TLS context was given for {base_url}, which is not https")
        self.url = base_url
        self._token = token
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

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
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token}"
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers, timeout=self._timeout
            )
        return self._session

    async def request(
        self, method: str, path: str, *, body: BaseModel | None = None,
        ok: Sequence[int] = (200,),
    ) -> tuple[int, bytes]:
        """Send one request; return (status, body) for an ``ok`` status, raise otherwise."""
        session = self._open()
        data = body.model_dump_json(exclude_none=True).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with session.request(method, self._base + path, data=data,
                                       headers=headers) as response:
                status = response.status
                raw = await response.read()
        except (aiohttp.ClientError, ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
            detail = one_line(str(exc)) or type(exc).__name__
            if self._ssl is not None and _dropped(exc):
                # TLS 1.3: a server that refuses the client's certificate says so only
                # after the handshake, by closing or resetting the connection
                detail += (" (over TLS this is how an agent refuses a client certificate "
                           "it does not trust: check that the CA that signed this client's "
                           "certificate is the agent's)")
            raise TransportError(f"agent {self.url}: {method} {path}: {detail}") from exc
        if status not in ok:
            raise self._error(method, path, status, raw)
        return status, raw

    def _error(self, method: str, path: str, status: int, raw: bytes) -> PeerError:
        try:
            error = ErrorBody.model_validate_json(raw).error
            code, message = error.code, error.message
        except ValidationError:
            code = f"http_{status}"
            message = one_line(raw.decode(errors="replace"))[:200] or f"HTTP {status}"
        return PeerError(f"agent {self.url}: {method} {path}: {message}", code=code)

    def _parse(self, model: type[M], raw: bytes) -> M:
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise TransportError(f"agent {self.url}: unexpected answer for {model.__name__}: "
                                 f"{one_line(str(exc))[:200]}") from None

    async def _get(self, path: str, model: type[M]) -> M:
        _, raw = await self.request("GET", path)
        return self._parse(model, raw)

    # ---------------------------------------------------------------- health

    async def health(self) -> Health:
        return await self._get("/healthz", Health)

    async def readiness(self) -> Readiness:
        """The readiness checks (whether the agent answered 200 or 503)."""
        _, raw = await self.request("GET", "/readyz", ok=(200, 503))
        return self._parse(Readiness, raw)

    async def info(self) -> AgentInfo:
        return await self._get("/v1/info", AgentInfo)

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

    async def start_workload(self, name: str, argv: Sequence[str],
                             data_dir: str | None = None, net: NetSpec | None = None
                             ) -> WorkloadView:
        try:
            spec = WorkloadSpec(name=name, argv=list(argv), data_dir=data_dir, net=net)
        except ValidationError as exc:
            raise UsageError(f"workload {name!r}: {describe_validation(exc)}") from None
        _, raw = await self.request("POST", "/v1/workloads", body=spec, ok=(201,))
        return self._parse(WorkloadView, raw)

    async def workloads(self) -> list[WorkloadView]:
        return (await self._get("/v1/workloads", WorkloadList)).workloads

    async def workload(self, name: str) -> WorkloadView:
        return await self._get(f"/v1/workloads/{quote(name, safe='')}", WorkloadView)

    async def delete_workload(self, name: str) -> WorkloadView:
        _, raw = await self.request("DELETE", f"/v1/workloads/{quote(name, safe='')}")
        return self._parse(WorkloadView, raw)


def _dropped(exc: BaseException) -> bool:
    """The server closed or reset the connection without an answer."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET
