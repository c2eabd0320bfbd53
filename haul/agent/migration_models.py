"""The JSON bodies of the migration routes (source: /v1/migrations; destination:
/v1/incoming...). Figures carry their units in their names."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from haul.agent.models import MAX_BYTES, AbsolutePath, NetSpec, WorkloadName, _Answer, _Request
from haul.engine.phases import Strategy

MIGRATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$"
#: an OCI blob's digest (what haul moves: sha256)
BLOB_DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
#: blobs in one image at most (a manifest, a config and its layers)
MAX_IMAGE_BLOBS = 256
#: the longest downtime a migration may be asked to allow (an hour)
MAX_DOWNTIME_MS = 3_600_000.0
#: the longest time limit a migration may be given (a day)
MAX_TIMEOUT_S = 86_400.0


class Done(_Answer):
    ok: bool = True


# ------------------------------------------------------------ destination side


class RuntimeView(_Answer):
    """A container runtime and its version, e.g. runc 1.1.5+ds1."""

    name: str
    version: str


class CapabilitiesView(_Answer):
    criu_version: str
    mem_track: bool
    lazy_pages: bool
    lazy_pipe_ok: bool
    #: the runtime this host runs containers with (None: it runs none)
    runtime: RuntimeView | None = None
    #: why it runs none, when ``runtime`` is None
    no_runtime: str = ""


class IncomingCheck(_Request):
    workload: WorkloadName
    needed_bytes: int = Field(ge=0, le=MAX_BYTES)
    #: the workload's own address: it must be free on the destination
    net: NetSpec | None = None
    #: a runc container: no container of that name may be on the destination either
    container: bool = False


class Endpoint(_Request):
    address: str
    port: int = Field(ge=1, le=65535)


class ContainerMove(_Request):
    """A runc container that comes along (haul/agent/arrivals.py): its configuration as
    its source runs it, and its image, whose blobs the destination may lack."""

    #: the source's config.json (its root filesystem and cgroup are made this host's)
    config: dict[str, Any]
    #: the image it was started from (as given there), its manifest digest and every
    #: blob of it (manifest, config, layers); none for a container from a bundle or rootfs
    image: str | None = None
    image_digest: str | None = Field(default=None, pattern=BLOB_DIGEST_PATTERN)
    blobs: list[str] = Field(default_factory=list, max_length=MAX_IMAGE_BLOBS)
    #: what those blobs weigh on the source: the destination's budget for this
    #: migration counts them besides the pre-flight's claim (docs/limits.md)
    blob_bytes: int = Field(default=0, ge=0, le=MAX_BYTES)
    #: its argv, for its registry entry here
    argv: list[str] = Field(default_factory=list)
    #: its writable state is on storage both hosts see (``--shared-dir``) and is used
    #: where it is, none of it sent: for a container from an image, the directory of
    #: its overlay's writable layer (``upper/``, and a work directory per host:
    #: haul/runtime/sharedlayer.py); for any other, its root filesystem
    shared_layer: AbsolutePath | None = None
    shared_rootfs: AbsolutePath | None = None

    @model_validator(mode="after")
    def _in_place(self) -> ContainerMove:
        if self.shared_layer is not None and self.image_digest is None:
            raise ValueError("shared_layer: only for a container from an image")
        if self.shared_rootfs is not None and self.image_digest is not None:
            raise ValueError("shared_rootfs: a container from an image has shared_layer")
        return self

    @property
    def in_place(self) -> bool:
        """Its writable state stays where it is (nothing of it is sent)."""
        return self.shared_layer is not None or self.shared_rootfs is not None


class IncomingOpen(_Request):
    id: str = Field(pattern=MIGRATION_ID_PATTERN)
    workload: WorkloadName
    strategy: Strategy
    needed_bytes: int = Field(ge=0, le=MAX_BYTES)
    lazy_source: Endpoint | None = None
    #: the workload's registry entry on the source, adopted here after the commit
    argv: list[str] = Field(default_factory=list)
    #: the permission bits of the workload's data directory (CRIU checks them)
    data_mode: int = Field(default=0o700, ge=0, le=0o7777)
    #: where the source wrote the pages, when the hosts share a directory for them
    shared_images: AbsolutePath | None = None
    #: the workload's own address, which comes along (its veth is re-attached here)
    net: NetSpec | None = None
    #: the page channels are TLS (both agents have certificates from one CA)
    page_tls: bool = False
    #: the source's host name: whom this host asks, through its own peers config, if
    #: it never hears the decision
    source: str | None = Field(default=None, pattern=HOST_NAME_PATTERN)
    #: a runc container, not a process tree
    container: ContainerMove | None = None


class BlobsFrom(_Request):
    """Where the destination takes the image blobs it lacks: an OCI image layout on
    storage both hosts see (``--shared-dir``), instead of over the API."""

    layout: AbsolutePath


class IncomingOpened(_Answer):
    page_server: Endpoint | None = None
    #: the image blobs this host lacks: the source sends them (``/blobs/{digest}``)
    missing_blobs: list[str] = Field(default_factory=list)
    #: opened by a peer: the secret its later calls of this migration must carry
    #: (header X-Haul-Migration-Secret; docs/security.md)
    secret: str | None = None


#: entries in one request of /entries or /remove (each body stays under the agent's limit)
ENTRIES_PER_REQUEST = 10_000
#: the longest data path or link target (Linux's PATH_MAX less the NUL)
DATA_PATH_MAX = 4095


#: the largest uid or gid (the kernel's (uid_t)-1 means "no change")
ID_MAX = 0xFFFFFFFE


class DataEntryAsk(_Request):
    """One entry of the workload's files: a ``dir`` made (or its mode set; ``opaque``,
    an overlay's upper directory's mark), a ``symlink`` (with its ``target``), a
    ``fifo``, a unix ``socket``'s file or an overlay ``whiteout`` made, or a ``file``'s
    mode set; with ``uid`` and ``gid``, its owner too (else the agent's)."""

    path: str = Field(min_length=1, max_length=DATA_PATH_MAX)
    kind: Literal["dir", "symlink", "fifo", "socket", "whiteout", "file"]
    mode: int = Field(ge=0, le=0o7777)
    target: str | None = Field(default=None, min_length=1, max_length=DATA_PATH_MAX)
    uid: int | None = Field(default=None, ge=0, le=ID_MAX)
    gid: int | None = Field(default=None, ge=0, le=ID_MAX)
    opaque: str | None = Field(default=None, pattern="^[yx]$")

    @model_validator(mode="after")
    def _owner_whole(self) -> DataEntryAsk:
        if (self.uid is None) != (self.gid is None):
            raise ValueError("uid and gid come together")
        return self

    @property
    def owner(self) -> tuple[int, int] | None:
        return None if self.uid is None or self.gid is None else (self.uid, self.gid)


class DataEntries(_Request):
    #: parents first
    entries: list[DataEntryAsk] = Field(max_length=ENTRIES_PER_REQUEST)


class DataRemoval(_Request):
    #: relative paths, deepest first (a directory is empty when its turn comes)
    paths: list[str] = Field(max_length=ENTRIES_PER_REQUEST)


class DataRemoved(_Answer):
    #: how many of the paths were there
    removed: int


class Received(_Answer):
    bytes: int


class RestoreAsk(_Request):
    lazy: bool = False


class Restored(_Answer):
    pid: int
    duration_s: float
    #: page bytes that arrived before the restore (page server or shared directory)
    pages_bytes: int = 0


# ----------------------------------------------------------------- source side


class MigrateAsk(_Request):
    workload: WorkloadName
    to: str = Field(min_length=1, max_length=63)
    strategy: Strategy = Strategy.AUTO
    max_downtime_ms: float = Field(default=300.0, gt=0, le=MAX_DOWNTIME_MS)
    max_iterations: int = Field(default=8, ge=1, le=100)
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    #: memory through this directory, which both hosts see, instead of a page server
    shared_dir: AbsolutePath | None = None
    #: hook executables on the source host, run after the agent's own [agent.hooks]
    hooks: list[str] = Field(default_factory=list, max_length=32)
    #: each of ``hooks``' time limit (default: the agent's [agent.hooks] timeout_s)
    hook_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    #: the load balancer to cut over, ``haproxy:SOCKET:BACKEND/SERVER[,addr]``
    #: (default: the source agent's [agent.lb] entry for the workload)
    lb: str | None = Field(default=None, max_length=1024)


class CheckView(_Answer):
    """Pre-flight only: would this migration go, and how."""

    ok: bool
    workload: str
    source: str
    dest: str
    strategy: str = ""
    #: why that strategy (auto: what the hosts allow)
    strategy_reason: str = ""
    problems: list[str] = Field(default_factory=list)
    workload_bytes: int = 0
    source_criu: str = ""
    dest_criu: str = ""
    #: each host's container runtime, e.g. ``runc 1.1.5+ds1`` (empty: none there, or
    #: not asked: a source reports its runtime for a container only)
    source_runtime: str = ""
    dest_runtime: str = ""


class EventView(_Answer):
    t_s: float
    phase: str
    event: str


class StatsView(_Answer):
    strategy: str
    iterations: int
    bytes_sent: int
    dump_bytes: int
    transfer_bytes: int
    frozen_ms: float | None
    expected_downtime_ms: float | None
    pages_sent: int = 0
    throughput_bytes_per_s: float | None = None
    dirty_rate_bytes_per_s: float | None = None
    #: why this strategy (auto: what the hosts allow)
    strategy_reason: str = ""
    #: rounds of the workload's files sent while it ran, and their bytes (what changed
    #: after the last round went frozen, in transfer_bytes)
    files_rounds: int = 0
    files_presync_bytes: int = 0


class MigrationView(_Answer):
    id: str
    workload: str
    source: str
    dest: str
    phase: str
    strategy: str
    committed: bool
    finished: bool
    #: how it ended: done, rolled-back, refused, failed (empty while it runs)
    outcome: str = ""
    reason: str = ""
    problems: list[str] = Field(default_factory=list)
    elapsed_s: float
    stats: StatsView
    events: list[EventView] = Field(default_factory=list)


class MigrationList(_Answer):
    migrations: list[MigrationView]
