"""Benchmark: a cold read (cache miss) of one SKU's stock across the four backends.

Run (not part of the suite):
    python tests/benchmarks/bench_cold_read.py [--requests 300] [--json PATH]

Topology, all on loopback: a private Valkey, each simulator in its own process (uvicorn), the
gateway in its own process (``gateway.app.create_app`` behind uvicorn). One client sends the
query below for one SKU at a time, sequentially over one keep-alive connection, so each
latency is one request alone (no queueing behind others). Two modes:

- ``cache off`` (``cache = false``): every read goes to the four backends;
- ``cache miss``: the cache on, but every request names a SKU never read before, so each one
  reads all four backends through and fills the cache.

The first requests (catalog load, connection set-up) are a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.benchmarks import contract  # noqa: E402

QUERY = ("query($sku: ID!) { product(sku: $sku) { sku name stock { location { id } "
         "available committed onHand source asOf } } }")
GOAL_P50_MS = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sim(name: str, port: int, gateway_port: int, skus: int) -> None:
    from gateway.config import demo_settings
    from gateway.demo import simulator_app
    from gateway.serving import make_server, run_together
    from gateway.simulators.world import World

    settings = demo_settings("127.0.0.1", gateway_port, environ={})
    backend = settings.backends[name]
    backend.base_url = f"http://127.0.0.1:{port}"
    app = simulator_app(World(42, skus, 8, 2), backend, "")
    asyncio.run(run_together([[make_server(app, "127.0.0.1", port)]]))


def run_gateway(port: int, ports: dict[str, int], redis_url: str, cache: bool) -> None:
    from gateway.app import create_app
    from gateway.config import demo_settings
    from gateway.serving import make_server, run_together

    settings = demo_settings("127.0.0.1", port, environ={})
    for name, backend in settings.backends.items():
        backend.base_url = f"http://127.0.0.1:{ports[name]}"
    settings.redis_url = redis_url
    settings.cache = cache
    settings.sync.enabled = False
    asyncio.run(run_together([[make_server(create_app(settings), "127.0.0.1", port)]]))


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not start") from None
            time.sleep(0.2)


def measure(base: str, skus: list[str], warmup: int) -> dict[str, float]:
    times: list[float] = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for n, sku in enumerate(skus):
            t0 = time.perf_counter()
            r = client.post("/graphql", json={"query": QUERY, "variables": {"sku": sku}})
            elapsed = (time.perf_counter() - t0) * 1000
            body = r.json()
            if r.status_code != 200 or body.get("errors") or not body["data"]["product"]:
                raise RuntimeError(f"{sku}: {r.status_code} {r.text[:300]}")
            if n >= warmup:
                times.append(elapsed)
    times.sort()
    return {"requests": len(times), "p50_ms": round(statistics.median(times), 2),
            "p90_ms": round(times[int(len(times) * 0.9)], 2),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
            "max_ms": round(times[-1], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="counted requests per mode")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--skus", type=int, default=2000, help="SKUs in the simulated world")
    p.add_argument("--json", default="", help="also write the result here")
    p.add_argument("--role", default="", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ports", default="", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    p.add_argument("--cache", default="on", help=argparse.SUPPRESS)
    args = p.parse_args()
    names = ("pos", "wms", "erp", "commerce")
    if args.role == "gateway":
        ports = dict(zip(names, map(int, args.ports.split(",")), strict=True))
        run_gateway(args.port, ports, args.redis_url, args.cache == "on")
        return
    if args.role:
        run_sim(args.role, args.port, 0, args.skus)
        return
    needed = 2 * (args.requests + args.warmup)
    if needed > args.skus:
        raise SystemExit(f"--skus must be at least {needed} (each request a new SKU)")
    from gateway.redis_server import start_server

    valkey = start_server()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ports = {name: free_port() for name in names}
    me = [sys.executable, __file__, "--skus", str(args.skus)]
    procs = [subprocess.Popen([*me, "--role", name, "--port", str(port)], env=env)
             for name, port in ports.items()]
    result: dict[str, Any] = {}
    try:
        for port in ports.values():
            wait_up(f"http://127.0.0.1:{port}/_sim/stats")
        all_skus = [f"SKU-{n:06d}" for n in range(1, args.skus + 1)]
        per_mode = args.requests + args.warmup
        for n, (mode, cache) in enumerate((("cache off", "off"), ("cache miss", "on"))):
            gport = free_port()
            gw = subprocess.Popen([*me, "--role", "gateway", "--port", str(gport), "--ports",
                                   ",".join(str(ports[x]) for x in names),
                                   "--redis-url", str(valkey.connection_url),
                                   "--cache", cache], env=env)
            procs.append(gw)
            base = f"http://127.0.0.1:{gport}"
            wait_up(f"{base}/healthz")
            result[mode] = measure(base, all_skus[n * per_mode:(n + 1) * per_mode],
                                   args.warmup)
            gw.terminate()
            gw.wait(20)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
        valkey.stop()
    figures = [contract.figure(f"cold read of one SKU across four backends ({mode}), p50",
                               r["p50_ms"], "ms", f"< {GOAL_P50_MS:g} ms",
                               r["p50_ms"] < GOAL_P50_MS, p99=r["p99_ms"])
               for mode, r in result.items()]
    out = contract.write(args.json, "cold_read", figures, modes=result)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
