"""haul.runtime.bundle without root: the configuration haul gives runc, allowed paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from haul.errors import ContainerError, UsageError
from haul.runtime.bundle import (
    CPU_PERIOD_US,
    CRIU_CONFIG_ANNOTATION,
    ContainerDirs,
    Limits,
    cgroups_path,
    inside_roots,
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


def test_limits_go_into_linux_resources_and_keep_the_rest() -> None:
    source = copy.deepcopy(UMOCI_CONFIG)
    source["linux"]["resources"] = {"devices": [{"allow": False, "access": "rwm"}]}
    limits = Limits(memory_bytes=64 << 20, cpus=0.5, pids=32)
    config = _edit(source, limits=limits)
    assert config["linux"]["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 64 << 20},
        "cpu": {"quota": 50_000, "period": CPU_PERIOD_US},
        "pids": {"limit": 32},
    }
    assert source["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert _edit(limits=Limits(cpus=2))["linux"]["resources"] == {
        "cpu": {"quota": 200_000, "period": 100_000}
    }


def test_no_limits_leave_the_resources_as_they_were() -> None:
    assert not Limits()
    assert "resources" not in _edit(limits=Limits())["linux"]
    assert "resources" not in _edit()["linux"]
    assert Limits(pids=1)
