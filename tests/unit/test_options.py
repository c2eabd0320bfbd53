"""CriuOptions: validation at construction and the criu_opts message it encodes to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from haul.criu.options import (
    CgroupMode,
    CgroupRoot,
    CriuOptions,
    NetworkLock,
    PageServer,
    PreDumpMode,
    TlsFiles,
)
from haul.criu.proto import rpc_pb2

IMAGES = Path("/srv/images")

#: every bool field of criu_opts (CRIU's flags haul may set)
PROTO_BOOLS = sorted(
    f.name for f in rpc_pb2.criu_opts.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_BOOL
)
#: every plain bool option of CriuOptions (each is a CRIU flag of the same name)
OPTION_BOOLS = sorted(f.name for f in dataclasses.fields(CriuOptions) if f.type == "bool")


def _set_bools(o: rpc_pb2.criu_opts) -> set[str]:
    return {name for name in PROTO_BOOLS if o.HasField(name)}


def test_minimal_options_encode_only_what_was_asked() -> None:
    o = CriuOptions(images_dir=IMAGES, notify_scripts=False).to_proto(5, None)
    assert o.IsInitialized()
    assert o.images_dir_fd == 5
    assert not o.HasField("work_dir_fd")
    assert (o.log_file, o.log_level) == ("criu.log", 4)
    assert _set_bools(o) == set()
    for name in (
        "pid",
        "network_lock",
        "ps",
        "parent_img",
        "pre_dump_mode",
        "manage_cgroups_mode",
        "root",
        "ghost_limit",
        "timeout",
        "config_file",
        "tls_cacert",
        "tls_cert",
        "tls_key",
        "tls_cacrl",
        "images_dir",
    ):
        assert not o.HasField(name), name
    assert list(o.external) == list(o.cg_root) == list(o.inherit_fd) == list(o.skip_mnt) == []


def test_notify_scripts_is_on_by_default() -> None:
    o = CriuOptions(images_dir=IMAGES).to_proto(5, None)
    assert _set_bools(o) == {"notify_scripts"}
    assert o.notify_scripts


def test_every_bool_option_names_a_criu_flag() -> None:
    assert OPTION_BOOLS, "CriuOptions has no bool options?"
    assert set(OPTION_BOOLS) <= set(PROTO_BOOLS)


@pytest.mark.parametrize("name", OPTION_BOOLS)
def test_each_bool_option_sets_exactly_its_flag(name: str) -> None:
    kwargs: dict[str, object] = {"notify_scripts": False, name: True}
    o = CriuOptions(images_dir=IMAGES, **kwargs).to_proto(5, None)  # type: ignore[arg-type]
    assert _set_bools(o) == {name}
    assert getattr(o, name) is True


def test_work_dir_fd_pid_and_log_settings() -> None:
    opts = CriuOptions(
        images_dir=IMAGES, work_dir=Path("/srv/work"), log_file="dump.log", log_level=2, pid=123
    )
    o = opts.to_proto(images_dir_fd=7, work_dir_fd=8)
    assert (o.images_dir_fd, o.work_dir_fd) == (7, 8)
    assert (o.log_file, o.log_level) == ("dump.log", 2)
    assert o.HasField("pid") and o.pid == 123


@pytest.mark.parametrize("lock", list(NetworkLock))
def test_network_lock(lock: NetworkLock) -> None:
    o = CriuOptions(images_dir=IMAGES, network_lock=lock).to_proto(5, None)
    assert o.HasField("network_lock")
    assert rpc_pb2.criu_network_lock_method.Name(o.network_lock) == lock.name


@pytest.mark.parametrize("mode", list(PreDumpMode))
def test_pre_dump_mode(mode: PreDumpMode) -> None:
    o = CriuOptions(images_dir=IMAGES, pre_dump_mode=mode).to_proto(5, None)
    assert o.HasField("pre_dump_mode")
    assert rpc_pb2.criu_pre_dump_mode.Name(o.pre_dump_mode) == mode.name


@pytest.mark.parametrize("mode", list(CgroupMode))
def test_cgroup_mode_also_sets_manage_cgroups(mode: CgroupMode) -> None:
    o = CriuOptions(images_dir=IMAGES, manage_cgroups_mode=mode).to_proto(5, None)
    assert o.HasField("manage_cgroups_mode") and o.manage_cgroups is True
    expected = "CG_NONE" if mode is CgroupMode.NONE else mode.name
    assert rpc_pb2.criu_cg_mode.Name(o.manage_cgroups_mode) == expected


def test_page_server() -> None:
    o = CriuOptions(images_dir=IMAGES, page_server=PageServer("10.77.0.2", 27027)).to_proto(5, None)
    assert o.HasField("ps")
    assert (o.ps.address, o.ps.port) == ("10.77.0.2", 27027)
    assert not o.ps.HasField("pid") and not o.ps.HasField("fd")


def test_tls_with_everything() -> None:
    tls = TlsFiles(
        cacert=Path("/pki/ca.pem"),
        cert=Path("/pki/cert.pem"),
        key=Path("/pki/key.pem"),
        cacrl=Path("/pki/crl.pem"),
        no_cn_verify=True,
    )
    o = CriuOptions(images_dir=IMAGES, tls=tls).to_proto(5, None)
    assert o.tls is True
    assert (o.tls_cacert, o.tls_cert, o.tls_key, o.tls_cacrl) == (
        "/pki/ca.pem",
        "/pki/cert.pem",
        "/pki/key.pem",
        "/pki/crl.pem",
    )
    assert o.tls_no_cn_verify is True


def test_tls_without_crl_or_cn_override() -> None:
    tls = TlsFiles(cacert=Path("/pki/ca.pem"), cert=Path("/pki/cert.pem"), key=Path("/pki/key.pem"))
    o = CriuOptions(images_dir=IMAGES, tls=tls).to_proto(5, None)
    assert o.tls is True
    assert o.tls_key == "/pki/key.pem"
    assert not o.HasField("tls_cacrl")
    assert not o.HasField("tls_no_cn_verify")


def test_cgroup_roots_keep_order_and_optional_controller() -> None:
    roots = (CgroupRoot("/haul/w1", "memory"), CgroupRoot("/haul/all"))
    o = CriuOptions(images_dir=IMAGES, cgroup_roots=roots).to_proto(5, None)
    assert [r.path for r in o.cg_root] == ["/haul/w1", "/haul/all"]
    assert o.cg_root[0].HasField("ctrl") and o.cg_root[0].ctrl == "memory"
    assert not o.cg_root[1].HasField("ctrl")
    # cgroup roots alone do not switch cgroup management on
    assert not o.HasField("manage_cgroups")


def test_repeated_options_keep_order() -> None:
    opts = CriuOptions(
        images_dir=IMAGES,
        external=("veth[eth0]:h1eth0", "mnt[/data]:data", "unix[12345]"),
        inherit_fds=(("pipe:[111]", 3), ("file[/log]", 4)),
        skip_mounts=("/proc/sys", "/dev/shm"),
    )
    o = opts.to_proto(5, None)
    assert list(o.external) == ["veth[eth0]:h1eth0", "mnt[/data]:data", "unix[12345]"]
    assert [(i.key, i.fd) for i in o.inherit_fd] == [("pipe:[111]", 3), ("file[/log]", 4)]
    assert list(o.skip_mnt) == ["/proc/sys", "/dev/shm"]


def test_scalar_options() -> None:
    opts = CriuOptions(
        images_dir=IMAGES,
        parent_img="../pre1",
        root="/srv/rootfs",
        ghost_limit_bytes=8 << 20,
        timeout_s=30,
        config_file=Path("/etc/haul/criu.conf"),
    )
    o = opts.to_proto(5, None)
    assert o.parent_img == "../pre1"
    assert o.root == "/srv/rootfs"
    assert o.ghost_limit == 8 << 20
    assert o.timeout == 30
    assert o.config_file == "/etc/haul/criu.conf"


def test_zero_valued_options_are_still_sent() -> None:
    # 0 is a real answer for these (no ghost files, no timeout); "unset" is None.
    o = CriuOptions(images_dir=IMAGES, ghost_limit_bytes=0, timeout_s=0, pid=0).to_proto(5, None)
    assert o.HasField("ghost_limit") and o.ghost_limit == 0
    assert o.HasField("timeout") and o.timeout == 0
    assert o.HasField("pid")


def test_encoded_options_survive_the_wire() -> None:
    opts = CriuOptions(
        images_dir=IMAGES,
        leave_stopped=True,
        network_lock=NetworkLock.SKIP,
        external=("veth[eth0]:x",),
        inherit_fds=(("k", 3),),
    )
    o = opts.to_proto(5, 6)
    assert rpc_pb2.criu_opts.FromString(o.SerializeToString()) == o


@pytest.mark.parametrize("bad", ["", ".", "..", "logs/criu.log", "/tmp/criu.log", "a/"])
def test_log_file_must_be_a_bare_name(bad: str) -> None:
    with pytest.raises(ValueError, match="log_file"):
        CriuOptions(images_dir=IMAGES, log_file=bad)


@pytest.mark.parametrize("good", ["criu.log", "dump-1.log", "..log", ".hidden"])
def test_log_file_bare_names_are_accepted(good: str) -> None:
    assert CriuOptions(images_dir=IMAGES, log_file=good).log_file == good


def test_leave_running_and_leave_stopped_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="leave_running and leave_stopped"):
        CriuOptions(images_dir=IMAGES, leave_running=True, leave_stopped=True)


def test_log_path_is_in_work_dir_else_images_dir() -> None:
    assert CriuOptions(images_dir=IMAGES, log_file="d.log").log_path == IMAGES / "d.log"
    opts = CriuOptions(images_dir=IMAGES, work_dir=Path("/srv/work"), log_file="d.log")
    assert opts.log_path == Path("/srv/work/d.log")


def test_options_cannot_change_after_construction() -> None:
    opts = CriuOptions(images_dir=IMAGES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.leave_running = True  # type: ignore[misc]
