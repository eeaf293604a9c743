"""Benchmark: cache drift without faults, over a long run.

Run (not part of the suite):

    python tests/benchmarks/bench_drift.py                  # 10 minutes at 20 operations/s
    python tests/benchmarks/bench_drift.py --seconds 120 --interval 5 --json result.json

The four simulators and one gateway (threads of this process, real HTTP and signed webhooks
between them, like ``retailgraph demo``) on a private Valkey; the demo's background activity
(``retailgraph demo --activity RATE``) drives the simulators through their vendor APIs while a
client keeps reading, and the gateway reconciles every ``--interval`` seconds. No fault is
injected. Afterwards (webhooks drained, nothing pending) every cell the gateway serves is
compared with its system of record and every cached cell with its source, over HTTP. Reported:
each reconciliation run's in-flight cells and repairs, every REPAIR event with the webhook
that carried the same change (how long after the change and after the repair it arrived),
and the cells that differ (must be none). The result is written with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> dict[str, object]:
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    return {"cores": os.cpu_count(), "cpu": model, "memoryGiB": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "loadAverageAtStart": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--interval", type=float, default=5, help="reconcile every N s")
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--stores", type=int, default=8)
    parser.add_argument("--warehouses", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()

    from gateway.redis_server import start_server
    from tests.soak import soak
    from tests.support import Stack

    started = datetime.now(UTC)
    host = machine()
    server = start_server()
    try:
        stack = Stack(str(server.connection_url), seed=args.seed, skus=args.skus,
                      stores=args.stores, warehouses=args.warehouses)
        stack.settings.reconcile_interval_seconds = args.interval
        with stack:
            result = asyncio.run(soak(stack, args.rate, args.seconds, seed=args.seed,
                                      progress=True))
    finally:
        server.stop()
    host["loadAverageAtEnd"] = os.getloadavg()
    out = {"benchmark": "bench_drift", "startedAt": started.isoformat(), "machine": host,
           "options": vars(args), **result.as_dict()}
    text = json.dumps(out, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
    summary = {k: v for k, v in out.items() if k not in ("repairEvents", "activity")}
    print(json.dumps(summary, indent=2, default=str))
    print(f"REPAIR events: {len(result.repairs)}; cells differing: {len(result.differ)}")
    return 0 if not result.differ else 1


if __name__ == "__main__":
    sys.exit(main())
