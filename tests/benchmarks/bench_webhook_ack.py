"""Benchmark: does subscriber load delay webhook acknowledgement?

Run (not part of the suite):

    python tests/benchmarks/bench_webhook_ack.py                       # 0, 200, 1000 subscribers
    python tests/benchmarks/bench_webhook_ack.py --subscribers 0 200 --rate 100 --duration 10

For each subscriber count: one gateway (``retailgraph serve`` process) on a private Valkey, the
four simulators in threads of this process, a receiver process holding that many
``stockChanged`` subscriptions of ONE caller (auth off: one address), one socket each, every
subscription watching every SKU (so each change fans out
to all of them), and this process posting signed WMS webhooks at a fixed rate (open loop;
the load generator and receiver of ``bench_subscriptions.py``).

Measured per run: webhook round trip (sent -> 2xx here) p50/p99/max, the achieved rate, and
that every subscriber received every acknowledged change (dropped / duplicates /
conflated). With ``max_subscriptions_per_principal`` at its default (200) the 1000-subscriber
run is refused past 200: it runs with the limit raised, to show what the limit prevents.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_subscriptions import (  # noqa: E402
    analyse,
    cpu_seconds,
    generate,
    machine,
    note,
    warm_item_master,
)


def one_run(redis_url: str, subscribers: int, args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from tests.e2e.test_replicas import Replicas

    redis.Redis.from_url(redis_url).flushall()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-ack-{subscribers}-"))
    limit = max(200, subscribers)  # past the default only to measure what it prevents
    with Replicas(redis_url, tmp, 1, skus=args.skus, stores=2, warehouses=2,
                  max_subscriptions_per_principal=limit) as replicas:
        world = replicas.world
        skus = [world.items[i].sku for i in range(args.skus)]
        cells = [(i, w) for i in range(args.skus) for w in range(len(world.warehouses))]
        plan = {"compression": False, "after": "0-0",
                "subscribers": [{"url": replicas.url(0), "skus": skus}
                                for _ in range(subscribers)]}
        plan_path, out_path = tmp / "plan.json", tmp / "received.json"
        plan_path.write_text(json.dumps(plan))
        warm_item_master(replicas.url(0), skus)
        receiver = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/benchmarks/bench_subscriptions.py"),
             "--receiver", str(plan_path), str(out_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        try:
            assert receiver.stdout is not None
            assert receiver.stdin is not None
            line = receiver.stdout.readline().decode().strip()
            if line != "READY":
                raise RuntimeError(f"receiver failed: {line!r}")
            time.sleep(args.settle)
            gateway_pid = replicas.pids()[0]
            cpu_before = cpu_seconds(gateway_pid)
            acked, load = asyncio.run(generate(replicas, cells, args.rate, args.duration,
                                               args.seed))
            cpu_used = round(cpu_seconds(gateway_pid) - cpu_before, 1)
            time.sleep(args.settle)
            receiver.stdin.write(b"STOP\n")
            receiver.stdin.flush()
            receiver.wait(120)
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait(10)
        results = json.loads(out_path.read_text())
        delivered = analyse(plan, acked, results)
        return {"subscribers": subscribers, "acknowledged": len(acked),
                "achieved_rate": round(len(acked) / load["elapsed"], 1),
                "webhook_round_trip_ms": load["webhook_round_trip_ms"],
                "failures": load["failures"], "max_schedule_lag_ms": load["max_schedule_lag_ms"],
                "gateway_cpu_seconds": cpu_used,
                "dropped": delivered["dropped"], "duplicates": delivered["duplicates"],
                "conflated": delivered["conflated"],
                "deliveries": delivered["deliveries_received"],
                "change_latency_ms": delivered["latency_ms"],
                "receiver_errors": results["error_count"], "logs": str(tmp)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[0, 200, 1000])
    parser.add_argument("--rate", type=float, default=100, help="webhook events per second")
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per run")
    parser.add_argument("--skus", type=int, default=50)
    parser.add_argument("--settle", type=float, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default="", help="also write the report here")
    args = parser.parse_args()
    from gateway.redis_server import start_server

    host = machine()
    server = start_server()
    try:
        runs = []
        for subscribers in args.subscribers:
            note(f"run with {subscribers} subscribers")
            runs.append(one_run(str(server.connection_url), subscribers, args))
            note(json.dumps(runs[-1]))
    finally:
        server.stop()
    report = {"machine": host, "params": {"rate": args.rate, "duration": args.duration,
                                          "skus": args.skus}, "runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
