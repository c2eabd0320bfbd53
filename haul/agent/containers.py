"""runc containers as an agent's workloads: start, look at, remove, adopt.

The agent owns one runc root (``STATE/runc`` unless ``agent.runc.root`` says
otherwise), an image cache (``STATE/images``, haul/runtime/images.py) and one
directory per container it starts (``STATE/containers/NAME``, haul/runtime/bundle.py).
Every runc call gets haul's CRIU (``runc --criu``). A container's ID is its workload's
name; an adopted one keeps its own ID and runc root.

What a migration driver needs of a container is in its :class:`ContainerRecord` (kept
in the workload registry): its ID and runc root, its bundle, its image (reference,
manifest digest, layers), its writable layer (``rootfs_upper``, all the container wrote)
over the image's rootfs (``rootfs_lower``), its network namespace's path and its cgroup.
The host paths it mounts read-only (``haul run --mount``, haul/runtime/mounts.py) are in
its config.json, checked against the allowed roots like its image, bundle or rootfs.

A start that fails part way removes whatever it made, in reverse order; so does
:meth:`Containers.remove`, which also kills the container (``runc kill KILL``, then
``runc delete --force``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from haul.agent.models import WorkloadSpec, WorkloadStatus
from haul.agent.wire import BadRequest, NotFound
from haul.errors import ConfigError, ContainerError, HaulError, NoSuchContainer, UsageError
from haul.install_record import criu_binary, runc_binary
from haul.net import veth
from haul.net.spec import WorkloadNet
from haul.nsexec import HOST, HostNs
from haul.procfs import state as proc_state
from haul.runtime import dumpable
from haul.runtime.bundle import (
    ContainerDirs,
    Limits,
    cgroups_path,
    create_netns,
    inside_roots,
    mount_overlay,
    mount_points,
    read_config,
    remove_cgroups,
    remove_netns,
    root_path,
    runtime_config,
    unmount,
    write_config,
    write_criu_config,
)
from haul.runtime.images import ImageCache, ImageRef
from haul.runtime.mounts import BindMount, add_mounts, check_sources
from haul.runtime.runc import ContainerState, Runc
from haul.runtime.sharedlayer import SharedLayer

log = logging.getLogger(__name__)

#: runc's own default root for root, where a plain ``runc run`` keeps its containers
DEFAULT_RUNC_ROOT = Path("/run/runc")


class ContainerRecord(BaseModel):
    """A runc container, as the workload registry keeps it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: runc's container ID (the workload's name, unless the container was adopted)
    id: str
    runc_root: str
    #: the bundle runc runs (haul's own, unless adopted)
    bundle: str
    #: ``oci:LAYOUT:TAG`` as given, or None (a bundle, a rootfs, an adopted container)
    image: str | None = None
    #: the image's manifest digest, and its layers' digests (lowest first)
    image_digest: str | None = None
    layer_digests: list[str] = []
    #: the root filesystem runc runs: the overlay's mount point, or the one given
    rootfs: str
    #: the overlay's writable layer (everything the container wrote), or None
    rootfs_upper: str | None = None
    #: the directory on shared storage that holds its writable layer (``haul run
    #: --shared-dir``; haul/runtime/sharedlayer.py), or None: the layer is in the
    #: container's directory here. It moves in place, and goes only with the container
    shared_layer: str | None = None
    #: the image's unpacked rootfs in this host's cache (read-only), or None
    rootfs_lower: str | None = None
    #: where its own network namespace is kept (a bind mount), or None: the host's
    netns: str | None = None
    #: ``linux.cgroupsPath``
    cgroups_path: str
    #: the CRIU configuration file its ``org.criu.config`` annotation names, when haul
    #: made it (and rewrites it before each checkpoint); None for an adopted container
    criu_config: str | None = None
    #: haul made its bundle, rootfs mount and namespace (and removes them); False when
    #: adopted: only the container itself is haul's to kill
    owned: bool = True


@dataclass(frozen=True, slots=True)
class ContainerSettings:
    """Where an agent keeps its containers and what it lets them use."""

    state_dir: Path
    runc_root: Path
    #: the parent of every container's cgroup on this host (hosts sharing a machine differ)
    cgroup_parent: str
    #: where image layouts, bundles and root filesystems may be, as the host sees them
    allowed_roots: tuple[Path, ...] = ()
    criu: Callable[[], Path] = criu_binary
    runc_binary: Callable[[], Path] = runc_binary
    #: the host's namespaces, when the agent is outside them (then it runs no containers)
    host: HostNs = HOST
    #: False: this host runs no containers (``agent.runc.enabled``)
    enabled: bool = True
    #: this host's name (``agent.host``): its overlay work directory in a shared layer
    host_name: str = field(default_factory=socket.gethostname)

    @classmethod
    def default(cls, state_dir: Path) -> ContainerSettings:
        return cls(
            state_dir=state_dir,
            runc_root=state_dir / "runc",
            cgroup_parent=f"/haul/{socket.gethostname()}",
        )

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def containers_dir(self) -> Path:
        return self.state_dir / "containers"


@dataclass(frozen=True, slots=True)
class PreparedContainer:
    """A container ready to run (or to be restored into) on this host."""

    record: ContainerRecord
    #: its config.json, as written
    config: dict[str, Any]
    #: seconds unpacking its image took (None: it was cached, or there is none)
    unpack_s: float | None
    #: seconds the whole preparation took (the unpack included)
    prepare_s: float


@dataclass(frozen=True, slots=True)
class StartedContainer:
    record: ContainerRecord
    pid: int
    argv: list[str]
    #: seconds: unpacking the image (None: it was cached, or there is none), preparing
    #: everything (the unpack included), and ``runc run -d``
    unpack_s: float | None = None
    prepare_s: float = 0.0
    run_s: float = 0.0


def status_of_state(state: ContainerState) -> WorkloadStatus:
    """A workload status from runc's: paused, stopped (also created, and a running
    container whose init is SIGSTOPped, as a copy restored stopped is), running."""
    if state.status == "paused":
        return WorkloadStatus.PAUSED
    if state.status == "running":
        letter = proc_state(state.pid) if state.pid else None
        if letter in ("T", "t"):
            return WorkloadStatus.STOPPED
        return WorkloadStatus.RUNNING if letter not in (None, "Z", "X") else WorkloadStatus.GONE
    return WorkloadStatus.STOPPED


def _args_of(config: dict[str, Any]) -> list[str]:
    args = config.get("process", {}).get("args") or []
    return [str(a) for a in args]


class Containers:
    """This host's runc containers (the registry is the WorkloadManager's)."""

    def __init__(self, settings: ContainerSettings, *, bridge: str | None = None) -> None:
        self.settings = settings
        self.bridge = bridge
        self.images = ImageCache(settings.images_dir)

    def runc(self, root: Path | None = None) -> Runc:
        """runc for ``root`` (default: the agent's), with haul's CRIU."""
        return Runc(
            root if root is not None else self.settings.runc_root,
            criu=self.settings.criu(),
            binary=self.settings.runc_binary(),
        )

    def dirs(self, name: str) -> ContainerDirs:
        return ContainerDirs(self.settings.containers_dir / name)

    def why_none(self) -> str | None:
        """Why this host runs no containers, whatever its runc (None: it may)."""
        if not self.settings.enabled:
            return "its agent.runc.enabled is false"
        if self.settings.host.prefix():
            return (
                "its agent runs outside its host's namespaces (agent.host_ns); run it inside them"
            )
        return None

    def check_runs_containers(self) -> None:
        why = self.why_none()
        if why is not None:
            raise ContainerError(f"this host runs no containers: {why}")

    async def runtime(self) -> tuple[str | None, str]:
        """runc's version here, or None and why this host runs no containers (its runc
        is missing or broken, or it runs none at all)."""
        why = self.why_none()
        if why is not None:
            return None, why
        try:
            return await self.runc().version(), ""
        except HaulError as exc:  # no runc configured or installed; one that fails
            return None, exc.one_line()

    async def name_taken(self, name: str) -> str | None:
        """What of a container ``name`` is on this host already (runc knows one under
        the agent's root, or its directory is there), or None: it may arrive."""
        root = self.settings.runc_root
        if root.is_dir() and self.why_none() is None:
            # without a usable runc, nothing can be asked (the pre-flight says so apart)
            with contextlib.suppress(NoSuchContainer, ConfigError):
                state = await self.runc().state(name)
                return f"runc has a container {name} ({state.status}) under {root}"
        if self.dirs(name).directory.exists():
            return f"a container directory {self.dirs(name).directory} is there"
        return None

    # ------------------------------------------------------------ start

    async def start(
        self, name: str, spec: WorkloadSpec, net: WorkloadNet | None
    ) -> StartedContainer:
        """Make the container's bundle, mounts and namespace, and ``runc run -d`` it."""
        prepared = await self.prepare(name, spec, net)
        runc = self.runc()
        started = time.monotonic()
        try:
            runc.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            dirs = self.dirs(name)
            pid = await runc.run_detached(name, dirs.bundle, pid_file=dirs.pid_file)
        except BaseException:
            await asyncio.shield(self._undo_start(runc, name, prepared.record))
            raise
        return StartedContainer(
            prepared.record,
            pid,
            _args_of(prepared.config),
            unpack_s=prepared.unpack_s,
            prepare_s=prepared.prepare_s,
            run_s=time.monotonic() - started,
        )

    async def prepare(
        self, name: str, spec: WorkloadSpec, net: WorkloadNet | None
    ) -> PreparedContainer:
        """Everything a container ``name`` needs on this host but running it: the image
        unpacked, its directory, network namespace (with ``net``'s veth and address),
        overlay rootfs, CRIU configuration file and config.json (this host's cgroup and
        paths). Then either :meth:`start` runs it, or a migration restores into it; on
        failure nothing is left, and :meth:`release` removes it all."""
        self.check_runs_containers()
        begun = time.monotonic()
        roots = self.settings.allowed_roots
        if spec.image is not None:  # refused before anything is read or made
            inside_roots(ImageRef.parse(spec.image).layout, roots, "image layout")
        for what, given in (("bundle", spec.bundle), ("rootfs", spec.rootfs)):
            if given is not None:
                inside_roots(Path(given), roots, what)
        mounts = check_sources(
            [BindMount(Path(m.source), m.destination) for m in spec.mounts], roots
        )
        layer = self._shared_layer(name, spec)
        runc = self.runc()
        dirs = self.dirs(name)
        cgroup = cgroups_path(self.settings.cgroup_parent, name)
        if dirs.directory.exists():
            # the name is not registered (the manager checked): a start that died left these
            log.warning("container %s: removing what an earlier start left", name)
            with contextlib.suppress(NoSuchContainer):
                await runc.delete(name, force=True)
            await self._release(name, dirs, cgroup=cgroup)
        lower: Path | None = None
        image_digest: str | None = None
        layers: list[str] = []
        readonly: bool | None = None
        unpack_s: float | None = None
        if spec.image is not None:
            ref = ImageRef.parse(spec.image)
            cached = await self.images.unpack(ref)
            unpack_s = cached.unpack_s
            source = read_config(cached.config, f"image {ref}")
            rootfs = dirs.rootfs
            lower = cached.rootfs
            image_digest = cached.manifest.digest
            layers = list(cached.manifest.layer_digests)
        elif spec.bundle is not None:
            bundle = inside_roots(Path(spec.bundle), roots, "bundle")
            source = read_config(bundle / "config.json", f"bundle {spec.bundle}")
            rootfs = inside_roots(root_path(source, bundle), roots, "the bundle's rootfs")
            if not rootfs.is_dir():
                raise UsageError(f"the bundle's rootfs {rootfs} is not a directory")
        else:
            assert spec.rootfs is not None
            rootfs = inside_roots(Path(spec.rootfs), roots, "rootfs")
            if not rootfs.is_dir():
                raise UsageError(f"rootfs {spec.rootfs} is not a directory")
            source = await self._default_config(runc, name)
            readonly = False
        netns = dirs.netns if net is not None else None
        config = runtime_config(
            source,
            rootfs=rootfs,
            cgroups_path=cgroup,
            criu_config=dirs.criu_config,
            netns=netns,
            args=spec.argv or None,
            readonly=readonly,
            limits=Limits(memory_bytes=spec.memory_bytes, cpus=spec.cpus, pids=spec.pids_limit),
        )
        add_mounts(config, mounts)
        record = ContainerRecord(
            id=name,
            runc_root=str(runc.root),
            bundle=str(dirs.bundle),
            image=spec.image,
            image_digest=image_digest,
            layer_digests=layers,
            rootfs=str(rootfs),
            rootfs_upper=str(self._upper(dirs, layer)) if lower is not None else None,
            rootfs_lower=str(lower) if lower is not None else None,
            shared_layer=str(layer.directory) if layer is not None else None,
            netns=str(netns) if netns is not None else None,
            cgroups_path=cgroup,
            criu_config=str(dirs.criu_config),
        )
        if layer is not None:
            layer.create()  # refused when taken meanwhile, before anything else is made
        try:
            await self._make(name, dirs, net, lower, config, layer)
        except BaseException:
            await asyncio.shield(
                self._release_quietly(name, dirs, cgroup=cgroup, layer=layer, drop_layer=True)
            )
            raise
        return PreparedContainer(record, config, unpack_s, time.monotonic() - begun)

    def _shared_layer(self, name: str, spec: WorkloadSpec) -> SharedLayer | None:
        """Where ``haul run --shared-dir`` puts the container's writable layer (checked
        before anything is made: in the allowed roots, there, not taken)."""
        if spec.shared_dir is None:
            return None
        shared = inside_roots(
            Path(spec.shared_dir), self.settings.allowed_roots, "shared directory"
        )
        if not shared.is_dir():
            raise UsageError(f"shared directory {spec.shared_dir} does not exist here")
        layer = SharedLayer.of(shared, name)
        layer.check_free()
        return layer

    @staticmethod
    def _upper(dirs: ContainerDirs, layer: SharedLayer | None) -> Path:
        return layer.upper if layer is not None else dirs.upper

    def _work(self, dirs: ContainerDirs, layer: SharedLayer | None) -> Path:
        return layer.work(self.settings.host_name) if layer is not None else dirs.work

    async def _make(
        self,
        name: str,
        dirs: ContainerDirs,
        net: WorkloadNet | None,
        lower: Path | None,
        config: dict[str, Any],
        layer: SharedLayer | None = None,
    ) -> None:
        dirs.directory.mkdir(parents=True, mode=0o700)
        if net is not None:
            if self.bridge is None:
                raise ContainerError("this host has no bridge for workload addresses")
            await create_netns(dirs.netns)
            await veth.attach_netns(name, str(dirs.netns), net, self.bridge)
        if lower is not None:
            await mount_overlay(
                lower=lower,
                upper=self._upper(dirs, layer),
                work=self._work(dirs, layer),
                target=dirs.rootfs,
                shared=layer is not None,
            )
        write_criu_config(dirs.criu_config, own_netns=net is not None)
        write_config(dirs.config, config)

    async def _default_config(self, runc: Runc, name: str) -> dict[str, Any]:
        """runc's default configuration (``runc spec``), for a bare rootfs."""
        self.settings.containers_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        scratch = self.settings.containers_dir / f".spec-{name}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            await runc.spec(scratch)
            return read_config(scratch / "config.json", "runc spec")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # ------------------------------------------------------------ remove

    async def remove(self, name: str, record: ContainerRecord) -> None:
        """Kill and delete the container, then remove what haul made for it."""
        await self.stop(record)
        if record.owned:
            await self._release(
                name,
                self.dirs(name),
                cgroup=record.cgroups_path,
                layer=_layer_of(record),
                drop_layer=True,
            )
        else:
            for problem in remove_cgroups(record.cgroups_path):
                log.warning("container %s: %s", record.id, problem)

    async def stop(self, record: ContainerRecord) -> None:
        """``runc kill KILL`` and ``runc delete --force``; a container already gone is fine."""
        runc = self.runc(Path(record.runc_root))
        with contextlib.suppress(ContainerError):  # not running (stopped), or gone
            await runc.kill(record.id)
        with contextlib.suppress(NoSuchContainer):
            await runc.delete(record.id, force=True)

    async def release(self, name: str, record: ContainerRecord) -> None:
        """Remove what haul made for a container that no longer runs here (e.g. it moved
        away): mounts, namespace, veth, cgroup, its directory, and its work directory
        in a shared layer (never the layer itself: the container runs on it elsewhere
        now). Adopted ones: nothing."""
        if record.owned:
            await self._release(
                name, self.dirs(name), cgroup=record.cgroups_path, layer=_layer_of(record)
            )

    async def _undo_start(self, runc: Runc, name: str, record: ContainerRecord) -> None:
        """After a failed or cancelled ``runc run``: whatever runc made, then the rest."""
        with contextlib.suppress(ContainerError):  # none made (the usual case)
            await runc.delete(name, force=True)
        await self._release_quietly(
            name,
            self.dirs(name),
            cgroup=record.cgroups_path,
            layer=_layer_of(record),
            drop_layer=True,
        )

    async def _release_quietly(
        self,
        name: str,
        dirs: ContainerDirs,
        *,
        cgroup: str,
        layer: SharedLayer | None = None,
        drop_layer: bool = False,
    ) -> None:
        """:meth:`_release` after a failure: its own problems are logged, not raised (the
        failure is what the caller must hear of)."""
        try:
            await self._release(name, dirs, cgroup=cgroup, layer=layer, drop_layer=drop_layer)
        except HaulError as exc:
            log.error("%s", exc.one_line())

    async def _release(
        self,
        name: str,
        dirs: ContainerDirs,
        *,
        cgroup: str,
        layer: SharedLayer | None = None,
        drop_layer: bool = False,
    ) -> None:
        """What haul made for container ``name`` here goes; with ``layer`` (on shared
        storage), this host's work directory in it, and with ``drop_layer`` the whole
        layer. Nothing is removed below a mount that is still there."""
        problems: list[str] = []
        with contextlib.suppress(HaulError):
            await veth.detach(name)
        for undo in (unmount(dirs.rootfs), remove_netns(dirs.netns)):
            try:
                await undo
            except HaulError as exc:
                problems.append(exc.one_line())
        problems += remove_cgroups(cgroup)
        mounted = [p for p in mount_points() if Path(p).is_relative_to(dirs.directory)]
        if mounted:
            problems.append(f"still mounted: {', '.join(sorted(mounted))}; {dirs.directory} kept")
        else:
            await asyncio.to_thread(shutil.rmtree, dirs.directory, True)
            if layer is not None and drop_layer:
                await asyncio.to_thread(layer.remove)
            elif layer is not None:
                await asyncio.to_thread(layer.remove_work, self.settings.host_name)
        if problems:
            raise ContainerError(
                f"container {name}: could not remove everything: {'; '.join(problems)}"
            )

    # ------------------------------------------------------------ status

    async def status(self, record: ContainerRecord) -> WorkloadStatus:
        try:
            state = await self.runc(Path(record.runc_root)).state(record.id)
        except NoSuchContainer:
            return WorkloadStatus.GONE
        return status_of_state(state)

    async def statuses(
        self, records: Iterable[ContainerRecord]
    ) -> dict[tuple[str, str], WorkloadStatus]:
        """Every record's status by (runc root, ID): one ``runc list`` per root."""
        by_root: dict[str, list[ContainerRecord]] = {}
        for record in records:
            by_root.setdefault(record.runc_root, []).append(record)
        found: dict[tuple[str, str], WorkloadStatus] = {}
        for root, group in by_root.items():
            states: dict[str, ContainerState] = {}
            if Path(root).is_dir():
                states = {s.id: s for s in await self.runc(Path(root)).list()}
            for record in group:
                state = states.get(record.id)
                found[(root, record.id)] = (
                    status_of_state(state) if state is not None else WorkloadStatus.GONE
                )
        return found

    # ------------------------------------------------------------ adopt

    async def adopt(self, container_id: str, runc_root: Path | None) -> StartedContainer:
        """Check that a container someone started under ``runc_root`` can be checkpointed
        here, and describe it; raise NotFound or BadRequest (the reasons) otherwise."""
        self.check_runs_containers()
        root = runc_root if runc_root is not None else DEFAULT_RUNC_ROOT
        runc = self.runc(root)
        try:
            state = await runc.state(container_id)
        except NoSuchContainer:
            raise NotFound(
                f"no container {container_id!r} under runc root {root} on this host",
                code="no_container",
            ) from None
        config = read_config(state.bundle / "config.json", f"container {container_id}")
        problems: list[str] = []
        if state.status != "running":
            problems.append(f"it is {state.status}, not running")
        netns: str | None = None
        if state.pid:
            problems += dumpable.stdio_problems(state.pid)
            netns, problem = dumpable.netns_problem(state.pid, config)
            if problem:
                problems.append(problem)
            freezer = dumpable.freezer_problem(state.pid)
            if freezer:
                problems.append(freezer)
        if problems:
            raise BadRequest(
                f"container {container_id} cannot be adopted: {'; '.join(problems)}",
                code="not_dumpable",
            )
        cgroup = dumpable.freezer_cgroup(state.pid) or ""
        record = ContainerRecord(
            id=container_id,
            runc_root=str(root),
            bundle=str(state.bundle),
            rootfs=str(root_path(config, state.bundle)),
            netns=netns,
            cgroups_path=cgroup,
            # the file its org.criu.config annotation names, if any, is its owner's:
            # haul's options go to its CRIU otherwise (haul/runtime/criuconf.py)
            criu_config=None,
            owned=False,
        )
        return StartedContainer(record, state.pid, _args_of(config))


def _layer_of(record: ContainerRecord) -> SharedLayer | None:
    return SharedLayer(Path(record.shared_layer)) if record.shared_layer is not None else None
