"""A container's writable layer on shared storage: where its pieces are, and what each
host may remove of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from haul.errors import UsageError
from haul.runtime.sharedlayer import SharedLayer, lies_in


def test_a_layer_has_one_upper_and_a_work_directory_per_host(tmp_path: Path) -> None:
    layer = SharedLayer.of(tmp_path / "shared", "c1")
    assert layer.directory == tmp_path / "shared" / "layers" / "c1"
    assert layer.upper == layer.directory / "upper"
    assert layer.work("host1") != layer.work("host2")
    assert layer.work("host1").parent == layer.directory


def test_a_layer_is_made_once_and_never_taken_over(tmp_path: Path) -> None:
    layer = SharedLayer.of(tmp_path / "shared", "c1")
    layer.check_free()
    layer.create()
    assert layer.upper.is_dir()
    (layer.upper / "f").write_text("mine")
    with pytest.raises(UsageError, match="a container of that name keeps its writable layer"):
        layer.check_free()
    with pytest.raises(UsageError, match="choose another name"):
        layer.create()
    assert (layer.upper / "f").read_text() == "mine"


def test_a_host_removes_its_work_directory_and_only_that(tmp_path: Path) -> None:
    layer = SharedLayer.of(tmp_path, "c1")
    layer.create()
    for host in ("host1", "host2"):
        (layer.work(host) / "work").mkdir(parents=True)
    (layer.upper / "data").write_text("x")
    layer.remove_work("host1")
    assert sorted(p.name for p in layer.directory.iterdir()) == ["upper", "work.host2"]
    layer.remove()
    assert not layer.directory.exists()


def test_a_layer_not_visible_here_is_one_line(tmp_path: Path) -> None:
    layer = SharedLayer.of(tmp_path / "shared", "c1")
    with pytest.raises(UsageError) as refused:
        layer.check_here()
    assert f"is {tmp_path / 'shared'} shared with the source?" in refused.value.one_line()


def test_lies_in_follows_links(tmp_path: Path) -> None:
    (tmp_path / "shared" / "a").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "shared")
    assert lies_in(tmp_path / "link" / "a", tmp_path / "shared")
    assert lies_in(tmp_path / "shared", tmp_path / "link")
    assert not lies_in(tmp_path / "sharedx", tmp_path / "shared")
    assert not lies_in(tmp_path / "shared" / ".." / "other", tmp_path / "shared")
