"""Benchmark: what an HTTP request costs, against a bare Starlette app and Hive Gateway.

Run (not part of the suite; needs Debian's ``wrk``, and ``node``/``npm`` for Hive Gateway):

    python tests/benchmarks/bench_http.py                    # 10 s per target, 2 rounds
    python tests/benchmarks/bench_http.py --duration 5 --rounds 1 --json out.json

In one run, on one machine, the same load (wrk, one thread, ``-c16`` keep-alive connections,
closed loop) against:

- **hello**: a bare Starlette app answering ``GET /`` with a small JSON body, served by the
  same server software as the gateway (``gateway.serving.make_server``);
- **healthz**: the gateway's ``GET /healthz``;
- **cached query**: ``POST /graphql`` with one stock query, answered from the response cache
  (checked before the run: ``x-retailgraph-cache: hit``), with auth on (an API key sent as
  ``X-API-Key``) and the rate limit on (a bucket large enough never to refuse): a hit pays
  for both, as in production;
- **hive**: Hive Gateway (``@graphql-hive/gateway``, pinned by tests/benchmarks/hive/'s
  lockfile; proxy mode, its response cache on, shared by every caller) in front of the same
  gateway, asked the same query: after the first request every answer is Hive's cache hit.

The gateway (one ``retailgraph serve`` process) runs on a private Valkey with the four
simulators in threads of this process. Redis commands and round trips per cached hit are
counted with MONITOR over 100 sequential hits after the runs (see :func:`redis_per_hit`), and
the gateway's CPU time per request from /proc. Targets alternate within each round, so drift of
the machine's load spreads over all of them.

Goals (issue 15): cached query / hello >= 0.5; cached query / hive >= 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402

from gateway.redis_server import start_server  # noqa: E402
from tests.benchmarks import contract  # noqa: E402
from tests.benchmarks.bench_subscriptions import cpu_seconds, machine, note  # noqa: E402
from tests.e2e.test_replicas import Replicas  # noqa: E402
from tests.support import free_port  # noqa: E402

HIVE = Path(__file__).resolve().parent / "hive"
API_KEY = "bench-http-key-0123456789abcdef"
QUERY = ('query Stock($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) '
         '{ onHand available } }')
VARIABLES = {"sku": "SKU-000001", "loc": "WH01"}

WRK_POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%(key)s"
wrk.body = %(body)s
"""


def hello_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    return Starlette(routes=[Route("/", hello)])


def serve_hello(port: int) -> None:
    """The bare app, served as ``retailgraph serve`` serves the gateway."""
    import asyncio

    from gateway.serving import make_server, run_together

    asyncio.run(run_together([[make_server(hello_app(), "127.0.0.1", port)]]))


def wrk(url: str, duration: int, connections: int, script: str | None = None
        ) -> dict[str, Any]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    path = None
    if script is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write(script)
            path = fh.name
        args += ["-s", path]
    try:
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    finally:
        if path:
            os.unlink(path)

    r = contract.wrk_report(out)
    return {"requests": int(r["requests"]), "rps": round(r["rps"]), "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"], "non2xx": int(r["non2xx"])}


class Authed(Replicas):
    """One gateway replica with auth (an API key) and a rate limit that never refuses."""

    def wait_ready(self, k: int, within: float = 60) -> None:
        deadline = time.monotonic() + within
        with httpx.Client(timeout=5, headers={"x-api-key": API_KEY}) as client:
            while True:
                proc = self.procs[k]
                if proc is None or proc.poll() is not None:
                    raise RuntimeError("the gateway exited:\n" + self.output(k))
                with contextlib.suppress(httpx.HTTPError):
                    body = client.post(f"{self.url(k)}/graphql", json={
                        "query": QUERY, "variables": VARIABLES}).json()
                    if not body.get("errors") and (body.get("data") or {}).get("stockLevel"):
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway is not ready:\n" + self.output(k))
                time.sleep(0.2)


@contextlib.contextmanager
def process(args: list[str], cwd: Path, env: dict[str, str] | None = None,
            ) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_http(url: str, method: str = "GET", within: float = 60,
              **kwargs: Any) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.request(method, url, timeout=5, **kwargs)
            if response.status_code == 200:
                return response
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer")
        time.sleep(0.2)


def redis_per_hit(redis_url: str, url: str, body: str, hits: int = 200) -> dict[str, float]:
    """Commands and round trips per cached hit over ``hits`` sequential hits.

    Commands: from MONITOR, those clients sent (not what scripts ran inside) about the
    request (its rate-limit bucket, the response cache). Round trips: the server's
    ``total_reads_processed`` (one per batch of commands a client's socket delivered), less
    the background's reads (sweepers, change feed) at the rate of an idle second just
    before."""
    import threading

    store = redis.Redis.from_url(redis_url)

    def reads() -> int:
        return int(store.info("stats")["total_reads_processed"])

    sent: list[str] = []
    with store.monitor() as monitor:  # type: ignore[no-untyped-call]
        started = threading.Event()

        def watch() -> None:
            started.set()
            with contextlib.suppress(redis.RedisError, OSError, ValueError):
                for command in monitor.listen():
                    if command.get("client_type") != "lua":
                        sent.append(str(command["command"]))

        threading.Thread(target=watch, daemon=True).start()
        started.wait(5)
        idle_from, idle_reads = time.monotonic(), reads()
        time.sleep(1.0)
        background = (reads() - idle_reads - 1) / (time.monotonic() - idle_from)
        first = len(sent)
        with httpx.Client(timeout=10, headers={"x-api-key": API_KEY,
                                               "content-type": "application/json"}) as client:
            began, before = time.monotonic(), reads()
            for _ in range(hits):
                answer = client.post(f"{url}/graphql", content=body)
                assert answer.headers.get("x-retailgraph-cache") == "hit", answer.text
            took, during = time.monotonic() - began, reads() - before - 1
        time.sleep(0.3)
        mine = [text for text in sent[first:] if "rg:rl:" in text or "rg:{rc}:" in text]
    return {"redis_commands_per_hit": round(len(mine) / hits, 2),
            "redis_round_trips_per_hit": round(max(0.0, during - background * took) / hits, 2)}


def npm_ci() -> None:
    installed = HIVE / "node_modules" / ".package-lock.json"
    if not installed.exists():
        note("npm ci (tests/benchmarks/hive)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HIVE, check=True,
                       capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per target")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-hive", action="store_true", help="leave Hive Gateway out")
    parser.add_argument("--json", default="", help="also write the report here")
    parser.add_argument("--serve-hello", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_hello:
        serve_hello(args.serve_hello)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    hive = not args.no_hive
    if hive:
        npm_ci()
    host = machine()
    server = start_server()
    url = str(server.connection_url)
    redis.Redis.from_url(url).flushall()
    os.environ["RETAILGRAPH_API_KEYS"] = json.dumps(
        {"bench": {"key": API_KEY, "scopes": ["stock:read"]}})
    os.environ["RETAILGRAPH_RATE_LIMIT_PER_MINUTE"] = "1000000000"
    body = json.dumps({"query": QUERY, "variables": VARIABLES})
    post = WRK_POST % {"key": API_KEY, "body": json.dumps(body)}
    runs: dict[str, list[dict[str, Any]]] = {}
    hello_port, hive_port = free_port(), free_port()
    try:
        with contextlib.ExitStack() as stack:
            gateway = stack.enter_context(Authed(
                url, Path(tempfile.mkdtemp(prefix="bench-http-")), 1, skus=20, stores=2,
                warehouses=1))
            base = gateway.url(0)
            pid = gateway.pids()[0]
            stack.enter_context(process([sys.executable, __file__, "--serve-hello",
                                         str(hello_port)], ROOT))
            wait_http(f"http://127.0.0.1:{hello_port}/")
            with httpx.Client(timeout=10, headers={"x-api-key": API_KEY}) as client:
                for _ in range(2):
                    answer = client.post(f"{base}/graphql", content=body,
                                         headers={"content-type": "application/json"})
                if answer.headers.get("x-retailgraph-cache") != "hit":
                    raise RuntimeError(f"the query is not served from the cache: {answer.text}")
            targets: dict[str, tuple[str, str | None]] = {
                "hello": (f"http://127.0.0.1:{hello_port}/", None),
                "healthz": (f"{base}/healthz", None),
                "cached query": (f"{base}/graphql", post),
            }
            if hive:
                stack.enter_context(process(
                    ["node", str(HIVE / "node_modules" / ".bin" / "hive-gateway"), "proxy",
                     "-c", str(HIVE / "gateway.config.mjs"), "-p", str(hive_port),
                     "-h", "127.0.0.1"],
                    HIVE, {"UPSTREAM": f"{base}/graphql", "API_KEY": API_KEY}))
                hive_url = f"http://127.0.0.1:{hive_port}/graphql"
                wait_http(hive_url, method="POST", content=body,
                          headers={"content-type": "application/json"})
                hit = httpx.post(hive_url, content=body, timeout=10,
                                 headers={"content-type": "application/json"}).json()
                if not (hit.get("extensions") or {}).get("responseCache", {}).get("hit"):
                    raise RuntimeError(f"Hive's response cache did not answer: {hit}")
                targets["hive"] = (hive_url, post)
            for round_ in range(args.rounds):
                for name, (target, script) in targets.items():
                    note(f"round {round_ + 1}: {name}")
                    before_cpu = cpu_seconds(pid)
                    result = wrk(target, args.duration, args.connections, script)
                    used_cpu = cpu_seconds(pid) - before_cpu
                    if name in ("healthz", "cached query"):
                        result["gateway_cpu_us_per_request"] = round(
                            1e6 * used_cpu / max(1, result["requests"]))
                    runs.setdefault(name, []).append(result)
                    note(json.dumps(result))
            redis_use = redis_per_hit(url, base, body)
            note(json.dumps(redis_use))
    finally:
        server.stop()

    def best(name: str) -> int:
        return max((r["rps"] for r in runs.get(name, [])), default=0)

    summary: dict[str, Any] = {name: best(name) for name in runs}
    summary.update(redis_use)
    figures = []
    if best("hello"):
        ratio = round(best("cached query") / best("hello"), 2)
        figures.append(contract.figure(
            "cached query vs a bare Starlette 'hello' app, same server software, same run "
            "(wrk -c16)", ratio, "x", ">= 0.5", ratio >= 0.5,
            note=f"{best('cached query'):,} vs {best('hello'):,} req/s; /healthz "
                 f"{best('healthz'):,} req/s"))
    if best("hive"):
        ratio = round(best("cached query") / best("hive"), 2)
        figures.append(contract.figure(
            "cached query vs Hive Gateway's response cache in front of retailgraph", ratio,
            "x", ">= 2", ratio >= 2,
            note=f"{best('cached query'):,} vs {best('hive'):,} req/s"))
    figures.append(contract.figure(
        "Redis round trips per response-cache hit (auth and rate limit on)",
        redis_use["redis_round_trips_per_hit"], "round trips", "<= 1",
        redis_use["redis_round_trips_per_hit"] <= 1,
        note=f"{redis_use['redis_commands_per_hit']} commands per hit"))
    report = contract.write(args.json, "http", figures, host=host, params={
        "duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
        "wrk_threads": 1}, runs=runs, summary=summary)
    print(json.dumps(report, indent=2))

if __name__ == "__main__":
    main()
