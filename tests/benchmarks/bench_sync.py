"""Benchmark: from a warehouse event acknowledged to the web shop confirming the push.

Run (not part of the suite):

    python tests/benchmarks/bench_sync.py                           # 100 and 500 events/s
    python tests/benchmarks/bench_sync.py --rates 100 --duration 30 --json sync.json

For each rate: one gateway (``retailgraph serve`` process, ``[sync] enabled``) on a private
Valkey, the four simulators in threads of this process, and this process posting signed WMS
webhooks (a cycle count with a new on-hand per event, never two in flight for one cell) at a
fixed rate (open loop; the load generator of ``bench_subscriptions.py``). Every event changes
the warehouse's available-to-sell, so every one asks for a push to the shop simulator, whose
``inventory_levels/update`` webhook (the echo) comes back to the gateway.

The headline (``--demo MINUTES``): ``retailgraph demo --activity 20`` run twice, with sync off
(the simulators' own WMS -> shop stock feed moves the shop's numbers, as before sync) and on
(retailgraph is the only thing that does), both at once on their own ports and embedded
Redis (``--sequential``: one after the other), polling ``discrepancies(kinds:
[ONLINE_OVERSELL_RISK])`` every 2 s: how many there are and the units at risk over time, and
how long each one lasted (first to last poll that saw it).

Measured per run, from the outbox's audit trail: for every action done, the time from the
gateway's receipt of the causing event to the shop's echo arriving (``confirmedAt``) and to
the shop's answer (``latencyMs``), p50/p99/max; how many events, actions, coalesced
(superseded) actions and effective shop writes (``/_sim/shop/writes``); and whether the shop
ends holding each cell's available-to-sell. The goal (issue 13): p99 under 1 s at 100 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_subscriptions import (  # noqa: E402
    BASE_ON_HAND,
    cpu_seconds,
    generate,
    machine,
    note,
    percentile,
    warm_item_master,
)


def stats(values: list[float]) -> dict[str, float | int]:
    return {"p50": round(percentile(values, 50), 1), "p99": round(percentile(values, 99), 1),
            "max": round(max(values), 1) if values else float("nan"), "n": len(values)}


def read_actions(redis_url: str) -> list[dict[str, str]]:
    import redis

    from resolvers.store.keys import OUTBOX_ALL_KEY as ALL_KEY
    from resolvers.store.outbox import action_key

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ids = client.zrange(ALL_KEY, 0, -1)
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(action_key(str(i)))
        return list(pipe.execute())
    finally:
        client.close()


def due(redis_url: str) -> int:
    """Events acknowledged but not applied yet, plus cells with sync work due."""
    import redis

    from resolvers.store.keys import OUTBOX_DUE_KEY as DUE_KEY
    from resolvers.store.keys import PENDING_KEY

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard(DUE_KEY)) + int(client.zcard(PENDING_KEY))
    finally:
        client.close()


def one_run(redis_url: str, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    import redis

    from resolvers.connectors.http import auth_headers
    from tests.e2e.test_replicas import Replicas

    redis.Redis.from_url(redis_url).flushall()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-sync-{int(rate)}-"))
    os.environ["RETAILGRAPH_SYNC_ENABLED"] = "true"
    from gateway.simulators.webhooks import DeliveryOptions

    # Shopify delivers webhooks concurrently (no ordering guarantee); the simulator's default
    # of one delivery at a time would make its own queue what the echo waits for.
    delivery = {"commerce": DeliveryOptions(concurrency=args.shop_delivery)}
    with Replicas(redis_url, tmp, 1, skus=args.skus, stores=2, warehouses=2,
                  delivery=delivery) as replicas:
        world = replicas.world
        skus = [world.items[i].sku for i in range(args.skus)]
        cells = [(i, w) for i in range(args.skus) for w in range(len(world.warehouses))]
        warm_item_master(replicas.url(0), skus)
        shop = replicas.settings.backends["commerce"]
        with httpx.Client(base_url=shop.base_url, headers=auth_headers(shop), timeout=30) as client:
            client.delete("/_sim/shop/writes")
        gateway_pid = replicas.pids()[0]
        cpu_before = cpu_seconds(gateway_pid)
        acked, load = asyncio.run(generate(replicas, cells, rate, args.duration, args.seed))
        deadline = time.monotonic() + 120
        while due(redis_url) and time.monotonic() < deadline:
            time.sleep(0.2)
        # The last echoes: until no more confirmations come in for ``settle`` seconds.
        seen, quiet = -1, time.monotonic()
        while time.monotonic() - quiet < args.settle and time.monotonic() < deadline + 60:
            now_confirmed = sum(1 for a in read_actions(redis_url) if a.get("confirmedAt"))
            if now_confirmed != seen:
                seen, quiet = now_confirmed, time.monotonic()
            time.sleep(0.5)
        cpu_used = round(cpu_seconds(gateway_pid) - cpu_before, 1)
        actions = read_actions(redis_url)
        with httpx.Client(base_url=shop.base_url, headers=auth_headers(shop), timeout=30) as client:
            writes = client.get("/_sim/shop/writes").json()["byKey"]
        # The last value acknowledged per cell: the shop must end holding its ATS.
        last: dict[tuple[str, str], int] = {}
        for _t, sku, loc, on_hand, _sent in acked:
            last[sku, loc] = on_hand
        safety = {item.sku: item.safety_stock for item in world.items}
        wrong = 0
        wrong_cells: list[dict[str, Any]] = []
        from_simulator = 0
        with httpx.Client(base_url=shop.base_url, headers=auth_headers(shop), timeout=30) as client:
            for (sku, loc), on_hand in last.items():
                item = next(x for x in world.items if x.sku == sku)
                site = next(x for x in world.warehouses if x.code == loc)
                level = client.get("/admin/api/2025-01/inventory_levels.json", params={
                    "inventory_item_ids": item.shopify_inventory_item_id,
                    "location_ids": site.shopify_id}).json()["inventory_levels"][0]
                if int(level["available"]) != max(0, on_hand - safety[sku]):
                    wrong += 1
                    # The WMS simulator never saw the bench's synthetic events: where the
                    # gateway read a cell through to it (its cached copy unreadable in time),
                    # it computed from the simulator's own, older level.
                    wms = replicas.settings.backends["wms"]
                    balance = httpx.post(f"{wms.base_url}/api/v1/balances/query",
                                         headers=auth_headers(wms), timeout=30, json={
                                             "gtins": [item.gtin14], "glns": [site.gln]}
                                         ).json()["balances"][0]
                    sim_ats = max(0, int(balance["available"]) - safety[sku])
                    if int(level["available"]) == sim_ats:
                        from_simulator += 1
                    if len(wrong_cells) < 5:
                        wrong_cells.append({"sku": sku, "location": loc,
                                            "shop": int(level["available"]),
                                            "ats": max(0, on_hand - safety[sku]),
                                            "wms_simulator_ats": sim_ats})
    done = [a for a in actions if a.get("status") == "DONE"]
    confirmed = [int(a["confirmedAt"]) - int(a["received"]) for a in done
                 if a.get("confirmedAt") and a.get("received")]
    answered = [int(a["completed"]) - int(a["received"]) for a in done
                if a.get("completed") and a.get("received")]
    # Where the time goes: receipt -> the applier recorded the action (intake and apply),
    # recorded -> the shop answered (the executor and the shop's API).
    recorded = [int(a["created"]) - int(a["received"]) for a in actions
                if a.get("created") and a.get("received")]
    executed = [int(a["completed"]) - int(a["created"]) for a in done
                if a.get("completed") and a.get("created")]
    by_status: dict[str, int] = {}
    for a in actions:
        by_status[a.get("status", "?")] = by_status.get(a.get("status", "?"), 0) + 1
    return {"rate": rate, "acknowledged": len(acked),
            "achieved_rate": round(len(acked) / load["elapsed"], 1),
            "webhook_round_trip_ms": load["webhook_round_trip_ms"],
            "failures": load["failures"], "cells": len(cells),
            "actions": len(actions), "by_status": by_status,
            "effective_shop_writes": sum(writes.values()),
            "keys_written_more_than_once": sum(1 for n in writes.values() if n > 1),
            "received_to_confirmed_ms": stats([float(x) for x in confirmed]),
            "received_to_answered_ms": stats([float(x) for x in answered]),
            "received_to_recorded_ms": stats([float(x) for x in recorded]),
            "recorded_to_answered_ms": stats([float(x) for x in executed]),
            "cells_wrong_at_the_end": wrong,
            "wrong_holding_the_wms_simulators_own_level": from_simulator, "wrong_cells": [
                {**w, "actions": [{k: a.get(k) for k in ("status", "desired", "previous",
                                                         "note", "error", "attempts")}
                                  for a in actions if a.get("cell", "").endswith(
                                      f"{w['sku']}|{w['location']}")][-6:]}
                for w in wrong_cells], "gateway_cpu_seconds": cpu_used,
            "on_hand_base": BASE_ON_HAND, "logs": str(tmp)}


OVERSELL = """{ discrepancies(kinds: [ONLINE_OVERSELL_RISK], first: 100) {
  total edges { node { id sku locationId delta status } } } }"""


def demo_run(sync: bool, minutes: float, port: int) -> dict[str, Any]:
    """``retailgraph demo --activity 20`` for ``minutes``; ONLINE_OVERSELL_RISK over time."""
    import signal
    import subprocess

    import httpx

    # Each demo on its own ports (PORT..PORT+4) and its own embedded Redis.
    env = {k: v for k, v in os.environ.items() if k != "RETAILGRAPH_REDIS_URL"}
    env.update({"RETAILGRAPH_SYNC_ENABLED": "true" if sync else "false",
                "PYTHONUNBUFFERED": "1"})
    log = Path(tempfile.mkdtemp(prefix="bench-sync-demo-")) / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--port", str(port),
                                 "--activity", "20"], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/graphql"
    samples: list[tuple[float, int, int]] = []  # (seconds, discrepancies, units at risk)
    # A discrepancy lasts from the first poll that sees it to the last one in a row that does.
    active: dict[str, tuple[float, float]] = {}
    active_start: dict[str, float] = {}
    durations: list[float] = []
    distinct = 0
    errors = 0
    try:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.post(url, json={"query": "{ locations { id } }"}).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the demo did not start: {log}")
                time.sleep(0.5)
            started = time.monotonic()
            while (now := time.monotonic() - started) < minutes * 60:
                body = client.post(url, json={"query": OVERSELL}).json()
                if not (body.get("data") or {}).get("discrepancies"):
                    errors += 1  # a refused or failed poll (reported), not a sample
                    time.sleep(2.0)
                    continue
                nodes = [e["node"] for e in body["data"]["discrepancies"]["edges"]]
                samples.append((round(now, 1), body["data"]["discrepancies"]["total"],
                                sum(max(0, n["delta"]) for n in nodes)))
                present = {n["id"] for n in nodes}
                for key in [k for k in active if k not in present]:
                    durations.append(active.pop(key)[1] - active_start.pop(key))
                for key in present:
                    active_start.setdefault(key, now)
                    active[key] = (active_start[key], now)
                time.sleep(2.0)
            for first, last in active.values():  # still open at the end
                durations.append(last - first)
            distinct = len(durations)
            status = client.post(url, json={"query": "{ syncStatus { source push { writes "
                                            "superseded echoes drift deadLetters latencyP50Ms "
                                            "latencyP99Ms } } }"}).json()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    minute = [(t, n, u) for t, n, u in samples]
    per_minute = []
    for m in range(max(1, round(minutes))):
        window = [x for x in minute if m * 60 <= x[0] < (m + 1) * 60]
        per_minute.append({"minute": m + 1,
                           "max_discrepancies": max((n for _, n, _ in window), default=0),
                           "max_units_at_risk": max((u for _, _, u in window), default=0),
                           "mean_units_at_risk": round(sum(u for _, _, u in window)
                                                       / max(1, len(window)), 1)})
    return {"sync": sync, "minutes": minutes, "polls": len(samples), "failed_polls": errors,
            "polls_with_any": sum(1 for _, n, _ in samples if n),
            "max_discrepancies": max((n for _, n, _ in samples), default=0),
            "max_units_at_risk": max((u for _, _, u in samples), default=0),
            "distinct_discrepancies": distinct,
            "lasting_s": stats(durations), "per_minute": per_minute,
            "samples": [{"t": t, "discrepancies": n, "units_at_risk": u} for t, n, u in samples],
            "push": [s for s in status.get("data", {}).get("syncStatus", [])
                     if s.get("push")], "log": str(log)}


def demo_table(demo: list[dict[str, Any]]) -> str:
    """The sync-off / sync-on comparison as a Markdown table (README-ready)."""
    off, on = (next(d for d in demo if d["sync"] is flag) for flag in (False, True))

    def lasting(d: dict[str, Any]) -> str:
        x = d["lasting_s"]
        return "-" if not x["n"] else f"{x['p50']} s / {x['p99']} s / {x['max']} s"

    def push(d: dict[str, Any]) -> str:
        shop = next((s["push"] for s in d["push"] if s.get("source") == "commerce"), None)
        if not shop:
            return "-"
        return (f"{shop['writes']} writes, {shop['echoes']} echoes, {shop['drift']} drift, "
                f"{shop['deadLetters']} dead; p50 {shop['latencyP50Ms']} ms / "
                f"p99 {shop['latencyP99Ms']} ms")

    rows = [
        "| | sync off | sync on |", "|---|---:|---:|",
        f"| polls (every 2 s; failed) | {off['polls']} ({off['failed_polls']}) | "
        f"{on['polls']} ({on['failed_polls']}) |",
        f"| polls seeing any ONLINE_OVERSELL_RISK | {off['polls_with_any']} | "
        f"{on['polls_with_any']} |",
        f"| distinct discrepancies | {off['distinct_discrepancies']} | "
        f"{on['distinct_discrepancies']} |",
        f"| most at once | {off['max_discrepancies']} | {on['max_discrepancies']} |",
        f"| most units at risk at once | {off['max_units_at_risk']} | "
        f"{on['max_units_at_risk']} |",
        f"| lasting p50 / p99 / max (first to last poll seeing it) | {lasting(off)} | "
        f"{lasting(on)} |",
        f"| shop pushes (syncStatus) | {push(off)} | {push(on)} |",
    ]
    for a, b in zip(off["per_minute"], on["per_minute"], strict=False):
        rows.append(f"| minute {a['minute']}: most at once / units at risk max, mean | "
                    f"{a['max_discrepancies']} / {a['max_units_at_risk']}, "
                    f"{a['mean_units_at_risk']} | {b['max_discrepancies']} / "
                    f"{b['max_units_at_risk']}, {b['mean_units_at_risk']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 500])
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per run")
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--settle", type=float, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shop-delivery", type=int, default=8,
                        help="webhooks the shop simulator delivers at once")
    parser.add_argument("--json", default="", help="also write the report here")
    parser.add_argument("--demo", type=float, default=0, metavar="MINUTES",
                        help="instead: the demo with --activity 20, sync off then on")
    parser.add_argument("--port", type=int, default=18000,
                        help="the demos' ports (--demo): PORT..PORT+4 and PORT+10..PORT+14")
    parser.add_argument("--sequential", action="store_true",
                        help="--demo: sync off, then sync on (default: both at once)")
    args = parser.parse_args()
    from gateway.redis_server import start_server

    host = machine()
    if args.demo:
        if args.sequential:
            demo = [demo_run(sync, args.demo, args.port) for sync in (False, True)]
        else:  # both at once, on ports PORT.. and PORT+10..: half the wall time
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as pool:
                halves = [pool.submit(demo_run, sync, args.demo, args.port + 10 * n)
                          for n, sync in enumerate((False, True))]
                demo = [h.result() for h in halves]
        table = demo_table(demo)
        text = json.dumps({"machine": host, "concurrent": not args.sequential, "demo": demo,
                           "table": table}, indent=2)
        print(text)
        print()
        print(table)
        if args.json:
            Path(args.json).write_text(text)
        return
    server = start_server()
    try:
        runs = []
        for rate in args.rates:
            note(f"run at {rate} events/s")
            runs.append(one_run(str(server.connection_url), rate, args))
            note(json.dumps(runs[-1]))
    finally:
        server.stop()
    report = {"machine": host, "params": {"duration": args.duration, "skus": args.skus},
              "runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
