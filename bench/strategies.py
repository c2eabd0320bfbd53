"""Frozen and total time per strategy through haul's agents, against plain CRIU.

    python bench/strategies.py [--mem 64,512] [--runs 1]

For each memory size it starts the sample counter on host1 of a fresh lab,
moves it with `haul migrate` (stop-and-copy, then post-copy, each host1 ->
host2 -> host1) and reads the agent's figures; then, in the same run, the
baseline: `criu dump` (tree killed), `cp -a` of the images and the workload's
files, `criu restore -d`, all by hand. Prints one table with ratios to the
baseline. Needs root and an installed haul (deploy/install.sh). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from haul.install_record import criu_binary
from haul.lab.netlab import lab_down, lab_up
from haul.lab.operator import run_counter, run_haul
from haul.lab.samples import start_counter
from haul.lab.spec import LabSpec

#: a migration of the largest counter through the agents may take this long
HAUL_TIMEOUT_S = 600.0


async def through_agents(mem: int, strategy: str) -> list[tuple[float, float]]:
    spec = LabSpec(prefix="bench", hosts=2)
    lab_down("bench")
    inv = Path(tempfile.mkdtemp()) / "hosts.toml"
    await lab_up(spec, inventory=inv)
    try:
        run_counter(inv, spec, "w", mem_mib=mem, timeout_s=120)
        figures = []
        for dst in ("host2", "host1"):
            done = run_haul(
                inv,
                "migrate",
                "w",
                "--to",
                dst,
                "--strategy",
                strategy,
                "-o",
                "json",
                timeout_s=HAUL_TIMEOUT_S,
            )
            result = json.loads(done.stdout)
            if result["outcome"] != "done":
                raise SystemExit(f"{strategy}: {result['reason']}")
            figures.append((result["downtime_ms"], result["total_ms"]))
        return figures
    finally:
        lab_down("bench")


async def baseline(mem: int) -> list[tuple[float, float]]:
    spec = LabSpec(prefix="bench", hosts=2)
    lab_down("bench")
    await lab_up(spec, agents=False)
    criu = str(criu_binary())
    try:
        counter = await start_counter(spec, spec.host(1), mem_mib=mem)
        h1, h2 = spec.host(1), spec.host(2)
        img1, img2 = h1.workdir / "img", h2.workdir / "img"
        img1.mkdir()
        started = time.monotonic()
        subprocess.run(
            [
                *h1.ns.prefix(),
                criu,
                "dump",
                "-t",
                str(counter.tree.root_pid),
                "-D",
                str(img1),
                "-o",
                "dump.log",
                "--file-locks",
                "--link-remap",
            ],
            check=True,
        )
        subprocess.run(["cp", "-a", str(img1), str(img2)], check=True)
        shutil.copytree(h1.data_backing / counter.subdir, h2.data_backing / counter.subdir)
        subprocess.run(
            [
                *h2.ns.prefix(),
                criu,
                "restore",
                "-D",
                str(img2),
                "-o",
                "restore.log",
                "-d",
                "--file-locks",
                "--link-remap",
            ],
            check=True,
        )
        frozen = (time.monotonic() - started) * 1000
        return [(frozen, frozen)]
    finally:
        lab_down("bench")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mem", default="64,512")
    args = ap.parse_args()
    rows = []
    for mem in (int(m) for m in args.mem.split(",")):
        base = asyncio.run(baseline(mem))[0]
        rows.append((mem, "criu dump+cp+restore (baseline)", base[0], base[1]))
        for strategy in ("stop-and-copy", "post-copy"):
            for i, (frozen, total) in enumerate(asyncio.run(through_agents(mem, strategy))):
                rows.append((mem, f"haul {strategy} move {i + 1}", frozen, total))
        print(f"measured {mem} MiB", file=sys.stderr)
    print(f"{'MiB':>5}  {'path':<34} {'frozen ms':>10} {'total ms':>10} {'frozen/base':>12}")
    bases = {m: f for m, p, f, _ in rows if "baseline" in p}
    for mem, path, frozen, total in rows:
        print(f"{mem:>5}  {path:<34} {frozen:>10.0f} {total:>10.0f} {frozen / bases[mem]:>12.2f}")


if __name__ == "__main__":
    main()
