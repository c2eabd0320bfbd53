"""OCI image layouts on disk (no registry): parse a reference, resolve it, unpack it once.

A reference is ``oci:LAYOUT[:TAG]``: an OCI image layout directory (``oci-layout``,
``index.json``, ``blobs/``) as the host sees it, and a tag (default ``latest``), the
``org.opencontainers.image.ref.name`` annotation of one manifest in ``index.json``.
Resolving reads those JSON files directly: the manifest's digest names the image
(a tag may move, a digest may not), its layers are listed for the migration drivers.

An image is unpacked with ``umoci unpack`` (as root) into a per-host cache keyed by
the manifest's digest, ``CACHE/<algorithm>-<hex>/`` (a runtime bundle: ``config.json``
and ``rootfs/``), once: a second container of the same image shares that rootfs
read-only as the lower layer of its overlay (haul/runtime/bundle.py). The unpack goes
to a temporary directory renamed into place only when complete, so a failed or
interrupted unpack leaves nothing a later start would take for an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haul.errors import ImageError, UsageError

log = logging.getLogger(__name__)

UMOCI = Path("/usr/bin/umoci")
OCI_SCHEME = "oci:"
DEFAULT_TAG = "latest"
#: OCI's rule for a tag (the distribution spec's), which is also what umoci accepts
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
#: how long one ``umoci unpack`` may take
UNPACK_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class ImageRef:
    """``oci:LAYOUT[:TAG]``."""

    layout: Path
    tag: str = DEFAULT_TAG

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """From an operator's input; UsageError (one line) for anything else."""
        if not text.startswith(OCI_SCHEME):
            raise UsageError(
                f"image {text!r}: give an OCI image layout as oci:/PATH[:TAG] "
                "(haul reads no registry)"
            )
        rest = text.removeprefix(OCI_SCHEME)
        path, tag = rest, DEFAULT_TAG
        head, sep, tail = rest.rpartition(":")
        if sep and "/" not in tail:
            path, tag = head, tail
            if not TAG_RE.fullmatch(tag):
                raise UsageError(f"image {text!r}: bad tag {tag!r} (letters, digits, _ . -)")
        if not path.startswith("/"):
            raise UsageError(f"image {text!r}: the layout must be an absolute path")
        if any(part in (".", "..") for part in path.split("/")) or "\x00" in path:
            raise UsageError(f"image {text!r}: the layout path must not hold '.' or '..'")
        if ":" in path:
            # overlayfs separates lower layers with ':'; a cache never holds such a path,
            # but the operator's layout path goes into umoci's LAYOUT:TAG argument
            raise UsageError(f"image {text!r}: the layout path must not contain ':'")
        return cls(Path(path.rstrip("/") or "/"), tag)

    def __str__(self) -> str:
        return f"{OCI_SCHEME}{self.layout}:{self.tag}"

    @property
    def umoci_image(self) -> str:
        """umoci's ``--image`` argument."""
        return f"{self.layout}:{self.tag}"


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """What a reference resolves to."""

    ref: ImageRef
    #: the manifest's digest: the image's identity
    digest: str
    config_digest: str
    #: the layers' digests, lowest first
    layer_digests: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CachedImage:
    """An unpacked image in the cache."""

    manifest: ImageManifest
    bundle: Path
    #: how long the unpack took, or None when the cache already held it
    unpack_s: float | None = None

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"

    @property
    def config(self) -> Path:
        return self.bundle / "config.json"


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def _read_json(path: Path, what: str, ref: ImageRef) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ImageError(f"image {ref}: {what} {path} does not exist") from None
    except OSError as exc:
        raise ImageError(f"image {ref}: cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ImageError(f"image {ref}: {what} {path} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ImageError(f"image {ref}: {what} {path} is not a JSON object")
    return data


def _digest_of(entry: object, what: str, ref: ImageRef) -> str:
    digest = entry.get("digest") if isinstance(entry, dict) else None
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ImageError(f"image {ref}: {what} has no valid digest ({digest!r})")
    return digest


def resolve(ref: ImageRef) -> ImageManifest:
    """The manifest ``ref`` names, read from the layout; ImageError (one line) if none."""
    if not ref.layout.is_dir():
        raise ImageError(f"image {ref}: {ref.layout} is not a directory")
    if not (ref.layout / "oci-layout").is_file():
        raise ImageError(f"image {ref}: {ref.layout} is not an OCI image layout (no oci-layout)")
    index = _read_json(ref.layout / "index.json", "index", ref)
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ImageError(f"image {ref}: index.json lists no manifests")
    tagged = [
        e
        for e in entries
        if isinstance(e, dict)
        and isinstance(e.get("annotations"), dict)
        and e["annotations"].get(REF_NAME) == ref.tag
    ]
    if not tagged:
        tags = sorted(
            str(e["annotations"][REF_NAME])
            for e in entries
            if isinstance(e, dict)
            and isinstance(e.get("annotations"), dict)
            and REF_NAME in e["annotations"]
        )
        raise ImageError(
            f"image {ref}: no tag {ref.tag!r} in {ref.layout} (it has: {', '.join(tags) or 'none'})"
        )
    if len(tagged) > 1:
        raise ImageError(f"image {ref}: tag {ref.tag!r} names {len(tagged)} manifests")
    entry = tagged[0]
    if entry.get("mediaType") == INDEX_TYPE:
        raise ImageError(
            f"image {ref}: tag {ref.tag!r} names an image index (several platforms); "
            "give a layout whose tag names one manifest"
        )
    digest = _digest_of(entry, f"tag {ref.tag!r}", ref)
    manifest = _read_json(blob_path(ref.layout, digest), "manifest", ref)
    media = manifest.get("mediaType", MANIFEST_TYPE)
    if media != MANIFEST_TYPE:
        raise ImageError(f"image {ref}: manifest {digest} has media type {media!r}")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"image {ref}: manifest {digest} lists no layers")
    return ImageManifest(
        ref=ref,
        digest=digest,
        config_digest=_digest_of(manifest.get("config"), "its config", ref),
        layer_digests=tuple(_digest_of(layer, "a layer", ref) for layer in layers),
    )


def cache_key(digest: str) -> str:
    """A digest as a directory name: no ':' (overlayfs separates lower layers with it)."""
    if not DIGEST_RE.fullmatch(digest):
        raise ImageError(f"{digest!r} is not an image digest")
    return digest.replace(":", "-")


def _last_line(text: str) -> str:
    """umoci's last message line, without the mark it starts errors with."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("\u2a2f").strip() if lines else "no message"


class ImageCache:
    """This host's unpacked images, under ``root`` (the agent's ``STATE/images``)."""

    def __init__(self, root: Path, *, umoci: Path = UMOCI) -> None:
        self.root = root
        self.umoci = umoci
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, digest: str) -> Path:
        return self.root / cache_key(digest)

    def cached(self, manifest: ImageManifest) -> CachedImage | None:
        bundle = self.path(manifest.digest)
        if (bundle / "config.json").is_file() and (bundle / "rootfs").is_dir():
            return CachedImage(manifest, bundle)
        return None

    async def unpack(self, ref: ImageRef) -> CachedImage:
        """The unpacked image ``ref`` names, unpacking it first if this host has not."""
        manifest = await asyncio.to_thread(resolve, ref)
        lock = self._locks.setdefault(manifest.digest, asyncio.Lock())
        async with lock:
            found = self.cached(manifest)
            if found is not None:
                return found
            return await self._unpack(manifest)

    async def _unpack(self, manifest: ImageManifest) -> CachedImage:
        ref = manifest.ref
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.root / f".unpack-{cache_key(manifest.digest)}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            await self._umoci_unpack(ref, tmp)
            # the tag may have moved between resolve() and the unpack: umoci names the
            # manifest it unpacked in its mtree file
            mtree = tmp / f"{cache_key(manifest.digest).replace('-', '_', 1)}.mtree"
            if not mtree.is_file():
                raise ImageError(
                    f"image {ref}: the tag moved while it was unpacked (expected "
                    f"{manifest.digest}); try again"
                )
            final = self.path(manifest.digest)
            tmp.rename(final)
        finally:
            if tmp.exists():
                await asyncio.to_thread(shutil.rmtree, tmp, True)
        took = time.monotonic() - started
        log.info("unpacked image %s (%s) in %.3f s", ref, manifest.digest, took)
        return CachedImage(manifest, final, unpack_s=took)

    async def _umoci_unpack(self, ref: ImageRef, target: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            str(self.umoci),
            "unpack",
            "--image",
            ref.umoci_image,
            str(target),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(UNPACK_TIMEOUT_S):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ImageError(
                f"image {ref}: umoci unpack did not finish within {UNPACK_TIMEOUT_S:g} s"
            ) from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            raise ImageError(
                f"image {ref} does not unpack: {_last_line(err.decode(errors='replace'))}"
            )

    def remove(self, digest: str) -> None:
        """Forget one unpacked image (nothing may use it)."""
        shutil.rmtree(self.path(digest), ignore_errors=True)
