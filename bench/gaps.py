"""What a client sees through HAProxy while the web service moves, per strategy.

    python bench/gaps.py [--mem 256] [--strategies stop-and-copy,post-copy] [--out DIR]

Runs `haul demo`'s scenario (a lab, HAProxy in the client namespace, the web
service with its own address, a keep-alive client) once with no migration
(the baseline, same lab and load) and once per strategy with two migrations
(A->B->A). Prints the client's figures side by side, with the largest gap
and p99 as ratios to the baseline, and writes each run's PNG and TSV to
DIR/<name>/. Needs root and an installed haul (deploy/install.sh). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from haul.engine.phases import Strategy
from haul.lab.demo import DemoResult, run_demo


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mem", type=int, default=256, help="MiB the service holds")
    parser.add_argument("--strategies", default="stop-and-copy,post-copy")
    parser.add_argument("--out", type=Path, default=Path("bench-gaps"))
    args = parser.parse_args()
    runs: list[tuple[str, DemoResult]] = []
    base = await run_demo(args.mem, out_dir=args.out / "baseline", moves=0, settle_s=4.0)
    runs.append(("no migration (baseline)", base))
    for name in args.strategies.split(","):
        result = await run_demo(args.mem, strategy=Strategy(name), out_dir=args.out / name)
        runs.append((name, result))
    b = base.load
    print(
        f"\nweb service holding {args.mem} MiB, {b.connections} keep-alive connections "
        "through HAProxy, moved host1 -> host2 -> host1\n"
    )
    head = (
        "run",
        "requests",
        "failed",
        "largest gap ms",
        "gap/base",
        "p50 ms",
        "p99 ms",
        "p99/base",
        "max ms",
        "frozen ms",
        "verdict",
    )
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for name, r in runs:
        s = r.load
        frozen = ", ".join(f"{m.frozen_ms:.0f}" for m in r.moves if m.frozen_ms) or "-"
        print(
            " | ".join(
                (
                    name,
                    str(s.requests),
                    str(s.failed),
                    f"{s.largest_gap_s * 1000:.0f}",
                    f"{s.largest_gap_s / b.largest_gap_s:.1f}",
                    f"{s.p50_s * 1000:.2f}",
                    f"{s.p99_s * 1000:.2f}",
                    f"{s.p99_s / b.p99_s:.1f}",
                    f"{s.max_s * 1000:.0f}",
                    frozen,
                    r.verdict.split()[0]
                    + (
                        " (served = answered)"
                        if r.served == s.ok
                        else f" (served {r.served}, answered {s.ok})"
                    ),
                )
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
