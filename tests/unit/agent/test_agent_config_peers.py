"""haul.agent.config: advertise_address and peers, the fields migrations need."""

from __future__ import annotations

from pathlib import Path

import pytest

from haul.agent.config import AgentConfig, load_config, parse_config
from haul.errors import ConfigError

AUTH = '[agent.auth]\ntoken = "t"\n'


def _parse(text: str) -> AgentConfig:
    import tomllib

    data = tomllib.loads(text)
    # on loopback, unless the test says where: plain TCP beyond it needs TLS or a lab
    data.setdefault("agent", {}).setdefault("address", "127.0.0.1")
    return parse_config(data, where="haul.toml", base=Path("/etc/haul"))


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _parse(text)
    message = info.value.one_line()
    assert "\n" not in message and message.startswith("haul.toml: ")
    return message


def test_no_peers_and_the_listening_address_is_advertised() -> None:
    config = parse_config(
        {
            "agent": {
                "host": "h1",
                "address": "10.0.0.1",
                "insecure_lab": True,
                "auth": {"token": "t"},
            }
        }
    )
    assert config.peers == {}
    assert config.advertise_address is None
    assert config.advertised_address() == "10.0.0.1"


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_a_wildcard_listener_advertises_nothing_unless_told(wildcard: str) -> None:
    lab = {"insecure_lab": True, "auth": {"token": "t"}}
    config = parse_config({"agent": {"host": "h1", "address": wildcard, **lab}})
    assert config.advertised_address() is None
    told = parse_config(
        {
            "agent": {
                "host": "h1",
                "address": wildcard,
                "advertise_address": "192.0.2.7",
                **lab,
            }
        }
    )
    assert told.advertised_address() == "192.0.2.7"


def test_peers_by_host_name_with_their_url_and_token(tmp_path: Path) -> None:
    token_file = tmp_path / "peer2.token"
    token_file.write_text("s3cret\n")
    token_file.chmod(0o600)
    path = tmp_path / "haul.toml"
    path.write_text(
        '[agent]\nhost = "host1"\naddress = "127.0.0.1"\n'
        + AUTH
        + '[agent.peers.host2]\nurl = "http://10.77.0.2:7477/"\ntoken_file = "peer2.token"\n'
        + '[agent.peers."host3.example.org"]\nurl = "https://[2001:db8::3]:7477"\n'
        + '[agent.peers.host4]\nurl = "http://10.77.0.4:7477"\ntoken = "tok-4444"\n'
    )
    path.chmod(0o600)
    config = load_config(path)
    assert sorted(config.peers) == ["host2", "host3.example.org", "host4"]
    host2 = config.peer("host2")
    assert host2.url == "http://10.77.0.2:7477"  # the trailing slash is dropped
    assert host2.token_file == token_file and host2.bearer_token() == "s3cret"
    assert config.peer("host3.example.org").bearer_token() is None  # TLS: its certificate
    assert config.peer("host4").bearer_token() == "tok-4444"
    assert "tok-4444" not in repr(config) and "s3cret" not in repr(config)
    with pytest.raises(ConfigError, match="no peer 'host9' .*known: host2"):
        config.peer("host9")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[agent]\nadvertise_address = "nope"\n' + AUTH,
            "agent.advertise_address: 'nope' is not an IP address",
        ),
        (
            '[agent]\nadvertise_address = "0.0.0.0"\n' + AUTH,
            "advertise_address 0.0.0.0 is a wildcard",
        ),
        (
            AUTH + '[agent.peers.h2]\nurl = "ftp://10.0.0.2"\n',
            "agent.peers.h2.url: 'ftp://10.0.0.2' is not http(s)://HOST:PORT",
        ),
        (AUTH + '[agent.peers.h2]\nurl = "http://10.0.0.2:7477/v1"\n', "no path"),
        (AUTH + '[agent.peers.h2]\nurl = "http://10.0.0.2:99999"\n', "has a bad port"),
        (
            AUTH + '[agent.peers.h2]\nurl = "http://h2:1"\ntoken = "a"\ntoken_file = "f"\n',
            "agent.peers.h2: give token or token_file, not both",
        ),
        (AUTH + '[agent.peers.h2]\nurl = "http://h2:1"\ntoken = " "\n', "token is empty"),
        (AUTH + '[agent.peers.h2]\ntoken = "x"\n', "agent.peers.h2.url: Field required"),
        (
            AUTH + '[agent.peers.h2]\nurl = "http://h2:1"\nsecret = "x"\n',
            "agent.peers.h2.secret: Extra inputs are not permitted",
        ),
        (AUTH + '[agent.peers."bad name"]\nurl = "http://h2:1"\n', "is not a host name"),
        (
            '[agent]\nhost = "me"\n' + AUTH + '[agent.peers.me]\nurl = "http://h2:1"\n',
            "peers: 'me' is this agent's own host name",
        ),
    ],
)
def test_bad_fields_are_one_line_naming_the_field(toml: str, expected: str) -> None:
    assert expected in _error(toml)


def test_a_peer_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "peer.token"
    token_file.write_text("x")
    token_file.chmod(0o644)
    path = tmp_path / "haul.toml"
    path.write_text(
        '[agent]\nhost = "h1"\naddress = "127.0.0.1"\n'
        + AUTH
        + f'[agent.peers.h2]\nurl = "http://h2:1"\ntoken_file = "{token_file}"\n'
    )
    with pytest.raises(ConfigError, match=r"agent\.peers\.h2\.token_file: .* readable by others"):
        load_config(path)
