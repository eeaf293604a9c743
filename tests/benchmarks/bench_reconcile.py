"""Benchmark: a full reconciliation of 100,000 SKUs x 50 locations (40 stores, 10 warehouses).

Run (not part of the suite):
    python tests/benchmarks/bench_reconcile.py [--skus 100000] [--stores 40] [--warehouses 10]

Topology, all on loopback: a private Valkey, each simulator in its own process (uvicorn), and
the reconciliation in this process, exactly as ``retailgraph reconcile`` runs it (a gateway
Runtime without background tasks). What is measured:

- the catalog load the gateway does once at start (item master, shop products, POS catalog),
- the reconciliation run itself: every cell read from all four backends through their batch
  endpoints, compared with the cache and with each other, streamed in SKU chunks,
- peak RSS of this process (the reconciler) before and after the run, and of each simulator.

Before the run, 1% of the SKUs are read through the gateway's cache (so the run compares real
cache entries), and a few faults are injected so the run has something to find and repair.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.benchmarks import contract  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_sim(name: str, port: int, gateway_port: int, skus: int, stores: int,
            warehouses: int) -> None:
    from gateway.config import demo_settings
    from gateway.demo import simulator_app, webhook_url
    from gateway.serving import make_server, run_together
    from gateway.simulators.world import World

    settings = demo_settings("127.0.0.1", gateway_port, environ={})
    backend = settings.backends[name]
    backend.base_url = f"http://127.0.0.1:{port}"
    world = World(42, skus, stores, warehouses)
    # No gateway listens: webhooks go nowhere (the run reads the APIs).
    app = simulator_app(world, backend, "")
    del webhook_url
    asyncio.run(run_together([[make_server(app, "127.0.0.1", port)]]))


def rss_mb(pid: int) -> float:
    """Peak resident set of a process (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


async def bench(args: argparse.Namespace, ports: dict[str, int], redis_url: str,
                pids: dict[str, int]) -> dict[str, object]:
    from gateway.app import build
    from gateway.config import demo_settings
    from gateway.reconcile.runner import Scope

    settings = demo_settings("127.0.0.1", free_port(), environ={})
    for name, backend in settings.backends.items():
        backend.base_url = f"http://127.0.0.1:{ports[name]}"
        backend.timeout = 60.0
    settings.redis_url = redis_url
    # The run's CPU-bound judging shares its event loop with its Redis pipelines: on a
    # machine loaded by other work the default 2 s write deadline aborted whole runs.
    settings.redis_write_timeout_ms = args.redis_deadline_ms
    out: dict[str, object] = {}
    t0 = time.perf_counter()
    runtime = await build(settings, background=False)
    await runtime.start()
    out["catalog_load_s"] = round(time.perf_counter() - t0, 1)
    graph = runtime.graph
    catalog = graph.catalog
    assert catalog is not None, "catalog did not load"
    out["catalog_items"] = len(catalog.items)
    out["locations"] = len(catalog.locations)
    # Warm 1% of the SKUs into the cache through the normal read path.
    skus = sorted(catalog.items_by_sku)
    warm = skus[:: 100]
    loaders = graph.loaders()
    await asyncio.gather(*(loader.load_many(warm) for loader in (
        loaders.store_stock, loaders.warehouse_stock, loaders.online_stock,
        loaders.erp_snapshot)))
    out["warmed_skus"] = len(warm)
    reconciler = runtime.reconciliation.runner
    assert reconciler is not None
    if args.chunk:
        reconciler.chunk_size = args.chunk
    if args.parallel:
        reconciler.parallel = args.parallel
    out["chunk_size"], out["parallel"] = reconciler.chunk_size, reconciler.parallel
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu_self = time.process_time()
    profiler = cProfile.Profile() if args.profile else None
    t1 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    report = await runtime.reconciliation.run(Scope())
    elapsed = time.perf_counter() - t1
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    out["cpu_s_during_run"] = {"reconciler": round(time.process_time() - cpu_self, 1), **{
        name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in pids.items()}}
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    await runtime.stop()
    out.update({
        "cells": report.cells, "views_read": dict(report.views_read),
        "discrepancies": sum(report.by_kind.values()), "by_kind": dict(report.by_kind),
        "repaired": report.repaired, "errors": report.errors,
        "run_s": round(elapsed, 1), "cells_per_s": round(report.cells / elapsed),
        "reconciler_peak_rss_mb_before_run": round(rss_before),
        "reconciler_peak_rss_mb_after_run": round(rss_after)})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skus", type=int, default=100_000)
    p.add_argument("--stores", type=int, default=40)
    p.add_argument("--warehouses", type=int, default=10)
    p.add_argument("--chunk", type=int, default=0, help="SKUs per chunk (default: the run's)")
    p.add_argument("--parallel", type=int, default=0, help="chunks in flight")
    p.add_argument("--redis-deadline-ms", type=int, default=10_000,
                   help="the reconciler's Redis write deadline (the gateway's default: 2000)")
    p.add_argument("--json", default="", help="also write the result here (contract.py)")
    p.add_argument("--profile", default="", help="write the run's cProfile stats here")
    p.add_argument("--role", default="")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--gateway-port", type=int, default=0)
    args = p.parse_args()
    if args.role:
        run_sim(args.role, args.port, args.gateway_port, args.skus, args.stores,
                args.warehouses)
        return
    from gateway.redis_server import start_server

    valkey = start_server()
    gateway_port = free_port()
    ports = {name: free_port() for name in ("pos", "wms", "erp", "commerce")}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = tempfile.mkdtemp(prefix="bench-reconcile-")
    procs = {name: subprocess.Popen(
        [sys.executable, __file__, "--role", name, "--port", str(port),
         "--gateway-port", str(gateway_port), "--skus", str(args.skus),
         "--stores", str(args.stores), "--warehouses", str(args.warehouses)],
        env=env, stdout=open(f"{logs}/{name}.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        for name, port in ports.items()}
    try:
        for name, port in ports.items():
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/_sim/stats", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} simulator did not start") from None
                    time.sleep(0.2)
        result: dict[str, Any] = asyncio.run(bench(args, ports, str(valkey.connection_url),
                                   {name: proc.pid for name, proc in procs.items()}))
        result["simulator_peak_rss_mb"] = {name: round(rss_mb(proc.pid))
                                           for name, proc in procs.items()}
        result["size"] = f"{args.skus} SKUs x {args.stores + args.warehouses} locations"
        result["machine_summary"] = machine()
        at_goal_size = (args.skus, args.stores + args.warehouses) == (100_000, 50)
        growth = (result["reconciler_peak_rss_mb_after_run"]
                  - result["reconciler_peak_rss_mb_before_run"])
        sims = sum(result["cpu_s_during_run"].values())
        share = result["cpu_s_during_run"]["reconciler"] / sims if sims else 0
        figures = [
            contract.figure(f"reconciliation, {result['size']}", result["run_s"], "s",
                            "< 60 s" if at_goal_size else None,
                            result["run_s"] < 60 if at_goal_size else None,
                            note=f"{result['cells_per_s']:,} cells/s; reconciler "
                                 f"{share:.0%} of the run's CPU"),
            contract.figure("reconciliation: reconciler peak RSS growth during the run",
                            growth, "MB", None, None,
                            note=f"peak {result['reconciler_peak_rss_mb_after_run']} MB; "
                                 "catalog baseline before the run "
                                 f"{result['reconciler_peak_rss_mb_before_run']} MB")]
        out = contract.write(args.json, "reconcile", figures, **result)
        print(json.dumps(out, indent=2))
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=10)
        valkey.stop()


if __name__ == "__main__":
    main()
