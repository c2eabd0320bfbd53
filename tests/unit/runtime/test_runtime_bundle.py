"""haul.runtime.bundle without root: the configuration haul gives runc, allowed paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from haul.errors import ContainerError, UsageError
from haul.runtime.bundle import (
    CRIU_CONFIG_ANNOTATION,
    READONLY_SYSTEM_DIRS,
    ContainerDirs,
    bind_mount,
    cgroups_path,
    inside_roots,
    mount_source,
    read_config,
    root_path,
    runtime_config,
    write_criu_config,
)

#: what umoci writes for an image (trimmed): a terminal, its own network namespace
UMOCI_CONFIG: dict[str, Any] = {
    "ociVersion": "1.0.0",
    "process": {"terminal": True, "args": ["/bin/sh"], "consoleSize": {"height": 1}},
    "root": {"path": "rootfs"},
    "linux": {
        "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}],
    },
    "annotations": {"org.opencontainers.image.ref.name": "latest"},
}


def _edit(source: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "rootfs": Path("/state/containers/web/bundle/rootfs"),
        "cgroups_path": "/haul/host1/web",
        "criu_config": Path("/state/containers/web/criu.conf"),
        "netns": None,
    }
    args.update(kw)
    return runtime_config(source if source is not None else UMOCI_CONFIG, **args)


def test_the_config_has_no_terminal_an_absolute_root_and_its_own_cgroup() -> None:
    before = copy.deepcopy(UMOCI_CONFIG)
    config = _edit()
    assert before == UMOCI_CONFIG  # the source is not changed
    assert config["process"]["terminal"] is False
    assert "consoleSize" not in config["process"]
    assert config["process"]["args"] == ["/bin/sh"]
    assert config["root"] == {"path": "/state/containers/web/bundle/rootfs"}
    assert config["linux"]["cgroupsPath"] == "/haul/host1/web"
    assert config["annotations"] == {
        "org.opencontainers.image.ref.name": "latest",
        CRIU_CONFIG_ANNOTATION: "/state/containers/web/criu.conf",
    }


def test_without_an_address_the_container_shares_the_hosts_network() -> None:
    types = [ns["type"] for ns in _edit()["linux"]["namespaces"]]
    assert types == ["pid", "mount"]


def test_with_an_address_its_namespace_is_named_by_path() -> None:
    config = _edit(netns=Path("/state/containers/web/netns"))
    assert config["linux"]["namespaces"] == [
        {"type": "pid"},
        {"type": "mount"},
        {"type": "network", "path": "/state/containers/web/netns"},
    ]


def test_a_command_overrides_the_images_and_readonly_is_set_when_asked() -> None:
    config = _edit(args=["/bin/sleep", "9"], readonly=False)
    assert config["process"]["args"] == ["/bin/sleep", "9"]
    assert config["root"]["readonly"] is False


def test_a_config_without_a_command_needs_one() -> None:
    source = copy.deepcopy(UMOCI_CONFIG)
    del source["process"]["args"]
    with pytest.raises(UsageError, match="no command"):
        _edit(source)
    assert _edit(source, args=["/bin/true"])["process"]["args"] == ["/bin/true"]


def test_paths_must_lie_in_an_allowed_root(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "bundle").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "elsewhere")
    assert inside_roots(allowed / "bundle", [allowed], "bundle") == allowed / "bundle"
    with pytest.raises(UsageError, match="outside the directories this agent allows"):
        inside_roots(tmp_path / "elsewhere", [allowed], "bundle")
    with pytest.raises(UsageError, match="outside"):  # a link out of the root counts as out
        inside_roots(allowed / "escape", [allowed], "bundle")
    with pytest.raises(UsageError, match="allowed_roots: none configured"):
        inside_roots(allowed / "bundle", [], "rootfs")
    with pytest.raises(UsageError, match="not an absolute path"):
        inside_roots(Path("bundle"), [allowed], "bundle")


def test_a_mount_source_lies_in_an_allowed_root_or_is_a_library_directory_read_only(
    tmp_path: Path,
) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "zdtm").mkdir(parents=True)
    (allowed / "link").symlink_to(allowed / "zdtm")
    assert mount_source(allowed / "link", [allowed], readonly=False) == allowed / "zdtm"
    libs = next(d for d in READONLY_SYSTEM_DIRS if d.exists())
    assert mount_source(libs, [allowed], readonly=True) == libs.resolve()
    with pytest.raises(UsageError, match=r"may also name the host's libraries \(/lib,"):
        mount_source(libs, [allowed], readonly=False)
    with pytest.raises(UsageError, match="outside .* and the host's library directories"):
        mount_source(Path("/etc"), [allowed], readonly=True)
    with pytest.raises(UsageError, match="does not exist"):
        mount_source(allowed / "none", [allowed], readonly=True)


def test_binds_are_added_to_the_mounts_and_replace_one_of_the_same_destination() -> None:
    source = copy.deepcopy(UMOCI_CONFIG)
    proc = {"destination": "/proc", "type": "proc", "source": "proc"}
    source["mounts"] = [proc, {"destination": "/data/", "type": "tmpfs", "source": "tmpfs"}]
    binds = [
        bind_mount(Path("/srv/zdtm"), "/zdtm", readonly=True),
        bind_mount(Path("/srv/out"), "/data", readonly=False),
    ]
    config = _edit(source, binds=binds)
    assert config["mounts"] == [proc, *binds]
    assert binds[0] == {
        "destination": "/zdtm",
        "type": "bind",
        "source": "/srv/zdtm",
        "options": ["bind", "nosuid", "nodev", "ro"],
    }
    assert "ro" not in binds[1]["options"]
    assert len(source["mounts"]) == 2, "the source is not changed"
    assert "mounts" not in _edit(), "no binds, no mounts added"


def test_root_path_is_taken_from_the_bundle() -> None:
    assert root_path({"root": {"path": "rootfs"}}, Path("/b")) == Path("/b/rootfs")
    assert root_path({"root": {"path": "/r"}}, Path("/b")) == Path("/r")
    with pytest.raises(ContainerError, match="no root filesystem"):
        root_path({}, Path("/b"))


def test_read_config_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="does not exist"):
        read_config(tmp_path / "config.json", "bundle x")
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ContainerError, match="is not JSON"):
        read_config(tmp_path / "config.json", "bundle x")
    (tmp_path / "config.json").write_text(json.dumps({"root": {}}))
    with pytest.raises(ContainerError, match="no process"):
        read_config(tmp_path / "config.json", "bundle x")


def test_criu_config_locks_and_keeps_tcp_only_for_an_own_namespace(tmp_path: Path) -> None:
    path = tmp_path / "criu.conf"
    write_criu_config(path, own_netns=True)
    assert path.read_text() == "network-lock nftables\ntcp-established\n"
    write_criu_config(path, own_netns=False)
    assert path.read_text() == ""


def test_where_a_containers_pieces_live() -> None:
    dirs = ContainerDirs(Path("/state/containers/web"))
    assert dirs.config == Path("/state/containers/web/bundle/config.json")
    assert dirs.rootfs == Path("/state/containers/web/bundle/rootfs")
    assert (dirs.upper, dirs.work, dirs.netns) == (
        Path("/state/containers/web/upper"),
        Path("/state/containers/web/work"),
        Path("/state/containers/web/netns"),
    )
    assert cgroups_path("/haul/host1/", "web") == "/haul/host1/web"
