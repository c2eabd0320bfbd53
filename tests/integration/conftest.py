"""Fixtures for tests with real namespaces and real CRIU (root only)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from haul.criu.service import Criu
from haul.errors import ConfigError
from haul.install_record import criu_binary, criu_source
from haul.lab.held import end_started
from haul.lab.images import build_busybox_image
from haul.lab.netlab import lab_down, lab_up
from haul.lab.spec import LabSpec
from haul.lab.zdtm import ZDTM_PROGRAMS
from haul.runtime.images import ImageRef

ZDTM_TESTS = tuple(ZDTM_PROGRAMS)


@pytest.fixture(scope="session")
def criu_path() -> Path:
    try:
        return criu_binary()
    except ConfigError as exc:
        pytest.skip(f"no usable CRIU: {exc}")


@pytest.fixture
def criu(criu_path: Path) -> Criu:
    return Criu(criu_path)


@pytest_asyncio.fixture
async def lab() -> AsyncIterator[LabSpec]:
    """A two-host lab (no agents) with a unique prefix, removed even when the test fails."""
    spec = LabSpec(prefix="t" + secrets.token_hex(3), hosts=2)
    try:
        await lab_up(spec, agents=False)
        yield spec
    finally:
        await asyncio.to_thread(lab_down, spec.prefix)


@pytest_asyncio.fixture
async def lab_with_agents(tmp_path: Path) -> AsyncIterator[tuple[LabSpec, Path]]:
    """A two-host lab with an agent in each host, and the inventory (in tmp_path) naming them."""
    spec = LabSpec(prefix="t" + secrets.token_hex(3), hosts=2)
    inventory = tmp_path / "hosts.toml"
    try:
        await lab_up(spec, inventory=inventory)
        yield spec, inventory
    finally:
        await asyncio.to_thread(lab_down, spec.prefix)


@pytest_asyncio.fixture
async def tls_lab(tmp_path: Path) -> AsyncIterator[tuple[LabSpec, Path]]:
    """A two-host lab whose agents have certificates from the lab's CA: they call each
    other over mutual TLS (the inventory reaches them on their unix sockets)."""
    spec = LabSpec(prefix="t" + secrets.token_hex(3), hosts=2)
    inventory = tmp_path / "hosts.toml"
    try:
        await lab_up(spec, inventory=inventory, tls=True)
        yield spec, inventory
    finally:
        await asyncio.to_thread(lab_down, spec.prefix)


@pytest.fixture(scope="session")
def zdtm_dir() -> Path:
    """CRIU's ZDTM static test programs, built in the source tree the installer kept."""
    src = criu_source()
    if src is None or not (src / "test" / "zdtm" / "static").is_dir():
        pytest.skip("CRIU source tree not found (deploy/install.sh keeps one)")
    static = src / "test" / "zdtm" / "static"
    for cmd in (
        ["make", "-s", "-C", str(src / "test" / "zdtm" / "lib")],
        ["make", "-s", "-C", str(static), *ZDTM_TESTS],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"building ZDTM failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return static


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> ImageRef:
    """A busybox OCI image layout (its command counts into /data/count), built once per
    session (haul/lab/images.py); copy it where an agent may read it."""
    return build_busybox_image(tmp_path_factory.mktemp("oci") / "busybox")


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    """The file that lets a migration held at its ``restored`` hook go
    (haul/lab/held.py); made at the end, whatever happened, and every ``haul migrate``
    the test started there is ended and reaped."""
    path = tmp_path / "release"
    try:
        yield path
    finally:
        path.touch()
        end_started()
