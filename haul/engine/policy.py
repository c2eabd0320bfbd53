"""The pre-copy policy: after each pre-dump round, go on or freeze? Pure, no I/O.

P.Haul stopped iterating when a round wrote <= 64 pages, when the dirty set grew by
more than 10 %, or after 8 iterations. haul asks the same question in terms of what
the operator set a limit on, the downtime. After each round, :func:`decide` applies
these rules in order:

1. **At least one round.** With no round measured yet, go on.
2. **Downtime.** The final dump will have to move about what the last round wrote,
   ``pages_written * page_size`` bytes, at the throughput measured so far (every
   round's ``bytes_sent`` over every round's seconds), plus the fixed cost of the
   frozen window (freeze, the rest of the dump, restore, resume). When that
   expected downtime is ``<= max_downtime_ms``, stop: freezing now meets the limit.
   (Pages compressed on the wire make this estimate err long, on the safe side; a
   round that sent nothing measurable gives no estimate, so only rules 3-4 apply.)
3. **No progress.** When the last round wrote ``>= shrink_threshold`` (default 90 %)
   of the pages the round before it wrote, the workload dirties memory as fast as
   it is copied (or faster); more rounds only cost bandwidth. Stop.
4. **Iterations.** After ``max_iterations`` rounds, stop.
5. Otherwise go on with another round.

A stop for rule 3 or 4 means the frozen window will be longer than the limit: the
decision says how long it is expected to be, and the caller may report it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from haul.engine.figures import PAGE_SIZE, FilesFigures, IterationFigures


@dataclass(frozen=True, slots=True)
class Decision:
    """``stop``: freeze now. ``expected_downtime_ms``: ``inf`` when not measurable yet."""

    stop: bool
    reason: str
    expected_downtime_ms: float


def expected_downtime_ms(
    history: Sequence[IterationFigures], *, freeze_cost_ms: float, page_size: int = PAGE_SIZE
) -> float:
    """The frozen window if the workload were frozen after the last round of ``history``."""
    if not history:
        return math.inf
    dirty_bytes = history[-1].pages_written * page_size
    if dirty_bytes == 0:
        return freeze_cost_ms
    sent_bytes = sum(f.bytes_sent for f in history)
    seconds = sum(f.duration_s for f in history)
    if seconds <= 0 or sent_bytes <= 0:
        return math.inf
    return dirty_bytes / (sent_bytes / seconds) * 1000.0 + freeze_cost_ms


def throughput_bytes_per_s(history: Sequence[IterationFigures]) -> float | None:
    """Every round's bytes over every round's seconds (None before a measurable round)."""
    seconds = sum(f.duration_s for f in history)
    sent = sum(f.bytes_sent for f in history)
    return sent / seconds if seconds > 0 and sent > 0 else None


def dirty_rate_bytes_per_s(
    history: Sequence[IterationFigures], page_size: int = PAGE_SIZE
) -> float | None:
    """How fast the workload dirties memory: what the last round found dirty, over the
    time the round before it took (the time in which those pages were written).
    None before two rounds."""
    if len(history) < 2 or history[-2].duration_s <= 0:
        return None
    return history[-1].pages_written * page_size / history[-2].duration_s


def decide(
    history: Sequence[IterationFigures],
    *,
    max_downtime_ms: float,
    max_iterations: int,
    freeze_cost_ms: float,
    page_size: int = PAGE_SIZE,
    shrink_threshold: float = 0.9,
) -> Decision:
    """Apply the module's rules to the rounds so far (oldest first)."""
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, not {max_iterations}")
    if page_size <= 0:
        raise ValueError(f"page_size must be > 0, not {page_size}")
    if not history:
        return Decision(False, "no pre-copy round yet", math.inf)
    rounds = len(history)
    last = history[-1]
    downtime = expected_downtime_ms(history, freeze_cost_ms=freeze_cost_ms, page_size=page_size)
    if downtime <= max_downtime_ms:
        return Decision(
            True,
            f"expected downtime {downtime:.0f} ms <= {max_downtime_ms:g} ms "
            f"({last.pages_written} dirty pages after round {rounds})",
            downtime,
        )
    if rounds >= 2:
        before = history[-2]
        if last.pages_written >= shrink_threshold * before.pages_written:
            return Decision(
                True,
                f"dirty set stopped shrinking: round {rounds} wrote {last.pages_written} pages, "
                f"round {rounds - 1} {before.pages_written} (threshold {shrink_threshold:.0%}); "
                f"expected downtime {downtime:.0f} ms",
                downtime,
            )
    if rounds >= max_iterations:
        return Decision(
            True,
            f"reached {max_iterations} pre-copy rounds; expected downtime {downtime:.0f} ms",
            downtime,
        )
    return Decision(
        False,
        f"expected downtime {downtime:.0f} ms > {max_downtime_ms:g} ms "
        f"({last.pages_written} dirty pages after round {rounds})",
        downtime,
    )


#: a files round that sends at most this much leaves the rest to the frozen window
FILES_SETTLED_BYTES = 1 << 20
#: the workload's files are sent in at most this many rounds while it runs
MAX_FILES_ROUNDS = 4


def files_decide(
    history: Sequence[FilesFigures],
    *,
    settled_bytes: int = FILES_SETTLED_BYTES,
    max_rounds: int = MAX_FILES_ROUNDS,
) -> Decision:
    """After a round of the workload's files, another round (while it runs) or on to
    the memory? Stop when the last round sent little (what changes next goes in the
    frozen window's delta), when it sent no less than the round before (the workload
    writes files as fast as they are sent), or after ``max_rounds``.
    ``expected_downtime_ms`` is not estimated here (``inf``)."""
    if not history:
        return Decision(False, "no files round yet", math.inf)
    last, rounds = history[-1], len(history)
    if last.bytes_sent <= settled_bytes:
        return Decision(
            True, f"files settled: round {rounds} sent {last.bytes_sent} bytes", math.inf
        )
    if rounds >= 2 and last.bytes_sent >= history[-2].bytes_sent:
        return Decision(True, f"files changed as fast as they were sent (round {rounds})", math.inf)
    if rounds >= max_rounds:
        return Decision(True, f"reached {max_rounds} files rounds", math.inf)
    return Decision(False, f"round {rounds} sent {last.bytes_sent} bytes", math.inf)
