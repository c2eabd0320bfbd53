"""Which parts of haul may import which, read from the source with ``ast``.

- the engine (sans-io) imports only the standard library, itself and haul.errors;
- the source and destination sides do not import each other (what both need
  lives in haul/workload, haul/criu, haul/net, haul/engine);
- only the command line (haul/cli*.py, haul/__main__.py) imports the command line;
- the agent is built on the engine, CRIU and both sides, never the other way round;
- fakes (haul/*/fakes.py) are for tests: no module of haul imports them.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

import haul

PACKAGE = Path(haul.__file__).resolve().parent
ROOT = PACKAGE.parent

#: files allowed to import the command line although they are not part of it
CLI_IMPORT_ALLOWED: set[str] = set()


def module_name(path: Path) -> str:
    """``haul/dest/linked.py`` -> ``haul.dest.linked``; a package's __init__ -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every name ``source`` (the text of ``module``) imports, anywhere in it (in
    functions and ``if TYPE_CHECKING`` too): ``import a.b`` gives ``a.b``;
    ``from a import b`` gives ``a.b`` (b may be a module); relative imports are
    resolved against ``module``."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def is_cli(name: str) -> bool:
    """haul.cli, haul.cli_migrate, ... (the command line), not haul.agent.cli."""
    parts = name.split(".")
    return (
        len(parts) >= 2
        and parts[0] == "haul"
        and (parts[1] == "cli" or parts[1].startswith("cli_"))
    )


def files(under: str) -> list[Path]:
    found = sorted((ROOT / under).rglob("*.py"))
    assert found, f"no Python files under {under}: the rules below would check nothing"
    return found


def imports_of(path: Path) -> set[str]:
    return imported(path.read_text(), module_name(path), is_package=path.name == "__init__.py")


def violations(paths: Iterable[Path], forbidden: str) -> list[str]:
    return [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in paths
        for name in sorted(imports_of(p))
        if within(name, forbidden)
    ]


# -- the rules ---------------------------------------------------------------------------------


def test_engine_imports_only_the_standard_library_itself_and_errors() -> None:
    bad = [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in files("haul/engine")
        for name in sorted(imports_of(p))
        if not (
            name.split(".")[0] in sys.stdlib_module_names
            or within(name, "haul.engine")
            or within(name, "haul.errors")
        )
    ]
    assert bad == []


@pytest.mark.parametrize(("side", "other"), [("source", "dest"), ("dest", "source")])
def test_source_and_dest_do_not_import_each_other(side: str, other: str) -> None:
    assert violations(files(f"haul/{side}"), f"haul.{other}") == []


@pytest.mark.parametrize("side", ["source", "dest", "agent"])
def test_workload_trees_depend_on_neither_side(side: str) -> None:
    assert violations(files("haul/workload"), f"haul.{side}") == []


def _cli_importers() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in files("haul"):
        rel = path.relative_to(ROOT)
        if rel.parent == Path("haul") and (rel.name.startswith("cli") or rel.name == "__main__.py"):
            continue  # the command line itself
        names = sorted(n for n in imports_of(path) if is_cli(n))
        if names:
            found[rel.as_posix()] = names
    return found


def test_only_the_command_line_imports_the_command_line() -> None:
    importers = _cli_importers()
    assert {f: n for f, n in importers.items() if f not in CLI_IMPORT_ALLOWED} == {}


def test_every_cli_import_allowance_is_still_needed() -> None:
    """An allowance no longer used is removed (it would let the next one in unseen)."""
    assert CLI_IMPORT_ALLOWED - set(_cli_importers()) == set()


@pytest.mark.parametrize("layer", ["engine", "criu", "source", "dest", "workload", "runtime"])
def test_agent_is_imported_by_none_of_the_layers_under_it(layer: str) -> None:
    assert violations(files(f"haul/{layer}"), "haul.agent") == []


def test_fakes_are_imported_by_no_module_of_the_package() -> None:
    """Fakes (haul/*/fakes.py) are for tests; haul itself never runs them."""
    bad = [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in files("haul")
        if p.name != "fakes.py"
        for name in sorted(imports_of(p))
        if name.startswith("haul.") and "fakes" in name.split(".")
    ]
    assert bad == []


# -- the reading of imports ------------------------------------------------------------------


def test_every_form_of_import_is_seen() -> None:
    source = (
        "import os.path\n"
        "from haul import cli_migrate\n"
        "from . import leftovers\n"
        "from ..source.criusource import CriuSource\n"
        "def later() -> None:\n"
        "    from haul.agent.client import AgentClient\n"
        "if TYPE_CHECKING:\n"
        "    import haul.cli\n"
    )
    names = imported(source, "haul.dest.linked")
    assert names == {
        "os.path",
        "haul.cli_migrate",
        "haul.dest.leftovers",
        "haul.source.criusource.CriuSource",
        "haul.agent.client.AgentClient",
        "haul.cli",
    }
    assert imported("from .figures import PAGE_SIZE\n", "haul.engine", is_package=True) == {
        "haul.engine.figures.PAGE_SIZE"
    }


def test_the_rules_tell_apart_what_they_name() -> None:
    assert within("haul.source.criusource", "haul.source")
    assert not within("haul.sources", "haul.source")
    assert is_cli("haul.cli") and is_cli("haul.cli_workloads.register")
    assert not is_cli("haul.agent.cli") and not is_cli("haul.client")
    assert module_name(PACKAGE / "dest" / "__init__.py") == "haul.dest"
