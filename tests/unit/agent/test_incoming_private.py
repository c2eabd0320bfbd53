"""Images received over HTTP hold the workload's memory and state: whatever the agent's
umask (systemd's unit sets one, a shell or another service manager may not), only root
may read them. Each image file is 0600, and every directory on the way to it that the
agent made is 0700 (an incoming directory an older agent left open is closed too)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, make_config, receiving

MakeCtx = Callable[[AgentConfig], AgentContext]


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The agent runs with umask 0, as nothing outside systemd would stop it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.asyncio
@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("left_open", [False, True])
async def test_received_images_and_their_directories_are_root_only(
    make_ctx: MakeCtx, tmp_path: Path, left_open: bool
) -> None:
    config = make_config(tmp_path, criu="/bin/true")
    root = config.state_dir / "incoming"
    if left_open:  # an older agent made it world-readable
        root.mkdir(parents=True, mode=0o755)
        root.chmod(0o755)
    async with receiving(make_ctx(config)) as r:
        data = b"pages and registers"
        answer = await r.http.put(
            f"/v1/incoming/{r.migration_id}/images/core-1.img",
            data=data,
            headers={**AUTH, "X-Haul-SHA256": hashlib.sha256(data).hexdigest()},
        )
        assert answer.status == 200, await answer.text()
        image = r.images / "core-1.img"
        assert image.read_bytes() == data
        assert mode(image) == 0o600
        workdir = r.images.parent
        for d in (root, workdir, r.images, workdir / "work"):
            assert mode(d) == 0o700, f"{d} is {mode(d):04o}"
        # nothing in the migration's directory is open to others
        for path in [workdir, *workdir.rglob("*")]:
            assert mode(path) & 0o077 == 0, f"{path} is {mode(path):04o}"
