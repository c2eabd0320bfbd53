"""haul's own RPC and stats schema against CRIU's, and against its generated modules.

haul/criu/proto/*.proto are haul's files, not copies of CRIU's; they must stay
wire-compatible with CRIU's images/rpc.proto and images/stats.proto. These
tests compile CRIU's files with protoc and compare descriptors field by field,
check that the committed *_pb2 modules match the .proto files they were
generated from, and push real messages across the two schemas.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from haul import install_record
from haul.criu.options import CriuOptions, NetworkLock, PageServer
from haul.criu.proto import pagemap_pb2, rpc_pb2, stats_pb2
from haul.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
HAUL_PROTO_DIR = REPO_ROOT / "haul" / "criu" / "proto"
SYSTEM_RPC_PROTO = Path("/usr/include/criu/rpc.proto")

FDP = descriptor_pb2.FieldDescriptorProto


# -- finding and compiling .proto files ----------------------------------------


def _protoc() -> str:
    found = shutil.which("protoc")
    if found is None:
        pytest.skip("protoc is not on PATH; cannot compile .proto files")
    return found


def _criu_proto(name: str) -> Path:
    """CRIU's own images/NAME from the source tree the installer kept."""
    try:
        source = install_record.criu_source()
    except ConfigError as exc:
        pytest.skip(f"cannot tell where CRIU's source is: {exc}")
    candidates: list[Path] = []
    if source is not None:
        candidates.append(source / "images" / name)
    if name == "rpc.proto":
        candidates.append(SYSTEM_RPC_PROTO)
    for path in candidates:
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in candidates) or "nowhere (no CRIU source recorded)"
    pytest.skip(f"CRIU's {name} is not on this machine (looked in {where})")


def _compile(include: Path, files: list[str], out: Path) -> descriptor_pb2.FileDescriptorSet:
    proc = subprocess.run(
        [_protoc(), f"-I{include}", f"--descriptor_set_out={out}", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"protoc failed on {files}: {proc.stderr}"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _criu_file(name: str, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    path = _criu_proto(name)
    fds = _compile(path.parent, [path.name], tmp_path / f"criu-{name}.pb")
    (fdp,) = fds.file
    return fdp


def _haul_file(module: object) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(
        module.DESCRIPTOR.serialized_pb  # type: ignore[attr-defined]
    )


# -- comparing descriptors -----------------------------------------------------


def _short(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def _messages(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    def walk(
        prefix: str, msgs: list[descriptor_pb2.DescriptorProto]
    ) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
        for m in msgs:
            name = f"{prefix}{m.name}"
            yield name, m
            yield from walk(f"{name}.", list(m.nested_type))

    yield from walk("", list(fdp.message_type))


def _enums(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, descriptor_pb2.EnumDescriptorProto]]:
    for e in fdp.enum_type:
        yield e.name, e
    for name, m in _messages(fdp):
        for e in m.enum_type:
            yield f"{name}.{e.name}", e


def schema_differences(
    ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto
) -> list[str]:
    """Every way in which ``ours`` is not a wire-compatible subset of ``theirs``."""
    problems: list[str] = []
    their_msgs = dict(_messages(theirs))
    for name, msg in _messages(ours):
        other = their_msgs.get(name)
        if other is None:
            problems.append(f"message {name} is not in CRIU's schema")
            continue
        their_fields = {f.name: f for f in other.field}
        for f in msg.field:
            g = their_fields.get(f.name)
            if g is None:
                problems.append(f"{name}.{f.name} is not in CRIU's schema")
                continue
            for attr in ("number", "type", "label"):
                if getattr(f, attr) != getattr(g, attr):
                    problems.append(
                        f"{name}.{f.name}: {attr} {getattr(f, attr)} here, "
                        f"{getattr(g, attr)} in CRIU's"
                    )
            if f.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM, FDP.TYPE_GROUP) and _short(
                f.type_name
            ) != _short(g.type_name):
                problems.append(
                    f"{name}.{f.name}: refers to {f.type_name} here, {g.type_name} in CRIU's"
                )
    their_enums = dict(_enums(theirs))
    for name, enum in _enums(ours):
        other_enum = their_enums.get(name)
        if other_enum is None:
            problems.append(f"enum {name} is not in CRIU's schema")
            continue
        their_values = {v.name: v.number for v in other_enum.value}
        for v in enum.value:
            if v.name not in their_values:
                problems.append(f"{name}.{v.name} is not in CRIU's schema")
            elif v.number != their_values[v.name]:
                problems.append(
                    f"{name}.{v.name} = {v.number} here, {their_values[v.name]} in CRIU's"
                )
    return problems


def default_differences(
    ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto
) -> list[str]:
    """Fields whose declared default differs (a reader would see different unset values)."""
    problems: list[str] = []
    their_msgs = dict(_messages(theirs))
    for name, msg in _messages(ours):
        their_fields = {f.name: f for f in their_msgs[name].field} if name in their_msgs else {}
        for f in msg.field:
            g = their_fields.get(f.name)
            if g is not None and f.default_value != g.default_value:
                problems.append(
                    f"{name}.{f.name}: default {f.default_value!r} here, "
                    f"{g.default_value!r} in CRIU's"
                )
    return problems


# -- the checker itself must see what it is meant to see ------------------------


def _field(
    fdp: descriptor_pb2.FileDescriptorProto, message: str, field: str
) -> descriptor_pb2.FieldDescriptorProto:
    msg = dict(_messages(fdp))[message]
    (f,) = [f for f in msg.field if f.name == field]
    return f


def _mutate_number(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    _field(fdp, "criu_opts", "leave_stopped").number = 68


def _mutate_type(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    _field(fdp, "criu_opts", "ghost_limit").type = FDP.TYPE_UINT64


def _mutate_label(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    _field(fdp, "criu_resp", "success").label = FDP.LABEL_OPTIONAL


def _mutate_type_name(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    _field(fdp, "criu_resp", "ps").type_name = ".haul.criu.criu_notify"


def _mutate_enum_value(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    (enum,) = [e for e in fdp.enum_type if e.name == "criu_network_lock_method"]
    (value,) = [v for v in enum.value if v.name == "NFTABLES"]
    value.number = 3


def _mutate_extra_field(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    msg = dict(_messages(fdp))["criu_notify"]
    msg.field.add(name="not_in_criu", number=99, label=FDP.LABEL_OPTIONAL, type=FDP.TYPE_BOOL)


def _mutate_extra_message(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    fdp.message_type.add(name="not_in_criu")


@pytest.mark.parametrize(
    "mutate",
    [
        _mutate_number,
        _mutate_type,
        _mutate_label,
        _mutate_type_name,
        _mutate_enum_value,
        _mutate_extra_field,
        _mutate_extra_message,
    ],
)
def test_checker_reports_each_kind_of_incompatibility(
    mutate: Callable[[descriptor_pb2.FileDescriptorProto], None],
) -> None:
    reference = _haul_file(rpc_pb2)
    assert schema_differences(reference, reference) == []
    changed = copy.deepcopy(reference)
    mutate(changed)
    problems = schema_differences(changed, reference)
    assert len(problems) == 1, problems


# -- haul's schema against CRIU's ----------------------------------------------


@pytest.mark.parametrize(
    ("module", "name"),
    [(rpc_pb2, "rpc.proto"), (stats_pb2, "stats.proto"), (pagemap_pb2, "pagemap.proto")],
)
def test_haul_schema_is_a_wire_compatible_subset_of_criu(
    module: object, name: str, tmp_path: Path
) -> None:
    criu = _criu_file(name, tmp_path)
    ours = _haul_file(module)
    assert list(_messages(ours)), "haul's descriptor has no messages"
    assert schema_differences(ours, criu) == []


@pytest.mark.parametrize(
    ("module", "name"),
    [(rpc_pb2, "rpc.proto"), (stats_pb2, "stats.proto"), (pagemap_pb2, "pagemap.proto")],
)
def test_haul_declares_the_same_defaults_as_criu(module: object, name: str, tmp_path: Path) -> None:
    criu = _criu_file(name, tmp_path)
    assert default_differences(_haul_file(module), criu) == []


# -- the committed generated modules against haul's .proto files -----------------


def _normalized(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Drop what protoc adds to a descriptor set but the Python generator leaves out."""
    out = copy.deepcopy(fdp)
    for _, msg in _messages(out):
        for f in msg.field:
            f.ClearField("json_name")
    if out.syntax == "proto2":
        out.ClearField("syntax")
    return out


def test_generated_modules_match_their_proto_files(tmp_path: Path) -> None:
    files = sorted(p.relative_to(REPO_ROOT).as_posix() for p in HAUL_PROTO_DIR.glob("*.proto"))
    assert files == [
        "haul/criu/proto/pagemap.proto",
        "haul/criu/proto/rpc.proto",
        "haul/criu/proto/stats.proto",
    ]
    fresh = {f.name: f for f in _compile(REPO_ROOT, files, tmp_path / "haul.pb").file}
    for module in (pagemap_pb2, rpc_pb2, stats_pb2):
        committed = _haul_file(module)
        assert committed.name in fresh, f"{committed.name} was generated from another path"
        assert _normalized(committed) == _normalized(fresh[committed.name]), (
            f"{module.__name__} is stale: regenerate it from {committed.name}"
        )


# -- messages across the two schemas -----------------------------------------


def _criu_classes(tmp_path: Path) -> tuple[descriptor_pool.DescriptorPool, Any, Any]:
    """A pool holding CRIU's rpc.proto, and its criu_req and criu_resp classes."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_criu_file("rpc.proto", tmp_path))
    req = message_factory.GetMessageClass(pool.FindMessageTypeByName("criu_req"))
    resp = message_factory.GetMessageClass(pool.FindMessageTypeByName("criu_resp"))
    return pool, req, resp


def _criu_enum(pool: descriptor_pool.DescriptorPool, enum: str, name: str) -> int:
    number: int = pool.FindEnumTypeByName(enum).values_by_name[name].number
    return number


def test_haul_dump_request_decodes_under_criu_schema(tmp_path: Path) -> None:
    pool, CriuReq, _ = _criu_classes(tmp_path)
    opts = CriuOptions(
        images_dir=tmp_path,
        pid=4321,
        leave_stopped=True,
        tcp_established=True,
        network_lock=NetworkLock.NFTABLES,
        external=("veth[eth0]:h1eth0", "mnt[/data]:data"),
        page_server=PageServer("10.77.0.2", 27027),
        inherit_fds=(("fd[3]:pipe", 7),),
        ghost_limit_bytes=1 << 22,
    )
    req = rpc_pb2.criu_req(type=rpc_pb2.DUMP, opts=opts.to_proto(images_dir_fd=9, work_dir_fd=11))
    wire = req.SerializeToString()

    theirs = CriuReq.FromString(wire)
    assert theirs.IsInitialized()
    assert theirs.type == _criu_enum(pool, "criu_req_type", "DUMP")
    o = theirs.opts
    assert o.images_dir_fd == 9
    assert o.work_dir_fd == 11
    assert o.pid == 4321
    assert o.HasField("leave_stopped") and o.leave_stopped
    assert not o.HasField("leave_running")
    assert o.tcp_established
    assert o.network_lock == _criu_enum(pool, "criu_network_lock_method", "NFTABLES")
    assert list(o.external) == ["veth[eth0]:h1eth0", "mnt[/data]:data"]
    assert (o.ps.address, o.ps.port) == ("10.77.0.2", 27027)
    assert [(i.key, i.fd) for i in o.inherit_fd] == [("fd[3]:pipe", 7)]
    assert o.ghost_limit == 1 << 22
    assert o.log_file == "criu.log"
    # Nothing haul wrote is unknown to CRIU, and CRIU's encoding reads back the same.
    assert rpc_pb2.criu_req.FromString(theirs.SerializeToString()) == req


def test_criu_response_with_notify_and_version_decodes_under_haul_schema(
    tmp_path: Path,
) -> None:
    pool, _, CriuResp = _criu_classes(tmp_path)
    theirs = CriuResp(
        type=_criu_enum(pool, "criu_req_type", "NOTIFY"),
        success=True,
        cr_errno=17,
        cr_errmsg="File exists",
    )
    theirs.notify.script = "post-dump"
    theirs.notify.pid = 777
    theirs.version.major_number = 4
    theirs.version.minor_number = 1
    theirs.version.sublevel = 1
    theirs.version.gitid = "v4.1.1-0-gabcdef"
    theirs.version.name = "CRIUfreedom"
    theirs.ps.pid = 99
    theirs.ps.port = 1234

    ours = rpc_pb2.criu_resp.FromString(theirs.SerializeToString())
    assert ours.type == rpc_pb2.NOTIFY
    assert ours.success is True
    assert (ours.notify.script, ours.notify.pid) == ("post-dump", 777)
    v = ours.version
    assert (v.major_number, v.minor_number, v.sublevel) == (4, 1, 1)
    assert (v.gitid, v.name) == ("v4.1.1-0-gabcdef", "CRIUfreedom")
    assert not v.HasField("extra")
    assert (ours.ps.pid, ours.ps.port) == (99, 1234)
    assert (ours.cr_errno, ours.cr_errmsg) == (17, "File exists")
    assert CriuResp.FromString(ours.SerializeToString()) == theirs
