"""The destination side of a migration: what the source agent calls on this host."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

from aiohttp import web

from haul.agent.arrivals import ContainerArrival, missing_blobs, receive_blob, take_blobs
from haul.agent.auth import caller_of
from haul.agent.context import CONTEXT
from haul.agent.decision_models import IncomingList, IncomingView
from haul.agent.migration_models import (
    ID_MAX,
    BlobsFrom,
    CapabilitiesView,
    DataEntries,
    DataRemoval,
    DataRemoved,
    Done,
    Endpoint,
    IncomingCheck,
    IncomingOpen,
    IncomingOpened,
    Received,
    RestoreAsk,
    Restored,
    RuntimeView,
)
from haul.agent.models import NetSpec
from haul.agent.roles import admit_open, admit_shared
from haul.agent.routing import RouteTable
from haul.agent.wire import BadRequest, Conflict
from haul.agent.workloads import workload_net
from haul.criu.info import host_capabilities
from haul.criu.options import PageServer
from haul.dest.datatree import DataEntry
from haul.dest.incoming import Incoming, IncomingRegistry
from haul.net.spec import WorkloadNet

table = RouteTable("incoming")
ID = {"id": "the migration's id"}
#: each call is taken only in its stages (haul/dest/stages.py, docs/incoming.md)
OUT_OF_STAGE = "not in this stage of the migration (docs/incoming.md); nothing was done"


def _incoming(request: web.Request) -> IncomingRegistry:
    return request.app[CONTEXT].migrations().incoming


def _received(request: web.Request, what: str, size: int) -> web.StreamResponse:
    """Counted (``haul_agent_received_bytes``), then answered."""
    request.app[CONTEXT].metrics.received_bytes.labels(what).inc(size)
    return web.json_response(Received(bytes=size).model_dump())


def _arriving(request: web.Request, mid: str) -> ContainerArrival:
    item = _incoming(request).get(mid)
    if not isinstance(item.arrival, ContainerArrival):
        raise BadRequest(f"incoming migration {mid} brings no container", code="usage")
    return item.arrival


@table.json(
    "GET",
    "/v1/incoming-capabilities",
    name="incomingCapabilities",
    response=CapabilitiesView,
    summary="What this host's kernel and CRIU allow",
)
async def capabilities(request: web.Request) -> CapabilitiesView:
    caps = await host_capabilities(_incoming(request).criu)
    version, why = await request.app[CONTEXT].workloads.containers.runtime()
    return CapabilitiesView(
        criu_version=caps.criu_version,
        mem_track=caps.mem_track,
        lazy_pages=caps.lazy_pages,
        lazy_pipe_ok=caps.lazy_pipe_ok,
        runtime=RuntimeView(name="runc", version=version) if version is not None else None,
        no_runtime=why,
    )


@table.json_body(
    "POST",
    "/v1/incoming-check",
    body=IncomingCheck,
    response=Done,
    name="incomingCheck",
    errors={409: "the name is taken here"},
    summary="Pre-flight: the workload's name is free here (no workload and no incoming "
    "migration holds it, and for a container no runc container or container directory has "
    "it) and there is room",
)
async def check(request: web.Request, ask: IncomingCheck) -> Done:
    ctx = request.app[CONTEXT]
    holder = ctx.workloads.names.holder(ask.workload)
    if holder is not None:
        raise Conflict(
            f"the name {ask.workload!r} is taken on {ctx.config.host}: {holder} holds it",
            code="workload_exists",
        )
    if ask.container:
        taken = await ctx.workloads.containers.name_taken(ask.workload)
        if taken is not None:
            raise Conflict(
                f"the name {ask.workload!r} is taken on {ctx.config.host}: {taken}",
                code="workload_exists",
            )
    _check_net(request, ask.net)
    await _incoming(request).check(ask.workload, ask.needed_bytes)
    return Done()


def _check_net(request: web.Request, spec: NetSpec | None) -> WorkloadNet | None:
    """The arriving workload's own address must be free here, and this host must have
    a bridge to attach it to."""
    net = workload_net(spec)
    if net is not None:
        request.app[CONTEXT].workloads.check_net(net)
    return net


@table.json_body(
    "POST",
    "/v1/incoming",
    body=IncomingOpen,
    response=IncomingOpened,
    status=201,
    name="openIncoming",
    errors={
        403: "a peer opening in another's name, or naming a directory not shared here",
        409: "open already, for another request, or settled; " + OUT_OF_STAGE,
    },
    summary="Prepare for an incoming migration (opened by a peer: the answer's secret "
    "goes with its later calls of it; the same request again while nothing arrived: the "
    "same answer)",
)
async def open_incoming(request: web.Request, ask: IncomingOpen) -> IncomingOpened:
    caller = caller_of(request)
    ask = admit_open(caller, ask, request.app[CONTEXT].config.shared_dirs)
    lazy = PageServer(ask.lazy_source.address, ask.lazy_source.port) if ask.lazy_source else None
    net = _check_net(request, ask.net)
    item = await _incoming(request).open(
        ask.id,
        ask.workload,
        ask.strategy,
        ask.needed_bytes,
        lazy,
        argv=ask.argv,
        data_mode=ask.data_mode,
        shared_images=Path(ask.shared_images) if ask.shared_images else None,
        net=net,
        page_tls=ask.page_tls,
        source=ask.source,
        container=ask.container,
    )
    missing = (
        missing_blobs(request.app[CONTEXT].workloads.containers, ask.container)
        if ask.container is not None
        else []
    )
    port = item.dest.page_server_port
    secret = (
        None if caller.is_operator else request.app[CONTEXT].bindings.secret(ask.id, caller.name)
    )
    if port is None:
        return IncomingOpened(missing_blobs=missing, secret=secret)
    return IncomingOpened(
        page_server=Endpoint(address=_incoming(request).listen_address, port=port),
        missing_blobs=missing,
        secret=secret,
    )


@table.raw(
    "PUT",
    "/v1/incoming/{id}/blobs/{digest}",
    name="putBlob",
    summary="One blob of an arriving container's image (body), kept only if its content "
    "has that digest",
    media_type="application/json",
)
async def put_blob(request: web.Request) -> web.StreamResponse:
    mid, digest = request.match_info["id"], request.match_info["digest"]
    move = _arriving(request, mid).move
    containers = request.app[CONTEXT].workloads.containers
    size = await _incoming(request).receive_blob(
        mid,
        digest,
        request.content.iter_chunked(1 << 20),
        lambda chunks: receive_blob(containers, move, digest, chunks),
    )
    return _received(request, "blob", size)


@table.json_body(
    "POST",
    "/v1/incoming/{id}/blobs-from",
    body=BlobsFrom,
    response=Received,
    params=ID,
    name="takeBlobs",
    summary="Take the blobs of an arriving container's image this host lacks from an OCI "
    "layout both hosts see (shared storage), each kept only if its content has its digest",
)
async def take_blobs_from(request: web.Request, ask: BlobsFrom) -> Received:
    mid = request.match_info["id"]
    move = _arriving(request, mid).move
    context = request.app[CONTEXT]
    admit_shared(
        caller_of(request), Path(ask.layout), context.config.shared_dirs, "an image layout"
    )
    containers = context.workloads.containers
    size = await _incoming(request).take_blobs(
        mid, lambda: asyncio.to_thread(take_blobs, containers, move, Path(ask.layout))
    )
    return Received(bytes=size)


@table.json(
    "POST",
    "/v1/incoming/{id}/image",
    response=Done,
    params=ID,
    name="unpackImage",
    summary="Unpack an arriving container's image from the blobs received (or find it "
    "unpacked here already)",
)
async def unpack_image(request: web.Request) -> Done:
    await _incoming(request).unpack_image(request.match_info["id"])
    return Done()


OWNER = re.compile(r"(\d{1,10}):(\d{1,10})")


def _owner(request: web.Request) -> tuple[int, int] | None:
    """X-Haul-Owner: the file's ``UID:GID`` (none: the agent's own)."""
    text = request.headers.get("X-Haul-Owner")
    if text is None:
        return None
    found = OWNER.fullmatch(text)
    if found is None or max(int(found[1]), int(found[2])) > ID_MAX:
        raise BadRequest("X-Haul-Owner must be UID:GID, two numbers", code="bad_owner")
    return int(found[1]), int(found[2])


def _sha(request: web.Request) -> str:
    sha = request.headers.get("X-Haul-SHA256", "")
    if len(sha) != 64:
        raise BadRequest("X-Haul-SHA256 must carry the file's SHA-256 in hex", code="no_sha256")
    return sha


@table.raw(
    "PUT",
    "/v1/incoming/{id}/images/{name}",
    name="putImage",
    summary="One image file (body), checked against X-Haul-SHA256",
    media_type="application/json",
)
async def put_image(request: web.Request) -> web.StreamResponse:
    size = await _incoming(request).receive_image(
        request.match_info["id"],
        request.match_info["name"],
        request.content.iter_chunked(1 << 20),
        _sha(request),
    )
    return _received(request, "image", size)


@table.raw(
    "PUT",
    "/v1/incoming/{id}/data",
    name="putData",
    summary="One file of the workload's data (body; its relative path in ?path=, its "
    "mode in X-Haul-Mode, its owner in X-Haul-Owner as UID:GID), checked against "
    "X-Haul-SHA256 before it takes its place (new, or replacing the file there); its "
    "directory comes first",
    media_type="application/json",
)
async def put_data(request: web.Request) -> web.StreamResponse:
    text = request.headers.get("X-Haul-Mode", "644")
    try:
        mode = int(text, 8) if len(text) <= 6 else -1
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise BadRequest("X-Haul-Mode must be an octal file mode (0 to 7777)", code="bad_mode")
    size = await _incoming(request).receive_data(
        request.match_info["id"],
        request.query.get("path", ""),
        request.content.iter_chunked(1 << 20),
        _sha(request),
        mode,
        _owner(request),
    )
    return _received(request, "data", size)


NOT_RECEIVING = {409: "the copy is restored or being restored: it takes no more files"}


@table.json_body(
    "POST",
    "/v1/incoming/{id}/entries",
    body=DataEntries,
    response=Done,
    params=ID,
    name="makeDataEntries",
    errors=NOT_RECEIVING,
    summary="Entries of the workload's files, parents first: directories made (or their "
    "mode set, and their opaque mark), symbolic links, FIFOs, unix sockets' files and "
    "overlay whiteouts made, files' modes set; each with its owner when given",
)
async def make_entries(request: web.Request, ask: DataEntries) -> Done:
    _incoming(request).make_entries(
        request.match_info["id"],
        [DataEntry(e.path, e.kind, e.mode, e.target, e.owner, e.opaque) for e in ask.entries],
    )
    return Done()


@table.json_body(
    "POST",
    "/v1/incoming/{id}/remove",
    body=DataRemoval,
    response=DataRemoved,
    params=ID,
    name="removeDataEntries",
    errors=NOT_RECEIVING,
    summary="Remove entries of the workload's files, deepest first (a directory must be "
    "empty by its turn); entries not there are skipped",
)
async def remove_entries(request: web.Request, ask: DataRemoval) -> DataRemoved:
    removed = _incoming(request).remove_entries(request.match_info["id"], ask.paths)
    return DataRemoved(removed=removed)


@table.json_body(
    "POST",
    "/v1/incoming/{id}/restore",
    body=RestoreAsk,
    response=Restored,
    params=ID,
    name="restoreIncoming",
    errors={409: OUT_OF_STAGE},
    summary="Restore the received images, the tree left stopped (asked again while it "
    "waits stopped: the same answer)",
)
async def restore(request: web.Request, ask: RestoreAsk) -> Restored:
    figures = await _incoming(request).restore(request.match_info["id"], ask.lazy)
    return Restored(
        pid=figures.dest_pid, duration_s=figures.duration_s, pages_bytes=figures.pages_bytes
    )


@table.json(
    "POST",
    "/v1/incoming/{id}/resume",
    response=Done,
    params=ID,
    name="resumeIncoming",
    errors={409: "nothing restored, or discarded; " + OUT_OF_STAGE},
    summary="After the commit: let the restored tree run (asked again: nothing more)",
)
async def resume(request: web.Request) -> Done:
    await _incoming(request).resume(request.match_info["id"])
    return Done()


@table.json(
    "POST",
    "/v1/incoming/{id}/wait-pages",
    response=Done,
    params=ID,
    name="waitPages",
    errors={409: "not resumed; " + OUT_OF_STAGE},
    summary="Post-copy, after the resume: return once every page has arrived",
)
async def wait_pages(request: web.Request) -> Done:
    await _incoming(request).wait_pages(request.match_info["id"])
    return Done()


@table.json(
    "POST",
    "/v1/incoming/{id}/discard",
    response=Done,
    params=ID,
    name="discardIncoming",
    errors={409: "its copy was resumed (the commit was heard) or adopted; " + OUT_OF_STAGE},
    summary="Rollback: kill any restored copy, remove what the migration made here "
    "(asked again: nothing more); never a copy that was resumed",
)
async def discard(request: web.Request) -> Done:
    await _incoming(request).discard(request.match_info["id"])
    return Done()


@table.json(
    "POST",
    "/v1/incoming/{id}/finish",
    response=Done,
    params=ID,
    name="finishIncoming",
    errors={409: "not resumed yet, or discarded; " + OUT_OF_STAGE},
    summary="After the resume: register the workload here (asked again: nothing more)",
)
async def finish(request: web.Request) -> Done:
    await _incoming(request).finish(request.match_info["id"])
    return Done()


def incoming_view(item: Incoming) -> IncomingView:
    now = time.time()
    tree = item.dest.tree
    asking = item.asking
    return IncomingView(
        id=item.migration_id,
        workload=item.workload,
        source=item.source or "",
        strategy=item.strategy.value,
        state=item.state.value,
        restored_pid=tree.root_pid if tree is not None else None,
        restored_for_s=now - item.restored_at if item.restored_at is not None else None,
        asks=asking.asks,
        last_answer=asking.last_answer,
        note=asking.note,
        problem=asking.problem,
        next_ask_in_s=max(0.0, asking.next_ask_at - now)
        if asking.next_ask_at is not None
        else None,
        free_bytes=_free_bytes(item.dest.workdir),
    )


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@table.json(
    "GET",
    "/v1/incoming",
    response=IncomingList,
    name="listIncoming",
    summary="Migrations arriving here: a restored copy waiting for its source's "
    "decision shows what the source was asked and answered",
)
async def list_incoming(request: web.Request) -> IncomingList:
    return IncomingList(incoming=[incoming_view(i) for i in _incoming(request).items()])


@table.json(
    "GET",
    "/v1/incoming/{id}",
    response=IncomingView,
    params=ID,
    name="getIncoming",
    summary="One migration arriving here: its state, and what its source was asked",
)
async def get_incoming(request: web.Request) -> IncomingView:
    return incoming_view(_incoming(request).get(request.match_info["id"]))
