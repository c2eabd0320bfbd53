"""The runc wrapper's parsing and the CRIU configuration runc is given (no runc run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haul.dest.runcdest import _own_network, bundle_config
from haul.errors import ContainerError
from haul.runtime import criuconf
from haul.runtime.runc import (
    CheckpointOptions,
    Runc,
    _criu_error,
    _last_line,
    _log_errors,
    _state_of,
)


def test_runc_s_logfmt_line_gives_its_message() -> None:
    stderr = (
        'time="2026-12-04T15:00:00Z" level=warning msg="something"\n'
        'time="2026-12-04T15:00:01Z" level=error msg="container \\"c1\\" does not exist"\n'
    )
    assert _last_line(stderr) == 'container "c1" does not exist'
    assert _last_line("plain words\n\n") == "plain words"
    assert _last_line("") == ""


def test_a_missing_container_is_its_own_error(tmp_path: Path) -> None:
    runc = Runc(tmp_path)
    err = runc._failed("state", 'level=error msg="container does not exist"', None)
    assert type(err).__name__ == "NoSuchContainer"
    other = runc._failed("pause", 'level=error msg="cgroup frozen"', None)
    assert type(other) is ContainerError and other.one_line() == "runc pause: cgroup frozen"


def test_checkpoint_errors_quote_criu_s_first_error(tmp_path: Path) -> None:
    (tmp_path / "dump.log").write_text(
        "(00.01) Error (criu/rlimit.c:1): rlimit: Can't setup RLIMIT_NOFILE\n"
        "(00.02) Error (criu/files-reg.c:9): Can't lookup mount=24 for fd=1 path=/tmp/x\n"
    )
    assert _criu_error(tmp_path) == "Can't lookup mount=24 for fd=1 path=/tmp/x"
    err = Runc(tmp_path)._failed("checkpoint", "criu failed: type NOTIFY errno 0", tmp_path)
    assert err.one_line() == (
        "runc checkpoint: criu failed: type NOTIFY errno 0; CRIU: Can't lookup mount=24 "
        "for fd=1 path=/tmp/x"
    )
    assert _criu_error(tmp_path / "none") is None


def test_a_detached_call_reads_runc_s_json_log(tmp_path: Path) -> None:
    log = tmp_path / "runc.log"
    log.write_text(
        json.dumps({"level": "info", "msg": "fine"})
        + "\nnot json\n"
        + json.dumps({"level": "error", "msg": "rootfs missing"})
        + "\n"
    )
    assert _log_errors(log) == "rootfs missing"
    assert _log_errors(tmp_path / "none") == ""
    assert _log_errors(None) == ""


def test_state_is_read_from_runc_s_json() -> None:
    s = _state_of({"id": "c1", "status": "paused", "pid": 42, "bundle": "/b"})
    assert (s.id, s.status, s.pid, s.bundle) == ("c1", "paused", 42, Path("/b"))
    assert s.annotations == {}
    assert _state_of({"id": "c2", "status": "stopped", "pid": 0}).pid == 0
    annotated = _state_of(
        {"id": "c3", "status": "running", "pid": 7, "annotations": {criuconf.ANNOTATION: "/x"}}
    )
    assert annotated.annotations == {criuconf.ANNOTATION: "/x"}


def test_criu_options_per_side() -> None:
    assert criuconf.dump_options(own_network=True) == ["network-lock nftables"]
    assert criuconf.dump_options(own_network=False) == ["network-lock nftables", "tcp-close"]
    assert criuconf.restore_options(own_network=True)[0] == "leave-stopped"


def test_the_configuration_file_is_one_option_a_line(tmp_path: Path) -> None:
    criuconf.write(tmp_path / "c.conf", ["leave-stopped", "tcp-close"])
    assert (tmp_path / "c.conf").read_text() == "leave-stopped\ntcp-close\n"
    criuconf.write(tmp_path / "c.conf", [])
    assert (tmp_path / "c.conf").read_text() == ""
    assert [p.name for p in tmp_path.iterdir()] == ["c.conf"]


def test_the_destination_bundle_is_the_source_s_made_this_host_s() -> None:
    source = {
        "root": {"path": "/src/rootfs"},
        "process": {"args": ["sh"]},
        "linux": {"cgroupsPath": "/haul/host1/c1", "namespaces": [{"type": "pid"}]},
    }
    config = bundle_config(
        source,
        rootfs=Path("/dst/rootfs"),
        cgroups_path="/haul/host2/c1",
        criu_config=Path("/dst/criu.conf"),
    )
    assert config["root"]["path"] == "/dst/rootfs"
    assert config["linux"]["cgroupsPath"] == "/haul/host2/c1"
    assert config["annotations"][criuconf.ANNOTATION] == "/dst/criu.conf"
    assert config["process"] == source["process"]
    assert source["root"] == {"path": "/src/rootfs"}, "the source's config is not changed"
    assert not _own_network(config)
    assert _own_network({"linux": {"namespaces": [{"type": "network", "path": "/n"}]}})


def _recording_runc(tmp_path: Path) -> tuple[Runc, Path]:
    """A runc that records its argument list and succeeds (the argv is what is tested)."""
    record = tmp_path / "argv"
    fake = tmp_path / "runc"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    return Runc(tmp_path / "root", criu=Path("/usr/local/sbin/criu"), binary=fake), record


@pytest.mark.asyncio
async def test_a_pre_copy_round_and_the_final_dump_after_it(tmp_path: Path) -> None:
    runc, record = _recording_runc(tmp_path)
    await runc.checkpoint(
        "c1",
        CheckpointOptions(
            image_path=tmp_path / "pre2",
            work_path=tmp_path / "w",
            leave_running=False,
            file_locks=False,
            page_server="10.0.0.2:7000",
            pre_dump=True,
            parent_path="../pre1",
        ),
    )
    argv = record.read_text().split("\n")[:-1]
    assert argv[:4] == ["--root", str(tmp_path / "root"), "--criu", "/usr/local/sbin/criu"]
    assert argv[4] == "checkpoint" and argv[-1] == "c1"
    assert "--pre-dump" in argv and "--leave-running" not in argv
    assert argv[argv.index("--parent-path") + 1] == "../pre1"
    assert argv[argv.index("--page-server") + 1] == "10.0.0.2:7000"
    await runc.checkpoint(
        "c1",
        CheckpointOptions(
            image_path=tmp_path / "i",
            work_path=tmp_path / "w",
            tcp_established=True,
            lazy_pages=True,
            status_fd=5,
        ),
    )
    argv = record.read_text().split("\n")[:-1]
    assert {"--leave-running", "--tcp-established", "--file-locks", "--lazy-pages"} <= set(argv)
    assert "--pre-dump" not in argv and "--parent-path" not in argv
    assert argv[argv.index("--status-fd") + 1] == "5"
