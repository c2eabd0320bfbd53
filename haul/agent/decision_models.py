"""The JSON bodies of the decision routes: what a source agent says was decided for a
migration (GET /v1/migrations/{id}/decision), and what a destination shows of its
incoming migrations while it waits for that (GET /v1/incoming[/{id}])."""

from __future__ import annotations

from pydantic import Field

from haul.agent.models import _Answer


class DecisionView(_Answer):
    """The source's answer; ``decision`` is committed, rolled-back, in-flight or unknown."""

    id: str
    decision: str
    #: a job of this agent still drives the migration (it tells the destination itself)
    running: bool = False
    #: "" when this agent no longer knows (e.g. answered from its journal after a restart)
    workload: str = ""
    dest: str = ""
    detail: str = ""


class IncomingView(_Answer):
    id: str
    workload: str
    #: the source's host name ("" when the source did not say)
    source: str
    strategy: str
    #: receiving, restored (stopped, the decision not known here) or resumed
    state: str
    restored_pid: int | None = None
    #: seconds since the copy was restored (or found restored at agent start)
    restored_for_s: float | None = None
    #: questions asked to the source about the decision
    asks: int = 0
    #: the last answer: committed, rolled-back, in-flight, unknown or "no answer"
    last_answer: str = ""
    #: what happens now, in one line
    note: str = ""
    #: the note is a problem (e.g. the source cannot be asked)
    problem: bool = False
    #: seconds until the source is asked (again), when it will be
    next_ask_in_s: float | None = None
    #: free bytes of the file system that holds the migration's images here
    free_bytes: int | None = None


class IncomingList(_Answer):
    incoming: list[IncomingView] = Field(default_factory=list)
