"""Frozen and total time of a runc container's move, haul against runc by hand.

    python bench/containers.py [--mem 64,1024]

For each memory size, in one lab: memhog (seeded memory, a counter) in a busybox
container on host1. First the baseline, by hand: `runc checkpoint` (the container
ends), `cp -a` of the images and the root filesystem to host2, `runc restore -d` there
(frozen = total: from the checkpoint to the restored container running). Then haul's
engine with the runc drivers (in this process, no agents): stop-and-copy and post-copy,
each host2 -> host1 -> host2. Then the same container with its root filesystem in a
directory both hosts see, moved as ``--shared-dir`` moves it (images written there and
restored from there, the root filesystem used in place), host1 -> host2 -> host1.
Prints the frozen and total times, the ratio of frozen time to the baseline's, and the
bytes of images (pages not counted) and of the container's files sent inside the
frozen window. Needs root and an installed haul (deploy/install.sh). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import time

from haul.dest.runcdest import bundle_config
from haul.engine.phases import Phase, Strategy
from haul.errors import HaulError
from haul.install_record import criu_binary
from haul.lab.bundles import memhog_argv
from haul.lab.containers import LabContainers
from haul.lab.netlab import lab_down, lab_up
from haul.lab.spec import HostSpec, LabSpec
from haul.runtime import criuconf
from haul.runtime.runc import CheckpointOptions, RestoreOptions

NAME = "bench"
SETTLE_S = 2.0


async def wait_counting(lab: LabContainers, host: HostSpec) -> None:
    path = lab.rootfs(host, NAME) / "count"
    for _ in range(3000):
        if path.exists() and path.read_text().strip():
            return
        await asyncio.sleep(0.02)
    raise SystemExit(f"memhog did not start counting on {host.name}")


async def by_hand(lab: LabContainers, src: HostSpec, dst: HostSpec) -> tuple[float, int]:
    """runc checkpoint, cp -a, runc restore: frozen ms and bytes copied."""
    work = src.workdir / "byhand"
    images, logs = work / "images", work / "work"
    for d in (images, logs):
        d.mkdir(parents=True, exist_ok=True)
    config = json.loads((lab.bundle(src, NAME) / "config.json").read_text())
    # the file the lab's bundle's org.criu.config annotation names (haul/lab/bundles.py)
    criuconf.write(lab.bundle(src, NAME) / "criu.conf", criuconf.dump_options(own_network=False))
    started = time.monotonic()
    await lab.runc(src).checkpoint(
        NAME, CheckpointOptions(image_path=images, work_path=logs, leave_running=False)
    )
    dst_images = dst.workdir / "byhand-images"
    subprocess.run(["cp", "-a", str(images), str(dst_images)], check=True)
    subprocess.run(["cp", "-a", str(lab.rootfs(src, NAME)), str(lab.rootfs(dst, NAME))], check=True)
    bundle = lab.bundle(dst, NAME)
    bundle.mkdir(parents=True, exist_ok=True)
    conf = bundle / "criu.conf"
    criuconf.write(conf, criuconf.dump_options(own_network=False))
    made = bundle_config(
        config,
        rootfs=lab.rootfs(dst, NAME),
        cgroups_path=lab.cgroups_path(dst, NAME),
        criu_config=conf,
    )
    (bundle / "config.json").write_text(json.dumps(made))
    (dst.workdir / "bhw").mkdir(parents=True, exist_ok=True)
    await lab.runc(dst).restore(
        NAME, RestoreOptions(bundle=bundle, image_path=dst_images, work_path=dst.workdir / "bhw")
    )
    frozen_ms = (time.monotonic() - started) * 1000
    copied = sum(p.stat().st_size for p in dst_images.iterdir() if not p.name.startswith("pages-"))
    copied += sum(
        p.stat().st_size
        for p in lab.rootfs(dst, NAME).rglob("*")
        if p.is_file() and not p.is_symlink()
    )
    for d in (work, dst_images, dst.workdir / "bhw"):
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(lab.rootfs(src, NAME), ignore_errors=True)
    return frozen_ms, copied


async def one_size(mib: int) -> list[tuple[str, float, float, int]]:
    spec = LabSpec(prefix="benchc", hosts=2)
    lab_down(spec.prefix)
    await lab_up(spec, agents=False)
    lab = LabContainers(spec, criu_binary())
    h1, h2 = spec.host(1), spec.host(2)
    rows: list[tuple[str, float, float, int]] = []
    try:
        await lab.start(h1, NAME, memhog_argv(mib))
        await wait_counting(lab, h1)
        # files written less than a second before a scan are sent once more (a second
        # write within one timestamp tick would go unseen): a container just made would
        # send its whole root filesystem frozen; a running service's files are older
        await asyncio.sleep(SETTLE_S)
        frozen, copied = await by_hand(lab, h1, h2)
        rows.append(("runc checkpoint + cp -a + runc restore", frozen, frozen, copied))
        await wait_counting(lab, h2)
        here = h2
        for strategy in (Strategy.STOP_AND_COPY, Strategy.POST_COPY):
            for _ in range(2):
                there = h1 if here is h2 else h2
                await asyncio.sleep(SETTLE_S)
                started = time.monotonic()
                outcome = await lab.migrate(NAME, here, there, strategy=strategy)
                total = (time.monotonic() - started) * 1000
                if outcome.phase is not Phase.DONE:
                    raise SystemExit(f"{strategy.value}: {outcome.reason}")
                stats = outcome.stats
                rows.append(
                    (
                        f"haul {strategy.value} {here.name}->{there.name}",
                        (stats.frozen_s or 0) * 1000,
                        total,
                        stats.transfer_bytes,
                    )
                )
                here = there
                await wait_counting(lab, here)
        with contextlib.suppress(HaulError):
            await lab.runc(here).delete(NAME, force=True)
        rows += await shared_moves(
            LabContainers(spec, criu_binary(), spec.root_dir / "shared"), mib
        )
    finally:
        for host in (h1, h2):
            with contextlib.suppress(HaulError):
                await lab.runc(host).delete(NAME, force=True)
        lab_down(spec.prefix)
    return rows


async def shared_moves(lab: LabContainers, mib: int) -> list[tuple[str, float, float, int]]:
    """``--shared-dir``: host1 -> host2 -> host1, the root filesystem in ``lab.shared``."""
    h1, h2 = lab.lab.host(1), lab.lab.host(2)
    rows: list[tuple[str, float, float, int]] = []
    await lab.start(h1, NAME, memhog_argv(mib))
    await wait_counting(lab, h1)
    here = h1
    for _ in range(2):
        there = h2 if here is h1 else h1
        await asyncio.sleep(SETTLE_S)
        started = time.monotonic()
        outcome = await lab.migrate(NAME, here, there)
        total = (time.monotonic() - started) * 1000
        if outcome.phase is not Phase.DONE:
            raise SystemExit(f"shared directory: {outcome.reason}")
        frozen = (outcome.stats.frozen_s or 0) * 1000
        name = f"haul --shared-dir stop-and-copy {here.name}->{there.name}"
        rows.append((name, frozen, total, outcome.stats.transfer_bytes))
        here = there
        await wait_counting(lab, here)
    with contextlib.suppress(HaulError):
        await lab.runc(here).delete(NAME, force=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mem", default="64,1024", help="MiB, comma-separated")
    args = parser.parse_args()
    print(
        "| MiB | path | frozen ms | total ms | frozen / by hand "
        "| images (no pages) + files sent frozen, bytes |"
    )
    print("|---|---|---|---|---|---|")
    for mib in (int(m) for m in args.mem.split(",")):
        rows = asyncio.run(one_size(mib))
        base = rows[0][1]
        for path, frozen, total, sent in rows:
            print(f"| {mib} | {path} | {frozen:.0f} | {total:.0f} | {frozen / base:.2f} | {sent} |")


if __name__ == "__main__":
    main()
