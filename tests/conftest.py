"""Shared test setup: root-only tests are skipped (with the reason) when not root,
and a root run fails if any test left a lab namespace or ledger behind."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

#: test labs are named "t" + 6 hex digits; the session-end check looks for these
TEST_PREFIX_RE = re.compile(r"^t[0-9a-f]{6}$")
IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs root: network namespaces and real CRIU")
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.root)
        if item.get_closest_marker("root") and not IS_ROOT:
            item.add_marker(skip)


def _leftovers() -> list[str]:
    found: list[str] = []
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        for entry in netns_dir.iterdir():
            if TEST_PREFIX_RE.match(entry.name.split("-", 1)[0]):
                found.append(f"network namespace {entry.name}")
    from haul.lab.ledger import known_prefixes

    found += [f"lab ledger {p}" for p in known_prefixes() if TEST_PREFIX_RE.match(p)]
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    before = set(_leftovers()) if IS_ROOT else set()
    yield
    if IS_ROOT:
        left = sorted(set(_leftovers()) - before)
        if left:
            pytest.fail("tests left these behind: " + ", ".join(left), pytrace=False)
