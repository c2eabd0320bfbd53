"""The hosts inventory: which agent answers for which host name.

``~/.config/haul/hosts.toml`` (or ``--hosts FILE``, or ``HAUL_HOSTS``)::

    [hosts.host1]
    url = "unix:///run/haul/lab/haul/agents/host1.sock"   # or https://10.77.0.1:7070
    peer_url = "http://10.77.0.1:7070"   # how other agents reach it (default: url)
    token = "..."                        # or token_file = "/path"
    ca = "/etc/haul/ca/ca.crt"           # TLS: the CA, and a client certificate
    cert = "/etc/haul/ca/client.crt"
    key = "/etc/haul/ca/client.key"
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from haul.errors import ConfigError, UsageError

DEFAULT_PATH = Path("~/.config/haul/hosts.toml")


class HostEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    peer_url: str | None = None
    token: str | None = None
    token_file: Path | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @field_validator("url", "peer_url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://", "unix://")):
            raise ValueError("must start with http://, https:// or unix://")
        return v

    def bearer(self) -> str | None:
        if self.token is not None:
            return self.token
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read token file {self.token_file}: {exc}") from exc
        return None

    @property
    def reachable_from_peers(self) -> str:
        return self.peer_url or self.url


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: dict[str, HostEntry] = Field(default_factory=dict)

    def host(self, name: str) -> HostEntry:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise UsageError(f"unknown host {name!r} (inventory has: {known})") from None


def inventory_path(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get("HAUL_HOSTS")
    return Path(env) if env else DEFAULT_PATH.expanduser()


def load_inventory(explicit: Path | None = None) -> Inventory:
    path = inventory_path(explicit)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no hosts inventory at {path} (run 'haul lab up', or write one)"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the inventory {path}: {exc}") from exc
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"inventory {path}: {where}: {first['msg']}") from exc


def write_inventory(path: Path, inventory: Inventory) -> None:
    lines: list[str] = []
    for name, h in sorted(inventory.hosts.items()):
        lines.append(f"[hosts.{name}]")
        for key, value in h.model_dump(exclude_none=True).items():
            lines.append(f'{key} = "{value}"')
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
