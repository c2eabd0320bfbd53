"""What the agent's configuration refuses for its security (docs/security.md): plain TCP
beyond loopback outside a lab, a name that is both an operator and a peer, peers' tokens
that are not their own, hooks others could change; and certificates' lifetimes."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509

from haul.agent.auth import token_allowed
from haul.agent.ca import CERT_DAYS, MAX_CERT_DAYS, init_ca, issue
from haul.agent.fakes import TOKEN, make_config
from haul.cutover.hooks import check_hook_path
from haul.errors import ConfigError, UsageError


@pytest.mark.parametrize("address", ["0.0.0.0", "10.77.0.1", "::"])
def test_plain_tcp_beyond_loopback_is_refused_outside_a_lab(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(tmp_path, address=address)
    message = str(raised.value)
    assert f"agent.address {address} reaches beyond this host" in message
    assert "insecure_lab = true" in message and "\n" not in message
    lab = make_config(tmp_path, address=address, insecure_lab=True)
    assert lab.insecure_lab


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1"])
def test_plain_tcp_on_loopback_needs_no_tls(tmp_path: Path, address: str) -> None:
    assert not make_config(tmp_path, address=address).insecure_lab


@pytest.mark.parametrize(
    ("tls", "remote", "lab", "allowed"),
    [
        (True, "10.77.0.2", False, True),
        (False, "127.0.0.1", False, True),
        (False, "::1", False, True),
        (False, None, False, True),  # the unix socket
        (False, "10.77.0.2", False, False),
        (False, "10.77.0.2", True, True),
        (False, "::ffff:10.77.0.2", False, False),
    ],
)
def test_a_token_over_plain_tcp_is_taken_only_from_loopback_or_in_a_lab(
    tls: bool, remote: str | None, lab: bool, allowed: bool
) -> None:
    assert token_allowed(tls=tls, remote=remote, insecure_lab=lab) is allowed


def test_a_name_that_is_both_an_operator_and_a_peer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="host2 is both an operator .* and a peer"):
        make_config(
            tmp_path,
            auth={"token": TOKEN, "operators": ["host2"]},
            peers={"host2": {"url": "http://127.0.0.1:1"}},
        )


@pytest.mark.parametrize(
    ("peers", "says"),
    [
        (
            {"host2": {"url": "http://127.0.0.1:1", "inbound_token": TOKEN}},
            "agent.peers.host2.inbound_token is the operator token",
        ),
        (
            {"host2": {"url": "http://127.0.0.1:1", "token": TOKEN}},
            "agent.peers.host2.token is this agent's operator token",
        ),
        (
            {
                "host2": {"url": "http://127.0.0.1:1", "inbound_token": "same"},
                "host3": {"url": "http://127.0.0.1:2", "inbound_token": "same"},
            },
            "host2 and host3 present the same inbound_token",
        ),
    ],
)
def test_each_peer_has_a_token_of_its_own(
    tmp_path: Path, peers: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        make_config(tmp_path, peers=peers)


def test_an_inbound_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "host2.token"
    token.write_text("peer-secret\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="inbound_token_file: .* is readable by others"):
        make_config(
            tmp_path,
            peers={"host2": {"url": "http://127.0.0.1:1", "inbound_token_file": str(token)}},
        )
    token.chmod(0o600)
    config = make_config(
        tmp_path,
        peers={"host2": {"url": "http://127.0.0.1:1", "inbound_token_file": "host2.token"}},
    )
    assert config.peers["host2"].inbound() == "peer-secret"


def test_shared_dirs_are_taken_from_the_config_files_directory(tmp_path: Path) -> None:
    config = make_config(tmp_path, shared_dirs=["shared", "/srv/pages"])
    assert config.shared_dirs == [tmp_path / "shared", Path("/srv/pages")]


def _hook(tmp_path: Path, mode: int = 0o755) -> Path:
    path = tmp_path / "hook"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_a_hook_others_may_change_is_refused_in_one_line(tmp_path: Path, mode: int) -> None:
    hook = _hook(tmp_path, mode)
    with pytest.raises(UsageError) as raised:
        check_hook_path(hook, host="host1")
    assert str(raised.value) == (
        f"hook {hook}: writable by group or others on host1 (mode {mode:04o}); chmod go-w it"
    )
    with pytest.raises(ConfigError, match=r"agent\.hooks\.scripts\.0: .*writable by group"):
        make_config(tmp_path, hooks={"scripts": [str(hook)]})


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_hook_root_does_not_own_is_refused_in_one_line(tmp_path: Path) -> None:
    hook = _hook(tmp_path)
    os.chown(hook, 65534, 65534)
    with pytest.raises(UsageError) as raised:
        check_hook_path(hook, host="host1")
    assert str(raised.value) == f"hook {hook}: owned by uid 65534, not root, on host1"


def test_a_hook_root_owns_and_alone_may_change_is_taken(tmp_path: Path) -> None:
    hook = _hook(tmp_path, 0o755)
    assert check_hook_path(hook, host="host1") == hook


def test_certificates_live_a_year_and_at_most_397_days(tmp_path: Path) -> None:
    assert CERT_DAYS == 365 and MAX_CERT_DAYS == 397
    init_ca(tmp_path)
    pair = issue(tmp_path, "host1", ["10.0.0.1"])
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) <= life <= datetime.timedelta(days=366)
    with pytest.raises(UsageError, match="at most 397 days"):
        issue(tmp_path, "host2", days=398)


def test_issuing_refuses_a_ca_key_others_can_read(tmp_path: Path) -> None:
    init_ca(tmp_path)
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(ConfigError, match="ca.key is readable by others"):
        issue(tmp_path, "host1")
