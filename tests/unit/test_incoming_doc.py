"""docs/incoming.md shows the incoming stages' table (haul/dest/stages.py): no drift."""

from __future__ import annotations

from pathlib import Path

from haul.dest.stages import table

DOC = Path(__file__).resolve().parents[2] / "docs" / "incoming.md"


def test_incoming_doc_shows_the_current_table() -> None:
    text = DOC.read_text()
    block = text.split("<!-- generated: python -m haul.dest.stages -->\n", 1)[1]
    block = block.split("<!-- end generated -->", 1)[0]
    assert block == table(), (
        "docs/incoming.md is stale: put python -m haul.dest.stages's output in its table"
    )
