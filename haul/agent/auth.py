"""Who may call the agent: root on the unix socket, a client certificate, or the token.

Every route but the ones declared public (``GET /healthz``) needs one of:

- a connection on the agent's unix socket from a process running as uid 0
  (the kernel's peer credentials, SO_PEERCRED);
- a client certificate the TLS listener verified against the agent's CA;
- ``Authorization: Bearer TOKEN`` with the configured token (compared in
  constant time).

Anything else is answered 401 with a JSON error, before the body is read and
before any handler runs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import struct
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from haul.agent.wire import error_response

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # pid, uid, gid
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="haul-agent"'}


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def route_key(request: web.Request) -> tuple[str, str] | None:
    """The matched route as (method, path template), or None when no route matched."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return None
    return route.method, resource.canonical


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of a unix socket connection, else None."""
    transport = request.transport
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    _, uid, _ = _UCRED.unpack(raw)
    return int(uid)


def peer_certificate_subject(request: web.Request) -> str | None:
    """The common name of a client certificate the TLS layer verified, else None."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()  # {} unless the certificate was verified
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "?"


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    #: the bearer token, or None when tokens are not accepted
    token: str | None
    #: (method, path template) of the routes anyone may call
    public: frozenset[tuple[str, str]]

    def identify(self, request: web.Request) -> str | None:
        """Who the caller is (for logs), or None when it may not call this route."""
        if route_key(request) in self.public:
            return "anyone"
        uid = peer_uid(request)
        if uid == 0:
            return "root on the unix socket"
        subject = peer_certificate_subject(request)
        if subject is not None:
            return f"certificate {subject}"
        given = _bearer(request)
        if (
            given is not None
            and self.token is not None
            and hmac.compare_digest(_digest(given), _digest(self.token))
        ):
            return "token"
        return None

    def refusal(self, request: web.Request) -> str:
        if _bearer(request) is not None:
            return "the bearer token is not valid"
        uid = peer_uid(request)
        if uid is not None:
            return f"uid {uid} on the unix socket is not root; send a bearer token"
        return "this agent needs a bearer token, a client certificate, or root on its unix socket"


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def auth_middleware(policy: AuthPolicy) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        who = policy.identify(request)
        if who is None:
            reason = policy.refusal(request)
            log.info(
                "refused %s %s from %s: %s",
                request.method,
                request.path,
                request.remote or "unix socket",
                reason,
            )
            return error_response(401, "unauthorized", reason, headers=CHALLENGE)
        log.debug("%s %s by %s", request.method, request.path, who)
        return await handler(request)

    return authenticate
