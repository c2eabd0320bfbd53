"""Comparing the versions tools report, e.g. runc's ``1.1.5+ds1`` or ``1.2.0-rc.1``.

A version is dotted numbers, then optionally a pre-release after ``-`` and build
metadata after ``+`` (which packagers add, e.g. Debian's ``+ds1``, and which says
nothing of the code's age: it is ignored). Trailing zeros do not count (``1.2`` is
``1.2.0``); a pre-release comes before its release (``1.2.0-rc.1`` < ``1.2.0``), and
pre-releases of one release compare by the numbers in them (``rc.2`` < ``rc.10``).
"""

from __future__ import annotations

import re
from typing import Final

_VERSION: Final = re.compile(
    r"v?(?P<release>\d+(?:\.\d+)*)(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?"
)

#: what :func:`version_key` gives: release numbers, 1 for a release (0: a
#: pre-release), the pre-release's numbers
VersionKey = tuple[tuple[int, ...], int, tuple[int, ...]]


def version_key(text: str) -> VersionKey | None:
    """A key that orders versions as their age does; None when ``text`` is none."""
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    release = [int(part) for part in match["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    pre = match["pre"]
    if pre is None:
        return tuple(release), 1, ()
    return tuple(release), 0, tuple(int(n) for n in re.findall(r"\d+", pre))


def older(version: str, than: str) -> bool | None:
    """Whether ``version`` is older than ``than``; None when either is not a version."""
    mine, theirs = version_key(version), version_key(than)
    if mine is None or theirs is None:
        return None
    return mine < theirs
