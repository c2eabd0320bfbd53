"""runc workloads without runc: the registry's container records, the requests, the
agent's [agent.runc] settings, runc's states as workload statuses, refusals before
anything is made."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from haul.agent.config import AgentConfig
from haul.agent.containers import ContainerRecord, status_of_state
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, agent_client, make_config
from haul.agent.models import AdoptSpec, MountSpec, WorkloadSpec, WorkloadStatus
from haul.agent.workloads import Registry, WorkloadRecord, view_of
from haul.errors import ConfigError
from haul.runtime.runc import ContainerState

MakeCtx = Callable[[AgentConfig], AgentContext]
MOUNT = {"source": "/a", "destination": "/x"}

CONTAINER = ContainerRecord(
    id="web",
    runc_root="/state/runc",
    bundle="/state/containers/web/bundle",
    image="oci:/srv/images/busybox:latest",
    image_digest="sha256:" + "c" * 64,
    layer_digests=["sha256:" + "a" * 64],
    rootfs="/state/containers/web/bundle/rootfs",
    rootfs_upper="/state/containers/web/upper",
    rootfs_lower="/state/images/sha256-" + "c" * 64 + "/rootfs",
    netns="/state/containers/web/netns",
    cgroups_path="/haul/host1/web",
    criu_config="/state/containers/web/criu.conf",
)


def _record(**kw: object) -> WorkloadRecord:
    fields: dict[str, object] = {
        "name": "web",
        "argv": ["/bin/sh"],
        "root_pid": 4242,
        "start_ticks": 7,
        "started_at": datetime(2026, 1, 1, tzinfo=UTC),
        "cwd": "/state/containers/web/bundle",
        "data_dir": None,
        "log_path": "/dev/null",
    }
    fields.update(kw)
    return WorkloadRecord.model_validate(fields)


def test_a_registry_from_before_containers_still_loads(tmp_path: Path) -> None:
    old = {
        "version": 1,
        "workloads": [
            {
                "name": "w1",
                "argv": ["sleep", "9"],
                "root_pid": 10,
                "start_ticks": 1,
                "started_at": "2026-01-01T00:00:00Z",
                "cwd": "/d",
                "data_dir": None,
                "log_path": "/d/log",
            }
        ],
    }
    (tmp_path / "workloads.json").write_text(json.dumps(old))
    (record,) = Registry(tmp_path / "workloads.json").load().values()
    assert (record.runtime, record.container) == ("process", None)


def test_a_container_record_survives_the_registry(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "workloads.json")
    record = _record(runtime="runc", container=CONTAINER)
    registry.save({"web": record})
    assert registry.load() == {"web": record}
    view = view_of(record, WorkloadStatus.PAUSED)
    assert (view.runtime, view.image, view.status) == ("runc", CONTAINER.image, "paused")


@pytest.mark.parametrize(
    "fields",
    [{"runtime": "runc"}, {"container": CONTAINER}, {"runtime": "docker"}],
)
def test_a_container_record_goes_with_runtime_runc_only(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _record(**fields)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "exactly one of pid and container"),
        ({"pid": 12, "container": "web"}, "exactly one of pid and container"),
        ({"pid": 12, "runc_root": "/run/runc"}, "runc_root: only with container"),
        ({"container": "a/b"}, "is not a container ID"),
        ({"container": "web", "runc_root": "run/runc"}, "absolute path"),
    ],
)
def test_adopt_asks_for_one_thing(fields: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        AdoptSpec.model_validate(fields)
    assert AdoptSpec(container="Web_1").container == "Web_1"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (
            {"runtime": "process", "image": None, "argv": ["/bin/true"], "mounts": [MOUNT]},
            "mounts: only for runtime runc",
        ),
        ({"mounts": [MOUNT, MOUNT]}, "/x mounted twice"),
        ({"mounts": [{**MOUNT, "source": "a"}]}, "absolute path"),
        ({"mounts": [{**MOUNT, "destination": "/"}]}, "may not be the container's root"),
        ({"mounts": [{**MOUNT, "destination": "/x/../etc"}]}, "'.' or '..'"),
    ],
)
def test_mounts_go_with_runc_each_destination_once(fields: dict[str, object], says: str) -> None:
    body = {"name": "web", "runtime": "runc", "image": "oci:/srv/images/web"}
    with pytest.raises(ValidationError, match=says):
        WorkloadSpec.model_validate({**body, **fields})
    two = [
        MountSpec(source="/a", destination="/x", readonly=True),
        MountSpec(source="/a", destination="/y"),
    ]
    assert WorkloadSpec.model_validate({**body, "mounts": two}).mounts == two


def _state(status: str, pid: int) -> ContainerState:
    return ContainerState(id="web", status=status, pid=pid, bundle=Path("/b"))


def test_runcs_states_as_workload_statuses() -> None:
    assert status_of_state(_state("paused", os.getpid())) is WorkloadStatus.PAUSED
    assert status_of_state(_state("created", os.getpid())) is WorkloadStatus.STOPPED
    assert status_of_state(_state("stopped", 0)) is WorkloadStatus.STOPPED
    assert status_of_state(_state("running", os.getpid())) is WorkloadStatus.RUNNING


def test_a_running_container_whose_init_is_stopped_shows_stopped() -> None:
    """A copy restored stopped: runc still says running (it does not see SIGSTOP)."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        os.kill(proc.pid, 19)  # SIGSTOP
        for _ in range(200):
            if status_of_state(_state("running", proc.pid)) is WorkloadStatus.STOPPED:
                break
            os.sched_yield()
        assert status_of_state(_state("running", proc.pid)) is WorkloadStatus.STOPPED
    finally:
        proc.kill()
        proc.wait()
    assert status_of_state(_state("running", proc.pid)) is WorkloadStatus.GONE


def test_the_runc_settings_and_their_defaults(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.runc_root == tmp_path / "state" / "runc"
    assert config.cgroup_parent == "/haul/host1"
    assert config.runc.allowed_roots == []
    config = make_config(
        tmp_path,
        runc={"allowed_roots": ["images", "/srv"], "cgroup_parent": "/lab/h1", "root": "rr"},
    )
    assert config.runc.allowed_roots == [tmp_path / "images", Path("/srv")]
    assert (config.cgroup_parent, config.runc_root) == ("/lab/h1", tmp_path / "rr")


@pytest.mark.parametrize("parent", ["haul/h1", "/haul/../x", "/", "/a b"])
def test_a_bad_cgroup_parent_is_refused(tmp_path: Path, parent: str) -> None:
    with pytest.raises(ConfigError, match="agent.runc.cgroup_parent"):
        make_config(tmp_path, runc={"cgroup_parent": parent})


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("source", "says"),
    [
        ({"image": "oci:/srv/images/web:v1"}, "image layout /srv/images/web is outside"),
        ({"bundle": "/srv/bundles/web"}, "bundle /srv/bundles/web is outside"),
        ({"rootfs": "/srv/rootfs", "argv": ["/bin/sh"]}, "rootfs /srv/rootfs is outside"),
    ],
)
async def test_a_path_outside_the_allowed_roots_is_400_and_makes_nothing(
    make_ctx: MakeCtx, tmp_path: Path, source: dict[str, object], says: str
) -> None:
    config = make_config(tmp_path, runc={"allowed_roots": [str(tmp_path / "images")]})
    async with agent_client(make_ctx(config)) as client:
        body = {"name": "web", "runtime": "runc", **source}
        response = await client.post("/v1/workloads", json=body, headers=AUTH)
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["code"] == "usage" and says in error["message"], error
        assert "agent.runc.allowed_roots" in error["message"]
        listing = await (await client.get("/v1/workloads", headers=AUTH)).json()
        assert listing["workloads"] == []
    assert not (config.state_dir / "containers").exists()
    assert not (config.state_dir / "images").exists()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mount", "says"),
    [
        ({"source": "/srv/zdtm", "destination": "/zdtm"}, "mount source /srv/zdtm is outside"),
        (
            {"source": "/usr/lib", "destination": "/usr/lib"},
            "a read-only mount (:ro) may also name the host's libraries",
        ),
        (
            {"source": "/etc", "destination": "/etc", "readonly": True},
            "and the host's library directories",
        ),
    ],
)
async def test_a_mount_from_outside_the_allowed_roots_is_400_and_makes_nothing(
    make_ctx: MakeCtx, tmp_path: Path, mount: dict[str, object], says: str
) -> None:
    allowed = tmp_path / "allowed"
    config = make_config(tmp_path, runc={"allowed_roots": [str(allowed)]})
    async with agent_client(make_ctx(config)) as client:
        body = {
            "name": "web",
            "runtime": "runc",
            "rootfs": str(allowed / "rootfs"),
            "argv": ["/bin/sh"],
            "mounts": [mount],
        }
        response = await client.post("/v1/workloads", json=body, headers=AUTH)
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["code"] == "usage" and says in error["message"], error
        listing = await (await client.get("/v1/workloads", headers=AUTH)).json()
        assert listing["workloads"] == []
    assert not (config.state_dir / "containers").exists()
