"""The one client of the agents' HTTP API: the CLI, the lab, and the agents calling
each other (source -> destination for a migration, destination -> source for its
decision) all use it.

- :class:`AgentAccess` (access.py): how to reach one agent and prove who we are
  (address, token, TLS files); every client is made from one.
- :class:`AgentClient` (session.py): the calls, typed with the API's models;
  ``client.migrations`` (migrations.py) and ``client.incoming`` (incoming.py)
  for the source and destination sides of migrations.

An error answer raises the :class:`haul.errors.PeerError` subclass of its wire
code; no answer raises :class:`haul.errors.TransportError`.
"""

from __future__ import annotations

from haul.agent.client.access import DEFAULT_TIMEOUT_S, AgentAccess
from haul.agent.client.session import AgentClient, body_of

__all__ = ["DEFAULT_TIMEOUT_S", "AgentAccess", "AgentClient", "body_of"]
