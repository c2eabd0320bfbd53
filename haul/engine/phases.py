"""The phases of a migration, and which ones the commit rule puts before the point of no return."""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    NEW = "new"
    PREFLIGHT = "preflight"
    PREPARE = "prepare"
    PRECOPY = "precopy"
    FREEZE = "freeze"
    TRANSFER = "transfer"
    RESTORE = "restore"
    COMMIT = "commit"
    LAZY_PAGES = "lazy-pages"
    CLEANUP = "cleanup"
    DONE = "done"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"
    REFUSED = "refused"
    #: a dry run (``haul check``, ``--dry-run``): the pre-flight passed, nothing touched
    CHECKED = "checked"
    FAILED = "failed"


#: Before the commit: any failure rolls back (source resumes, destination discards).
BEFORE_COMMIT = frozenset(
    {
        Phase.NEW,
        Phase.PREFLIGHT,
        Phase.PREPARE,
        Phase.PRECOPY,
        Phase.FREEZE,
        Phase.TRANSFER,
        Phase.RESTORE,
    }
)
#: After the commit decision is journaled: failures roll forward, never back.
AFTER_COMMIT = frozenset({Phase.COMMIT, Phase.LAZY_PAGES, Phase.CLEANUP})
TERMINAL = frozenset({Phase.DONE, Phase.ROLLED_BACK, Phase.REFUSED, Phase.CHECKED, Phase.FAILED})


class Strategy(enum.Enum):
    AUTO = "auto"
    PRE_COPY = "pre-copy"
    POST_COPY = "post-copy"
    STOP_AND_COPY = "stop-and-copy"
