"""The lab's ledger: what a lab made, written down before it is made.

``lab up`` appends each namespace's name to the ledger before creating it, so
``lab down`` removes exactly what ``up`` made, even after ``up`` crashed half
way. ``lab down`` deletes the ledger last, once everything in it is gone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from haul.errors import LabError

DEFAULT_STATE_DIR = Path("/run/haul/lab")


def state_dir() -> Path:
    return Path(os.environ.get("HAUL_LAB_STATE_DIR", str(DEFAULT_STATE_DIR)))


@dataclass(slots=True)
class Ledger:
    prefix: str
    hosts: int
    netns: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)  # name -> value before the lab
    dirs: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)  # unmounted in reverse order
    agents: dict[str, int] = field(default_factory=dict)  # host name -> the agent's PID
    #: other long-running processes started in a member ("haproxy@client" -> PID); ``down``
    #: kills every process in the lab's namespaces, these included
    services: dict[str, int] = field(default_factory=dict)
    inventory: str | None = None  # the hosts inventory 'up' wrote, removed by 'down'
    token_sha256: str | None = None  # the lab token's hash: tells our inventory from others'

    @staticmethod
    def path_for(prefix: str) -> Path:
        return state_dir() / f"{prefix}.json"

    @property
    def path(self) -> Path:
        return self.path_for(self.prefix)

    def save(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        data = {
            "prefix": self.prefix,
            "hosts": self.hosts,
            "netns": self.netns,
            "sysctls": self.sysctls,
            "dirs": self.dirs,
            "mounts": self.mounts,
            "agents": self.agents,
            "services": self.services,
            "inventory": self.inventory,
            "token_sha256": self.token_sha256,
        }
        with tmp.open("w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def record_netns(self, name: str) -> None:
        if name not in self.netns:
            self.netns.append(name)
            self.save()

    def record_dir(self, path: Path) -> None:
        if str(path) not in self.dirs:
            self.dirs.append(str(path))
            self.save()

    def record_mount(self, path: Path) -> None:
        if str(path) not in self.mounts:
            self.mounts.append(str(path))
            self.save()

    def record_service(self, name: str, pid: int) -> None:
        self.services[name] = pid
        self.save()

    def forget_service(self, name: str) -> None:
        if self.services.pop(name, None) is not None:
            self.save()

    @classmethod
    def load(cls, prefix: str) -> Ledger | None:
        path = cls.path_for(prefix)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"lab ledger {path} is unreadable: {exc}") from exc
        try:
            return cls(
                prefix=str(data["prefix"]),
                hosts=int(data["hosts"]),
                netns=[str(n) for n in data.get("netns", [])],
                sysctls={str(k): str(v) for k, v in data.get("sysctls", {}).items()},
                dirs=[str(d) for d in data.get("dirs", [])],
                mounts=[str(m) for m in data.get("mounts", [])],
                agents={str(k): int(v) for k, v in data.get("agents", {}).items()},
                services={str(k): int(v) for k, v in data.get("services", {}).items()},
                inventory=_optional_str(data.get("inventory")),
                token_sha256=_optional_str(data.get("token_sha256")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LabError(f"lab ledger {path} is malformed: {exc!r}") from exc

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def known_prefixes() -> list[str]:
    d = state_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json"))
