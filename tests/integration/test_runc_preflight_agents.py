"""``haul migrate`` of a runc container is refused at the pre-flight, in one line, with
nothing changed, when the move cannot work: an unknown name; a destination whose runc is
missing, older than the source's, or that runs no containers at all; a destination that
has a workload or a runc container of that name already. ``haul check`` and
``--dry-run`` say the same.

Real agents, runc and CRIU. A destination's runc is changed the way an operator would:
its agent's ``[agent.runc]`` (``binary``, ``enabled``) rewritten and the agent restarted
(haul/lab/agents.py); an older or newer runc is a tiny script in the test's temporary
directory that reports another version and otherwise runs the real one. After every
refusal the container still runs on host1 and counts on, runc lists it there only, and
host2 holds nothing of it; at the end, with host2's runc back, the same container moves.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul.install_record import runc_binary
from haul.lab.agents import reconfigure_agent
from haul.lab.hostrunc import (
    container_ids,
    host_runc,
    host_runc_root,
    left_on,
    plain_bundle,
    run_plain,
)
from haul.lab.operator import ps, run_haul, wait_until
from haul.lab.spec import LabSpec
from haul.runtime.images import ImageRef

NAME = "pf1"


def _count(lab: LabSpec) -> int:
    done = host_runc(lab, "host1", "exec", NAME, "/bin/cat", "/data/count")
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip() or 0)


def _runc_version() -> str:
    out = subprocess.run([runc_binary(), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"runc version (\S+)", out)
    assert match, out
    return match.group(1)


def _reporting(tmp_path: Path, version: str) -> Path:
    """A runc that says it is ``version`` and otherwise is the real one."""
    script = tmp_path / f"runc-{version}"
    script.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do\n'
        f'    if [ "$a" = --version ]; then echo "runc version {version}"; exit 0; fi\n'
        "done\n"
        f'exec {runc_binary()} "$@"\n'
    )
    script.chmod(0o755)
    return script


def _refused(done: subprocess.CompletedProcess[str], says: str) -> str:
    """One line on stderr, ``haul: refused: ...`` with ``says`` in it; exit 3."""
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("haul: refused: ") and says in lines[0], lines[0]
    return lines[0]


def _unchanged(lab: LabSpec, inventory: Path, count: int, *, plain_on_host2: bool = False) -> int:
    """The container still runs on host1 alone and counts on; host2 has nothing of it
    (``plain_on_host2``: but for the plain runc container the test put there); no
    migration arrived there. Returns the count now."""
    assert container_ids(lab, "host1") == [NAME]
    assert container_ids(lab, "host2") == ([NAME] if plain_on_host2 else [])
    assert [(r["host"], r["name"]) for r in ps(inventory) if r["name"] == NAME] == [("host1", NAME)]
    left = left_on(lab, "host2", NAME)
    if plain_on_host2:  # runc's own state and cgroup of it, nothing of haul's
        left = [x for x in left if x != "runc state under the agent root"]
        left = [x for x in left if not x.startswith("cgroup ")]
    assert left == []
    incoming = lab.member("host2").data_backing / "agent" / "incoming"
    assert not incoming.exists() or not [p for p in incoming.iterdir() if p.name != "preflight"]
    return wait_until(f"{NAME} counting on", lambda: (n := _count(lab)) > count and n, 10.0)


@pytest.fixture
def restored_host2(lab_with_agents: tuple[LabSpec, Path]) -> Iterator[None]:
    """host2's agent is given its usual runc settings back at the end (the lab's removal
    stops it whatever its settings)."""
    yield
    asyncio.run(reconfigure_agent(lab_with_agents[0], "host2"))


@pytest.mark.root
def test_a_move_that_cannot_work_is_refused_at_the_preflight_and_changes_nothing(
    lab_with_agents: tuple[LabSpec, Path],
    busybox_image: ImageRef,
    tmp_path: Path,
    restored_host2: None,
) -> None:
    lab, inventory = lab_with_agents
    layout = lab.root_dir / "images" / "busybox"
    shutil.copytree(busybox_image.layout, layout)
    image = ImageRef(layout, busybox_image.tag)
    done = run_haul(
        inventory, "run", "--name", NAME, "--host", "host1", "--runtime", "runc",
        "--image", str(image),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    count = wait_until(f"{NAME} counting", lambda: (n := _count(lab)) > 0 and n, 10.0)
    version = _runc_version()
    move = ("migrate", NAME, "--to", "host2", "--from", "host1")

    # an unknown name, found on no host or not on the one given
    _refused(run_haul(inventory, "migrate", "nosuch", "--to", "host2"), "no host in the inventory")
    for verb in ("migrate", "check"):
        says = "no workload 'nosuch' on host1; nothing was touched"
        _refused(run_haul(inventory, verb, "nosuch", "--to", "host2", "--from", "host1"), says)
    count = _unchanged(lab, inventory, count)

    # host2 runs a workload of that name
    other = run_haul(
        inventory, "run", "--name", NAME, "--host", "host2", "--", "/bin/sleep", "1000"
    )
    assert other.returncode == 0, other.stderr
    _refused(
        run_haul(inventory, *move), f"the name '{NAME}' is taken on host2: a workload holds it"
    )
    assert run_haul(inventory, "kill", NAME, "--host", "host2").returncode == 0
    count = _unchanged(lab, inventory, count)

    # runc on host2 has a container of that name that is no workload of its agent
    bundle = plain_bundle(lab, "host2", image, NAME)
    run_plain(lab, "host2", bundle, NAME, host_runc_root(lab))
    try:
        line = _refused(run_haul(inventory, *move), f"the name '{NAME}' is taken on host2")
        assert f"runc has a container {NAME} (running) under {host_runc_root(lab)}" in line
        count = _unchanged(lab, inventory, count, plain_on_host2=True)
    finally:
        host_runc(lab, "host2", "delete", "--force", NAME)
    assert left_on(lab, "host2", NAME) == []

    # host2's runc is missing: it runs no containers (a process tree still goes there)
    missing = tmp_path / "no-such-runc"
    asyncio.run(reconfigure_agent(lab, "host2", runc_binary=missing))
    says = f"host2 runs no containers (agent.runc.binary: {missing} is not an executable file)"
    _refused(run_haul(inventory, *move), says)
    _refused(run_haul(inventory, "check", NAME, "--to", "host2"), says)
    tree = run_haul(inventory, "run", "--name", "pt1", "--host", "host1", "--", "/bin/sleep", "99")
    assert tree.returncode == 0, tree.stderr
    checked = run_haul(inventory, "check", "pt1", "--to", "host2", "-o", "json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["source_runtime"] == ""  # a tree needs no runtime
    assert run_haul(inventory, "kill", "pt1").returncode == 0
    count = _unchanged(lab, inventory, count)

    # host2's runc is older than host1's
    asyncio.run(reconfigure_agent(lab, "host2", runc_binary=_reporting(tmp_path, "1.0.0")))
    says = f"host2's runc 1.0.0 is older than host1's {version}"
    _refused(run_haul(inventory, *move), says)
    _refused(run_haul(inventory, *move, "--dry-run"), says)
    count = _unchanged(lab, inventory, count)

    # host2 runs no containers at all
    asyncio.run(reconfigure_agent(lab, "host2", runs_containers=False))
    says = "host2 runs no containers (its agent.runc.enabled is false)"
    _refused(run_haul(inventory, *move), says)
    _refused(run_haul(inventory, "check", NAME, "--to", "host2"), says)
    count = _unchanged(lab, inventory, count)

    # a newer runc there is fine: the check says both versions
    asyncio.run(reconfigure_agent(lab, "host2", runc_binary=_reporting(tmp_path, "99.1.0")))
    checked = run_haul(inventory, "check", NAME, "--to", "host2", "-o", "json")
    assert checked.returncode == 0, checked.stderr
    view = json.loads(checked.stdout)
    assert (view["ok"], view["source_runtime"], view["dest_runtime"]) == (
        True,
        f"runc {version}",
        "runc 99.1.0",
    )
    count = _unchanged(lab, inventory, count)

    # with its own runc back, host2 takes the container
    asyncio.run(reconfigure_agent(lab, "host2"))
    moved = run_haul(inventory, *move, "-o", "json", timeout_s=180)
    assert moved.returncode == 0, moved.stderr + moved.stdout
    assert json.loads(moved.stdout)["outcome"] == "done"
    assert (container_ids(lab, "host1"), container_ids(lab, "host2")) == ([], [NAME])
    assert left_on(lab, "host1", NAME) == []
    later = host_runc(lab, "host2", "exec", NAME, "/bin/cat", "/data/count")
    assert int(later.stdout.strip()) > count
    assert run_haul(inventory, "kill", NAME).returncode == 0
    assert left_on(lab, "host2", NAME) == []
