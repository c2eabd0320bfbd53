"""No test module imports another test module: fakes and lab tools that tests share live
in the package (haul/agent/fakes.py, haul/lab/operator.py, haul/lab/zdtm.py, ...), and
fixtures in conftest.py. Programs that tests run as separate processes (such as
tests/integration/lbserver.py) may stay next to them: they are run, not imported."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

#: test files still imported by other tests, each with when it goes
IMPORTED_TEST_FILES_ALLOWED: set[str] = set()


def _test_files() -> dict[str, Path]:
    """Every Python file under tests/ by the name a test would import it as (pytest puts
    each test directory on sys.path)."""
    found = {p.stem: p for p in TESTS.rglob("*.py") if p.stem != "__init__"}
    assert "conftest" in found and "test_layers" in found, "tests/ was not found"
    return found


def _imported_test_files() -> dict[str, list[str]]:
    """Test file (relative to the repository) -> the test files that import it."""
    by_name = _test_files()
    found: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                target = by_name.get(top) if top != "tests" else TESTS
                if target is not None:
                    rel = target.relative_to(TESTS.parent).as_posix()
                    found.setdefault(rel, []).append(path.relative_to(TESTS.parent).as_posix())
    return found


def test_no_test_module_imports_another() -> None:
    imported = _imported_test_files()
    assert {f: by for f, by in imported.items() if f not in IMPORTED_TEST_FILES_ALLOWED} == {}


def test_every_allowance_is_still_needed() -> None:
    assert IMPORTED_TEST_FILES_ALLOWED - set(_imported_test_files()) == set()
