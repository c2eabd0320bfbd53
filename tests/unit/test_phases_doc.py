"""docs/phases.md is the engine's transitions table, drawn: it must not drift."""

from __future__ import annotations

from pathlib import Path

from haul.engine.diagram import diagram

DOC = Path(__file__).resolve().parents[2] / "docs" / "phases.md"


def test_phases_doc_is_the_current_diagram() -> None:
    text = DOC.read_text()
    block = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block.strip() == diagram().strip(), (
        "docs/phases.md is stale: regenerate it with python -m haul.engine.diagram"
    )
