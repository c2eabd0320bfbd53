"""The incoming routes answer by the migration's stage (haul/dest/stages.py): a call out
of its stage is 409 ``wrong_state`` in one line and changes nothing; a call asked again
gets its first answer. (The stages themselves: tests/unit/test_incoming_states.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from haul.agent.fakes import AUTH, Receiving
from haul.dest.fakes import StandInCopy
from haul.dest.incoming import IncomingState
from haul.engine.figures import RestoreFigures
from haul.errors import WorkloadError
from haul.procfs import alive, state
from haul.workload.proctree import ProcessTree

pytestmark = pytest.mark.asyncio


@pytest.fixture
def copy() -> Iterator[StandInCopy]:
    try:
        c = StandInCopy()
    except WorkloadError as exc:
        pytest.skip(exc.one_line())
    try:
        yield c
    finally:
        c.close()


def _restored(r: Receiving, copy: StandInCopy, stage: IncomingState) -> None:
    """m1 as if its copy (``copy``) had been restored, and resumed if ``stage`` says so."""
    item = r.ctx.migrations().incoming.get(r.migration_id)
    item.dest.tree = ProcessTree(copy.pid)
    item.figures = RestoreFigures(dest_pid=copy.pid, duration_s=0.5, pages_bytes=0)
    item.lazy = True
    item.state = stage


async def _post(r: Receiving, call: str, **body: object) -> tuple[int, dict[str, object]]:
    answer = await r.http.post(
        f"/v1/incoming/{r.migration_id}/{call}", json=body or None, headers=AUTH
    )
    return answer.status, await answer.json()


async def test_a_discard_of_a_resumed_copy_is_409_and_the_copy_runs_on(
    incoming: Receiving, copy: StandInCopy
) -> None:
    _restored(incoming, copy, IncomingState.RESUMED)
    ProcessTree(copy.pid).resume()
    status, body = await _post(incoming, "discard")
    error = body["error"]
    assert isinstance(error, dict) and (status, error["code"]) == (409, "wrong_state")
    assert error["message"] == (
        "incoming migration m1 is resumed: its copy was resumed at the commit and runs; "
        "it is not discarded"
    )
    assert alive(copy.pid) and state(copy.pid) not in ("T", "t")
    assert incoming.data.is_dir(), "nothing of it was removed"
    listed = await incoming.http.get("/v1/incoming/m1", headers=AUTH)
    assert (await listed.json())["state"] == "resumed"


async def test_finish_of_a_stopped_copy_is_409_and_adopts_nothing(
    incoming: Receiving, copy: StandInCopy
) -> None:
    _restored(incoming, copy, IncomingState.RESTORED)
    status, body = await _post(incoming, "finish")
    assert status == 409 and "not resumed" in str(body)
    assert incoming.ctx.workloads.records() == []
    assert state(copy.pid) in ("T", "t")


async def test_a_restore_asked_again_gets_the_first_answer(
    incoming: Receiving, copy: StandInCopy
) -> None:
    _restored(incoming, copy, IncomingState.RESTORED)
    assert await _post(incoming, "restore", lazy=True) == (
        200,
        {"pid": copy.pid, "duration_s": 0.5, "pages_bytes": 0},
    )
    status, body = await _post(incoming, "restore", lazy=False)
    assert status == 409 and "restored" in str(body)


async def test_the_same_open_again_is_the_same_answer_another_is_409(
    incoming: Receiving,
) -> None:
    ask = {"id": "m1", "workload": "web1", "strategy": "post-copy", "needed_bytes": 0}
    again = await incoming.http.post("/v1/incoming", json=ask, headers=AUTH)
    assert again.status == 201
    other = await incoming.http.post("/v1/incoming", json={**ask, "needed_bytes": 1}, headers=AUTH)
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "wrong_state"
    assert [i.migration_id for i in incoming.ctx.migrations().incoming.items()] == ["m1"]
