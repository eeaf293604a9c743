"""Benchmark: reservations per second and their latency on one gateway node.

Run (not part of the suite; needs Debian's ``wrk``):

    python tests/benchmarks/bench_reservations.py                 # 20 s per scenario
    python tests/benchmarks/bench_reservations.py --duration 10 --connections 16

One gateway (a ``retailgraph serve`` process, uvicorn) on a private Valkey with the four
simulators in threads of this process; wrk (one thread) posts ``reserveStock`` mutations,
each with its own idempotency key, for quantity 1 and a 15-minute TTL, over keep-alive
connections (closed loop). Every reservation goes the whole way: the claim, the atomic
check-and-hold script, the HOLD envelope logged, cached responses invalidated, the change
published.

- **contended**: every request for one cell (one SKU at one store);
- **spread**: requests spread over ``--cells`` cells (SKUs x stores) at random.

Each cell is stocked far beyond what a run can take (a physical count in the POS simulator),
so every request is a reservation made, not a refusal; afterwards the benchmark checks that
``StockLevel.reserved`` over the cells equals the reservations wrk saw made. The auth and
rate limit are off (``--insecure-no-auth``, ``rate_limit_per_minute = 0``).

Goal (issue 14): at least 1,000 reservations/s and p99 under 20 ms on one node, contended
and spread.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402

from gateway.redis_server import start_server  # noqa: E402
from resolvers.connectors.http import auth_headers  # noqa: E402
from tests.benchmarks import contract  # noqa: E402
from tests.benchmarks.bench_subscriptions import cpu_seconds, machine, note  # noqa: E402
from tests.e2e.test_replicas import Replicas  # noqa: E402

MUTATION = ("mutation R($input: ReserveStockInput!) { reserveStock(input: $input) { "
            "reservation { id } userErrors { code } } }")
LEVEL = ("query S($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) "
         "{ reserved } }")
STOCK = 1_000_000

WRK_SCRIPT = """
local cells = %(cells)s
local prefix = "%(prefix)s"
local threads = {}
counter = 0
made = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
setup = function(thread)
  table.insert(threads, thread)
end
request = function()
  counter = counter + 1
  local cell = cells[math.random(#cells)]
  local body = '{"query":%(query)s,"variables":{"input":{"sku":"' .. cell[1] ..
    '","locationId":"' .. cell[2] .. '","quantity":1,"idempotencyKey":"' .. prefix ..
    counter .. '"}}}'
  return wrk.format(nil, nil, nil, body)
end
response = function(status, headers, body)
  if string.find(body, '"userErrors":[]', 1, true) then made = made + 1 end
end
done = function(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("made") end
  io.write(string.format("MADE %%d\\n", total))
end
"""


def wrk(url: str, cells: list[tuple[str, str]], duration: int, connections: int
        ) -> dict[str, Any]:
    lua_cells = "{" + ",".join(f'{{"{s}","{loc}"}}' for s, loc in cells) + "}"
    script = WRK_SCRIPT % {"cells": lua_cells, "prefix": uuid.uuid4().hex[:8] + "-",
                           "query": json.dumps(json.dumps(MUTATION))[1:-1]
                           .replace('\\"', '"')}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
        path = fh.name
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                              "-s", path, url], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(path)

    r = contract.wrk_report(out)
    made = int(re.search(r"MADE (\d+)", out).group(1))  # type: ignore[union-attr]
    return {"requests": int(r["requests"]), "reservations_made": made, "rps": r["rps"],
            "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"],
            "non2xx": int(r["non2xx"])}


def stock_cells(replicas: Replicas, cells: list[tuple[int, int]]) -> None:
    """A physical count of STOCK at each (item, store), through the POS simulator."""
    backend = replicas.settings.backends["pos"]
    world = replicas.world
    changes = [{"type": "PHYSICAL_COUNT", "physical_count": {
        "catalog_object_id": world.items[i].square_variation_id,
        "location_id": world.stores[s].square_id, "state": "IN_STOCK",
        "quantity": str(STOCK)}} for i, s in cells]
    for start in range(0, len(changes), 100):
        response = httpx.post(f"{backend.base_url}/v2/inventory/changes/batch-create",
                              headers=auth_headers(backend), timeout=60, json={
                                  "idempotency_key": str(uuid.uuid4()),
                                  "changes": changes[start:start + 100]})
        response.raise_for_status()


def reserved(url: str, cells: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    out = {}
    with httpx.Client(timeout=30) as client:
        for sku, loc in cells:
            body = client.post(f"{url}/graphql", json={
                "query": LEVEL, "variables": {"sku": sku, "loc": loc}}).json()
            out[(sku, loc)] = int(body["data"]["stockLevel"]["reserved"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--cells", type=int, default=200, help="cells of the spread run")
    parser.add_argument("--json", default="", help="also write the report here")
    args = parser.parse_args()
    host = machine()
    server = start_server()
    url = str(server.connection_url)
    runs: dict[str, Any] = {}
    try:
        redis.Redis.from_url(url).flushall()
        skus = max(1, args.cells // 2)
        with Replicas(url, Path(tempfile.mkdtemp(prefix="bench-reserve-")), 1, skus=skus,
                      stores=2, warehouses=1) as replicas:
            world = replicas.world
            spread = [(i, s) for i in range(skus) for s in range(2)][:args.cells]
            stock_cells(replicas, spread)
            names = [(world.items[i].sku, world.stores[s].code) for i, s in spread]
            deadline = time.monotonic() + 60
            while any(v != 0 for v in reserved(replicas.url(0), names[:1]).values()) or \
                    httpx.post(f"{replicas.url(0)}/graphql", json={
                        "query": "query S($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, "
                                 "locationId: $loc) { available } }",
                        "variables": {"sku": names[-1][0], "loc": names[-1][1]}},
                        timeout=30).json()["data"]["stockLevel"]["available"] != STOCK:
                if time.monotonic() > deadline:
                    raise RuntimeError("the stock counts did not arrive")
                time.sleep(0.2)
            pid = replicas.pids()[0]
            for name, cells in (("contended (one cell)", names[:1]),
                                (f"spread ({len(names)} cells)", names)):
                note(f"run {name}")
                before = reserved(replicas.url(0), cells)
                cpu = cpu_seconds(pid)
                result = wrk(f"{replicas.url(0)}/graphql", cells, args.duration,
                             args.connections)
                used = cpu_seconds(pid) - cpu
                result["gateway_cpu_seconds"] = round(used, 1)
                # What one core would sustain: the load on this machine hardly changes it.
                result["gateway_cpu_ms_per_reservation"] = round(
                    1000 * used / max(1, result["requests"]), 2)
                time.sleep(1)
                after = reserved(replicas.url(0), cells)
                result["reserved_delta"] = sum(after.values()) - sum(before.values())
                # wrk stops counting at the deadline; the requests then in flight (at most one
                # per connection) are still made by the gateway.
                result["consistent"] = (0 <= result["reserved_delta"]
                                        - result["reservations_made"] <= args.connections)
                runs[name] = result
                note(json.dumps(result))
    finally:
        server.stop()
    report = {"machine": host, "params": {"duration_s": args.duration,
                                          "connections": args.connections,
                                          "cells": args.cells},
              "runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
