"""haul.agent.config: the [agent] table, its defaults, and one-line errors naming file and field."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from haul.agent.config import (
    DEFAULT_PORT,
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    AgentConfig,
    load_config,
    parse_config,
)
from haul.errors import ConfigError
from haul.nsexec import HostNs

REPO = Path(__file__).resolve().parents[3]
#: a listener on loopback: plain TCP needs no TLS there
LOCAL = '[agent]\naddress = "127.0.0.1"\n'


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _load_error(tmp_path: Path, toml: str) -> str:
    path = _write(tmp_path / "haul.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.one_line()
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    return message


def test_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "haul.toml",
        '[agent]\nhost = "host1"\naddress = "127.0.0.1"\n[agent.auth]\ntoken = "t"\n',
    )
    config = load_config(path)
    assert config.host == "host1"
    assert (config.address, config.port) == ("127.0.0.1", DEFAULT_PORT)
    assert AgentConfig.model_fields["address"].default == "0.0.0.0"  # with [agent.tls]
    assert not config.insecure_lab and config.shared_dirs == []
    assert config.auth.operators == []
    assert config.socket == DEFAULT_SOCKET
    assert config.state_dir == DEFAULT_STATE_DIR
    assert config.auth.bearer_token() == "t"
    assert config.tls is None and config.criu is None
    assert config.host_namespaces() == HostNs()
    assert config.journal_dir == DEFAULT_STATE_DIR / "journal"


def test_other_tables_are_left_to_other_parts_of_haul(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "haul.toml",
        '[hosts.web]\naddress = "x"\n[agent]\naddress = "::1"\nauth = { token = "t" }\n',
    )
    assert load_config(path).auth.bearer_token() == "t"


def test_the_example_config_is_valid(tmp_path: Path) -> None:
    """deploy/haul.toml.example, with its files made in tmp_path."""
    data = tomllib.loads((REPO / "deploy" / "haul.toml.example").read_text())
    _write(tmp_path / "agent.token", "from-a-file\n")
    for name in ("ca.crt", "host1.crt", "host1.key"):
        _write(tmp_path / name, "x")
    data["agent"]["auth"]["token_file"] = "agent.token"
    data["agent"]["tls"] = {"ca": "ca.crt", "cert": "host1.crt", "key": "host1.key"}
    config = parse_config(data, where="example", base=tmp_path)
    assert config.auth.bearer_token() == "from-a-file"
    assert config.tls is not None and config.tls.key == tmp_path / "host1.key"
    assert config.port == 7477


def test_relative_paths_are_taken_from_the_config_files_directory(tmp_path: Path) -> None:
    _write(tmp_path / "tok", "abc")
    path = _write(
        tmp_path / "haul.toml",
        '[agent]\nstate_dir = "state"\nsocket = "a.sock"\naddress = "127.0.0.1"\n'
        '[agent.auth]\ntoken_file = "tok"\n[agent.host_ns]\nnetns = "lab-host1"\n'
        'mntns = "mnt/host1"\n',
    )
    config = load_config(path)
    assert config.state_dir == tmp_path / "state"
    assert config.socket == tmp_path / "a.sock"
    assert config.auth.bearer_token() == "abc"
    assert config.host_namespaces() == HostNs(net="lab-host1", mnt=tmp_path / "mnt" / "host1")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[agent]\nport = 70000\nauth.token = "t"\n', "agent.port: Input should be less than"),
        ('[agent]\nprot = 1\nauth.token = "t"\n', "agent.prot: Extra inputs are not permitted"),
        (
            '[agent]\naddress = "example.com"\nauth.token = "t"\n',
            "agent.address: 'example.com' is not an IP address",
        ),
        ('[agent]\nhost = "a/b"\nauth.token = "t"\n', "agent.host: 'a/b' is not a host name"),
        ("[agent]\n", "agent: the TCP listener needs a way to authenticate callers"),
        (
            '[agent.auth]\ntoken = "t"\ntoken_file = "f"\n',
            "agent.auth: give token or token_file, not both",
        ),
        ('[agent.auth]\ntoken = "  "\n', "agent.auth: token is empty"),
        (
            '[agent]\nauth.token = "t"\nhost_ns.netns = "../x"\n',
            "agent.host_ns.netns: '../x' is not a network namespace name",
        ),
        ('[agent]\nauth.token = "t"\nmin_free_mib = -1\n', "agent.min_free_mib: Input should be"),
        ("agent = 3\n", "agent: must be a table"),
        ("[agent\n", "not valid TOML: "),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, toml: str, expected: str) -> None:
    assert expected in _load_error(tmp_path, toml)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"haul\.toml: no such file"):
        load_config(tmp_path / "haul.toml")


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "tok", "abc", mode=0o644)
    message = _load_error(tmp_path, LOCAL + '[agent.auth]\ntoken_file = "tok"\n')
    assert "agent.auth.token_file:" in message and "chmod 600" in message


def test_a_missing_or_empty_token_file_is_refused(tmp_path: Path) -> None:
    assert "cannot read" in _load_error(tmp_path, LOCAL + '[agent.auth]\ntoken_file = "nope"\n')
    _write(tmp_path / "tok", "\n")
    assert "is empty" in _load_error(tmp_path, LOCAL + '[agent.auth]\ntoken_file = "tok"\n')


def test_tls_files_must_exist(tmp_path: Path) -> None:
    _write(tmp_path / "ca.crt", "x")
    message = _load_error(tmp_path, '[agent.tls]\nca = "ca.crt"\ncert = "h.crt"\nkey = "h.key"\n')
    assert "agent.tls.cert:" in message and "h.crt is not a file" in message


def test_tls_alone_is_enough_auth(tmp_path: Path) -> None:
    for name in ("ca.crt", "h.crt", "h.key"):
        _write(tmp_path / name, "x")
    config = load_config(
        _write(
            tmp_path / "haul.toml", '[agent.tls]\nca = "ca.crt"\ncert = "h.crt"\nkey = "h.key"\n'
        )
    )
    assert config.auth.bearer_token() is None and config.tls is not None


def test_criu_path_must_be_executable(tmp_path: Path) -> None:
    criu = _write(tmp_path / "criu", "#!/bin/sh\n", mode=0o644)
    config = parse_config(
        {"agent": {"criu": str(criu), "address": "127.0.0.1", "auth": {"token": "t"}}}
    )
    with pytest.raises(ConfigError, match="agent.criu: .* is not an executable file"):
        config.criu_path()
    os.chmod(criu, 0o755)
    assert config.criu_path() == criu


def test_the_token_is_not_shown_in_reprs(tmp_path: Path) -> None:
    config = parse_config({"agent": {"address": "127.0.0.1", "auth": {"token": "hunter2"}}})
    assert "hunter2" not in repr(config)
