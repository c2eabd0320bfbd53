"""The phases diagram, drawn from the transitions table (never by hand).

``python -m haul.engine.diagram`` prints it as a Mermaid state diagram.
"""

from __future__ import annotations

from haul.engine.machine import edges
from haul.engine.phases import AFTER_COMMIT, TERMINAL, Phase


def diagram() -> str:
    """:data:`~haul.engine.machine.TRANSITIONS` as a Mermaid ``stateDiagram-v2``.

    One arrow per (phase, next phase); its label lists the events that take it, each
    with the condition in parentheses when the table gives one.
    """
    labels: dict[tuple[Phase, Phase], list[str]] = {}
    for phase, event_type, way in edges():
        label = event_type.__name__ + (f" ({way.when})" if way.when else "")
        labels.setdefault((phase, way.phase), []).append(label)
    lines = ["stateDiagram-v2", f"    [*] --> {Phase.NEW.name}"]
    for (source, target), events in labels.items():
        lines.append(f"    {source.name} --> {target.name}: {' / '.join(events)}")
    lines += [f"    {phase.name} --> [*]" for phase in Phase if phase in TERMINAL]
    lines.append(f"    note right of {Phase.COMMIT.name} : point of no return")
    lines.append("    classDef forward font-weight:bold")
    lines.append("    classDef terminal fill:#eee")
    lines.append("    class " + ",".join(p.name for p in Phase if p in AFTER_COMMIT) + " forward")
    lines.append("    class " + ",".join(p.name for p in Phase if p in TERMINAL) + " terminal")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(diagram(), end="")
