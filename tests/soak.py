"""A fault-free soak: the demo's background activity against the whole stack, with periodic
reconciliation, then every cell compared with every backend.

Shared by ``tests/e2e/test_drift.py`` (a short run in the suite) and
``tests/benchmarks/bench_drift.py`` (the 10-minute run). Nothing is injected: no dropped,
duplicated or reordered webhook, no outage. So every ``CACHE_DRIFT`` a run finds is either a
change whose webhook is still on its way (in flight) or a lost update (a bug), and this module
tells them apart from the event log: for each cell a run repaired, did the webhook of the
backend's version arrive anyway, and when?
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from gateway.events.envelope import Envelope, MovementType
from gateway.simulators.activity import Activity
from resolvers.discrepancies import ONLINE_COMPARED, Kind
from resolvers.graph import RetailGraph
from resolvers.store.cache import parse_views
from resolvers.store.keys import DISCREPANCY_FEED_KEY as FEED_KEY
from resolvers.store.keys import LOG_KEY, PENDING_KEY, RECONCILE_LOCK_KEY, views_key
from resolvers.store.keys import RECONCILE_LAST_RUN_KEY as LAST_RUN_KEY
from resolvers.types import StockView
from resolvers.values import version_number
from tests.support import Stack, stream_entries

STOCK_FIELDS = ("onHand", "available", "committed", "incoming", "qualityControl", "damaged")
QUANTITY_OF = {"onHand": "on_hand", "available": "available", "committed": "committed",
               "incoming": "incoming", "qualityControl": "quality_control",
               "damaged": "damaged"}


@dataclass(slots=True)
class SoakResult:
    seconds: float = 0.0
    activity: Counter[str] = field(default_factory=Counter)
    events_logged: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)  # each periodic run's record
    repairs: list[dict[str, Any]] = field(default_factory=list)  # REPAIR events, explained
    drift_findings: Counter[str] = field(default_factory=Counter)  # CACHE_DRIFT by status
    cells_compared: int = 0
    cached_compared: int = 0
    differ: list[str] = field(default_factory=list)  # cells not equal to their backend
    pending_left: int = 0

    def as_dict(self) -> dict[str, Any]:
        in_flight = sum(int(r.get("inFlight", {}).get("found", 0)) for r in self.runs)
        return {
            "seconds": round(self.seconds, 1), "activity": dict(sorted(self.activity.items())),
            # Operations the activity performed per second (each sale, order, receipt, ...
            # and follow-up once; the stock feed's Shopify updates ride on them): below the
            # rate asked for when the machine could not keep up.
            "operationsPerSecond": round(sum(
                v for k, v in self.activity.items() if not k.startswith("stock_sync"))
                / max(self.seconds, 1e-9), 1),
            "eventsLogged": self.events_logged, "reconciliationRuns": len(self.runs),
            "runsRepairing": sum(1 for r in self.runs if r.get("repaired")),
            "repaired": sum(int(r.get("repaired", 0)) for r in self.runs),
            "inFlight": {k: sum(int(r.get("inFlight", {}).get(k, 0)) for r in self.runs)
                         for k in ("found", "caughtUp", "overdue")} if in_flight else {},
            "inFlightWaitMsMax": max((float(r.get("inFlight", {}).get("waitedMs", 0))
                                      for r in self.runs), default=0.0),
            "cacheDriftFindings": dict(self.drift_findings),
            "runs": [{"finishedAt": r.get("finishedAt"), "seconds": r.get("durationSeconds"),
                      "repaired": r.get("repaired"), "inFlight": r.get("inFlight")}
                     for r in self.runs],
            "repairEvents": self.repairs,
            "cellsCompared": self.cells_compared, "cachedCellsCompared": self.cached_compared,
            "differ": self.differ, "pendingLeft": self.pending_left}


async def _served(stack: Stack, skus: list[str]) -> dict[tuple[str, str], dict[str, int]]:
    """(sku, location) -> what the gateway's GraphQL serves, over HTTP."""
    fields = "location { id } " + " ".join(STOCK_FIELDS)
    out: dict[tuple[str, str], dict[str, int]] = {}
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        for start in range(0, len(skus), 20):
            chunk = skus[start:start + 20]
            query = "{ " + " ".join(f'p{n}: product(sku: "{sku}") {{ stock {{ {fields} }} }}'
                                    for n, sku in enumerate(chunk)) + " }"
            body = (await http.post("/graphql", json={"query": query})).json()
            assert "errors" not in body, body["errors"]
            for n, sku in enumerate(chunk):
                for level in body["data"][f"p{n}"]["stock"]:
                    out[sku, level["location"]["id"]] = {
                        k: v for k, v in level.items() if k != "location"}
    return out


async def _reader(stack: Stack, skus: list[str]) -> None:
    """A client reading while stock changes: read-through fills race the events."""
    n = 0
    while True:
        await _served(stack, skus[n % len(skus):][:10])
        n += 7
        await asyncio.sleep(0.05)


async def _backends(stack: Stack, skus: list[str]) -> dict[str, dict[tuple[str, str], StockView]]:
    """Every backend's own answer for every cell, read over HTTP through the connectors."""
    graph = RetailGraph.from_settings(stack.settings)
    try:
        await graph.ready_catalog()
        b = graph.backends
        stores = [loc.code for loc in stack.world.stores]
        warehouses = [loc.code for loc in stack.world.warehouses]
        reads = await asyncio.gather(b.pos.counts(skus, stores), b.wms.balances(skus, warehouses),
                                     b.erp.snapshot(skus, stores + warehouses),
                                     b.commerce.levels(skus, warehouses))
        names = (b.pos.name, b.wms.name, b.erp.name, b.commerce.name)
        return {name: {(v.sku, v.location_id): v for v in views}
                for name, views in zip(names, reads, strict=True)}
    finally:
        with contextlib.suppress(Exception):
            await graph.aclose()


def _explain_repairs(entries: list[tuple[str, Envelope]]) -> list[dict[str, Any]]:
    """For each REPAIR event: the webhook that carried the backend's version of the cell
    (or a newer one), and how long after the backend's change it was received."""
    out = []
    for entry_id, e in entries:
        if e.movement is None or e.movement.type is not MovementType.REPAIR:
            continue
        carrying = [(x.source_version, i, x) for i, x in entries
                    if x.source == e.source and x.sku == e.sku
                    and x.location_id == e.location_id and x.quantities is not None
                    and not (x.movement is not None and x.movement.type is MovementType.REPAIR)
                    and x.source_version >= e.source_version]
        later = min(carrying, key=lambda c: (c[0], c[1]))[1:] if carrying else None
        row: dict[str, Any] = {
            "entry": entry_id, "source": e.source, "sku": e.sku, "location": e.location_id,
            "version": e.source_version, "status": e.extra.get("status"),
            "cacheBefore": e.extra.get("cacheBefore"), "changedAt": e.occurred_at.isoformat(),
            "repairedAt": e.received_at.isoformat()}
        if later is None:
            row["webhook"] = None
        else:
            i, x = later
            row["webhook"] = {"entry": i, "version": x.source_version,
                              "receivedAt": x.received_at.isoformat(),
                              "msAfterChange": _ms(x.received_at, e.occurred_at),
                              "msAfterRepair": _ms(x.received_at, e.received_at)}
        out.append(row)
    return out


def _ms(a: datetime, b: datetime) -> float:
    return round((a - b).total_seconds() * 1000, 1)


def _equal(backend: StockView, cached: StockView, source: str) -> bool:
    # The shop's webhook carries ``available`` only: its other quantities are not kept
    # current by events (resolvers/discrepancies.py ONLINE_COMPARED), so not compared.
    names = ONLINE_COMPARED if source == "commerce" else (
        "on_hand", "available", "committed", "incoming", "quality_control", "damaged")
    for name in names:
        b, c = getattr(backend.quantities, name), getattr(cached.quantities, name)
        if b is not None and c is not None and b != c:
            return False
    return True


async def soak(stack: Stack, rate: float, seconds: float, seed: int = 11,
               progress: bool = False) -> SoakResult:
    """Run the activity at ``rate`` operations/s for ``seconds`` (the gateway reconciling
    periodically as its settings say), then quiesce and compare every cell."""
    result = SoakResult()
    skus = [item.sku for item in stack.world.items]
    redis = aioredis.Redis.from_url(stack.settings.redis_url)
    try:
        await _served(stack, skus)  # every cell cached: from here on, events change them
        activity = Activity(stack.settings, stack.world, rate, seed=seed)
        task = asyncio.create_task(activity.run())
        reader = asyncio.create_task(_reader(stack, skus))
        seen: dict[str, dict[str, Any]] = {}
        started = time.monotonic()
        report_at = started + 60
        try:
            while time.monotonic() - started < seconds:
                await asyncio.sleep(0.2)
                assert not task.done(), "the activity stopped by itself"
                raw = await redis.get(LAST_RUN_KEY)
                if raw is not None:
                    last = orjson.loads(raw)
                    seen[last["runId"]] = last
                if progress and time.monotonic() >= report_at:
                    report_at += 60
                    print(f"  {time.monotonic() - started:5.0f}s: {len(seen)} runs, repaired "
                          f"{sum(int(r.get('repaired', 0)) for r in seen.values())}",
                          flush=True)
        finally:
            activity.stop()
            await asyncio.wait_for(task, 30)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        result.seconds = time.monotonic() - started
        result.activity = activity.stats
        # Quiesce: every webhook delivered, every logged event applied, no run under way.
        stack.drain_webhooks()
        for _ in range(600):
            raw = await redis.get(LAST_RUN_KEY)
            if raw is not None:
                last = orjson.loads(raw)
                seen[last["runId"]] = last
            if not await redis.zcard(PENDING_KEY) and not await redis.exists(
                    RECONCILE_LOCK_KEY):
                break
            await asyncio.sleep(0.1)
        result.pending_left = int(await redis.zcard(PENDING_KEY))
        result.runs = sorted(seen.values(), key=lambda r: str(r["finishedAt"]))

        entries = []
        for entry_id, fields in stream_entries(await redis.xrange(LOG_KEY)):
            entries.append((entry_id.decode(), Envelope.decode(fields[b"e"])))
        result.events_logged = len(entries)
        result.repairs = _explain_repairs(entries)
        for _, fields in stream_entries(await redis.xrange(FEED_KEY)):
            d = orjson.loads(fields[b"d"])
            if d["kind"] == Kind.CACHE_DRIFT.value and fields[b"t"] != b"RESOLVED":
                result.drift_findings[d["status"]] += 1

        # Every cell the gateway serves equals its system of record, over HTTP both ways...
        backends = await _backends(stack, skus)
        served = await _served(stack, skus)
        for (sku, loc), got in sorted(served.items()):
            is_store = any(s.code == loc for s in stack.world.stores)
            view = backends["pos" if is_store else "wms"].get((sku, loc))
            if view is None:
                continue
            result.cells_compared += 1
            want = {k: getattr(view.quantities, QUANTITY_OF[k]) for k in STOCK_FIELDS}
            wrong = {k: (want[k], got[k]) for k in STOCK_FIELDS
                     if want[k] is not None and got[k] != want[k]}
            if wrong:
                result.differ.append(f"served {sku}@{loc}: (backend, served) {wrong}")
        # ... and every cell the cache holds, of every source, equals that source's answer.
        for source, views in backends.items():
            async with redis.pipeline(transaction=False) as pipe:
                for sku in skus:
                    pipe.hgetall(views_key(sku, source))
                raws = await pipe.execute()
            for sku, raw in zip(skus, raws, strict=True):
                for loc, cached in parse_views(sku, source, raw)[1].items():
                    backend = views.get((sku, loc))
                    if backend is None:
                        continue
                    result.cached_compared += 1
                    if not _equal(backend, cached, source) or version_number(
                            cached.version, cached.as_of) < version_number(
                            backend.version, backend.as_of):
                        result.differ.append(
                            f"cached {source} {sku}@{loc}: backend {backend.quantities} "
                            f"v{backend.version}, cache {cached.quantities} v{cached.version}")
    finally:
        await redis.aclose()
    return result
