"""The stages of an incoming migration and which call each stage takes: a table, no I/O.

The source agent drives an incoming migration with one call after another (open,
the files, restore, resume or discard, wait for the pages, finish), and a
destination that never hears the decision asks for it (haul/dest/undecided.py) and
acts through the same calls. Each call is taken only in the stages it belongs to:

- :attr:`Answer.GO`: do it (the stage moves to the rule's ``then``, if any);
- :attr:`Answer.AGAIN`: the call was made before and is asked again: it gets the
  first answer and nothing more happens;
- :attr:`Answer.WAIT`: a restore is under way; the call waits for it to end and is
  decided in the stage the restore ends in (the restore holds the migration's lock);
- :attr:`Answer.REFUSE`: refused in one line (409 on the wire), nothing happens.

:data:`RULES` is the table; ``python -m haul.dest.stages`` prints it as docs/incoming.md
shows it, and a test fails when the two disagree. The registry
(haul/dest/incoming.py) asks :func:`rule` before each call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class IncomingState(enum.Enum):
    """Where an incoming migration stands on this host (``GET /v1/incoming`` shows it)."""

    #: prepared (its page server listens, if any); nothing has arrived yet
    OPENED = "opened"
    #: images, image blobs and the workload's files arrive (only now)
    RECEIVING = "receiving"
    #: the copy is being restored from what arrived
    RESTORING = "restoring"
    #: the copy exists, stopped; the source's decision is not known here yet
    RESTORED = "restored"
    #: the restore failed; whatever it made is gone; only a discard is taken
    RESTORE_FAILED = "restore-failed"
    #: the commit was heard: the copy runs; the source still finishes the migration
    RESUMED = "resumed"
    #: the copy is a workload of this host now (the migration is over)
    FINISHED = "finished"
    #: the rollback: the copy and everything the migration made here are gone
    DISCARDED = "discarded"


class Call(enum.Enum):
    #: POST /v1/incoming
    OPEN = "open"
    #: images, image blobs, the workload's files, entries and removals, unpacking the image
    RECEIVE = "receive"
    RESTORE = "restore"
    #: the commit: let the copy run
    RESUME = "resume"
    #: post-copy: wait until every page has arrived
    WAIT_PAGES = "wait-pages"
    #: the rollback: the copy and everything made for it go
    DISCARD = "discard"
    #: after the commit: the copy becomes a workload of this host
    FINISH = "finish"


class Answer(enum.Enum):
    GO = "go"
    AGAIN = "again"
    WAIT = "wait"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Rule:
    answer: Answer
    #: GO: the stage once the call succeeded (None: it stays)
    then: IncomingState | None = None
    #: REFUSE: why, said after "incoming migration ID is STAGE: "
    why: str = ""


S = IncomingState
_NO_FILES = Rule(Answer.REFUSE, why="it takes no more files")
_NOT_YET = Rule(Answer.REFUSE, why="nothing is restored yet")
_NOT_RESUMED = Rule(Answer.REFUSE, why="its copy is not resumed (that comes with the commit)")
_ONLY_DISCARD = Rule(Answer.REFUSE, why="its restore failed; it can only be discarded")
_GONE = Rule(Answer.REFUSE, why="it was discarded here")
_COMMITTED = Rule(Answer.REFUSE, why="it was committed here and its copy is a workload now")
_RUNS = Rule(
    Answer.REFUSE,
    why="its copy was resumed at the commit and runs; it is not discarded",
)
_OPEN = Rule(Answer.REFUSE, why="it is already open here")
_WAIT = Rule(Answer.WAIT)

RULES: dict[IncomingState, dict[Call, Rule]] = {
    S.OPENED: {
        Call.OPEN: Rule(Answer.AGAIN),  # the same request; another one is refused
        Call.RECEIVE: Rule(Answer.GO, S.RECEIVING),
        Call.RESTORE: Rule(Answer.GO, S.RESTORED),
        Call.RESUME: _NOT_YET,
        Call.WAIT_PAGES: _NOT_YET,
        Call.DISCARD: Rule(Answer.GO, S.DISCARDED),
        Call.FINISH: _NOT_YET,
    },
    S.RECEIVING: {
        Call.OPEN: _OPEN,
        Call.RECEIVE: Rule(Answer.GO),
        Call.RESTORE: Rule(Answer.GO, S.RESTORED),
        Call.RESUME: _NOT_YET,
        Call.WAIT_PAGES: _NOT_YET,
        Call.DISCARD: Rule(Answer.GO, S.DISCARDED),
        Call.FINISH: _NOT_YET,
    },
    S.RESTORING: {
        Call.OPEN: _OPEN,
        Call.RECEIVE: _NO_FILES,
        Call.RESTORE: _WAIT,
        Call.RESUME: _WAIT,
        Call.WAIT_PAGES: _NOT_RESUMED,
        Call.DISCARD: _WAIT,
        Call.FINISH: _WAIT,
    },
    S.RESTORED: {
        Call.OPEN: _OPEN,
        Call.RECEIVE: _NO_FILES,
        Call.RESTORE: Rule(Answer.AGAIN),  # the same request; another one is refused
        Call.RESUME: Rule(Answer.GO, S.RESUMED),
        Call.WAIT_PAGES: _NOT_RESUMED,
        Call.DISCARD: Rule(Answer.GO, S.DISCARDED),
        Call.FINISH: _NOT_RESUMED,
    },
    S.RESTORE_FAILED: {
        Call.OPEN: _OPEN,
        Call.RECEIVE: _ONLY_DISCARD,
        Call.RESTORE: _ONLY_DISCARD,
        Call.RESUME: _ONLY_DISCARD,
        Call.WAIT_PAGES: _ONLY_DISCARD,
        Call.DISCARD: Rule(Answer.GO, S.DISCARDED),
        Call.FINISH: _ONLY_DISCARD,
    },
    S.RESUMED: {
        Call.OPEN: _OPEN,
        Call.RECEIVE: _NO_FILES,
        Call.RESTORE: Rule(Answer.REFUSE, why="its copy was resumed already"),
        Call.RESUME: Rule(Answer.AGAIN),
        Call.WAIT_PAGES: Rule(Answer.GO),
        Call.DISCARD: _RUNS,
        Call.FINISH: Rule(Answer.GO, S.FINISHED),
    },
    S.FINISHED: {
        Call.OPEN: _COMMITTED,
        Call.RECEIVE: _COMMITTED,
        Call.RESTORE: _COMMITTED,
        Call.RESUME: Rule(Answer.AGAIN),
        Call.WAIT_PAGES: Rule(Answer.AGAIN),
        Call.DISCARD: _COMMITTED,
        Call.FINISH: Rule(Answer.AGAIN),
    },
    S.DISCARDED: {
        Call.OPEN: _GONE,
        Call.RECEIVE: _GONE,
        Call.RESTORE: _GONE,
        Call.RESUME: _GONE,
        Call.WAIT_PAGES: _GONE,
        Call.DISCARD: Rule(Answer.AGAIN),
        Call.FINISH: _GONE,
    },
}

#: the stages in which the migration is over (remembered for the source's late calls)
SETTLED = frozenset({S.FINISHED, S.DISCARDED})


def rule(stage: IncomingState, call: Call) -> Rule:
    return RULES[stage][call]


def refusal(migration_id: str, stage: IncomingState, why: str) -> str:
    """The one line a refused call gets."""
    return f"incoming migration {migration_id} is {stage.value}: {why}"


def table() -> str:
    """:data:`RULES` as a Markdown table: a row per stage, a column per call."""
    calls = list(Call)
    lines = [
        "| stage | " + " | ".join(c.value for c in calls) + " |",
        "|---|" + "---|" * len(calls),
    ]
    for stage in IncomingState:
        cells = []
        for call in calls:
            r = rule(stage, call)
            if r.answer is Answer.GO:
                cells.append(f"**go** → {r.then.value}" if r.then is not None else "**go**")
            elif r.answer is Answer.REFUSE:
                cells.append("409")
            else:
                cells.append(r.answer.value)
        lines.append(f"| {stage.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
