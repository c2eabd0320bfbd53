"""Who is calling the agent, and whether it may call this route (docs/security.md).

Every route but the ones declared public (``GET /healthz``) needs a caller this
agent knows, in one of two roles (:mod:`haul.agent.roles`):

- an **operator**: a process running as uid 0 on the agent's unix socket (the
  kernel's peer credentials, SO_PEERCRED); ``Authorization: Bearer TOKEN`` with
  the operator token (``[agent.auth]``, compared in constant time); or a client
  certificate the TLS listener verified whose common name is in ``[agent.auth]
  operators``;
- a **peer**: a verified client certificate whose common name is the key of an
  ``[agent.peers]`` entry, or the bearer token that entry names ``inbound_token``.

A certificate the CA's revocation list names (``[agent.tls] crl``, read again
whenever the file changes) is refused, whatever else comes with it. A bearer
token is taken only over TLS, on the unix socket, from loopback, or in a lab
(``insecure_lab``): never in clear text across a network.

An unknown caller is answered 401, a known one asking for what its role may not
do 403, each with a JSON error in one line, before the body is read and before
any handler runs. The caller goes in the request (:func:`caller_of`).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from haul.agent.bindings import SECRET_HEADER, Bindings
from haul.agent.config import AgentConfig
from haul.agent.roles import Access, Caller, Role, access_of, described
from haul.agent.wire import Forbidden, error_response
from haul.errors import ConfigError

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # pid, uid, gid
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="haul-agent"'}
#: the caller of the request being handled (the middleware sets it around the handler)
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("haul_caller", default=None)
ROOT = Caller(Role.OPERATOR, "root on the unix socket")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def route_key(request: web.Request) -> tuple[str, str] | None:
    """The matched route as (method, path template), or None when no route matched."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return None
    return route.method, resource.canonical


def _socket(request: web.Request) -> Any:
    """The connection's socket (asyncio's TransportSocket: family, getsockopt), or None."""
    transport = request.transport
    if transport is None:
        return None
    return transport.get_extra_info("socket")


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of a unix socket connection, else None."""
    sock = _socket(request)
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    _, uid, _ = _UCRED.unpack(raw)
    return int(uid)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """A client certificate the TLS layer verified against the agent's CA."""

    name: str
    serial: int


def peer_certificate(request: web.Request) -> PeerCertificate | None:
    """The client certificate the TLS layer verified, else None."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()  # {} unless the certificate was verified
    if not cert:
        return None
    name = "?"
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = str(value)
    try:
        serial = int(str(cert.get("serialNumber", "")), 16)
    except ValueError:
        serial = -1
    return PeerCertificate(name, serial)


def peer_certificate_subject(request: web.Request) -> str | None:
    """The common name of a client certificate the TLS layer verified, else None."""
    cert = peer_certificate(request)
    return cert.name if cert is not None else None


def token_allowed(*, tls: bool, remote: str | None, insecure_lab: bool) -> bool:
    """Whether a bearer token may be taken on this connection: over TLS, on the unix
    socket (``remote`` None), from loopback, or in a lab; never in clear text from
    across a network."""
    if tls or remote is None or insecure_lab:
        return True
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _remote(request: web.Request) -> str | None:
    """The caller's IP address over TCP; None on the unix socket."""
    sock = _socket(request)
    if sock is not None and sock.family == socket.AF_UNIX:
        return None
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return request.remote or "an unknown address"


class Revocations:
    """The serials a CA's revocation list names, read again when the file changes."""

    def __init__(self, crl: Path, ca: Path) -> None:
        self.crl = crl
        self.ca = ca
        self._seen: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()

    def revoked(self, serial: int) -> bool:
        """Whether ``serial`` is revoked; ConfigError when the list cannot be read
        (then no certificate is taken: better refused than let in)."""
        from haul.agent.ca import crl_serials

        try:
            st = os.stat(self.crl)
        except OSError as exc:
            raise ConfigError(f"the revocation list {self.crl}: {exc.strerror}") from exc
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            self._serials = crl_serials(self.crl, self.ca)
            self._seen = seen
        return serial in self._serials


@dataclass(frozen=True, slots=True)
class Credentials:
    """What callers may prove who they are with, from the agent's configuration."""

    operator_token: bytes | None = None
    operator_certs: frozenset[str] = frozenset()
    peer_certs: frozenset[str] = frozenset()
    #: (digest of the token, peer name)
    peer_tokens: tuple[tuple[bytes, str], ...] = ()
    insecure_lab: bool = False
    revocations: Revocations | None = None

    @classmethod
    def of(cls, config: AgentConfig) -> Credentials:
        token = config.auth.bearer_token()
        tls = config.tls
        return cls(
            operator_token=_digest(token) if token is not None else None,
            operator_certs=frozenset(config.auth.operators),
            peer_certs=frozenset(config.peers),
            peer_tokens=tuple(
                (_digest(inbound), str(name))
                for name, peer in config.peers.items()
                if (inbound := peer.inbound()) is not None
            ),
            insecure_lab=config.insecure_lab,
            revocations=Revocations(tls.crl, tls.ca)
            if tls is not None and tls.crl is not None
            else None,
        )

    def of_token(self, given: str) -> Caller | None:
        digest = _digest(given)
        found = None
        if self.operator_token is not None and hmac.compare_digest(digest, self.operator_token):
            found = Caller(Role.OPERATOR, "the operator token")
        for peer_digest, name in self.peer_tokens:  # every one, whatever matched
            if hmac.compare_digest(digest, peer_digest) and found is None:
                found = Caller(Role.PEER, name)
        return found

    def of_certificate(self, cert: PeerCertificate) -> Caller | None:
        if cert.name in self.operator_certs:
            return Caller(Role.OPERATOR, f"certificate {cert.name}")
        if cert.name in self.peer_certs:
            return Caller(Role.PEER, cert.name)
        return None


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    #: the operator token (the only credential of a policy made without a config)
    token: str | None
    #: (method, path template) of the routes anyone may call
    public: frozenset[tuple[str, str]]
    credentials: Credentials | None = None
    bindings: Bindings | None = None
    #: the peer that opened an incoming migration here ("" for none named), or None
    #: when no such migration is open
    opener: Callable[[str], str | None] = field(default=lambda mid: None)

    def _credentials(self) -> Credentials:
        if self.credentials is not None:
            return self.credentials
        return Credentials(operator_token=_digest(self.token) if self.token else None)

    def identify(self, request: web.Request) -> Caller | str:
        """Who the caller is, or why it is not let in (one line)."""
        uid = peer_uid(request)
        if uid == 0:
            return ROOT
        creds = self._credentials()
        cert = peer_certificate(request)
        by_cert = None
        if cert is not None:
            try:
                revoked = creds.revocations is not None and creds.revocations.revoked(cert.serial)
            except ConfigError as exc:
                log.error("refusing certificates: %s", exc.one_line())
                return (
                    "this agent cannot read its revocation list, so it takes no "
                    f"certificate ({exc.one_line()})"
                )
            if revoked:
                return f"certificate {cert.name} (serial {cert.serial:x}) is revoked"
            by_cert = creds.of_certificate(cert)
        by_token = None
        given = _bearer(request)
        if given is not None:
            remote = _remote(request)
            tls = request.transport is not None and bool(
                request.transport.get_extra_info("ssl_object")
            )
            if not token_allowed(tls=tls, remote=remote, insecure_lab=creds.insecure_lab):
                return (
                    f"a bearer token is not taken over plain TCP from {remote}, beyond "
                    "loopback: call this agent over TLS"
                )
            by_token = creds.of_token(given)
            if by_token is None:
                return "the bearer token is not valid"
        for found in (by_token, by_cert):
            if found is not None and found.is_operator:
                return found
        if by_token is not None and by_cert is not None and by_token.name != by_cert.name:
            return f"the bearer token is peer {by_token.name}'s, the certificate {by_cert.name}'s"
        if by_token is not None:
            return by_token
        if by_cert is not None:
            return by_cert
        if cert is not None:
            return (
                f"certificate {cert.name} is neither an operator nor a peer of this agent "
                "(auth.operators, peers)"
            )
        if uid is not None:
            return f"uid {uid} on the unix socket is not root; send a bearer token"
        return "this agent needs a bearer token, a client certificate, or root on its unix socket"

    def authorize(self, caller: Caller, request: web.Request) -> str | None:
        """Why ``caller`` may not call this route (one line), or None when it may."""
        if caller.is_operator:
            return None
        access = access_of(route_key(request))
        if access is Access.PEER:
            return None
        mid = request.match_info.get("id", "")
        if access is Access.PEER_INCOMING and self.bindings is not None:
            opener = self.opener(mid)
            if opener is None:
                # not open here: nothing of it to guard; the route says so (a rollback
                # after a refused open discards nothing, and has no secret to send)
                return None
            if not self.bindings.check(mid, caller.name, request.headers.get(SECRET_HEADER)):
                return (
                    f"peer {caller.name} did not open incoming migration {mid} here, or did "
                    f"not send its secret ({SECRET_HEADER})"
                )
            if opener != caller.name:
                return (
                    f"incoming migration {mid} was opened by {opener or 'an operator'}, "
                    f"not by peer {caller.name}"
                )
            return None
        if access is Access.PEER_DECISION and self.bindings is not None:
            dest = self.bindings.destination_of(mid)
            if dest != caller.name:
                return f"peer {caller.name} is not the destination of migration {mid} here"
            return None
        return (
            f"peer {caller.name} may not call {request.method} {request.path}: "
            f"it is for {described(access)}"
        )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def caller_of(request: web.Request) -> Caller:
    """Who sent ``request``, as the middleware found (a route that is not public)."""
    caller = _CALLER.get()
    if caller is None:
        raise RuntimeError(f"{request.method} {request.path}: no caller (a public route?)")
    return caller


def auth_middleware(policy: AuthPolicy) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        where = request.remote or "unix socket"
        if route_key(request) in policy.public:
            return await handler(request)
        found = policy.identify(request)
        if isinstance(found, str):
            log.info("refused %s %s from %s: %s", request.method, request.path, where, found)
            return error_response(401, "unauthorized", found, headers=CHALLENGE)
        refusal = policy.authorize(found, request)
        if refusal is not None:
            log.warning("forbade %s %s from %s: %s", request.method, request.path, where, refusal)
            return error_response(403, Forbidden.code, refusal)
        log.debug("%s %s by %s", request.method, request.path, found)
        token = _CALLER.set(found)
        try:
            return await handler(request)
        finally:
            _CALLER.reset(token)

    return authenticate
