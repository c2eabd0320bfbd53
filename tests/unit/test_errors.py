"""One-line rendering of haul's errors."""

from __future__ import annotations

import pytest

from haul.errors import (
    ChecksumMismatch,
    CriuError,
    CriuProtocolError,
    HaulError,
    PeerError,
    TransportError,
)

CRIU_TAIL = (
    "(00.101) Dumping path for 5 fd via self 12 [/dev/null]",
    "(00.102) Warn  (criu/net.c:10): ignoring an error in netlink",
    "(00.103) Error (criu/sk-inet.c:191): inet: Connected TCP socket, consider using "
    "--tcp-established option.",
    "(00.104) Error (criu/cr-dump.c:1677): Dump files (pid: 42) failed with -1",
    "(00.105) Unlock network",
)


def test_message_is_one_line() -> None:
    err = HaulError("cannot   reach\n  host2\tover ssh\n")
    assert err.one_line() == "cannot reach host2 over ssh"
    assert str(err) == err.one_line()


def test_workload_state_is_appended() -> None:
    err = HaulError("copy failed", workload_state="running on host1")
    assert err.one_line() == "copy failed; workload: running on host1"
    assert str(err) == "copy failed; workload: running on host1"


def test_no_workload_state_by_default() -> None:
    assert HaulError("x").workload_state is None
    assert TransportError("x").one_line() == "x"


def test_workload_state_of_one_error_does_not_leak_to_others() -> None:
    HaulError("first", workload_state="frozen on host1")
    assert HaulError("second").one_line() == "second"


def test_checksum_mismatch_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="does not match"):
        raise ChecksumMismatch("image pages-1.img does not match its checksum")


def test_criu_error_carries_everything_in_order() -> None:
    err = CriuError(
        "request failed",
        request="dump",
        errno=11,
        criu_message="Resource temporarily unavailable",
        log_path="/srv/work/dump.log",
        log_tail=CRIU_TAIL,
        workload_state="running on host1 (dump rolled back)",
    )
    assert err.one_line() == (
        "CRIU dump: request failed; errno 11; Resource temporarily unavailable; "
        "log: (00.103) Error (criu/sk-inet.c:191): inet: Connected TCP socket, "
        "consider using --tcp-established option.; "
        "(full log /srv/work/dump.log); workload: running on host1 (dump rolled back)"
    )
    assert str(err) == err.one_line()
    assert (err.request, err.errno, err.log_path) == ("dump", 11, "/srv/work/dump.log")


def test_criu_error_leaves_out_what_it_does_not_know() -> None:
    assert CriuError("request failed", request="restore").one_line() == (
        "CRIU restore: request failed"
    )


def test_criu_error_without_an_error_line_quotes_the_last_log_line() -> None:
    err = CriuError("request failed", request="check", log_tail=("(00.1) a", "(00.2) last  "))
    assert err.one_line() == "CRIU check: request failed; log: (00.2) last"


def test_criu_error_takes_lowercase_error_only_before_the_first_colon() -> None:
    tail = (
        "(00.1) Warn (criu/net.c:10): ignoring an error in netlink",
        "(00.2) error reading pstree image: bad magic",
        "(00.3) later",
    )
    err = CriuError("request failed", request="restore", log_tail=tail)
    assert err.one_line().endswith("; log: (00.2) error reading pstree image: bad magic")


def test_criu_error_message_is_one_line_too() -> None:
    err = CriuError("criu swrk closed\nthe connection", request="dump", errno=0)
    assert err.one_line() == "CRIU dump: criu swrk closed the connection"


def test_criu_protocol_error_renders_like_a_criu_error() -> None:
    err = CriuProtocolError("malformed answer from criu swrk", request="version")
    assert isinstance(err, CriuError)
    assert err.one_line() == "CRIU version: malformed answer from criu swrk"


def test_peer_error_keeps_its_code() -> None:
    err = PeerError("destination refused", code="busy", workload_state="running on host1")
    assert err.code == "busy"
    assert err.one_line() == "destination refused; workload: running on host1"


def test_criu_error_skips_the_rlimit_error_every_run_logs_here() -> None:
    tail = (
        "(00.03) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: "
        "Operation not permitted",
        "(00.06) Error (criu/files-reg.c:1790): Can't lookup mount=24 for fd=10",
        "(00.07) Error (criu/cr-dump.c:1975): Dumping FAILED.",
    )
    err = CriuError("request failed", request="dump", log_tail=tail)
    assert err.one_line().endswith(
        "; log: (00.06) Error (criu/files-reg.c:1790): Can't lookup mount=24 for fd=10"
    )
