"""What a source agent tells the destination of a container, and where it finds the
image's blobs: the layout it was started from, or the one its blobs came into here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from haul.agent.containers import ContainerRecord
from haul.agent.jobs import container_move, in_place
from haul.agent.migration_models import ContainerMove
from haul.errors import ContainerError, UsageError
from haul.runtime.images import blob_path
from haul.runtime.sharedlayer import SharedLayer


def _blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _record(tmp_path: Path, image: str | None, digest: str | None) -> ContainerRecord:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps({"process": {"args": ["/bin/sh"]}}))
    return ContainerRecord(
        id="c1",
        runc_root="/r",
        bundle=str(bundle),
        image=image,
        image_digest=digest,
        rootfs=str(bundle / "rootfs"),
        cgroups_path="/haul/h/c1",
        criu_config=str(bundle / "criu.conf"),
    )


def _image(layout: Path) -> tuple[str, list[str]]:
    config = _blob(layout, b'{"config": {}}')
    layer = _blob(layout, b"a layer")
    manifest = json.dumps({"config": {"digest": config}, "layers": [{"digest": layer}]})
    return _blob(layout, manifest.encode()), [config, layer]


def test_the_blobs_are_found_where_it_was_started_or_where_they_came(tmp_path: Path) -> None:
    started_from = tmp_path / "started"
    digest, rest = _image(started_from)
    record = _record(tmp_path, f"oci:{started_from}:v1", digest)
    move, layout = container_move(record, ["/bin/sh"])
    assert layout == started_from and move.blobs == [digest, *rest]
    # what they weigh, for the destination's budget
    assert move.blob_bytes == sum(blob_path(layout, b).stat().st_size for b in move.blobs)
    assert move.blob_bytes > len(b"a layer")
    assert move.config == {"process": {"args": ["/bin/sh"]}}
    # a container that came from another host: the layout it named is not here
    came = tmp_path / "received"
    assert _image(came)[0] == digest
    moved = _record(tmp_path, "oci:/elsewhere/layout:v1", digest)
    move, layout = container_move(moved, [], received=came)
    assert layout == came and move.blobs == [digest, *rest]


def test_blobs_nowhere_here_are_one_clear_line(tmp_path: Path) -> None:
    record = _record(tmp_path, "oci:/elsewhere/layout:v1", "sha256:" + "0" * 64)
    with pytest.raises(ContainerError, match="are not on this host"):
        container_move(record, [], received=tmp_path / "received")
    plain = _record(tmp_path, None, None)
    assert container_move(plain, [])[1] is None


# -- --shared-dir: the container's writable state used where it is -----------------------------


def test_a_shared_layer_in_the_shared_directory_is_used_in_place(tmp_path: Path) -> None:
    started_from = tmp_path / "started"
    digest, _ = _image(started_from)
    shared = tmp_path / "shared"
    layer = SharedLayer.of(shared, "c1")
    layer.create()
    record = _record(tmp_path, f"oci:{started_from}:v1", digest).model_copy(
        update={"shared_layer": str(layer.directory), "rootfs_upper": str(layer.upper)}
    )
    move, _ = container_move(record, [], shared_dir=shared)
    assert move.shared_layer == str(layer.directory) and move.shared_rootfs is None
    assert move.in_place
    # a link to the shared directory names the same place
    (tmp_path / "link").symlink_to(shared)
    assert in_place(record, tmp_path / "link") == (str(layer.directory), None)
    # without --shared-dir it is not in place (the job refuses that move: see jobs.start)
    assert not container_move(record, [])[0].in_place


def test_a_writable_layer_elsewhere_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    started_from = tmp_path / "started"
    digest, _ = _image(started_from)
    record = _record(tmp_path, f"oci:{started_from}:v1", digest).model_copy(
        update={"rootfs_upper": "/state/containers/c1/upper"}
    )
    with pytest.raises(UsageError) as refused:
        container_move(record, [], shared_dir=tmp_path / "shared")
    line = refused.value.one_line()
    assert "c1's is not in" in line and "/state/containers/c1/upper" in line
    assert f"haul run --shared-dir {tmp_path / 'shared'}" in line


def test_a_rootfs_in_the_shared_directory_is_used_in_place(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    rootfs = shared / "rootfs"
    rootfs.mkdir(parents=True)
    record = _record(tmp_path, None, None).model_copy(update={"rootfs": str(rootfs)})
    move, layout = container_move(record, [], shared_dir=shared)
    assert (move.shared_rootfs, move.shared_layer, layout) == (str(rootfs), None, None)
    elsewhere = _record(tmp_path, None, None)
    with pytest.raises(UsageError, match="root filesystem where it is, and c1's is not in"):
        container_move(elsewhere, [], shared_dir=shared)


def test_what_a_move_says_is_in_place_must_fit_the_container() -> None:
    config: dict[str, Any] = {"process": {"args": ["/bin/sh"]}}
    with pytest.raises(ValidationError, match="shared_layer: only for a container from"):
        ContainerMove(config=config, shared_layer="/shared/layers/c1")
    with pytest.raises(ValidationError, match="shared_rootfs: a container from an image"):
        ContainerMove(config=config, image_digest="sha256:" + "a" * 64, shared_rootfs="/r")
    with pytest.raises(ValidationError, match="absolute path"):
        ContainerMove(config=config, shared_rootfs="shared/r")
    assert not ContainerMove(config=config).in_place
