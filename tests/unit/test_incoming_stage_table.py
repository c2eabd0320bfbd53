"""The incoming stages' table (haul/dest/stages.py) says what the one rule needs."""

from __future__ import annotations

import pytest

from haul.dest.stages import RULES, SETTLED, Answer, Call, IncomingState, rule

S = IncomingState


def test_every_stage_has_a_rule_for_every_call() -> None:
    assert set(RULES) == set(IncomingState)
    for stage, calls in RULES.items():
        assert set(calls) == set(Call), stage
        for call, found in calls.items():
            assert (found.answer is Answer.REFUSE) == bool(found.why), (stage, call)
            assert found.then is None or found.answer is Answer.GO, (stage, call)


def test_a_copy_that_may_run_is_never_discarded() -> None:
    assert rule(S.RESUMED, Call.DISCARD).answer is Answer.REFUSE
    assert rule(S.FINISHED, Call.DISCARD).answer is Answer.REFUSE
    for stage in (S.OPENED, S.RECEIVING, S.RESTORED, S.RESTORE_FAILED):
        assert rule(stage, Call.DISCARD).then is S.DISCARDED, stage


def test_only_a_resumed_copy_is_adopted() -> None:
    adopting = [s for s in IncomingState if rule(s, Call.FINISH).answer is Answer.GO]
    assert adopting == [S.RESUMED]


def test_files_arrive_only_before_the_restore() -> None:
    taking = {s for s in IncomingState if rule(s, Call.RECEIVE).answer is Answer.GO}
    assert taking == {S.OPENED, S.RECEIVING}


@pytest.mark.parametrize("stage", sorted(SETTLED, key=lambda s: s.value))
def test_a_settled_migration_changes_no_more(stage: IncomingState) -> None:
    assert all(rule(stage, call).then is None for call in Call)
    assert all(rule(stage, call).answer is not Answer.GO for call in Call)
