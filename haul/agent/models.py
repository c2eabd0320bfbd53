"""The JSON bodies of the agent's API, shared by the server, the client and the OpenAPI document.

Request models forbid unknown fields (a misspelt field is a 400, not a
silently ignored option). Every figure carries its unit in its name.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from haul.errors import UsageError
from haul.runtime.images import ImageRef
from haul.runtime.runc import CONTAINER_ID_RE

#: a workload's name: also the name of its directory, so no path tricks can pass
WORKLOAD_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
WORKLOAD_NAME_RE = re.compile(WORKLOAD_NAME_PATTERN)
MAX_ARGV = 4096
MAX_MOUNTS = 64
#: the least memory a container may be limited to (runc's init and CRIU's restore
#: run in its cgroup too)
MIN_MEMORY_BYTES = 4 << 20
#: the CPU limit's bounds (the kernel takes a quota of 1 ms per period at least)
MIN_CPUS, MAX_CPUS = 0.01, 1024.0
#: a WorkloadSpec's cgroup limits (runtime runc only)
LIMITS = ("memory_bytes", "cpus", "pids_limit")
#: the largest PID Linux hands out (PID_MAX_LIMIT on 64-bit machines)
PID_MAX = 1 << 22
#: the largest byte count a request may carry (far beyond any disk, and still exact
#: as a float: what the agent computes with it cannot overflow)
MAX_BYTES = 1 << 62


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


def _image_ref(value: str) -> str:
    try:
        return str(ImageRef.parse(value))
    except UsageError as exc:
        raise ValueError(exc.message) from None


def _container_id(value: str) -> str:
    if not CONTAINER_ID_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a container ID (letters, digits, _ . -; at most 63)")
    return value


Arg = Annotated[str, AfterValidator(_plain_arg)]
#: how a workload runs: a process tree haul starts itself, or an OCI container run by runc
Runtime = Literal["process", "runc"]
ImageText = Annotated[str, Field(max_length=4096), AfterValidator(_image_ref)]
ContainerId = Annotated[str, AfterValidator(_container_id)]
AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
WorkloadName = Annotated[str, Field(pattern=WORKLOAD_NAME_PATTERN)]


class _Request(BaseModel):
    # no infinite or NaN floats (JSON's 1e999 parses as infinity): every figure a
    # request carries is a finite one, within the bounds its field gives
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


class MountSpec(_Request):
    """runc: the host's ``source`` bind-mounted read-only at ``destination`` in the
    container (haul/runtime/mounts.py); ``source`` must lie in the agent's allowed roots."""

    source: AbsolutePath
    destination: AbsolutePath


class WorkloadSpec(_Request):
    """What to start: a name, a command, and optionally the workload's data directory
    and an address of its own; or (runtime ``runc``) an OCI container from an image
    layout, a bundle or a root filesystem, whose command ``argv`` overrides the image's."""

    name: WorkloadName
    #: the command (required for a process tree and with ``rootfs``)
    argv: Annotated[list[Arg], Field(max_length=MAX_ARGV)] = []
    #: the workload's data directory as the host sees it (it must exist); default: a
    #: directory the agent makes in its state directory. It is the workload's cwd.
    data_dir: AbsolutePath | None = None
    net: NetSpec | None = None
    runtime: Runtime = "process"
    #: runc: ``oci:LAYOUT[:TAG]``, an OCI image layout on the host (no registry)
    image: ImageText | None = None
    #: runc: a bundle directory on the host (its config.json and root filesystem)
    bundle: AbsolutePath | None = None
    #: runc: a root filesystem on the host, run with runc's default configuration
    rootfs: AbsolutePath | None = None
    #: runc: read-only bind mounts of the host's paths, added to its configuration
    mounts: Annotated[list[MountSpec], Field(max_length=MAX_MOUNTS)] = []
    #: runc: the container's cgroup limits (memory.limit, cpu.quota over a 100 ms
    #: period, pids.limit); they move with it
    memory_bytes: int | None = Field(default=None, ge=MIN_MEMORY_BYTES, le=MAX_BYTES)
    cpus: float | None = Field(default=None, ge=MIN_CPUS, le=MAX_CPUS)
    pids_limit: int | None = Field(default=None, ge=1, le=2**31)
    #: runc with an image: the container's writable layer goes in this directory, which
    #: other hosts see too (``SHARED/layers/NAME``); ``haul migrate --shared-dir`` then
    #: moves it in place (docs/containers.md)
    shared_dir: AbsolutePath | None = None

    @model_validator(mode="after")
    def _one_source(self) -> WorkloadSpec:
        given = [f for f in ("image", "bundle", "rootfs") if getattr(self, f) is not None]
        limits = [f for f in LIMITS if getattr(self, f) is not None]
        if self.runtime == "process":
            if self.shared_dir is not None:
                raise ValueError("shared_dir: only for runtime runc")
            if given or limits:
                raise ValueError(f"{', '.join(given + limits)}: only for runtime runc")
            if self.mounts:
                raise ValueError("mounts: only for runtime runc (a process tree sees its host)")
            if not self.argv:
                raise ValueError("argv: a process workload needs a command")
            return self
        if len(given) != 1:
            raise ValueError(
                "runtime runc takes exactly one of image, bundle and rootfs"
                + (f" (given: {', '.join(given)})" if given else "")
            )
        if self.data_dir is not None:
            raise ValueError("data_dir: only for process workloads (a container has its rootfs)")
        if self.rootfs is not None and not self.argv:
            raise ValueError("argv: a container from a bare rootfs needs a command")
        if self.shared_dir is not None and self.image is None:
            raise ValueError(
                "shared_dir: only with image (a bundle's or rootfs's files are used where "
                "they are: put them in the shared directory)"
            )
        return self


class AdoptSpec(_Request):
    """An existing process tree (for `haul migrate pid:PID`) or runc container (`haul
    adopt runc:ID`) to register as a workload."""

    pid: int | None = Field(default=None, ge=2, le=PID_MAX)
    #: a runc container's ID, under ``runc_root``
    container: ContainerId | None = None
    #: the runc root the container was started under (default: runc's, /run/runc)
    runc_root: AbsolutePath | None = None
    #: default: pid-PID, or the container's ID
    name: WorkloadName | None = None

    @model_validator(mode="after")
    def _one_target(self) -> AdoptSpec:
        if (self.pid is None) == (self.container is None):
            raise ValueError("give exactly one of pid and container")
        if self.runc_root is not None and self.container is None:
            raise ValueError("runc_root: only with container")
        return self


class WorkloadStatus(enum.StrEnum):
    RUNNING = "running"
    #: a process tree SIGSTOPped, or a container that is not running (runc's stopped/created)
    STOPPED = "stopped"
    #: a container whose cgroup is frozen (runc pause)
    PAUSED = "paused"
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
    runtime: Runtime = "process"
    #: runc: the image it was started from (``oci:LAYOUT:TAG``), None for a bundle or rootfs
    image: str | None = None


class WorkloadList(_Answer):
    workloads: list[WorkloadView]
