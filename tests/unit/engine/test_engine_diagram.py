"""The generated phases diagram, and the engine's dependency rule."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import haul.engine
from haul.engine.diagram import diagram
from haul.engine.machine import edges
from haul.engine.phases import TERMINAL, Phase

ENGINE = Path(haul.engine.__file__).parent


def arrows(text: str) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        if "-->" in line and ":" in line:
            pair, label = line.split(":", 1)
            source, target = (part.strip() for part in pair.split("-->"))
            found[(source, target)] = label.strip()
    return found


def test_diagram_draws_every_transition_of_the_table() -> None:
    drawn = arrows(diagram())
    expected = {(s.name, w.phase.name) for s, _, w in edges()}
    assert set(drawn) == expected
    for source, event_type, way in edges():
        label = drawn[(source.name, way.phase.name)]
        assert event_type.__name__ + (f" ({way.when})" if way.when else "") in label.split(" / ")


def test_diagram_is_a_mermaid_state_diagram_with_start_and_ends() -> None:
    lines = diagram().splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert lines[1].strip() == "[*] --> NEW"
    for phase in TERMINAL:
        assert f"    {phase.name} --> [*]" in lines
    assert "    PRECOPY --> FREEZE: PreDumpFinished (policy stops)" in lines
    assert "    note right of COMMIT : point of no return" in lines
    # every phase appears; lazy-pages and rolling-back by their (Mermaid-safe) names
    for phase in Phase:
        assert phase.name in diagram()


def test_python_m_prints_the_diagram() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "haul.engine.diagram"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert printed.stdout == diagram()
    assert printed.stderr == ""


def test_engine_imports_only_the_standard_library_itself_and_haul_errors() -> None:
    allowed = set(sys.stdlib_module_names) | {"haul.errors"}
    offenders = []
    for path in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.startswith("haul.engine") or name in allowed:
                    continue
                if name.split(".")[0] in sys.stdlib_module_names:
                    continue
                offenders.append(f"{path.name}: {name}")
    assert offenders == []
