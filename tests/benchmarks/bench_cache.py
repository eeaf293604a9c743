"""Benchmark: response-cache hits vs cache off vs a static ceiling; webhook intake rate.

Run (not part of the suite):  python tests/benchmarks/bench_cache.py [--duration 10]

Topology, all on loopback: a private Valkey, the four simulators in one process, the gateway
in its own process (uvicorn, httptools, the standard asyncio loop), and wrk as the load
generator (Debian's ``wrk``; it shares the machine's cores with everything else).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.benchmarks import contract  # noqa: E402

SINGLE = ('{ product(sku: "SKU-000001") { sku name stock { location { id } available '
          'committed onHand source asOf } availability(channel: ONLINE) { available } } }')
PAGE = ('{ products(first: 50) { edges { node { sku name price { amount } '
        'stock { location { id } available source asOf } } } } }')


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- roles run in child processes ------------------------------------------------------------

def run_sims(gateway_port: int, ports: list[int], skus: int) -> None:
    from gateway.config import demo_settings
    from gateway.demo import simulator_app, webhook_url
    from gateway.serving import make_server, run_together
    from gateway.simulators.world import World

    settings = demo_settings("127.0.0.1", gateway_port, environ={})
    world = World(42, skus, 8, 2)
    servers = []
    for (name, backend), port in zip(settings.backends.items(), ports, strict=True):
        backend.base_url = f"http://127.0.0.1:{port}"
        servers.append(make_server(simulator_app(world, backend, webhook_url(settings, name)),
                                   "127.0.0.1", port))
    asyncio.run(run_together([servers]))


def run_gateway(config: str) -> None:
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.types import Message, Receive, Scope, Send

    from gateway import config as cfg
    from gateway.app import create_app
    from gateway.serving import make_server, run_together

    settings = cfg.load(config)
    app = create_app(settings)
    static = json.dumps({"data": {"static": True, "pad": "x" * 1500}}).encode()

    async def ceiling(request: object) -> Response:
        return Response(static, media_type="application/json")

    async def with_ceiling(scope: Scope, receive: Receive, send: Send) -> None:
        """The gateway, with the static route first among its own once it has started (it
        builds its routes in its lifespan): served by the same server, same middleware."""
        async def started(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                app.routes.insert(0, Route("/_bench/static", ceiling, methods=["POST"]))
            await send(message)
        await app(scope, receive, started if scope["type"] == "lifespan" else send)

    asyncio.run(run_together([[make_server(with_ceiling, settings.host, settings.port)]]))


# -- driver ----------------------------------------------------------------------------------

def wrk(url: str, body: str, duration: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                 'wrk.headers["Content-Type"] = "application/json"\n')
        script = fh.name
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", script, url], capture_output=True, text=True, check=True).stdout
    os.unlink(script)

    r = contract.wrk_report(out)
    return {"rps": r["rps"], "p50": r["p50_ms"], "p99": r["p99_ms"], "non2xx": r["non2xx"]}


def write_config(path: Path, port: int, ports: list[int], redis_url: str, cache: bool) -> None:
    names = [("pos", "square"), ("wms", "epcis"), ("erp", "erp"), ("commerce", "shopify")]
    lines = ["[gateway]", f'port = {port}', f'redis_url = "{redis_url}"',
             f"cache = {'true' if cache else 'false'}", "rate_limit_per_minute = 0", ""]
    for (name, fmt), p in zip(names, ports, strict=True):
        lines += [f"[backends.{name}]", f'format = "{fmt}"', f'base_url = "http://127.0.0.1:{p}"',
                  f'token = "demo-{name}-token"', f'webhook_secret = "demo-{name}-webhook-secret"',
                  ""]
    path.write_text("\n".join(lines))


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.post(url + "/graphql", json={"query": SINGLE}, timeout=5)
            if r.status_code == 200 and "errors" not in r.json():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


async def blast_webhooks(url: str, count: int, concurrency: int, skus: int) -> float:
    """Signed ERP ``stock.adjusted`` webhooks, signed in advance and written as raw HTTP/1.1
    over keep-alive connections, so the load generator costs little CPU next to the gateway.
    Every request must be acknowledged with 200."""
    import base64
    import hashlib
    import hmac
    from urllib.parse import urlsplit

    target = urlsplit(url)
    secret = b"demo-erp-webhook-secret"
    now = int(time.time())
    requests = []
    for n in range(count):
        body = json.dumps({"id": f"evt_bench_{uuid.uuid4().hex}", "type": "stock.adjusted",
                           "occurredAt": "2026-11-26T12:00:00Z", "sequence": n + 1,
                           "data": {"sku": f"SKU-{n % skus + 1:06d}", "locationCode": "WH01",
                                    "onHand": n % 500, "reason": "bench"}}).encode()
        msg_id = f"msg_{n}_{uuid.uuid4().hex[:8]}"
        sig = base64.b64encode(hmac.new(secret, f"{msg_id}.{now}.".encode() + body,
                                        hashlib.sha256).digest()).decode()
        head = (f"POST {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"webhook-id: {msg_id}\r\nwebhook-timestamp: {now}\r\n"
                f"webhook-signature: v1,{sig}\r\n\r\n")
        requests.append(head.encode() + body)
    pending = iter(requests)
    failures = 0

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        for raw in pending:
            writer.write(raw)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            failures += status != 200
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{failures} webhooks not acknowledged with 200")
    return count / elapsed


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return (f"{os.cpu_count()} vCPU {cpu}, {int(mem) // 1024 // 1024} GiB RAM, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["driver", "sims", "gateway"], default="driver")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--webhooks", type=int, default=20000)
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--config", default="")
    parser.add_argument("--gateway-port", type=int, default=0)
    parser.add_argument("--ports", default="")
    args = parser.parse_args()
    if args.role == "sims":
        run_sims(args.gateway_port, [int(p) for p in args.ports.split(",")], args.skus)
        return
    if args.role == "gateway":
        run_gateway(args.config)
        return

    from gateway.redis_server import start_server

    redis = start_server(appendonly="yes", appendfsync="everysec")
    gport, ports = free_port(), [free_port() for _ in range(4)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    me = [sys.executable, __file__]
    procs = [subprocess.Popen([*me, "--role", "sims", "--gateway-port", str(gport),
                               "--ports", ",".join(map(str, ports)), "--skus", str(args.skus)],
                              env=env)]
    results: dict[str, dict[str, float]] = {}
    tmp = Path(tempfile.mkdtemp())
    try:
        for cache in (True, False):
            cfg = tmp / f"gw-{cache}.toml"
            write_config(cfg, gport, ports, str(redis.connection_url), cache)
            gw = subprocess.Popen([*me, "--role", "gateway", "--config", str(cfg)], env=env)
            procs.append(gw)
            base = f"http://127.0.0.1:{gport}"
            wait_ready(base)
            label = "response cache" if cache else "cache off"
            if cache:
                results["static ceiling"] = wrk(f"{base}/_bench/static", "{}", args.duration,
                                                args.connections)
            for name, query in (("single SKU", SINGLE), ("50-product page", PAGE)):
                body = json.dumps({"query": query})
                httpx.post(f"{base}/graphql", content=body,
                           headers={"content-type": "application/json"}, timeout=30)
                results[f"{name}, {label}"] = wrk(f"{base}/graphql", body, args.duration,
                                                  args.connections)
            if cache:
                rate = asyncio.run(blast_webhooks(f"{base}/webhooks/erp", args.webhooks, 32,
                                                  args.skus))
                results["webhook intake (durable)"] = {"rps": rate, "p50": 0, "p99": 0,
                                                       "non2xx": 0}
            gw.terminate()
            gw.wait(20)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        redis.stop()
    print(f"\nMachine: {machine()}\n")
    print("| scenario | req/s | p50 ms | p99 ms | non-2xx |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['non2xx']:.0f} |")
    ceiling = results["static ceiling"]["rps"]
    for name in ("single SKU, response cache", "50-product page, response cache"):
        print(f"{name}: {results[name]['rps'] / ceiling:.0%} of the static ceiling")


if __name__ == "__main__":
    main()
