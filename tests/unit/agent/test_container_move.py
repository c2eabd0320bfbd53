"""What a source agent tells the destination of a container, and where it finds the
image's blobs: the layout it was started from, or the one its blobs came into here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from haul.agent.containers import ContainerRecord
from haul.agent.jobs import container_move
from haul.errors import ContainerError
from haul.runtime.images import blob_path


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
