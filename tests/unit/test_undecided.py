"""A destination that never heard the decision: what it does with each answer of its
source (plan), and the asking loop (DecisionWatch) against a scripted source."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from haul.dest.undecided import (
    Act,
    AskPolicy,
    AskStatus,
    DecisionWatch,
    SourceAnswer,
    Verdict,
    plan,
)
from haul.errors import TransportError, WorkloadError

POLICY = AskPolicy(deadline_s=30.0, again_s=10.0, retry_min_s=2.0, retry_max_s=60.0)
V = Verdict


def step(
    answer: SourceAnswer | None, *, resumed: bool = False, failures: int = 0, workload: str = "web1"
):  # type: ignore[no-untyped-def]
    return plan(
        answer,
        source="host1",
        workload=workload,
        resumed=resumed,
        failures=failures,
        policy=POLICY,
        why_unanswered="connection refused",
    )


# -- plan: one answer, one step ------------------------------------------------------------


def test_committed_with_no_job_left_resumes_and_adopts() -> None:
    s = step(SourceAnswer(V.COMMITTED, running=False))
    assert s.act is Act.ADOPT and not s.problem and s.failures == 0
    assert "resuming and adopting" in s.note


def test_committed_while_the_source_job_runs_resumes_only() -> None:
    s = step(SourceAnswer(V.COMMITTED, running=True))
    assert s.act is Act.RESUME and s.after_s == POLICY.again_s


def test_committed_and_already_resumed_adopts_once_the_job_is_over() -> None:
    assert step(SourceAnswer(V.COMMITTED, running=True), resumed=True).act is Act.WAIT
    s = step(SourceAnswer(V.COMMITTED, running=False), resumed=True)
    assert s.act is Act.ADOPT and "adopting the running copy" in s.note


def test_rolled_back_discards_a_stopped_copy() -> None:
    s = step(SourceAnswer(V.ROLLED_BACK))
    assert s.act is Act.DISCARD and not s.problem


def test_rolled_back_never_discards_a_copy_that_was_told_to_run() -> None:
    s = step(SourceAnswer(V.ROLLED_BACK), resumed=True)
    assert s.act is Act.WAIT and s.problem and "nothing is discarded" in s.note


def test_in_flight_waits_without_counting_a_failure() -> None:
    s = step(SourceAnswer(V.IN_FLIGHT, running=True), failures=3)
    assert s.act is Act.WAIT and s.after_s == POLICY.again_s and s.failures == 0
    assert not s.problem and "stays stopped" in s.note


@pytest.mark.parametrize("answer", [None, SourceAnswer(V.UNKNOWN, detail="no journal")])
def test_no_answer_or_unknown_keeps_the_copy_stopped_and_backs_off(
    answer: SourceAnswer | None,
) -> None:
    waits = []
    failures = 0
    for _ in range(7):
        s = step(answer, failures=failures)
        assert s.act is Act.WAIT and s.problem and "the copy stays stopped" in s.note
        failures = s.failures
        waits.append(s.after_s)
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    if answer is None:
        assert "cannot ask host1: connection refused" in s.note
    else:
        assert "host1 knows no decision" in s.note and "no journal" in s.note


def test_an_answer_about_another_workload_is_not_acted_on() -> None:
    s = step(SourceAnswer(V.COMMITTED, workload="db"), workload="web1")
    assert s.act is Act.WAIT and s.problem and "'db'" in s.note


def test_policy_from_the_configured_deadline() -> None:
    short = AskPolicy.from_deadline(1.0)
    assert (short.deadline_s, short.again_s, short.retry_min_s) == (1.0, 1.0, 1.0)
    assert AskPolicy.from_deadline(30.0).again_s == 10.0


# -- the loop --------------------------------------------------------------------------------


class Script:
    """A source that answers from a list, the last answer ever after (an exception: it
    cannot be asked)."""

    def __init__(self, answers: list[SourceAnswer | Exception]) -> None:
        self._answers: Iterator[SourceAnswer | Exception] = iter(answers)
        self._last: SourceAnswer | Exception = TransportError("no answer scripted")
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, source: str, migration_id: str) -> SourceAnswer:
        self.asked.append((source, migration_id))
        answer = self._last = next(self._answers, self._last)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Host:
    """The destination's side: what was done, and the sleeps the loop asked for."""

    def __init__(self, fail_first: int = 0) -> None:
        self.acts: list[Act] = []
        self.sleeps: list[float] = []
        self.resumed = False
        self.fail_first = fail_first

    async def act(self, what: Act) -> bool:
        if self.fail_first:
            self.fail_first -= 1
            raise WorkloadError("the copy could not be signalled")
        self.acts.append(what)
        if what is Act.RESUME:
            self.resumed = True
            return False
        return True

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


def watch(
    source: Script, host: Host, status: AskStatus | None = None, name: str | None = "host1"
) -> DecisionWatch:
    return DecisionWatch(
        migration_id="m1",
        workload="web1",
        source=name,
        ask=source,
        act=host.act,
        resumed=lambda: host.resumed,
        policy=POLICY,
        status=status or AskStatus(),
        sleep=host.sleep,
        clock=lambda: 1000.0,
    )


@pytest.mark.asyncio
async def test_unreachable_then_in_flight_then_committed() -> None:
    source = Script(
        [
            TransportError("source host1 unreachable"),
            TransportError("source host1 unreachable"),
            SourceAnswer(V.IN_FLIGHT, running=True),
            SourceAnswer(V.COMMITTED, running=False),
        ]
    )
    host, status = Host(), AskStatus()
    await watch(source, host, status).run(POLICY.deadline_s)
    assert source.asked == [("host1", "m1")] * 4
    assert host.sleeps == [30.0, 2.0, 4.0, 10.0]
    assert host.acts == [Act.ADOPT]
    assert status.asks == 4 and status.last_answer == "committed"
    assert not status.problem and status.next_ask_at is None


@pytest.mark.asyncio
async def test_committed_while_running_resumes_then_adopts_when_the_job_ends() -> None:
    source = Script(
        [
            SourceAnswer(V.COMMITTED, running=True),
            SourceAnswer(V.COMMITTED, running=True),
            SourceAnswer(V.COMMITTED, running=False),
        ]
    )
    host = Host()
    await watch(source, host).run(0.0)
    assert host.acts == [Act.RESUME, Act.ADOPT]
    assert host.sleeps == [0.0, 10.0, 10.0]


@pytest.mark.asyncio
async def test_rolled_back_discards() -> None:
    host = Host()
    await watch(Script([SourceAnswer(V.ROLLED_BACK)]), host).run(0.0)
    assert host.acts == [Act.DISCARD]


@pytest.mark.asyncio
async def test_a_failed_action_is_reported_and_tried_again() -> None:
    source = Script([SourceAnswer(V.ROLLED_BACK), SourceAnswer(V.ROLLED_BACK)])
    host, status = Host(fail_first=1), AskStatus()
    await watch(source, host, status).run(0.0)
    assert host.acts == [Act.DISCARD] and host.sleeps == [0.0, 2.0]
    assert status.asks == 2


@pytest.mark.asyncio
async def test_an_unnamed_source_is_never_guessed() -> None:
    host, status = Host(), AskStatus()
    source = Script([])
    task = asyncio.create_task(watch(source, host, status, name=None).run(0.0))
    while status.asks < 3:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.asked == [] and host.acts == []
    assert status.problem and "did not say which host" in status.note
    assert status.last_answer == "no answer"


@pytest.mark.asyncio
async def test_never_acts_while_the_source_cannot_be_asked() -> None:
    host, status = Host(), AskStatus()
    source = Script([TransportError("source host1 unreachable")])
    task = asyncio.create_task(watch(source, host, status).run(0.0))
    while status.asks < 200:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert host.acts == [] and status.problem and len(source.asked) == 200
    assert status.next_ask_at == 1000.0 + 60.0, "backoff stays at its maximum"
