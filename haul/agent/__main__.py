"""``python -m haul.agent [--config PATH]``: run the agent without the rest of the CLI."""

from haul.agent.cli import main

main()
