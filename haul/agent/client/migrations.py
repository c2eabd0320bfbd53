"""The calls of ``/v1/migrations...``: migrations an agent runs as the source
(haul/agent/routes/migrations.py serves them), and watching one to its end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from haul.agent.decision_models import DecisionView
from haul.agent.migration_models import CheckView, MigrateAsk, MigrationList, MigrationView
from haul.errors import PeerError

if TYPE_CHECKING:
    from haul.agent.client.session import AgentClient

#: how often a watched migration is polled
POLL_S = 0.2


def _id(migration_id: str) -> str:
    return f"/v1/migrations/{quote(migration_id, safe='')}"


class MigrationCalls:
    """The source side of migrations on one agent (``client.migrations``)."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client

    async def start(self, ask: MigrateAsk) -> MigrationView:
        """Start a migration; the agent runs it (:meth:`watch` follows it)."""
        return await self._client.call("POST", "/v1/migrations", MigrationView, body=ask, ok=(202,))

    async def check(self, ask: MigrateAsk) -> CheckView:
        """Pre-flight only: what the migration would do, or why it would be refused."""
        return await self._client.call("POST", "/v1/migrations/check", CheckView, body=ask)

    async def all(self) -> list[MigrationView]:
        return (await self._client.call("GET", "/v1/migrations", MigrationList)).migrations

    async def get(self, migration_id: str) -> MigrationView:
        return await self._client.call("GET", _id(migration_id), MigrationView)

    async def abort(self, migration_id: str) -> MigrationView:
        """Abort before the commit (NoSuchMigration, MigrationEnded, PastCommit)."""
        return await self._client.call("POST", f"{_id(migration_id)}/abort", MigrationView)

    async def decision(self, migration_id: str) -> DecisionView:
        """What this agent, the migration's source, decided for it."""
        return await self._client.call("GET", f"{_id(migration_id)}/decision", DecisionView)

    async def watch(
        self,
        migration_id: str,
        *,
        on_view: Callable[[MigrationView], None] = lambda view: None,
        say: Callable[[str], None] = lambda line: None,
        poll_s: float = POLL_S,
    ) -> MigrationView:
        """Poll the migration until it has finished; return its last view. ``on_view``
        sees every view. Cancelled once (Ctrl-C: asyncio.run cancels the main task),
        it asks the agent to abort, says so through ``say``, and goes on watching;
        cancelled again, it gives up."""
        aborting = False
        view = await self.get(migration_id)
        on_view(view)
        while not view.finished:
            try:
                await asyncio.sleep(poll_s)
                view = await self.get(migration_id)
                on_view(view)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if aborting or task is None:
                    raise
                task.uncancel()
                aborting = True
                try:
                    await self.abort(migration_id)
                    say("aborting: the workload stays where it was")
                except PeerError as exc:
                    say(f"not aborted: {exc.one_line()}")
        return view
