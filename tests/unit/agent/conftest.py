"""Fixtures for the agent's unit tests (the fakes are in haul/agent/fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import FakeCriu, FakeStarter, Receiving, make_config, receiving


@pytest.fixture
def fake_criu() -> FakeCriu:
    return FakeCriu()


@pytest.fixture
def starter() -> Iterator[FakeStarter]:
    s = FakeStarter()
    yield s
    s.kill_all()


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return make_config(tmp_path)


@pytest.fixture
def make_ctx(fake_criu: FakeCriu, starter: FakeStarter) -> Callable[[AgentConfig], AgentContext]:
    def make(config: AgentConfig) -> AgentContext:
        return AgentContext.create(config, gather_criu=fake_criu, start=starter)

    return make


@pytest_asyncio.fixture
async def incoming(
    make_ctx: Callable[[AgentConfig], AgentContext], tmp_path: Path
) -> AsyncIterator[Receiving]:
    """An agent with the incoming migration m1 of web1 open."""
    async with receiving(make_ctx(make_config(tmp_path, criu="/bin/true"))) as found:
        yield found
