"""Frozen time of a stop-and-copy through haul's agents, with and without TLS.

    python bench/tls.py [--mem 64,512] [--runs 1]

For each setting (a plain lab: token auth, clear pages; a TLS lab: mutual TLS
between the agents and TLS on CRIU's page channel) it starts the sample
counter on host1 of a fresh lab and moves it to host2 and back with
`haul migrate --strategy stop-and-copy`, then prints the agents' figures
(frozen, downtime, total) per move. Needs root. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
from pathlib import Path

from haul.lab.netlab import lab_down, lab_up
from haul.lab.operator import run_counter, run_haul
from haul.lab.spec import LabSpec


async def moves(tls: bool, mem: int, runs: int) -> list[tuple[float, float, float]]:
    spec = LabSpec(prefix="btls" + secrets.token_hex(2), hosts=2)
    inv = Path(tempfile.mkdtemp()) / "hosts.toml"
    await lab_up(spec, inventory=inv, tls=tls)
    try:
        run_counter(inv, spec, "w", mem_mib=mem, timeout_s=120)
        figures = []
        for _ in range(runs):
            for dst in ("host2", "host1"):
                done = run_haul(
                    inv,
                    "migrate",
                    "w",
                    "--to",
                    dst,
                    "--strategy",
                    "stop-and-copy",
                    "-o",
                    "json",
                    timeout_s=600,
                )
                result = json.loads(done.stdout)
                if result["outcome"] != "done":
                    raise SystemExit(f"tls={tls}: {result['reason']}")
                figures.append((result["frozen_ms"], result["downtime_ms"], result["total_ms"]))
        return figures
    finally:
        lab_down(spec.prefix)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mem", default="64,512")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    print(
        f"{'MiB':>5}  {'pages':<7} {'move':>4} {'frozen ms':>10} {'downtime ms':>12} "
        f"{'total ms':>10}"
    )
    for mem in (int(m) for m in args.mem.split(",")):
        for tls in (False, True):
            for i, (frozen, down, total) in enumerate(asyncio.run(moves(tls, mem, args.runs))):
                print(
                    f"{mem:>5}  {'TLS' if tls else 'clear':<7} {i + 1:>4} {frozen:>10.0f} "
                    f"{down:>12.0f} {total:>10.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
