"""haul.runtime.images: references, and resolving a tag in a layout written by hand."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from haul.errors import ImageError, UsageError
from haul.runtime.images import ImageCache, ImageRef, blob_path, cache_key, resolve


@pytest.mark.parametrize(
    ("text", "layout", "tag"),
    [
        ("oci:/srv/images/web", "/srv/images/web", "latest"),
        ("oci:/srv/images/web:v1.2", "/srv/images/web", "v1.2"),
        ("oci:/srv/images/web/:v1", "/srv/images/web", "v1"),
        ("oci:/srv/my.images/web_1:A-b.c_d", "/srv/my.images/web_1", "A-b.c_d"),
    ],
)
def test_a_reference_is_a_layout_and_a_tag(text: str, layout: str, tag: str) -> None:
    ref = ImageRef.parse(text)
    assert (ref.layout, ref.tag) == (Path(layout), tag)
    assert ImageRef.parse(str(ref)) == ref
    assert ref.umoci_image == f"{layout}:{tag}"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("docker.io/library/busybox", "oci:/PATH"),
        ("/srv/images/web", "oci:/PATH"),
        ("oci:images/web", "absolute"),
        ("oci:/srv/../etc:v1", "'..'"),
        ("oci:/srv/images/web:", "bad tag"),
        ("oci:/srv/images/web:-x", "bad tag"),
        ("oci:/srv/images/web:v 1", "bad tag"),
        ("oci:/srv/a:b/web", "':'"),
    ],
)
def test_a_bad_reference_is_one_usage_line(text: str, says: str) -> None:
    with pytest.raises(UsageError, match="image") as info:
        ImageRef.parse(text)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def _blob(layout: Path, data: object) -> str:
    raw = json.dumps(data).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return digest


def _layout(tmp_path: Path, tags: dict[str, list[str]]) -> Path:
    """A layout with, per tag, a manifest listing the given layer digests."""
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = _blob(layout, {"architecture": "amd64", "os": "linux"})
    entries = []
    for tag, layers in tags.items():
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": config, "size": 1},
            "layers": [{"digest": d, "size": 1} for d in layers],
        }
        entries.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _blob(layout, manifest),
                "size": 1,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return layout


LAYER_A = "sha256:" + "a" * 64
LAYER_B = "sha256:" + "b" * 64


def test_a_tag_resolves_to_its_manifest_and_layers(tmp_path: Path) -> None:
    layout = _layout(tmp_path, {"latest": [LAYER_A, LAYER_B], "v1": [LAYER_A]})
    latest = resolve(ImageRef(layout))
    v1 = resolve(ImageRef(layout, "v1"))
    assert latest.layer_digests == (LAYER_A, LAYER_B)
    assert v1.layer_digests == (LAYER_A,)
    assert latest.digest != v1.digest
    assert latest.config_digest == v1.config_digest
    assert blob_path(layout, latest.digest).is_file()


def test_an_unknown_tag_names_the_tags_there(tmp_path: Path) -> None:
    layout = _layout(tmp_path, {"latest": [LAYER_A], "v1": [LAYER_A]})
    with pytest.raises(ImageError, match=r"no tag 'v2' .* \(it has: latest, v1\)"):
        resolve(ImageRef(layout, "v2"))


def test_what_is_not_a_layout_is_one_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is not a directory"):
        resolve(ImageRef(tmp_path / "nothing"))
    with pytest.raises(ImageError, match="no oci-layout"):
        resolve(ImageRef(tmp_path))
    layout = _layout(tmp_path, {"latest": [LAYER_A]})
    (layout / "index.json").write_text("{not json")
    with pytest.raises(ImageError, match="index .* is not JSON"):
        resolve(ImageRef(layout))


def test_a_missing_manifest_blob_is_named(tmp_path: Path) -> None:
    layout = _layout(tmp_path, {"latest": [LAYER_A]})
    manifest = resolve(ImageRef(layout)).digest
    blob_path(layout, manifest).unlink()
    with pytest.raises(ImageError, match=f"manifest .*{manifest.split(':')[1]} does not exist"):
        resolve(ImageRef(layout))


def test_an_index_of_platforms_is_refused(tmp_path: Path) -> None:
    layout = _layout(tmp_path, {})
    (layout / "index.json").write_text(
        json.dumps(
            {
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "digest": LAYER_A,
                        "annotations": {"org.opencontainers.image.ref.name": "latest"},
                    }
                ]
            }
        )
    )
    with pytest.raises(ImageError, match="image index"):
        resolve(ImageRef(layout))


def test_cache_directories_hold_no_colon(tmp_path: Path) -> None:
    assert cache_key(LAYER_A) == "sha256-" + "a" * 64
    assert ImageCache(tmp_path).path(LAYER_A) == tmp_path / ("sha256-" + "a" * 64)
    with pytest.raises(ImageError):
        cache_key("sha256:../../etc")
