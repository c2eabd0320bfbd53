"""How to reach one agent and prove who we are: the one place that says it.

An :class:`AgentAccess` is made from an inventory entry (the CLI, the lab) or
from this agent's peers and its own certificate (an agent calling another
one); every client of the agents' API is made from one
(:meth:`AgentAccess.client`), so the address, the token and the TLS files are
read in one place and an agent calls its https peers with haul's CA and its
own certificate, whatever it calls them for.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from haul.criu.options import TlsFiles
from haul.errors import ConfigError, UsageError
from haul.inventory import HostEntry

if TYPE_CHECKING:
    from haul.agent.client.session import AgentClient

#: the longest one call of the CLI (or the lab) may take
DEFAULT_TIMEOUT_S = 60.0
#: the longest connecting to an agent may take, whatever the call's own limit
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class AgentAccess:
    """One agent's address and the credentials to call it with.

    ``url`` is ``http(s)://HOST:PORT`` or ``unix:///PATH``; ``token`` goes as a
    bearer token. Over https the agent's certificate must chain to ``ca`` (None:
    the system's trust store) and ``cert``/``key`` are ours (mutual TLS).
    ``peer``: an agent calling another agent; over https it must trust haul's CA
    and show its own certificate (a ConfigError before any call otherwise), and
    the same files secure the migration's page channels (:attr:`tls`).
    ``timeout_s`` bounds each call (None: the caller bounds it; connecting is
    bounded by :data:`CONNECT_TIMEOUT_S` in any case).
    """

    url: str
    token: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    peer: bool = False
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    #: the CA's revocation list: an agent whose certificate it names is not called
    crl: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            if not parts.path:
                raise UsageError(f"agent address {self.url!r} names no socket path")
        elif parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"agent address {self.url!r} is not http(s)://HOST:PORT or unix:///PATH"
            )
        given = [f for f in ("ca", "cert", "key") if getattr(self, f) is not None]
        if given and parts.scheme != "https":
            raise UsageError(
                f"TLS files ({', '.join(given)}) were given for {self.url}, which is not https"
            )
        if (self.cert is None) != (self.key is None):
            raise UsageError(
                f"{self.url}: a client certificate needs both its cert and its key file"
            )
        if self.cert is not None and self.ca is None:
            raise UsageError(
                f"{self.url}: a client certificate goes with the CA that signed the agent's"
            )

    @classmethod
    def of_entry(
        cls, entry: HostEntry, *, timeout_s: float | None = DEFAULT_TIMEOUT_S
    ) -> AgentAccess:
        """The agent an inventory entry names (its CA and certificate count over https)."""
        https = entry.url.startswith("https://")
        return cls(
            entry.url,
            token=entry.bearer(),
            ca=entry.ca if https else None,
            cert=entry.cert if https else None,
            key=entry.key if https else None,
            timeout_s=timeout_s,
        )

    @classmethod
    def of_peer(
        cls, url: str, *, token: str | None = None, tls: TlsFiles | None = None
    ) -> AgentAccess:
        """Another agent, as this agent calls it: ``tls`` are this agent's certificate,
        key and CA (``[agent.tls]``), used when the peer is https."""
        use = tls if url.startswith("https://") else None
        return cls(
            url,
            token=token,
            ca=use.cacert if use else None,
            cert=use.cert if use else None,
            key=use.key if use else None,
            peer=True,
            timeout_s=None,
            crl=use.cacrl if use else None,
        )

    @property
    def https(self) -> bool:
        return self.url.startswith("https://")

    @property
    def tls(self) -> TlsFiles | None:
        """The CA, certificate and key this access uses over https, as CRIU takes them
        for the page channels; None when the agent is not called over mutual TLS."""
        if self.ca is None or self.cert is None or self.key is None:
            return None
        return TlsFiles(cacert=self.ca, cert=self.cert, key=self.key, cacrl=self.crl)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https agent (None: not https, or the system's trust)."""
        if not self.https:
            return None
        if self.peer and self.tls is None:
            raise ConfigError(
                f"{self.url} is https, but this agent has no certificate to "
                "call it with ([agent.tls])"
            )
        if self.ca is None:
            return None
        from haul.agent.ca import client_ssl_context

        return client_ssl_context(self.ca, self.cert, self.key, self.crl)

    def client(self, name: str = "") -> AgentClient:
        """A client of this agent (no I/O until its first call). ``name`` is how its
        errors name the agent ("destination host2"; default: ``agent URL`` with the call)."""
        from haul.agent.client.session import AgentClient

        return AgentClient(self, name=name)
