"""runc workloads without runc: the registry's container records, the requests, the
agent's [agent.runc] settings, runc's states as workload statuses, refusals before
anything is made."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from haul.agent.arrivals import layout_of, take_blobs
from haul.agent.config import AgentConfig
from haul.agent.containers import (
    ContainerRecord,
    Containers,
    ContainerSettings,
    status_of_state,
)
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, agent_client, make_config
from haul.agent.migration_models import ContainerMove
from haul.agent.models import AdoptSpec, MountSpec, WorkloadSpec, WorkloadStatus
from haul.agent.workloads import Registry, WorkloadRecord, view_of
from haul.errors import ChecksumMismatch, ConfigError, ContainerError, UsageError
from haul.nsexec import HostNs
from haul.runtime.images import blob_path
from haul.runtime.runc import ContainerState
from haul.runtime.sharedlayer import SharedLayer

MakeCtx = Callable[[AgentConfig], AgentContext]

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
    assert config.runc.enabled and config.runc.binary is None


def test_a_configured_runc_must_be_an_executable_file(tmp_path: Path) -> None:
    runc = tmp_path / "bin" / "runc"
    config = make_config(tmp_path, runc={"binary": "bin/runc", "enabled": False})
    assert (config.runc.binary, config.runc.enabled) == (runc, False)
    with pytest.raises(ConfigError, match=f"agent.runc.binary: {runc} is not an executable"):
        config.runc_path()
    runc.parent.mkdir()
    runc.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="is not an executable"):
        config.runc_path()
    runc.chmod(0o755)
    assert config.runc_path() == runc


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"memory_bytes": 64 << 20}, "memory_bytes: only for runtime runc"),
        ({"cpus": 0.5, "pids_limit": 9}, "cpus, pids_limit: only for runtime runc"),
        ({"runtime": "runc", "image": "oci:/i", "memory_bytes": 1 << 20}, "greater than or"),
        ({"runtime": "runc", "image": "oci:/i", "cpus": 0.001}, "greater than or equal to 0.01"),
        ({"runtime": "runc", "image": "oci:/i", "pids_limit": 0}, "greater than or equal to 1"),
    ],
)
def test_limits_are_a_containers_and_sensible(fields: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        WorkloadSpec.model_validate({"name": "w", "argv": ["/bin/sh"], **fields})
    spec = WorkloadSpec(name="w", runtime="runc", image="oci:/i", memory_bytes=4 << 20, cpus=2)
    assert (spec.memory_bytes, spec.cpus, spec.pids_limit) == (4 << 20, 2.0, None)


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
async def test_a_mount_from_outside_the_allowed_roots_is_400_and_makes_nothing(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    """Checked with the image's path, before the image is read or anything is made."""
    images = tmp_path / "images"
    config = make_config(tmp_path, runc={"allowed_roots": [str(images)]})
    async with agent_client(make_ctx(config)) as client:
        body = {
            "name": "web",
            "runtime": "runc",
            "image": f"oci:{images}/web:v1",
            "mounts": [{"source": "/srv/python", "destination": "/usr"}],
        }
        response = await client.post("/v1/workloads", json=body, headers=AUTH)
        assert response.status == 400
        error = (await response.json())["error"]
        assert "mount source /srv/python is outside" in error["message"], error
    assert not (config.state_dir / "containers").exists()
    assert not (config.state_dir / "images").exists()


def test_mounts_go_with_runtime_runc_only() -> None:
    mount = MountSpec(source="/usr", destination="/usr")
    with pytest.raises(ValidationError, match="mounts: only for runtime runc"):
        WorkloadSpec(name="web", argv=["/bin/sh"], mounts=[mount])
    with pytest.raises(ValidationError, match="absolute path"):
        MountSpec(source="usr", destination="/usr")
    spec = WorkloadSpec(name="web", runtime="runc", image="oci:/i", mounts=[mount])
    assert spec.mounts == [mount]


@pytest.mark.asyncio
async def test_a_container_whose_mounts_this_host_does_not_allow_is_refused_on_arrival(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    """runc mounts the same host paths on the destination: they must be allowed there."""
    allowed = tmp_path / "srv"
    (allowed / "app").mkdir(parents=True)
    config = make_config(tmp_path, runc={"allowed_roots": [str(allowed)]})
    mounts = [
        {"destination": "/opt/app", "type": "bind", "source": str(allowed / "app")},
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["bind", "ro"]},
    ]
    move = {"config": {"process": {"args": ["/bin/sh"]}, "mounts": mounts}}
    async with agent_client(make_ctx(config)) as client:
        opened = await client.post(
            "/v1/incoming",
            json={
                "id": "m1",
                "workload": "web",
                "strategy": "post-copy",
                "needed_bytes": 0,
                "container": move,
            },
            headers=AUTH,
        )
        assert opened.status == 400
        error = (await opened.json())["error"]
        assert "mount source /usr is outside" in error["message"], error
    assert not (config.state_dir / "containers").exists()


#: a runc that knows one container, ``taken``, and says it is version 1.2.3
FAKE_RUNC = """#!/bin/sh
want=""
for a in "$@"; do
    case "$a" in
        --version) echo "runc version 1.2.3"; echo "commit: x"; exit 0 ;;
        state) want=state ;;
        *) if [ "$want" = state ]; then id="$a"; fi ;;
    esac
done
if [ "$id" = taken ]; then
    echo '{"id": "taken", "pid": 0, "status": "stopped", "bundle": "/b"}'
    exit 0
fi
echo 'level=error msg="container does not exist"' >&2
exit 1
"""


def _containers(tmp_path: Path, script: str | None = FAKE_RUNC, **kw: Any) -> Containers:
    runc = tmp_path / "runc"
    if script is not None:
        runc.write_text(script)
        runc.chmod(0o755)
    config = make_config(tmp_path, runc={"binary": str(runc)})
    settings = ContainerSettings(
        state_dir=tmp_path / "state",
        runc_root=tmp_path / "state" / "runc",
        cgroup_parent="/haul/t",
        runc_binary=config.runc_path,
        **kw,
    )
    return Containers(settings)


@pytest.mark.asyncio
async def test_a_host_reports_its_runcs_version_or_why_it_runs_none(tmp_path: Path) -> None:
    assert await _containers(tmp_path).runtime() == ("1.2.3", "")
    assert await _containers(tmp_path, enabled=False).runtime() == (
        None,
        "its agent.runc.enabled is false",
    )
    outside = await _containers(tmp_path, host=HostNs(net=Path("/run/netns/x"))).runtime()
    assert outside[0] is None and "outside its host's namespaces" in outside[1]
    missing = await _containers(tmp_path / "nowhere", script=None).runtime()
    assert missing == (
        None,
        f"agent.runc.binary: {tmp_path / 'nowhere' / 'runc'} is not an executable file",
    )
    broken = await _containers(tmp_path, "#!/bin/sh\necho 'no runc here' >&2\nexit 3\n").runtime()
    assert broken == (None, "runc --version: no runc here")


@pytest.mark.asyncio
async def test_a_name_is_taken_by_a_runc_container_or_a_containers_directory(
    tmp_path: Path,
) -> None:
    containers = _containers(tmp_path)
    assert await containers.name_taken("taken") is None, "no runc root yet: nothing to ask"
    containers.settings.runc_root.mkdir(parents=True)
    assert await containers.name_taken("taken") == (
        f"runc has a container taken (stopped) under {containers.settings.runc_root}"
    )
    assert await containers.name_taken("free") is None
    containers.dirs("free").directory.mkdir(parents=True)
    assert await containers.name_taken("free") == (
        f"a container directory {containers.dirs('free').directory} is there"
    )
    with pytest.raises(ContainerError, match="this host runs no containers: its agent.runc"):
        _containers(tmp_path, enabled=False).check_runs_containers()


# -- --shared-dir -------------------------------------------------------------------------------


def test_a_shared_directory_goes_with_a_containers_image_only() -> None:
    with pytest.raises(ValidationError, match="shared_dir: only for runtime runc"):
        WorkloadSpec(name="web", argv=["/bin/sh"], shared_dir="/srv/shared")
    with pytest.raises(ValidationError, match="shared_dir: only with image"):
        WorkloadSpec(name="web", runtime="runc", rootfs="/r", argv=["/bin/sh"], shared_dir="/s")
    spec = WorkloadSpec(name="web", runtime="runc", image="oci:/i", shared_dir="/srv/shared")
    assert spec.shared_dir == "/srv/shared"


@pytest.mark.asyncio
async def test_a_shared_directory_not_allowed_or_a_layer_taken_is_400_and_makes_nothing(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    srv = tmp_path / "srv"
    taken = SharedLayer.of(srv / "shared", "web")
    taken.create()
    (taken.upper / "theirs").write_text("another host's container")
    config = make_config(tmp_path, runc={"allowed_roots": [str(srv)]})
    image = f"oci:{srv}/images/web:v1"
    async with agent_client(make_ctx(config)) as client:
        for shared, says in (
            ("/var/tmp", "shared directory /var/tmp is outside"),
            (str(srv / "missing"), "does not exist here"),
            (str(srv / "shared"), "a container of that name keeps its writable layer"),
        ):
            body = {"name": "web", "runtime": "runc", "image": image, "shared_dir": shared}
            response = await client.post("/v1/workloads", json=body, headers=AUTH)
            assert response.status == 400
            error = (await response.json())["error"]
            assert says in error["message"], error
    assert not (config.state_dir / "containers").exists()
    assert not (config.state_dir / "images").exists()
    assert (taken.upper / "theirs").read_text() == "another host's container"


def _shared_move(layer: SharedLayer) -> dict[str, object]:
    return {
        "config": {"process": {"args": ["/bin/sh"]}},
        "image": "oci:/srv/images/web:v1",
        "image_digest": "sha256:" + "c" * 64,
        "shared_layer": str(layer.directory),
    }


def _open(move: dict[str, object], images: Path) -> dict[str, object]:
    return {
        "id": "m1",
        "workload": "web",
        "strategy": "stop-and-copy",
        "needed_bytes": 0,
        "container": move,
        "shared_images": str(images),
    }


@pytest.mark.asyncio
async def test_an_arrival_in_place_needs_the_shared_storage_here_and_takes_no_file(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    """Refused before anything is made when this host does not see the layer or the
    migration's directory; once open, its files are refused (they are not sent)."""
    srv = tmp_path / "srv"
    shared = srv / "shared"
    config = make_config(tmp_path, runc={"allowed_roots": [str(srv)]})
    layer = SharedLayer.of(shared, "web")
    images = shared / "m1" / "images"
    async with agent_client(make_ctx(config)) as client:
        opened = await client.post(
            "/v1/incoming", json=_open(_shared_move(layer), images), headers=AUTH
        )
        assert opened.status == 400
        error = (await opened.json())["error"]
        assert f"{shared / 'm1'} is not on this host" in error["message"], error
        images.parent.mkdir(parents=True)
        opened = await client.post(
            "/v1/incoming", json=_open(_shared_move(layer), images), headers=AUTH
        )
        assert opened.status == 400
        error = (await opened.json())["error"]
        assert (
            f"the container's writable layer {layer.upper} is not on this host" in error["message"]
        ), error
        assert not (config.state_dir / "containers").exists()
        layer.create()
        opened = await client.post(
            "/v1/incoming", json=_open(_shared_move(layer), images), headers=AUTH
        )
        assert opened.status == 201, await opened.text()
        assert (await opened.json())["page_server"] is None, "the pages are in the images"
        put = await client.put(
            "/v1/incoming/m1/data",
            params={"path": "f"},
            data=b"x",
            headers={**AUTH, "X-Haul-SHA256": hashlib.sha256(b"x").hexdigest()},
        )
        assert put.status == 400
        assert "used where they are" in (await put.json())["error"]["message"]
        discarded = await client.post("/v1/incoming/m1/discard", headers=AUTH)
        assert discarded.status == 200, await discarded.text()
    assert layer.upper.is_dir(), "a discarded arrival leaves the layer"
    assert not (config.state_dir / "containers" / "web").exists()


def test_missing_blobs_are_taken_from_a_shared_layout_each_checked(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    settings = ContainerSettings(
        state_dir=tmp_path / "state",
        runc_root=tmp_path / "state" / "runc",
        cgroup_parent="/haul/t",
        allowed_roots=(srv,),
    )
    containers = Containers(settings)
    shared = srv / "shared" / "m1" / "layout"
    blobs = {}
    for data in (b"manifest", b"config", b"layer"):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob_path(shared, digest).parent.mkdir(parents=True, exist_ok=True)
        blob_path(shared, digest).write_bytes(data)
        blobs[digest] = data
    manifest = next(iter(blobs))
    move = ContainerMove(
        config={"process": {"args": ["/bin/sh"]}},
        image="oci:/srv/images/web:v1",
        image_digest=manifest,
        blobs=list(blobs),
    )
    with pytest.raises(UsageError, match="the shared image layout /elsewhere is outside"):
        take_blobs(containers, move, Path("/elsewhere"))
    layer = next(d for d, data in blobs.items() if data == b"layer")
    blob_path(shared, layer).write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match=f"blob {layer} in {shared} does not match"):
        take_blobs(containers, move, shared)
    blob_path(shared, layer).write_bytes(b"layer")
    # the blobs before it were kept (each checked): only the layer is copied now
    assert take_blobs(containers, move, shared) == len(b"layer")
    kept = layout_of(containers, manifest)
    assert {d: blob_path(kept, d).read_bytes() for d in blobs} == blobs
    assert not list(kept.rglob("*.part"))
    assert take_blobs(containers, move, shared) == 0, "none lacks now"
