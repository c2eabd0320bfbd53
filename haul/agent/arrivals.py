"""A runc container arriving from another host: its image, its home, its record here.

The destination agent keeps the image blobs that containers bring (``STATE/images/
layouts/KEY``: an OCI image layout per image, KEY from its manifest digest). A container
from an image needs only the blobs this host lacks: :func:`missing_blobs` answers the
source, which sends them (each checked against its own digest), and
:meth:`ContainerArrival.unpack` unpacks the image into the agent's image cache once,
as ``haul run --image`` would. A container whose image is cached here already costs no
blob at all.

Its home here is what :class:`~haul.dest.runcdest.RuncDestination` restores into
(docs/containers.md): ``STATE/containers/NAME`` as for a container started here, its
root filesystem an overlay of the image (below) and its writable layer (above: what the
transport sends), or for a container without an image a plain directory of all its
files; with an address of its own, a network namespace kept by a bind mount, its veth
on this host's bridge, locked until the commit. The host paths its configuration
bind-mounts (``haul run --mount``) must be here and in this agent's allowed roots, or the
arrival is refused before anything is made.

With ``--shared-dir`` a container's writable state may be on storage both hosts see
(``ContainerMove.shared_layer`` or ``shared_rootfs``): it is used where it is, and
nothing of it arrives. The overlay here is this host's image cache under that layer's
``upper/``, with a work directory of this host's own in the layer
(haul/runtime/sharedlayer.py); a discarded arrival unmounts it and removes only that
work directory, never the layer (the source's container runs on it again). The layer
must lie in this agent's allowed roots, and so must a layout the image's missing
blobs are taken from (:func:`take_blobs`, each checked against its digest).

:class:`Arrivals` makes both for the incoming registry, and makes them again for an
agent that restarts, from what the migration's record saved (the source's
``ContainerMove``): over the home an earlier agent made, to discard it with everything
in it or to resume and register the copy restored there (haul/dest/incoming.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from haul.agent.containers import ContainerRecord, Containers, StartedContainer
from haul.agent.migration_models import ContainerMove
from haul.agent.models import NetSpec
from haul.agent.workloads import net_spec
from haul.criu.options import PageServer, TlsFiles
from haul.criu.service import Criu
from haul.dest.criudest import CriuDestination
from haul.dest.intake import write_chunks
from haul.dest.runcdest import RuncDestination
from haul.errors import ChecksumMismatch, ContainerError, HaulError, UsageError
from haul.net import lock, veth
from haul.net.spec import WorkloadNet
from haul.runtime.bundle import (
    ContainerDirs,
    cgroups_path,
    create_netns,
    inside_roots,
    mount_overlay,
    mount_points,
    remove_cgroups,
    remove_netns,
    unmount,
)
from haul.runtime.images import DIGEST_RE, INDEX_TYPE, MANIFEST_TYPE, ImageRef, blob_path
from haul.runtime.mounts import bind_mounts, check_sources
from haul.runtime.sharedlayer import SharedLayer
from haul.transport.imagecopy import sha256_of

log = logging.getLogger(__name__)

#: register_container(name, started, net, holder) of the workload manager: the name
#: passes from ``holder`` (the incoming migration) to the workload
Register = Callable[[str, StartedContainer, NetSpec | None, str], Awaitable[object]]

#: the tag under which a received image is known in its layout here
RECEIVED_TAG = "haul"


def layout_of(containers: Containers, digest: str) -> Path:
    """Where this host keeps the blobs of image ``digest``."""
    return containers.settings.images_dir / "layouts" / digest.replace(":", "-")


def missing_blobs(containers: Containers, move: ContainerMove) -> list[str]:
    """The blobs of ``move``'s image this host has neither unpacked nor kept."""
    if move.image_digest is None:
        return []
    if (containers.images.path(move.image_digest) / "rootfs").is_dir():
        return []
    layout = layout_of(containers, move.image_digest)
    return [d for d in move.blobs if not blob_path(layout, d).is_file()]


async def receive_blob(
    containers: Containers, move: ContainerMove, digest: str, chunks: AsyncIterator[bytes]
) -> int:
    """One blob of ``move``'s image, kept only if its content has that digest."""
    if move.image_digest is None or digest not in move.blobs:
        raise UsageError(f"blob {digest} is not one of this container's image")
    target = blob_path(layout_of(containers, move.image_digest), digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        size = await write_chunks(fd, chunks, h)  # in a worker thread
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    if "sha256:" + h.hexdigest() != digest:
        tmp.unlink(missing_ok=True)
        raise ChecksumMismatch(f"blob {digest} does not match its digest")
    tmp.rename(target)
    return size


def take_blobs(containers: Containers, move: ContainerMove, layout: Path) -> int:
    """The blobs of ``move``'s image this host lacks, copied from ``layout`` (an OCI
    layout on storage both hosts see, in this agent's allowed roots), each kept only if
    its content has its digest; the bytes copied."""
    layout = inside_roots(layout, containers.settings.allowed_roots, "the shared image layout")
    copied = 0
    for digest in missing_blobs(containers, move):
        source = blob_path(layout, digest)
        if not source.is_file():
            raise ContainerError(
                f"blob {digest} is not in {layout} (is it shared with the source?)"
            )
        target = blob_path(layout_of(containers, move.image_digest or ""), digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(source, tmp)
        if "sha256:" + sha256_of(tmp) != digest:
            tmp.unlink(missing_ok=True)
            raise ChecksumMismatch(f"blob {digest} in {layout} does not match its digest")
        tmp.rename(target)
        copied += target.stat().st_size
    return copied


@dataclass
class ContainerArrival:
    """What becomes of one arriving container on this host (an incoming migration's)."""

    containers: Containers
    name: str
    move: ContainerMove
    #: registers the running copy as a workload of this host
    register: Register
    net: WorkloadNet | None = None
    dirs: ContainerDirs = field(init=False)
    #: the image's rootfs here (cached), for a container from an image
    lower: Path | None = None
    _made: bool = False

    def __post_init__(self) -> None:
        self.dirs = self.containers.dirs(self.name)

    @property
    def overlay(self) -> bool:
        return self.move.image_digest is not None

    @property
    def layer(self) -> SharedLayer | None:
        """Its writable layer on shared storage, used in place (None: it arrives)."""
        shared = self.move.shared_layer
        return SharedLayer(Path(shared)) if shared is not None else None

    @property
    def upper(self) -> Path:
        """The overlay's writable layer here (a container from an image)."""
        return self.layer.upper if self.layer is not None else self.dirs.upper

    @property
    def files(self) -> Path | None:
        """Where the transport puts the container's files: its writable layer, or all
        of its root filesystem when it has no image; None when they are used in place
        on shared storage (none arrive)."""
        if self.move.in_place:
            return None
        return self.dirs.upper if self.overlay else self.dirs.directory / "rootfs"

    @property
    def rootfs(self) -> Path:
        if self.overlay:
            return self.dirs.rootfs
        if self.move.shared_rootfs is not None:
            return Path(self.move.shared_rootfs)
        return self.dirs.directory / "rootfs"

    def check_in_place(self, roots: tuple[Path, ...]) -> None:
        """A writable state used in place is in this agent's allowed roots, and here."""
        if self.layer is not None:
            inside_roots(self.layer.directory, roots, "the container's shared layer")
            self.layer.check_here()
        elif self.move.shared_rootfs is not None:
            rootfs = inside_roots(Path(self.move.shared_rootfs), roots, "the container's rootfs")
            if not rootfs.is_dir():
                raise UsageError(
                    f"the container's rootfs {rootfs} is not on this host: is the shared "
                    "directory shared with its source?"
                )

    @property
    def netns(self) -> Path | None:
        return self.dirs.netns if self.net is not None else None

    @property
    def host(self) -> str:
        return self.containers.settings.host_name

    @property
    def cgroups_path(self) -> str:
        return cgroups_path(self.containers.settings.cgroup_parent, self.name)

    def saved(self) -> dict[str, Any]:
        """What the migration's record keeps of it: the source's ``ContainerMove``."""
        return self.move.model_dump(mode="json")

    @property
    def image_bytes(self) -> int:
        return self.move.blob_bytes

    def found(self) -> None:
        """An arrival an earlier agent began (its record is written once the home's
        directory is claimed): what was made here is this one's to release, and the
        image, if it is unpacked here, is the overlay's lower layer."""
        self._made = True
        if self.move.image_digest is not None:
            cached = self.containers.images.path(self.move.image_digest) / "rootfs"
            if cached.is_dir():
                self.lower = cached

    def open(self) -> None:
        """Before any file arrives: the container's directory, empty. Refused when the
        name has one here already (a container of that name lives here)."""
        if self.dirs.directory.exists():
            raise UsageError(f"a container directory for {self.name} exists on this host")
        self.dirs.directory.mkdir(parents=True, mode=0o700)
        self._made = True
        if self.files is not None:
            self.files.mkdir(parents=True, mode=0o755)

    async def unpack(self) -> None:
        """The image, from the blobs received (or the cache), unpacked into the cache."""
        digest = self.move.image_digest
        if digest is None:
            return
        cached = self.containers.images.path(digest)
        if not (cached / "rootfs").is_dir():
            layout = layout_of(self.containers, digest)
            missing = [d for d in self.move.blobs if not blob_path(layout, d).is_file()]
            if missing:
                raise ContainerError(
                    f"image {self.move.image} lacks {len(missing)} blob(s) here: "
                    f"{', '.join(missing[:3])}"
                )
            _write_index(layout, digest)
            await self.containers.images.unpack(ImageRef(layout, RECEIVED_TAG))
        self.lower = cached / "rootfs"

    async def make(self) -> Path:
        """Right before the restore: the root filesystem (the overlay mounted) and,
        with an address of its own, the namespace made, its veth on this host's bridge,
        and locked. Returns the root filesystem's path."""
        if self.overlay:
            if self.lower is None:
                await self.unpack()
            assert self.lower is not None
            layer = self.layer
            await mount_overlay(
                lower=self.lower,
                upper=self.upper,
                work=layer.work(self.host) if layer is not None else self.dirs.work,
                target=self.dirs.rootfs,
                shared=layer is not None,
            )
        if self.net is not None:
            bridge = self.containers.bridge
            if bridge is None:
                raise ContainerError("this host has no bridge for workload addresses")
            await create_netns(self.dirs.netns)
            await veth.attach_netns(self.name, str(self.dirs.netns), self.net, bridge)
            await lock.lock(self.dirs.netns)
        return self.rootfs

    async def adopt(self, pid: int, holder: str) -> None:
        """The copy runs here now: its workload record (done already: nothing); the
        name passes from ``holder``, the incoming migration, to it."""
        await self.register(
            self.name, self.started(self.containers.runc().root, pid), net_spec(self.net), holder
        )

    async def release(self) -> None:
        """A discarded arrival: everything made for it here goes (once)."""
        if not self._made:
            return
        self._made = False
        problems: list[str] = []
        with contextlib.suppress(HaulError):
            await veth.detach(self.name)
        for undo in (unmount(self.dirs.rootfs), remove_netns(self.dirs.netns)):
            try:
                await undo
            except HaulError as exc:
                problems.append(exc.one_line())
        problems += remove_cgroups(self.cgroups_path)
        # never below a mount still there: through an overlay, that would remove the
        # container's own files (and on shared storage, the source's)
        mounted = [p for p in mount_points() if Path(p).is_relative_to(self.dirs.directory)]
        if mounted:
            problems.append(f"still mounted: {', '.join(sorted(mounted))}; kept")
        else:
            await asyncio.to_thread(_rmtree, self.dirs.directory)
            if self.layer is not None:  # this host's work directory; the layer stays
                await asyncio.to_thread(self.layer.remove_work, self.host)
        if problems:
            raise ContainerError(f"container {self.name}: {'; '.join(problems)}")

    def record(self, runc_root: Path) -> ContainerRecord:
        """Its registry record here, once it runs here."""
        return ContainerRecord(
            id=self.name,
            runc_root=str(runc_root),
            bundle=str(self.dirs.bundle),
            image=self.move.image,
            image_digest=self.move.image_digest,
            layer_digests=[],
            rootfs=str(self.rootfs),
            rootfs_upper=str(self.upper) if self.overlay else None,
            rootfs_lower=str(self.lower) if self.lower is not None else None,
            shared_layer=self.move.shared_layer,
            netns=str(self.netns) if self.netns is not None else None,
            cgroups_path=self.cgroups_path,
            criu_config=str(self.dirs.bundle / "criu.conf"),
        )

    def started(self, runc_root: Path, pid: int) -> StartedContainer:
        return StartedContainer(self.record(runc_root), pid, list(self.move.argv))


def _write_index(layout: Path, digest: str) -> None:
    """An OCI layout whose index names the received manifest under :data:`RECEIVED_TAG`."""
    if not DIGEST_RE.fullmatch(digest):
        raise UsageError(f"bad image digest {digest!r}")
    manifest = blob_path(layout, digest)
    entry: dict[str, Any] = {
        "mediaType": MANIFEST_TYPE,
        "digest": digest,
        "size": manifest.stat().st_size,
        "annotations": {"org.opencontainers.image.ref.name": RECEIVED_TAG},
    }
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [entry]}
    (layout / "index.json").write_text(json.dumps(index))


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Arrivals:
    """The incoming registry's arrivals (haul/dest/incoming.py ``ContainerArrivals``): an
    arriving container's destination port (RuncDestination restoring into its home here)
    and the arrival itself, new or rebuilt from its record after a restart."""

    def __init__(self, containers: Containers, criu: Criu, register: Register) -> None:
        self.containers = containers
        self.criu = criu
        self.register = register

    async def arrive(
        self,
        migration_id: str,
        workload: str,
        move: ContainerMove,
        net: WorkloadNet | None,
        workdir: Path,
        listen: PageServer | None,
        lazy_source: PageServer | None,
        shared_images: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> tuple[CriuDestination, ContainerArrival]:
        self.containers.check_runs_containers()
        # runc mounts the same host paths here (docs/containers.md): only those this
        # agent allows, and only if they are here
        check_sources(bind_mounts(move.config), self.containers.settings.allowed_roots)
        arrival = ContainerArrival(self.containers, workload, move, self.register, net)
        arrival.check_in_place(self.containers.settings.allowed_roots)
        arrival.open()
        return self._dest(arrival, workdir, listen, lazy_source, shared_images, tls), arrival

    def again(
        self,
        workload: str,
        saved: dict[str, Any],
        net: WorkloadNet | None,
        workdir: Path,
        pid: int | None,
    ) -> tuple[CriuDestination, ContainerArrival]:
        try:
            move = ContainerMove.model_validate(saved)
        except ValidationError as exc:
            raise ContainerError(
                f"container {workload}: its incoming migration's record is unreadable "
                f"({exc.error_count()} problem(s))"
            ) from None
        arrival = ContainerArrival(self.containers, workload, move, self.register, net)
        arrival.found()
        dest = self._dest(arrival, workdir, None, None, None)
        dest.found(pid)
        return dest, arrival

    def _dest(
        self,
        arrival: ContainerArrival,
        workdir: Path,
        listen: PageServer | None,
        lazy_source: PageServer | None,
        shared_images: Path | None,
        tls: TlsFiles | None = None,
    ) -> RuncDestination:
        return RuncDestination(
            self.criu,
            self.containers.runc(),
            workdir,
            container_id=arrival.name,
            source_config=arrival.move.config,
            bundle=arrival.dirs.bundle,
            home=arrival,
            cgroups_path=arrival.cgroups_path,
            net=arrival.net,
            listen=listen,
            lazy_source=lazy_source,
            shared_images=shared_images,
            tls=tls,
        )
