"""Who may call each route: the one table of it (docs/security.md).

Two roles call an agent:

- an **operator** (root on the unix socket, the operator token, or a client
  certificate named in ``[agent.auth] operators``) may call every route;
- a **peer** (another agent: a client certificate whose name is the key of an
  ``[agent.peers]`` entry, or that entry's ``inbound_token``) may call only the
  routes :data:`ACCESS` gives it, and a migration's routes only for that migration.

A route missing from :data:`ACCESS` is for operators alone, so a new route is
closed to peers until it is added here. ``GET /healthz`` is the one route anyone
may call (it is declared ``auth=False`` where it is served).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from haul.agent.migration_models import IncomingOpen
from haul.agent.wire import Forbidden


class Role(enum.Enum):
    OPERATOR = "operator"
    PEER = "peer"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: its role, and for a peer its name in the config."""

    role: Role
    #: the peer's host name, or for an operator how it proved it (for logs)
    name: str

    @property
    def is_operator(self) -> bool:
        return self.role is Role.OPERATOR

    def __str__(self) -> str:
        return self.name if self.is_operator else f"peer {self.name}"


class Access(enum.Enum):
    #: operators only (every route not in ACCESS)
    OPERATOR = "operator"
    #: operators, and any peer: nothing of a migration is touched yet
    PEER = "peer"
    #: operators, and the peer that opened incoming migration {id}, with its secret
    PEER_INCOMING = "peer-incoming"
    #: operators, and the peer that is the destination of this host's migration {id}
    PEER_DECISION = "peer-decision"


_INCOMING = (
    ("PUT", "/v1/incoming/{id}/blobs/{digest}"),
    ("POST", "/v1/incoming/{id}/blobs-from"),
    ("POST", "/v1/incoming/{id}/image"),
    ("PUT", "/v1/incoming/{id}/images/{name}"),
    ("PUT", "/v1/incoming/{id}/data"),
    ("POST", "/v1/incoming/{id}/entries"),
    ("POST", "/v1/incoming/{id}/remove"),
    ("POST", "/v1/incoming/{id}/restore"),
    ("POST", "/v1/incoming/{id}/resume"),
    ("POST", "/v1/incoming/{id}/wait-pages"),
    ("POST", "/v1/incoming/{id}/discard"),
    ("POST", "/v1/incoming/{id}/finish"),
    ("GET", "/v1/incoming/{id}"),
)

#: (method, path template) -> who besides operators may call it
ACCESS: Mapping[tuple[str, str], Access] = MappingProxyType(
    {
        ("GET", "/v1/incoming-capabilities"): Access.PEER,
        ("POST", "/v1/incoming-check"): Access.PEER,
        ("POST", "/v1/incoming"): Access.PEER,
        **dict.fromkeys(_INCOMING, Access.PEER_INCOMING),
        ("GET", "/v1/migrations/{id}/decision"): Access.PEER_DECISION,
    }
)


def access_of(key: tuple[str, str] | None) -> Access:
    """Who may call the route ``key`` (an unmatched route: operators alone)."""
    return ACCESS.get(key, Access.OPERATOR) if key is not None else Access.OPERATOR


def described(access: Access) -> str:
    """For the OpenAPI document and refusals: who may call a route of this access."""
    return {
        Access.OPERATOR: "operators",
        Access.PEER: "operators and peers",
        Access.PEER_INCOMING: "operators, and the peer that opened this incoming migration "
        "(with its secret)",
        Access.PEER_DECISION: "operators, and the peer that is this migration's destination",
    }[access]


def admit_shared(caller: Caller, path: Path, shared_dirs: Sequence[Path], what: str) -> None:
    """A peer names a path on shared storage (pages, a container's layer or rootfs, an
    image layout) only inside a shared directory this agent's config allows; Forbidden
    (403) in one line otherwise. An operator may name any."""
    if caller.is_operator:
        return
    where = Path(os.path.realpath(path))
    if not any(where.is_relative_to(os.path.realpath(d)) for d in shared_dirs):
        allowed = ", ".join(str(d) for d in shared_dirs) or "none"
        raise Forbidden(
            f"peer {caller.name} named {path} for {what}, which is in "
            f"none of this agent's shared_dirs ({allowed})"
        )


def admit_open(caller: Caller, ask: IncomingOpen, shared_dirs: Sequence[Path]) -> IncomingOpen:
    """The ask of ``POST /v1/incoming`` as ``caller`` may make it: a peer opens a
    migration only in its own name (the host this agent asks for the decision), and
    names only a shared directory this agent's config allows (``shared_dirs``);
    Forbidden (403) in one line otherwise. An operator's ask is taken as it is."""
    if caller.is_operator:
        return ask
    if ask.source is not None and ask.source != caller.name:
        raise Forbidden(
            f"peer {caller.name} opens a migration only in its own name, not as {ask.source}"
        )
    named = [("the pages", ask.shared_images)]
    if ask.container is not None:
        named += [
            ("the container's writable layer", ask.container.shared_layer),
            ("the container's root filesystem", ask.container.shared_rootfs),
        ]
    for what, path in named:
        if path is not None:
            admit_shared(caller, Path(path), shared_dirs, what)
    return ask.model_copy(update={"source": caller.name})
