"""The JSON bodies of the agent's API, shared by the server, the client and the OpenAPI document.

Request models forbid unknown fields (a misspelt field is a 400, not a
silently ignored option). Every figure carries its unit in its name.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: a workload's name: also the name of its directory, so no path tricks can pass
WORKLOAD_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
WORKLOAD_NAME_RE = re.compile(WORKLOAD_NAME_PATTERN)
MAX_ARGV = 4096


def _plain_arg(value: str) -> str:
    if "\x00" in value:
        raise ValueError("an argument may not contain a NUL byte")
    return value


def _absolute_path(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a path may not contain a NUL byte")
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError("must not contain '.' or '..' components")
    return value


Arg = Annotated[str, AfterValidator(_plain_arg)]
AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
WorkloadName = Annotated[str, Field(pattern=WORKLOAD_NAME_PATTERN)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


# ------------------------------------------------------------------ health


class Health(_Answer):
    ok: bool = True


class Check(_Answer):
    name: str
    ok: bool
    detail: str = ""


class Readiness(_Answer):
    ready: bool
    #: the names of the checks that fail (empty when ready)
    failing: list[str]
    checks: list[Check]

    @classmethod
    def of(cls, checks: list[Check]) -> Readiness:
        failing = [c.name for c in checks if not c.ok]
        return cls(ready=not failing, failing=failing, checks=checks)


class CriuFeaturesView(_Answer):
    mem_track: bool
    lazy_pages: bool
    pidfd_store: bool


class CriuView(_Answer):
    path: str
    version: str
    major: int
    minor: int
    sublevel: int
    features: CriuFeaturesView
    check_ok: bool
    check_error: str = ""


class CpuView(_Answer):
    vendor: str
    model: str
    count: int
    flags: list[str]


class AgentInfo(_Answer):
    host: str
    haul_version: str
    kernel_release: str
    #: None when CRIU could not be asked; criu_error then says why
    criu: CriuView | None
    criu_error: str = ""
    cpu: CpuView
    state_dir_free_bytes: int


# ------------------------------------------------------------------ workloads


class NetSpec(_Request):
    """A workload's own address: it then runs in a network namespace of its own, on the
    host's bridge (haul/net/spec.py)."""

    #: with its prefix length, e.g. 10.77.0.101/24
    address: str = Field(max_length=64)
    #: the port it serves on (for hooks and load balancers; nothing is opened)
    port: int | None = Field(default=None, ge=1, le=65535)
    gateway: str | None = Field(default=None, max_length=64)


class WorkloadSpec(_Request):
    """What to start: a name, a command, and optionally the workload's data directory
    and an address of its own."""

    name: WorkloadName
    argv: Annotated[list[Arg], Field(min_length=1, max_length=MAX_ARGV)]
    #: the workload's data directory as the host sees it (it must exist); default: a
    #: directory the agent makes in its state directory. It is the workload's cwd.
    data_dir: AbsolutePath | None = None
    net: NetSpec | None = None


class AdoptSpec(_Request):
    """An existing process tree to register as a workload (for `haul migrate pid:PID`)."""

    pid: int = Field(ge=2)
    #: default: pid-PID
    name: WorkloadName | None = None


class WorkloadStatus(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    GONE = "gone"


class WorkloadView(_Answer):
    name: str
    argv: list[str]
    root_pid: int
    started_at: datetime
    status: WorkloadStatus
    cwd: str
    data_dir: str | None
    log_path: str
    #: the workload's own address, when it has one
    net: NetSpec | None = None


class WorkloadList(_Answer):
    workloads: list[WorkloadView]
