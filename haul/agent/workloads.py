"""The workloads an agent runs on its host, and the registry file that outlives the agent.

A workload is a process tree started by :func:`haul.workload.proctree.start_tree`
inside the host's namespaces, its log in ``STATE/workloads/NAME/log``; or (runtime
``runc``) an OCI container run by runc (haul/agent/containers.py), its root PID the
container's init, its details in the record's ``container``. The
registry (``STATE/workloads.json``) maps each name to its root PID, the
kernel's start time of that PID, its command and when it started; it is
rewritten atomically (temporary file, fsync, rename, fsync of the directory)
after every change, so a restarted agent still knows what it started, and it
never mistakes a reused PID for its workload (the start time would differ).
A name is taken from the moment a start begins until its tree is killed, in the host's
one registry of names (haul/agent/names.py), which incoming migrations share: a name an
arriving copy holds cannot be started or adopted here, and the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from haul.agent.containers import (
    DEFAULT_RUNC_ROOT,
    ContainerRecord,
    Containers,
    ContainerSettings,
    StartedContainer,
)
from haul.agent.models import (
    WORKLOAD_NAME_RE,
    NetSpec,
    Runtime,
    WorkloadSpec,
    WorkloadStatus,
    WorkloadView,
)
from haul.agent.names import ADOPTING, REMOVING, STARTING, WORKLOAD, Names
from haul.agent.wire import BadRequest, Conflict, NotFound
from haul.errors import HaulError, UsageError, WorkloadError
from haul.net import veth
from haul.net.spec import WorkloadNet
from haul.nsexec import HOST, HostNs
from haul.procfs import state
from haul.workload.proctree import ProcessTree, start_tree

log = logging.getLogger(__name__)

REGISTRY_NAME = "workloads.json"
REGISTRY_VERSION = 1
KILL_TIMEOUT_S = 10.0


class StartTree(Protocol):
    """How a workload tree is started: :func:`start_tree`; tests pass one that needs no root."""

    async def __call__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        host: HostNs = ...,
        cwd: Path = ...,
        net: bool = ...,
    ) -> ProcessTree: ...


class WorkloadRecord(BaseModel):
    """One registry entry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    argv: list[str]
    root_pid: int
    #: field 22 of /proc/PID/stat when it started: tells the workload from a reused PID
    start_ticks: int
    started_at: datetime
    cwd: str
    data_dir: str | None
    log_path: str
    #: its own address (it runs in a network namespace of its own), or None
    net: NetSpec | None = None
    runtime: Runtime = "process"
    #: runtime runc: the container (what a migration driver needs of it)
    container: ContainerRecord | None = None

    @model_validator(mode="after")
    def _container_iff_runc(self) -> WorkloadRecord:
        if (self.runtime == "runc") != (self.container is not None):
            raise ValueError("a runc workload has a container record, and only it")
        return self


class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    workloads: list[WorkloadRecord]


def _nspid(pid: int) -> list[str] | None:
    """The PID in each namespace from this one down (/proc/PID/status NSpid), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[1:]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (None if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # fields after the command (which may hold spaces and parentheses): state is field 3
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19])


def check_name(name: str) -> str:
    if not WORKLOAD_NAME_RE.fullmatch(name):
        raise BadRequest(
            f"bad workload name {name!r}: 1-63 of a-z 0-9 _ . -, starting with a letter or digit",
            code="bad_name",
        )
    return name


def status_of(record: WorkloadRecord) -> WorkloadStatus:
    letter = state(record.root_pid)
    if letter is None or letter in ("Z", "X") or start_ticks(record.root_pid) != record.start_ticks:
        return WorkloadStatus.GONE
    if letter in ("T", "t"):
        return WorkloadStatus.STOPPED
    return WorkloadStatus.RUNNING


def view_of(record: WorkloadRecord, status: WorkloadStatus | None = None) -> WorkloadView:
    """The record as the API shows it; ``status`` from runc for a container (see
    :meth:`WorkloadManager.view`), else read from /proc."""
    return WorkloadView(
        name=record.name,
        argv=record.argv,
        root_pid=record.root_pid,
        started_at=record.started_at,
        status=status if status is not None else status_of(record),
        cwd=record.cwd,
        data_dir=record.data_dir,
        log_path=record.log_path,
        net=record.net,
        runtime=record.runtime,
        image=record.container.image if record.container is not None else None,
    )


def workload_net(spec: NetSpec | None) -> WorkloadNet | None:
    """The checked network of a request or record (BadRequest for bad input)."""
    if spec is None:
        return None
    try:
        return WorkloadNet.parse(spec.address, spec.port, spec.gateway)
    except UsageError as exc:
        raise BadRequest(str(exc), code="bad_net") from None


def net_spec(net: WorkloadNet | None) -> NetSpec | None:
    """The wire/registry form of a workload's network."""
    if net is None:
        return None
    return NetSpec(
        address=str(net.address),
        port=net.port,
        gateway=str(net.gateway) if net.gateway is not None else None,
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Registry:
    """The registry file: read whole, written whole and atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, WorkloadRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise WorkloadError(
                f"cannot read the workload registry {self.path}: {exc.strerror}"
            ) from exc
        try:
            data = _RegistryFile.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise WorkloadError(
                f"the workload registry {self.path} is damaged ({first['msg']}); "
                "fix or remove it (its workloads are then no longer known)"
            ) from None
        if data.version != REGISTRY_VERSION:
            raise WorkloadError(
                f"the workload registry {self.path} has version "
                f"{data.version}; this agent reads {REGISTRY_VERSION}"
            )
        return {r.name: r for r in data.workloads}

    def save(self, records: Mapping[str, WorkloadRecord]) -> None:
        data = _RegistryFile(
            version=REGISTRY_VERSION, workloads=sorted(records.values(), key=lambda r: r.name)
        )
        text = data.model_dump_json(indent=1) + "\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise WorkloadError(
                f"cannot write the workload registry {self.path}: {exc.strerror}"
            ) from exc


class WorkloadManager:
    """Starts, lists and kills this host's workloads; owns the registry.

    No I/O happens until :meth:`open`.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        host: HostNs = HOST,
        start: StartTree = start_tree,
        kill_timeout_s: float = KILL_TIMEOUT_S,
        bridge: str | None = None,
        containers: ContainerSettings | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.host = host
        #: where workloads with an address of their own are attached (None: nowhere)
        self.bridge = bridge
        self._start = start
        self.kill_timeout_s = kill_timeout_s
        self.registry = Registry(state_dir / REGISTRY_NAME)
        self._records: dict[str, WorkloadRecord] = {}
        #: trees this agent started (it holds their launchers); others are known by PID only
        self._trees: dict[str, ProcessTree] = {}
        #: every name on this host and who holds it: workloads (started, being started,
        #: adopted or removed) and the copies incoming migrations bring
        self.names = Names()
        #: addresses of workloads being started right now
        self._addresses_busy: set[str] = set()
        self._lock = asyncio.Lock()
        self.containers = Containers(
            containers if containers is not None else ContainerSettings.default(state_dir),
            bridge=bridge,
        )

    @property
    def workloads_dir(self) -> Path:
        return self.state_dir / "workloads"

    def directory(self, name: str) -> Path:
        return self.workloads_dir / check_name(name)

    async def open(self) -> None:
        """Create the directories and read the registry a previous agent left."""
        self.workloads_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._records = await asyncio.to_thread(self.registry.load)
        for record in self._records.values():
            self.names.claim(record.name, WORKLOAD)
            log.info(
                "known workload %s: root pid %d, %s",
                record.name,
                record.root_pid,
                status_of(record).value,
            )

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[WorkloadRecord]:
        return sorted(self._records.values(), key=lambda r: r.name)

    def get(self, name: str) -> WorkloadRecord:
        record = self._records.get(check_name(name))
        if record is None:
            raise NotFound(f"no workload {name!r} on this host", code="no_workload")
        return record

    def net(self, name: str) -> WorkloadNet | None:
        """The workload's own address, or None when it shares the host's network."""
        return workload_net(self.get(name).net)

    def check_net(self, net: WorkloadNet) -> None:
        """Raise unless a workload (started or arriving) may have ``net`` here."""
        if self.bridge is None:
            raise BadRequest(
                "this host gives workloads no addresses of their own: its agent has no "
                "bridge configured (agent.bridge in haul.toml)",
                code="no_bridge",
            )
        if net.ip in self._addresses_busy:
            raise Conflict(
                f"address {net.ip} is being given to another workload on this host",
                code="address_taken",
            )
        for other in self._records.values():
            theirs = workload_net(other.net)
            if theirs is not None and theirs.address.ip == net.address.ip:
                raise Conflict(
                    f"address {net.ip} is taken by workload {other.name} on this host",
                    code="address_taken",
                )

    def tree(self, name: str) -> ProcessTree:
        """The workload's tree (with its launcher when this agent started it)."""
        record = self.get(name)
        tree = self._trees.get(name)
        if tree is None or tree.root_pid != record.root_pid:
            tree = ProcessTree(record.root_pid, log_path=Path(record.log_path))
        return tree

    async def start(self, spec: WorkloadSpec) -> WorkloadRecord:
        name = check_name(spec.name)
        self.names.claim(name, STARTING)
        try:
            return await self._start_registered(name, spec)
        finally:
            self.names.release(name, STARTING)  # registered: it holds it as a workload

    async def _start_registered(self, name: str, spec: WorkloadSpec) -> WorkloadRecord:
        directory = self.directory(name)
        cwd = Path(spec.data_dir) if spec.data_dir is not None else directory
        if spec.data_dir is not None and not await self._host_has_dir(cwd):
            raise BadRequest(f"data_dir {cwd} is not a directory on this host", code="no_data_dir")
        net = workload_net(spec.net)
        if net is not None:
            async with self._lock:
                self.check_net(net)
                self._addresses_busy.add(net.ip)
        try:
            if spec.runtime == "runc":
                return await self._start_container(name, spec, net)
            return await self._start_tree(name, spec, cwd, net)
        finally:
            if net is not None:
                self._addresses_busy.discard(net.ip)

    async def _start_container(
        self, name: str, spec: WorkloadSpec, net: WorkloadNet | None
    ) -> WorkloadRecord:
        started = await self.containers.start(name, spec, net)
        try:
            record = await self.register_container(name, started, spec.net, replacing=STARTING)
        except BaseException:
            await asyncio.shield(self._remove_container_quietly(name, started.record))
            raise
        log.info(
            "started container %s: pid %d, %s (image %s; prepared in %.3f s, runc run %.3f s)",
            name,
            started.pid,
            started.record.image or started.record.bundle,
            "from the cache"
            if started.unpack_s is None
            else f"unpacked in {started.unpack_s:.3f} s",
            started.prepare_s,
            started.run_s,
        )
        return record

    async def register_container(
        self, name: str, started: StartedContainer, net: NetSpec | None, *, replacing: str
    ) -> WorkloadRecord:
        """Register a container running here (started, adopted, or restored by a
        migration: its record says where everything is); the name passes from its holder
        ``replacing`` to the workload (Conflict if someone else holds it)."""
        ticks = start_ticks(started.pid)
        if ticks is None:
            raise WorkloadError(f"container {name} exited as soon as it started")
        record = WorkloadRecord(
            name=name,
            argv=started.argv,
            root_pid=started.pid,
            start_ticks=ticks,
            started_at=datetime.now(UTC),
            cwd=started.record.bundle,
            data_dir=None,
            # runc gives a container /dev/null as stdio (CRIU can dump that, not a host file)
            log_path=os.devnull,
            net=net,
            runtime="runc",
            container=started.record,
        )
        await self._register(record, replacing)
        return record

    async def _register(
        self, record: WorkloadRecord, replacing: str, tree: ProcessTree | None = None
    ) -> None:
        """Write ``record`` into the registry; its name passes from ``replacing`` to the
        workload at once, and back if the registry cannot be written."""
        name = record.name
        async with self._lock:
            self.names.claim(name, WORKLOAD, replacing=replacing)
            try:
                records = {**self._records, name: record}
                await asyncio.to_thread(self.registry.save, records)
            except BaseException:
                self.names.claim(name, replacing, replacing=WORKLOAD)
                raise
            self._records = records
            if tree is not None:
                self._trees[name] = tree

    async def _remove_container_quietly(self, name: str, container: ContainerRecord) -> None:
        try:
            if container.owned:
                await self.containers.remove(name, container)
        except HaulError as exc:
            log.error("could not remove unregistered container %s: %s", name, exc.one_line())

    async def _start_tree(
        self, name: str, spec: WorkloadSpec, cwd: Path, net: WorkloadNet | None
    ) -> WorkloadRecord:
        directory = self.directory(name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_path = directory / "log"
        if net is None:
            tree = await self._start(list(spec.argv), log_path=log_path, host=self.host, cwd=cwd)
        else:
            tree = await self._start(
                list(spec.argv), log_path=log_path, host=self.host, cwd=cwd, net=True
            )
        try:
            if net is not None and self.bridge is not None:
                await veth.attach(name, tree.root_pid, net, self.bridge)
            ticks = start_ticks(tree.root_pid)
            if ticks is None:
                raise WorkloadError(f"workload {name} exited as soon as it started; see {log_path}")
            record = WorkloadRecord(
                name=name,
                argv=list(spec.argv),
                root_pid=tree.root_pid,
                start_ticks=ticks,
                started_at=datetime.now(UTC),
                cwd=str(cwd),
                data_dir=spec.data_dir,
                log_path=str(log_path),
                net=spec.net,
            )
            await self._register(record, STARTING, tree)
        except BaseException:
            # not registered: nobody would know of this tree, so it must not outlive the start
            await asyncio.shield(self._kill_quietly(tree))
            raise
        log.info("started workload %s: root pid %d: %s", name, tree.root_pid, " ".join(spec.argv))
        return record

    async def _host_has_dir(self, path: Path) -> bool:
        """Whether ``path`` is a directory as the host (inside its namespaces) sees it."""
        if not self.host.prefix():
            return path.is_dir()
        proc = await asyncio.create_subprocess_exec(
            *self.host.prefix(),
            "test",
            "-d",
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await proc.wait() == 0

    async def _kill_quietly(self, tree: ProcessTree) -> None:
        try:
            await tree.kill(self.kill_timeout_s)
        except WorkloadError as exc:
            log.error("could not kill an unregistered workload tree: %s", exc.one_line())

    async def remove(self, name: str) -> WorkloadView:
        """Kill the workload's tree (when it is still the one this agent started) and forget it."""
        record = self.get(name)
        try:
            self.names.claim(name, REMOVING, replacing=WORKLOAD)
        except Conflict:
            raise Conflict(
                f"workload {name!r} is being started or removed", code="workload_busy"
            ) from None
        removed = False
        try:
            if record.container is not None:
                status = await self.containers.status(record.container)
                await self.containers.remove(name, record.container)
            else:
                status = status_of(record)
                if status is not WorkloadStatus.GONE:
                    await self.tree(name).kill(self.kill_timeout_s)
            async with self._lock:
                records = {k: v for k, v in self._records.items() if k != name}
                await asyncio.to_thread(self.registry.save, records)
                self._records = records
                self._trees.pop(name, None)
            removed = True
            await asyncio.to_thread(shutil.rmtree, self.directory(name), True)
        finally:
            if removed:
                self.names.release(name, REMOVING)
            else:
                self.names.claim(name, WORKLOAD, replacing=REMOVING)
        log.info("removed workload %s (root pid %d, was %s)", name, record.root_pid, status.value)
        return view_of(record, WorkloadStatus.GONE)

    async def adopt(
        self,
        name: str,
        tree: ProcessTree,
        argv: list[str],
        net: NetSpec | None = None,
        *,
        replacing: str,
    ) -> WorkloadRecord:
        """Register a tree that runs here (arrived by migration, or adopted by PID: its
        files are here already); the name passes from its holder ``replacing``."""
        name = check_name(name)
        ticks = start_ticks(tree.root_pid)
        if ticks is None:
            raise WorkloadError(f"the migrated workload {name} is not running here")
        directory = self.directory(name)
        record = WorkloadRecord(
            name=name,
            argv=list(argv),
            root_pid=tree.root_pid,
            start_ticks=ticks,
            started_at=datetime.now(UTC),
            cwd=str(directory),
            data_dir=None,
            log_path=str(directory / "log"),
            net=net,
        )
        await self._register(record, replacing, tree)
        log.info("adopted migrated workload %s: root pid %d", name, tree.root_pid)
        return record

    async def adopt_pid(self, pid: int, name: str | None) -> WorkloadRecord:
        """Register a tree this agent did not start, by its root PID (``pid:PID``).

        CRIU moves a tree whose root is the init of its own PID namespace; a process
        in the host's PID namespace is refused (start such workloads with haul run)."""
        name = check_name(name or f"pid-{pid}")
        nspid = _nspid(pid)
        if nspid is None:
            raise NotFound(f"no process {pid} on this host", code="no_process")
        if len(nspid) < 2 or nspid[-1] != "1":
            raise BadRequest(
                f"process {pid} is not the init of its own PID namespace; haul moves such "
                "trees only (start workloads with 'haul run')",
                code="not_a_tree",
            )
        try:
            argv = [
                a.decode(errors="replace")
                for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if a
            ]
        except OSError:
            argv = []
        self.names.claim(name, ADOPTING)
        try:
            self.directory(name).mkdir(parents=True, exist_ok=True, mode=0o700)
            return await self.adopt(
                name, ProcessTree(pid), argv or [f"pid:{pid}"], replacing=ADOPTING
            )
        finally:
            self.names.release(name, ADOPTING)

    async def adopt_container(
        self, container_id: str, runc_root: Path | None, name: str | None
    ) -> WorkloadRecord:
        """Register a runc container someone started (``runc:ID``) once it is known to be
        one runc and CRIU can checkpoint here; haul then owns the container, not its
        bundle. The name defaults to the container's ID."""
        if name is None and not WORKLOAD_NAME_RE.fullmatch(container_id):
            raise BadRequest(
                f"container ID {container_id!r} is not a workload name; give one (--name)",
                code="bad_name",
            )
        name = check_name(name or container_id)
        for other in self._records.values():
            if (
                other.container is not None
                and other.container.id == container_id
                and Path(other.container.runc_root) == (runc_root or DEFAULT_RUNC_ROOT)
            ):
                raise Conflict(
                    f"container {container_id} is workload {other.name} already",
                    code="workload_exists",
                )
        self.names.claim(name, ADOPTING)
        try:
            started = await self.containers.adopt(container_id, runc_root)
            record = await self.register_container(name, started, None, replacing=ADOPTING)
        finally:
            self.names.release(name, ADOPTING)
        log.info("adopted container %s as workload %s: pid %d", container_id, name, started.pid)
        return record

    async def status(self, record: WorkloadRecord) -> WorkloadStatus:
        """The workload's status now: runc's for a container, /proc's for a tree."""
        if record.container is not None:
            return await self.containers.status(record.container)
        return status_of(record)

    async def view(self, name: str) -> WorkloadView:
        record = self.get(name)
        return view_of(record, await self.status(record))

    async def views(self) -> list[WorkloadView]:
        """Every workload with its status (one ``runc list`` per runc root)."""
        records = self.records()
        found = await self.containers.statuses(r.container for r in records if r.container)
        return [
            view_of(
                r,
                found[(r.container.runc_root, r.container.id)] if r.container is not None else None,
            )
            for r in records
        ]

    async def forget(self, name: str) -> None:
        """Unregister a workload that has moved to another host (nothing is killed); a
        container's mounts, namespace, cgroup and directory here go too."""
        async with self._lock:
            gone = self._records.get(name)
            records = {k: v for k, v in self._records.items() if k != name}
            await asyncio.to_thread(self.registry.save, records)
            self._records = records
            self._trees.pop(name, None)
            self.names.release(name, WORKLOAD)
        if gone is not None and gone.container is not None:
            try:
                await self.containers.release(name, gone.container)
            except HaulError as exc:
                log.error("container %s moved away; %s", name, exc.one_line())

    async def aclose(self) -> None:
        """Forget the launchers; the workloads keep running (they outlive the agent)."""
        self._trees.clear()
