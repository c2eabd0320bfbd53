"""The lab's HAProxy configuration: HAProxy itself accepts what haul writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from haul.errors import UsageError
from haul.lab.haproxy import LbConfig, LbServer, haproxy_config

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def _check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    return subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)


@pytest.mark.parametrize(
    "cfg",
    [
        LbConfig(
            servers=(
                LbServer("web-host1", "10.77.0.1", 8000),
                LbServer("web-host2", "10.77.0.2", 8000, enabled=False),
            )
        ),
        LbConfig(servers=(LbServer("app", "10.77.0.1", 8000),), spare_slots=3, backend="be.app"),
        LbConfig(
            servers=(LbServer("v6", "fd00::1", 80, check=False),),
            socket_level="operator",
            check_path="/healthz",
        ),
    ],
)
def test_haproxy_accepts_the_configuration(cfg: LbConfig, tmp_path: Path) -> None:
    text = haproxy_config(cfg, bind_address="10.77.0.250", socket=tmp_path / "admin.sock")
    done = _check(text, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stats socket {tmp_path / 'admin.sock'} mode 600 level {cfg.socket_level}" in text
    assert "bind 10.77.0.250:8080" in text


def test_the_configuration_says_what_a_migration_needs(tmp_path: Path) -> None:
    text = haproxy_config(
        LbConfig(servers=(LbServer("a", "10.77.0.1", 8000),), spare_slots=2),
        bind_address="10.77.0.250",
        socket=tmp_path / "s",
    )
    lines = {line.strip() for line in text.splitlines()}
    for wanted in (
        "retries 20",
        "option redispatch 1",
        "timeout connect 250ms",
        "timeout server 1000ms",
        "default-server check inter 250ms fastinter 100ms downinter 100ms rise 1 fall 2",
        "retry-on conn-failure empty-response response-timeout",
        "http-reuse never",
        "server-template slot 2 0.0.0.0:8000 disabled",
    ):
        assert wanted in lines, wanted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"servers": (LbServer("web host1", "10.77.0.1", 80),)}, "HAProxy name 'web host1'"),
        ({"servers": (LbServer("a", "10.77.0.1", 80),), "backend": "b/e"}, "HAProxy name 'b/e'"),
        ({"servers": (LbServer("a", "host1", 80),)}, "'host1' is not an IP address"),
        ({"servers": (LbServer("a", "10.77.0.1", 0),)}, "port 0 is out of range"),
        ({"servers": ()}, "needs at least one server or slot"),
        (
            {"servers": (LbServer("a", "10.77.0.1", 80),), "socket_level": "root"},
            "level 'root' is not user, operator or admin",
        ),
        (
            {"servers": (LbServer("a", "10.77.0.1", 80),), "http_reuse": "sometimes"},
            "http-reuse 'sometimes' is not never",
        ),
        (
            {"servers": (LbServer("a", "10.77.0.1", 80),), "connect_timeout_ms": 0},
            "the connect timeout must be above 0 ms",
        ),
        (
            {"servers": (LbServer("a", "10.77.0.1", 80),), "retries": -1},
            "retries must be 0 or more",
        ),
    ],
)
def test_bad_configurations_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        LbConfig(**kwargs)  # type: ignore[arg-type]
