"""CRIU's pagemap images: how many pages a dump left to be fetched lazily.

A pagemap image (``pagemap-ID.img``) starts with two little-endian u32 magics
(the common image magic, then the pagemap magic), then u32-length-framed
protobuf records: one ``pagemap_head``, then one ``pagemap_entry`` per run of
pages, whose flags say whether the pages are in the pages image (PE_PRESENT),
in a parent snapshot (PE_PARENT), or left for the lazy-pages daemon (PE_LAZY).
A post-copy destination reads them to know how much memory will still cross
the wire after the restore.
"""

from __future__ import annotations

import struct
from pathlib import Path

from google.protobuf.message import DecodeError

from haul.criu.proto import pagemap_pb2
from haul.engine.figures import PAGE_SIZE
from haul.errors import CriuError

IMG_COMMON_MAGIC = 0x54564319
PAGEMAP_MAGIC = 0x56084025
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2


def _records(path: Path) -> list[bytes]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CriuError(f"cannot read {path}: {exc.strerror}", request="pagemap") from exc
    if len(raw) < 8 or struct.unpack_from("<II", raw) != (IMG_COMMON_MAGIC, PAGEMAP_MAGIC):
        raise CriuError(f"{path} is not a CRIU pagemap image", request="pagemap")
    records, at = [], 8
    while at < len(raw):
        if at + 4 > len(raw):
            raise CriuError(f"{path} is truncated", request="pagemap")
        (size,) = struct.unpack_from("<I", raw, at)
        body = raw[at + 4 : at + 4 + size]
        if len(body) != size:
            raise CriuError(f"{path} is truncated", request="pagemap")
        records.append(body)
        at += 4 + size
    return records


def entries(path: Path) -> list[pagemap_pb2.pagemap_entry]:
    """Every entry of one pagemap image (after its head)."""
    records = _records(path)
    try:
        pagemap_pb2.pagemap_head.FromString(records[0] if records else b"")
        return [pagemap_pb2.pagemap_entry.FromString(r) for r in records[1:]]
    except DecodeError as exc:
        raise CriuError(f"{path} holds a malformed pagemap record", request="pagemap") from exc


def page_count(entry: pagemap_pb2.pagemap_entry) -> int:
    return entry.nr_pages if entry.HasField("nr_pages") else entry.compat_nr_pages


def lazy_bytes(images: Path) -> int:
    """The bytes of memory the dump in ``images`` left for the lazy-pages daemon: pages
    that may be fetched lazily (PE_LAZY) and were not written here (no PE_PRESENT; a
    dump that is not lazy flags such pages LAZY and PRESENT)."""
    return sum(
        page_count(e) * PAGE_SIZE
        for path in sorted(images.glob("pagemap-*.img"))
        for e in entries(path)
        if e.flags & PE_LAZY and not e.flags & PE_PRESENT
    )
