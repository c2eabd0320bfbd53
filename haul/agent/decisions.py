"""The commit decision between agents: the source says what it decided, the destination asks.

Source side, :func:`decide`: from the live job when this agent process runs or
ran the migration, else from the journal (after a restart). Only a live job can
still record a commit: a migration whose journal holds no commit record and
that no job of this agent drives will never be committed (a restarted agent
rolls it back), so it is rolled back; one whose journal holds the commit record
is committed, whatever failed after it.

Destination side, :class:`SourceAsker`: the source's host name is resolved
through this agent's own peers (never an address a request supplied).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from haul.agent.client import AgentAccess
from haul.agent.decision_models import DecisionView
from haul.agent.jobs import Job
from haul.agent.journal import JournalEntry
from haul.dest.undecided import SourceAnswer, Verdict
from haul.engine.phases import TERMINAL, Phase
from haul.errors import ConfigError, PeerError

#: how long one question to a source agent may take
ASK_TIMEOUT_S = 10.0


def decide(migration_id: str, job: Job | None, entries: Sequence[JournalEntry]) -> DecisionView:
    """What this (source) agent decided for ``migration_id``."""
    if job is not None:
        spec = job.migration.spec
        running = job.task is not None and not job.task.done()
        phase = job.phase

        def answer(verdict: Verdict, detail: str) -> DecisionView:
            return DecisionView(
                id=migration_id,
                decision=verdict.value,
                running=running,
                workload=spec.workload,
                dest=spec.dest_host,
                detail=detail,
            )

        if job.migration.committed:
            return answer(Verdict.COMMITTED, f"committed; the job is in phase {phase.value}")
        if phase in TERMINAL or phase is Phase.ROLLING_BACK:
            return answer(Verdict.ROLLED_BACK, f"not committed; the job is in phase {phase.value}")
        return answer(Verdict.IN_FLIGHT, f"not decided yet; the job is in phase {phase.value}")
    if not entries:
        return DecisionView(
            id=migration_id,
            decision=Verdict.UNKNOWN.value,
            detail="this agent has no job and no journal for it",
        )
    last = entries[-1].record
    seen = f"the journal ends at {last.phase.value} ({last.cause})"
    if any(e.record.phase is Phase.COMMIT for e in entries):
        return DecisionView(
            id=migration_id, decision=Verdict.COMMITTED.value, detail=f"committed; {seen}"
        )
    return DecisionView(
        id=migration_id, decision=Verdict.ROLLED_BACK.value, detail=f"never committed; {seen}"
    )


class SourceAsker:
    """Asks a source agent, known by host name among this agent's peers (AskSource),
    with this agent's access to it: its token, and over https haul's CA and this
    agent's certificate, as for any call to a peer."""

    def __init__(self, peers: Mapping[str, AgentAccess], timeout_s: float = ASK_TIMEOUT_S) -> None:
        self.peers = peers
        self.timeout_s = timeout_s

    async def __call__(self, source: str, migration_id: str) -> SourceAnswer:
        peer = self.peers.get(source)
        if peer is None:
            known = ", ".join(sorted(self.peers)) or "none"
            raise ConfigError(
                f"{source} is not among this agent's peers (known: {known}); "
                "add it to [agent.peers] so its decision can be asked"
            )
        access = replace(peer, timeout_s=self.timeout_s)
        async with access.client(name=f"source {source}") as client:
            view = await client.migrations.decision(migration_id)
        try:
            verdict = Verdict(view.decision)
        except ValueError:
            raise PeerError(
                f"source {source} answered with an unknown decision {view.decision!r}",
                code="bad_decision",
            ) from None
        if view.id != migration_id:
            raise PeerError(
                f"source {source} answered about {view.id!r}, not {migration_id!r}",
                code="bad_decision",
            )
        return SourceAnswer(
            verdict=verdict, running=view.running, workload=view.workload, detail=view.detail
        )
