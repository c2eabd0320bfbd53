"""The ``--lb`` spec: which HAProxy servers a workload's traffic moves between.

Given as ``--lb`` to ``haul migrate``, or per workload in the agent's ``[agent.lb]``
table::

    haproxy:SOCKET:BACKEND/SERVER[,addr]

SOCKET is the absolute path of HAProxy's stats socket (``level admin``; it may
not hold ':'). SERVER is one of:

- a name with ``{host}`` in it, e.g. ``web-{host}``: one server per host,
  named after it; ``{host}`` is replaced by the source host's name for the
  source server and by the destination host's for the destination server
  (``web-host1`` -> ``web-host2``). Each already has its address in HAProxy's
  configuration; with ``,addr`` the destination server is first pointed at the
  workload's destination address (its port kept).
- ``*``: the servers are found by address. The source server is the one at the
  workload's source address; the destination server is the one already at its
  destination address, or else a spare server in maintenance (the slots of a
  ``server-template``, those at 0.0.0.0 first), which is pointed at the
  destination address with the source server's port. When the address follows
  the workload, source and destination are the same server and the cutover
  only keeps it in service through the frozen window.

:func:`parse_lb_spec` reads it into a :class:`HaproxyTarget`, refusing bad text
with one line; :class:`haul.cutover.haproxy.HaproxyCutover` finds the servers it
names and moves the traffic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from haul.cutover.haproxy_runtime import valid_name
from haul.errors import ConfigError

HOST_PLACEHOLDER = "{host}"
BY_ADDRESS = "*"


@dataclass(frozen=True, slots=True)
class HaproxyTarget:
    """A parsed ``haproxy:SOCKET:BACKEND/SERVER[,addr]``."""

    socket: Path
    backend: str
    server: str  # a name with {host} in it, or "*"
    set_addr: bool = False

    @property
    def by_address(self) -> bool:
        return self.server == BY_ADDRESS

    def server_for(self, host: str) -> str:
        """The server named after ``host`` (only for a SERVER with {host})."""
        name = self.server.replace(HOST_PLACEHOLDER, host)
        if not valid_name(name):
            raise ConfigError(
                f"server name {name!r} (from {self.server!r} for host "
                f"{host!r}) is not a HAProxy name"
            )
        return name

    def __str__(self) -> str:
        tail = ",addr" if self.set_addr else ""
        return f"haproxy:{self.socket}:{self.backend}/{self.server}{tail}"


def parse_lb_spec(text: str) -> HaproxyTarget:
    """Parse ``haproxy:SOCKET:BACKEND/SERVER[,addr]``; ConfigError with one line if bad."""
    where = f"load balancer {text!r}"
    kind, sep, rest = text.partition(":")
    if not sep:
        raise ConfigError(f"{where}: expected haproxy:SOCKET:BACKEND/SERVER")
    if kind != "haproxy":
        raise ConfigError(f"{where}: unknown load balancer {kind!r} (known: haproxy)")
    socket, sep, rest = rest.partition(":")
    if not sep:
        raise ConfigError(
            f"{where}: expected haproxy:SOCKET:BACKEND/SERVER (no ':' after the socket path)"
        )
    if not socket:
        raise ConfigError(f"{where}: the stats socket path is empty")
    if not socket.startswith("/"):
        raise ConfigError(f"{where}: the stats socket path {socket!r} must be absolute")
    backend, sep, server = rest.partition("/")
    if not sep:
        raise ConfigError(f"{where}: expected BACKEND/SERVER after the socket path, got {rest!r}")
    server, _, options = server.partition(",")
    set_addr = False
    for option in filter(None, options.split(",")):
        if option != "addr":
            raise ConfigError(f"{where}: unknown option {option!r} (known: addr)")
        set_addr = True
    if not valid_name(backend):
        raise ConfigError(
            f"{where}: backend {backend!r} is not a HAProxy name "
            "(letters, digits, '-', '_', '.', ':')"
        )
    if server == BY_ADDRESS:
        if set_addr:
            raise ConfigError(
                f"{where}: ',addr' is for SERVER with {{host}}; with '*' the "
                "destination's address is always set"
            )
    elif re.search(r"[{}]", server.replace(HOST_PLACEHOLDER, "")):
        raise ConfigError(f"{where}: server {server!r}: the only placeholder is {{host}}")
    elif HOST_PLACEHOLDER in server:
        rest_of_name = server.replace(HOST_PLACEHOLDER, "")
        if rest_of_name and not valid_name(rest_of_name):
            raise ConfigError(
                f"{where}: server {server!r} is not a HAProxy name around "
                "{host} (letters, digits, '-', '_', '.', ':')"
            )
    elif not server:
        raise ConfigError(f"{where}: the server is empty; give e.g. web-{{host}} or *")
    else:
        raise ConfigError(
            f"{where}: server {server!r} names a single server, but a cutover moves traffic "
            "between two: name one server per host with {host} (e.g. web-{host}) or give "
            "* to find them by address"
        )
    return HaproxyTarget(socket=Path(socket), backend=backend, server=server, set_addr=set_addr)
