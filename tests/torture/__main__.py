"""``python -m tests.torture crash|cluster --seconds N``: one campaign, its summary, exit 1
on any violation (docs/operations.md, "Crash campaigns")."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from tests.torture.campaign import (
    CLUSTER_FAULTS,
    CRASH_FAULTS,
    Budget,
    cluster_campaign,
    crash_campaign,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.torture", description=__doc__)
    p.add_argument("campaign", choices=["crash", "cluster"])
    p.add_argument("--seconds", type=float, default=600.0, help="time injecting faults")
    p.add_argument("--seed", type=int, help="random seed (printed; repeat a run with it)")
    p.add_argument("--users", type=int, default=2)
    p.add_argument("--faults", default="", help=f"comma-separated kinds; crash: "
                   f"{','.join(CRASH_FAULTS)}; cluster: {','.join(CLUSTER_FAULTS)}")
    p.add_argument("--races", type=int, default=4, help="cluster: two-node races per cycle")
    p.add_argument("--keep", action="store_true", help="keep the working folder (logs)")
    p.add_argument("--postgres-url", default=os.environ.get("RELAYBOX_TEST_POSTGRES_URL", ""),
                   help="cluster: a role that may CREATE DATABASE "
                        "(default: $RELAYBOX_TEST_POSTGRES_URL)")
    args = p.parse_args(argv)
    budget = Budget(seconds=args.seconds, users=args.users, races_per_cycle=args.races,
                    faults=tuple(f for f in args.faults.split(",") if f),
                    disk_mb=512 if args.seconds > 120 else 256)
    if args.seed is not None:
        budget.seed = args.seed
    base = Path(tempfile.mkdtemp(prefix=f"relaybox-torture-{args.campaign}-"))

    def say(line: str) -> None:
        print(line, flush=True)

    print(f"working folder {base}, seed {budget.seed}", flush=True)
    if args.campaign == "crash":
        report = asyncio.run(crash_campaign(base, budget, say))
    else:
        if not args.postgres_url:
            p.error("the cluster campaign needs --postgres-url or RELAYBOX_TEST_POSTGRES_URL")
        report = asyncio.run(cluster_campaign(base, budget, args.postgres_url, say))
    print(report.text(limit=200))
    if not args.keep and report.ok:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"logs kept in {base}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
