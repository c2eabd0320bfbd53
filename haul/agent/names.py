"""One registry of the names on a host: each name has one holder at a time.

A workload's name (process tree or runc container: one namespace) is held from the
moment its start or adoption begins until it is removed or moves away, and an incoming
migration holds the name of the workload it brings from its open until it is discarded,
or until its copy is adopted, when the name passes to that workload without ever being
free. A name is taken (:meth:`Names.claim`) with no ``await`` between the look and the
taking, so two requests cannot both find it free; a taken name is 409
``workload_exists``, saying who holds it. The names themselves are not written to disk:
an agent that starts claims the names of the workloads in its registry, then those of
the copies it keeps (docs/incoming.md).
"""

from __future__ import annotations

from haul.agent.wire import Conflict

#: the holders of a workload's name (an incoming migration is "incoming migration ID")
WORKLOAD = "a workload"
STARTING = "a workload being started"
ADOPTING = "a workload being adopted"
REMOVING = "a workload being removed"


def arriving(migration_id: str) -> str:
    """The holder of a name an incoming migration brings."""
    return f"incoming migration {migration_id}"


class Names:
    def __init__(self) -> None:
        self._held: dict[str, str] = {}

    def holder(self, name: str) -> str | None:
        return self._held.get(name)

    def claim(self, name: str, holder: str, *, replacing: str | None = None) -> None:
        """Take ``name`` for ``holder``; with ``replacing``, take it over from that holder,
        which must hold it. Conflict (409 ``workload_exists``) when someone else holds it."""
        held = self._held.get(name)
        if held is not None and held != replacing:
            raise Conflict(
                f"the name {name!r} is taken on this host: {held} holds it",
                code="workload_exists",
            )
        if held is None and replacing is not None:
            raise Conflict(
                f"the name {name!r} is not held by {replacing} any more", code="workload_exists"
            )
        self._held[name] = holder

    def release(self, name: str, holder: str) -> None:
        """Free ``name`` if ``holder`` holds it (else nothing happens)."""
        if self._held.get(name) == holder:
            del self._held[name]
