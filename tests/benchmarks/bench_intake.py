"""Benchmark: durable webhook intake, one node, no subscribers (issue 15's goal: >= 2,000
events/s).

Run (not part of the suite):

    python tests/benchmarks/bench_intake.py                      # workers 1 and 2, 20,000 each
    python tests/benchmarks/bench_intake.py --workers 2 --webhooks 40000 --json out.json
    python tests/benchmarks/bench_intake.py --env RETAILGRAPH_EVENT_LOOP=asyncio,uvloop \
        --env RETAILGRAPH_REDIS_BATCHING=false,true

Topology, all on loopback and all on the same cores: a private Valkey (append-only,
``appendfsync everysec``: what an acknowledged event is durable against), the four simulators
in one process (they serve the catalog load only), ``retailgraph serve --workers N`` against
them, and this process as the load generator: signed webhooks built and signed in advance,
written as raw HTTP/1.1 over 32 keep-alive connections (one request in flight per
connection), each answer read and required to be 200. Kinds, interleaved: ERP
``stock.adjusted`` (Standard Webhooks), WMS EPCIS balances, Square ``inventory.count.updated``
(each cell once per delivery, so no delivery is a duplicate). ``--env NAME=a,b`` runs every
configuration once per value (side by side in one run).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_cache import free_port, machine, wait_ready  # noqa: E402


def build_requests(base: str, first: int, count: int, skus: int, world: Any, settings: Any
                   ) -> list[bytes]:
    """Deliveries ``first`` .. ``first + count - 1``, a third of each kind, signed, as raw
    HTTP/1.1 requests. The ERP's global sequence and each WMS cell's sequence run without a
    hole (a hole is a gap the gateway would heal, work this benchmark does not measure)."""
    from tests.helpers_webhooks import Signer, now

    signer = Signer(settings, world)
    target = urlsplit(base)
    out = []
    for n in range(first, first + count):
        i = (n // 3) % skus
        if n % 3 == 0:
            delivery = signer.erp(signer.erp_stock(i, world.warehouses[0].code, n % 500,
                                                   n // 3 + 1))
        elif n % 3 == 1:
            delivery = signer.epcis([signer.epcis_event(i, 0, n % 500,
                                                        1000 + n // 3 // skus)])
        else:
            delivery = signer.square(f"{base}/webhooks/pos", [signer.square_count(
                i, n % len(world.stores), n % 500, now())])
        head = (f"POST /webhooks/{delivery.backend} HTTP/1.1\r\nHost: {target.netloc}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(delivery.body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in delivery.headers.items()) + "\r\n")
        out.append(head.encode() + delivery.body)
    return out


async def blast(host: str, port: int, requests: list[bytes], concurrency: int
                ) -> tuple[float, int, list[float]]:
    """Send every request, ``concurrency`` connections each with one in flight; returns
    events/s, the non-200 count and the round trips (ms)."""
    pending = iter(requests)
    failures = 0
    latencies: list[float] = []

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        for raw in pending:
            sent = time.perf_counter()
            writer.write(raw)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - sent) * 1000)
            failures += status != 200
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return len(requests) / (time.perf_counter() - start), failures, latencies


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its child processes so far (utime + stime, from /proc)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            _, _, rest = stat.read_text().rpartition(")")
        except OSError:
            continue
        fields = rest.split()
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def write_config(path: Path, port: int, ports: list[int], redis_url: str) -> Any:
    from gateway.config import demo_settings
    from tests.e2e.test_replicas import write_config as replica_config

    settings = demo_settings("127.0.0.1", port, environ={})
    for backend, sim_port in zip(settings.backends.values(), ports, strict=True):
        backend.base_url = f"http://127.0.0.1:{sim_port}"
    replica_config(settings, path, host="127.0.0.1", port=port, redis_url=redis_url,
                   rate_limit_per_minute=0, reconcile_interval_seconds=0)
    return settings


def one_run(workers: int, env: dict[str, str], args: argparse.Namespace, redis_url: str,
            ports: list[int], tmp: Path, world: Any) -> dict[str, Any]:
    import redis

    redis.Redis.from_url(redis_url).flushall()
    port = free_port()
    cfg = tmp / f"gw-{port}.toml"
    settings = write_config(cfg, port, ports, redis_url)
    # The simulators were started for a fixed gateway port: their webhooks are not used.
    log = (tmp / f"gw-{port}.log").open("wb")
    profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    gw = subprocess.Popen(
        [sys.executable, *profile, "-m", "gateway.cli", "--log-level", "WARNING", "serve",
         "--config", str(cfg), "--insecure-no-auth", "--workers", str(workers)],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        time.sleep(2)  # every worker's catalog loaded
        warm = build_requests(base, 0, 600, args.skus, world, settings)
        asyncio.run(blast("127.0.0.1", port, warm, args.connections))
        requests = build_requests(base, 600, args.webhooks, args.skus, world,
                                  settings)
        cpu0 = cpu_seconds(gw.pid)
        rate, failures, latencies = asyncio.run(blast("127.0.0.1", port, requests,
                                                      args.connections))
        cpu = cpu_seconds(gw.pid) - cpu0
        latencies.sort()
        return {"workers": workers, "env": env, "events": args.webhooks,
                "events_per_s": round(rate), "non_200": failures,
                "p50_ms": round(latencies[len(latencies) // 2], 2),
                "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2),
                "gateway_cpu_ms_per_event": round(cpu * 1000 / args.webhooks, 2)}
    finally:
        gw.terminate()
        gw.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--webhooks", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=a,b",
                        help="run each configuration once per value of this variable")
    parser.add_argument("--json", default="")
    parser.add_argument("--profile", default="", metavar="FILE",
                        help="run the gateway (use --workers 1) under cProfile, write FILE")
    args = parser.parse_args()

    from gateway.redis_server import start_server
    from gateway.simulators.world import World

    variants = [[(name, value) for value in values.split(",")]
                for name, values in (e.split("=", 1) for e in args.env)]
    envs = [dict(combo) for combo in itertools.product(*variants)] or [{}]
    valkey = start_server(appendonly="yes", appendfsync="everysec")
    ports = [free_port() for _ in range(4)]
    sims = subprocess.Popen([sys.executable, str(ROOT / "tests/benchmarks/bench_cache.py"),
                             "--role", "sims", "--gateway-port", str(free_port()),
                             "--ports", ",".join(map(str, ports)), "--skus", str(args.skus)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    world = World(42, args.skus, 8, 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    runs = []
    try:
        for env in envs:
            for workers in args.workers:
                runs.append(one_run(workers, env, args, str(valkey.connection_url), ports,
                                    tmp, world))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        sims.terminate()
        sims.wait(20)
        valkey.stop()
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load_average_at_start": os.getloadavg()[0], "goal_events_per_s": 2000,
              "params": {"webhooks": args.webhooks, "connections": args.connections,
                         "skus": args.skus}, "runs": runs}
    print(f"\nMachine: {report['machine']}\n")
    print("| workers | env | events/s (goal 2,000) | p50 ms | p99 ms | gateway CPU ms/event |"
          " non-200 |\n|---:|---|---:|---:|---:|---:|---:|")
    for r in runs:
        variant = " ".join(f"{k}={v}" for k, v in r["env"].items()) or "-"
        print(f"| {r['workers']} | {variant} | {r['events_per_s']:,} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['gateway_cpu_ms_per_event']} | {r['non_200']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
