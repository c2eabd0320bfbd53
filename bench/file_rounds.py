"""The workload's files in rounds against all of them in the frozen window.

    python bench/file_rounds.py [--files 2000] [--size 4096] [--changed 10]

Makes a data directory of FILES files (SIZE bytes each, 20 to a directory), then
through HttpTransport and a real destination agent app served on 127.0.0.1 (the
agents' client and routes, SHA-256 per file; both ends in this one process):

- the old way: no round before the freeze, every file in the frozen window;
- rounds: the full pass while the workload runs, CHANGED files rewritten, a delta,
  CHANGED other files rewritten, then the frozen window's delta.

And the same with the lab's LocalTransport (local copies). Prints files, bytes and
seconds of each step. No root needed. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from haul.agent.client import AgentAccess
from haul.agent.context import AgentContext
from haul.agent.fakes import TOKEN, FakeCriu, FakeStarter, make_config, receiving
from haul.transport.http import HttpTransport, IncomingUploads
from haul.transport.local import LocalTransport

#: the racy window of a round (haul/transport/rounds.py): changes older than this
#: before a scan are settled
SETTLE_S = 1.1


def make_tree(root: Path, files: int, size: int) -> list[Path]:
    paths = []
    for i in range(files):
        d = root / f"d{i // 20:03}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i:05}.dat"
        p.write_bytes(i.to_bytes(4, "big") * (size // 4))
        paths.append(p)
    return paths


def rewrite(paths: list[Path]) -> None:
    for p in paths:
        data = bytearray(p.read_bytes())
        data[0] ^= 0xFF
        p.write_bytes(bytes(data))


Transport = HttpTransport | LocalTransport


async def timed(what: str, step: Callable[[], Awaitable[tuple[int, int]]]) -> None:
    started = time.monotonic()
    files, sent = await step()
    took = time.monotonic() - started
    print(f"  {what:<44} {files:>6} files {sent / 2**20:>9.2f} MiB {took:>8.3f} s")


async def scenario(
    name: str,
    make: Callable[[Path, Path], Awaitable[Transport]],
    tmp: Path,
    args: argparse.Namespace,
) -> None:
    print(name)
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    (images / "core-1.img").write_bytes(b"c" * 4096)
    for label, rounds in (("old", False), ("rounds", True)):
        src = tmp / f"src-{label}"
        paths = make_tree(src, args.files, args.size)
        await asyncio.sleep(SETTLE_S)
        transport = await make(src, images)
        if rounds:

            async def full(t: Transport = transport) -> tuple[int, int]:
                f = await t.sync_files(1)
                return f.files, f.bytes_sent

            async def delta(t: Transport = transport) -> tuple[int, int]:
                f = await t.sync_files(2)
                return f.files, f.bytes_sent

            await timed("round 1, running: the full pass", full)
            rewrite(paths[: args.changed])
            await asyncio.sleep(SETTLE_S)
            await timed(f"round 2, running: {args.changed} files changed", delta)
            rewrite(paths[args.changed : 2 * args.changed])

        async def frozen(t: Transport = transport) -> tuple[int, int]:
            f = await t.transfer_images()
            return f.files - 1, f.bytes_sent - 4096  # the image aside

        what = (
            f"frozen: {args.changed} changed since" if rounds else "frozen: every file (no round)"
        )
        await timed(what, frozen)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--changed", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        print(f"{args.files} files of {args.size} bytes, {args.changed} changed between rounds")
        for label in ("old", "rounds"):
            (base / "http" / label).mkdir(parents=True)
        n = 0

        async def over_http(src: Path, images: Path) -> Transport:
            nonlocal n
            n += 1
            ctx = AgentContext.create(
                make_config(base / "http" / f"agent{n}", criu="/bin/true"),
                gather_criu=FakeCriu(),
                start=FakeStarter(),
            )
            agent = await stack.enter_async_context(receiving(ctx))
            client = await stack.enter_async_context(
                AgentAccess.of_peer(agent.url, token=TOKEN).client("destination")
            )
            uploads: IncomingUploads = client.incoming
            return HttpTransport(uploads, agent.migration_id, images, source_data=src)

        async def local(src: Path, images: Path) -> Transport:
            dst_images = src.parent / f"{src.name}-images"
            dst_images.mkdir()
            return LocalTransport(
                images, dst_images, source_data=src, dest_data=src.parent / f"{src.name}-dst"
            )

        async with contextlib.AsyncExitStack() as stack:
            await scenario(
                "HttpTransport, a real agent app on 127.0.0.1", over_http, base / "http", args
            )
        (base / "local").mkdir()
        await scenario("LocalTransport (the lab's)", local, base / "local", args)


if __name__ == "__main__":
    asyncio.run(main())
