"""A restored copy that has not heard its source's decision: ask the source, never guess.

The destination restores its copy stopped and waits for the source agent to
say ``resume`` (the commit) or ``discard`` (the rollback). When neither comes
within a deadline (and at once after this agent restarts), it asks the source
agent what was decided for that migration, and acts on the answer only:

==============  ====================================================================
the source says  what this host does
==============  ====================================================================
committed        resume the copy; adopt it as a workload of this host once the
                 source's job no longer runs (it still finishes the migration itself
                 while it runs, e.g. waiting for post-copy pages)
rolled back      discard the copy (never once it runs: that is reported, not acted on)
in flight        keep waiting; ask again
unknown          keep the copy stopped, report it, ask again with backoff
(no answer)      the same: keep the copy stopped, report it, ask again with backoff
==============  ====================================================================

:func:`plan` is that table, with no I/O; :class:`DecisionWatch` asks and acts
through callables, so both are tested without agents.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from haul.errors import HaulError

log = logging.getLogger(__name__)

#: how long a restored copy waits for the decision before its source is asked
DEFAULT_DEADLINE_S = 30.0


class Verdict(enum.Enum):
    """What the source agent says was decided for a migration."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"
    IN_FLIGHT = "in-flight"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class SourceAnswer:
    verdict: Verdict
    #: the source's job still drives the migration (it will tell this host itself)
    running: bool = False
    #: the workload the source names for that migration ("" when it does not know)
    workload: str = ""
    detail: str = ""


class AskSource(Protocol):
    """Ask the agent of host ``source`` about ``migration_id``; raise HaulError when it
    cannot be asked (unreachable, refused, not a peer)."""

    async def __call__(self, source: str, migration_id: str) -> SourceAnswer: ...


class Act(enum.Enum):
    WAIT = "wait"
    #: let the copy run; keep watching until the source's job has ended
    RESUME = "resume"
    #: let the copy run (if it does not yet) and adopt it: the migration is over
    ADOPT = "adopt"
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class AskPolicy:
    #: after the restore (or the resume, for the adoption), before the first question
    deadline_s: float = DEFAULT_DEADLINE_S
    #: while the source says the migration is in flight
    again_s: float = 10.0
    #: no answer, or an unknown migration: first retry, doubled each time up to the maximum
    retry_min_s: float = 2.0
    retry_max_s: float = 120.0

    @classmethod
    def from_deadline(cls, deadline_s: float) -> AskPolicy:
        return cls(
            deadline_s=deadline_s,
            again_s=min(10.0, deadline_s),
            retry_min_s=min(2.0, deadline_s),
            retry_max_s=max(120.0, deadline_s),
        )

    def retry_after(self, failures: int) -> float:
        """The wait after ``failures`` (>= 1) questions in a row got no usable answer."""
        return float(min(self.retry_max_s, self.retry_min_s * 2.0 ** min(max(0, failures - 1), 32)))


@dataclass(frozen=True, slots=True)
class Step:
    act: Act
    #: WAIT: ask again after this long
    after_s: float
    #: questions in a row that got no usable answer, this one included
    failures: int
    #: what the operator reads (API, log)
    note: str
    #: the note is a problem to report (WARNING), not the ordinary course of things
    problem: bool = False


def plan(
    answer: SourceAnswer | None,
    *,
    source: str,
    workload: str,
    resumed: bool,
    failures: int,
    policy: AskPolicy,
    why_unanswered: str = "",
) -> Step:
    """What to do with one answer (None: the source could not be asked, ``why_unanswered``).

    ``resumed``: this host heard the commit already (its copy runs) and only waits to
    adopt it. ``failures``: questions in a row with no usable answer before this one.
    """
    stays = "the copy stays running" if resumed else "the copy stays stopped"
    if (
        answer is None
        or answer.verdict is Verdict.UNKNOWN
        or (answer.workload and answer.workload != workload)
    ):
        failures += 1
        after = policy.retry_after(failures)
        if answer is None:
            what = f"cannot ask {source}: {why_unanswered or 'no answer'}"
        elif answer.verdict is Verdict.UNKNOWN:
            what = f"{source} knows no decision for this migration"
            what += f" ({answer.detail})" if answer.detail else ""
        else:
            what = (
                f"{source} names workload {answer.workload!r} for this migration, not {workload!r}"
            )
        return Step(
            Act.WAIT,
            after,
            failures,
            f"{what}; {stays}; asking again in {after:.0f} s",
            problem=True,
        )
    if answer.verdict is Verdict.IN_FLIGHT:
        return Step(
            Act.WAIT,
            policy.again_s,
            0,
            f"{source} says the migration is still in flight; {stays}; "
            f"asking again in {policy.again_s:.0f} s",
        )
    if answer.verdict is Verdict.ROLLED_BACK:
        if resumed:
            return Step(
                Act.WAIT,
                policy.retry_max_s,
                failures + 1,
                f"{source} says rolled back, but this host was told to resume and its "
                "copy runs; nothing is discarded: check both hosts",
                problem=True,
            )
        return Step(Act.DISCARD, 0.0, 0, f"{source} says rolled back: discarding the copy")
    # committed
    if answer.running:
        if resumed:
            return Step(
                Act.WAIT,
                policy.again_s,
                0,
                f"{source} says committed and its job still runs; "
                f"asking again in {policy.again_s:.0f} s",
            )
        return Step(
            Act.RESUME,
            policy.again_s,
            0,
            f"{source} says committed: resuming the copy (the source's job still "
            "runs and finishes the migration)",
        )
    return Step(
        Act.ADOPT,
        0.0,
        0,
        f"{source} says committed: "
        + ("adopting the running copy" if resumed else "resuming and adopting the copy"),
    )


@dataclass(slots=True)
class AskStatus:
    """What the API shows of the questions asked about one incoming migration."""

    asks: int = 0
    #: the last answer's verdict ("" before the first, "no answer" when unreachable)
    last_answer: str = ""
    note: str = ""
    problem: bool = False
    #: time.time() of the next question (None: not waiting to ask)
    next_ask_at: float | None = None


Sleep = Callable[[float], Awaitable[None]]


class DecisionWatch:
    """Ask ``source`` about one migration until an answer settles it.

    ``act(act)`` carries out RESUME, ADOPT or DISCARD and returns whether the
    migration is settled (False: the copy was resumed and the watch goes on).
    ``resumed()`` says whether this host already heard the commit. The watch runs
    until it is settled or cancelled (the source's own call settles it first).
    """

    def __init__(
        self,
        *,
        migration_id: str,
        workload: str,
        source: str | None,
        ask: AskSource | None,
        act: Callable[[Act], Awaitable[bool]],
        resumed: Callable[[], bool],
        policy: AskPolicy,
        status: AskStatus,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.migration_id = migration_id
        self.workload = workload
        self.source = source
        self._ask = ask
        self._act = act
        self._resumed = resumed
        self.policy = policy
        self.status = status
        self._sleep = sleep
        self._clock = clock

    async def run(self, first_after_s: float) -> None:
        await self._wait(first_after_s)
        failures = 0
        while True:
            answer, why = await self._question()
            step = plan(
                answer,
                source=self.source or "the source",
                workload=self.workload,
                resumed=self._resumed(),
                failures=failures,
                policy=self.policy,
                why_unanswered=why,
            )
            failures = step.failures
            self.status.asks += 1
            self.status.last_answer = answer.verdict.value if answer else "no answer"
            self.status.note, self.status.problem = step.note, step.problem
            self._log(step)
            if step.act is not Act.WAIT:
                try:
                    settled = await self._act(step.act)
                except HaulError as exc:
                    failures += 1
                    after = self.policy.retry_after(failures)
                    self.status.note = (
                        f"{step.act.value} after {self.status.last_answer} "
                        f"failed: {exc.one_line()}; trying again in "
                        f"{after:.0f} s"
                    )
                    self.status.problem = True
                    log.error("incoming migration %s: %s", self.migration_id, self.status.note)
                    await self._wait(after)
                    continue
                if settled:
                    self.status.next_ask_at = None
                    return
            await self._wait(step.after_s)

    async def _question(self) -> tuple[SourceAnswer | None, str]:
        if self.source is None or self._ask is None:
            return None, "the source agent did not say which host it is"
        try:
            return await self._ask(self.source, self.migration_id), ""
        except HaulError as exc:
            return None, exc.one_line()

    async def _wait(self, seconds: float) -> None:
        self.status.next_ask_at = self._clock() + seconds
        await self._sleep(seconds)

    def _log(self, step: Step) -> None:
        text = "incoming migration %s (%s): %s"
        if step.problem:
            log.warning(text, self.migration_id, self.workload, step.note)
        else:
            log.info(text, self.migration_id, self.workload, step.note)
