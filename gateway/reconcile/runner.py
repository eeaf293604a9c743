"""Reconciliation: every system's view of every SKU x location, compared and repaired.

A run walks the catalog in SKU chunks (500 by default, four in flight; the POS, WMS and ERP
batch limit is 1,000). For each chunk it reads all four backends through their batch endpoints
at once (POS counts, WMS balances, the ERP's latest snapshot, Shopify levels), and the cache's
entries of the same SKUs in one pipeline; then it

1. compares each backend with the cache's copy of it (``CACHE_DRIFT``) and repairs drifted
   entries: each repair is an event in the log (``LEVEL_SNAPSHOT``, movement ``REPAIR``) applied
   through the :class:`~gateway.events.applier.Applier`, so subscribers see it like any change;
2. compares the systems with each other (:func:`gateway.reconcile.discrepancies.assess`), and
3. swaps the cell's findings into the discrepancy index, which publishes what appeared,
   changed or resolved.

Only a few chunks are in memory at once, whatever the catalog's size; the report keeps counts,
the top offenders and the repaired cells. The same run serves ``retailgraph reconcile``, the
periodic in-gateway task (``reconcile_interval_seconds``, one replica at a time through a
Redis lock) and gap healing (one backend only). Between runs, :class:`Rechecker` re-judges each
cell an event touched, from the cache, so a disagreement shows up seconds after it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import heapq
import io
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.exceptions import RedisError
from ulid import ULID

from gateway.config import Settings
from gateway.events.applier import Applier
from gateway.events.envelope import Envelope, EventKind, Movement, MovementType
from gateway.events.log import EventLog
from gateway.reconcile.discrepancies import DiscrepancyFeed, DiscrepancyIndex, MovementHistory
from gateway.reconcile.synchealth import SyncHealth
from resolvers.discrepancies import (
    CellUpdate,
    CellViews,
    Finding,
    History,
    Kind,
    Role,
    Severity,
    assess,
    cache_drift,
    derived_on_hand,
    in_flight,
    in_the_future,
)
from resolvers.errors import BackendError
from resolvers.graph import RetailGraph
from resolvers.store.cache import Cache, parse_views
from resolvers.store.keys import RECONCILE_LAST_RUN_KEY as LAST_RUN_KEY
from resolvers.store.keys import RECONCILE_LOCK_KEY as LOCK_KEY
from resolvers.store.keys import VOLATILE_TAG, response_tag_version_key, sync_key, views_key
from resolvers.types import LocationRecord, LocationType, StockView
from resolvers.values import version_number

log = logging.getLogger("retailgraph.reconcile")

NEVER = 2**62  # the volatile tag's invalidation sequence: later than any request's

TOP_OFFENDERS = 20
READ_THROUGH_SECONDS = 10.0  # a re-check reads one SKU's missing view through at most this often
REPAIRS_LISTED = 1000
IN_FLIGHT_POLL_SECONDS = 0.1  # how often a run looks whether in-flight webhooks arrived
PIPELINE_ENTRIES = 250  # cache entries read per Redis pipeline
YIELD_EVERY = 50  # SKUs judged between turns given back to the event loop


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A cell whose backend was ahead of the cache (by a change younger than three graces):
    its webhook may still be on the way, so its judgement waits until it arrives or is
    overdue."""

    view: StockView  # the backend's answer when the run read it
    role: Role
    seen: int  # that answer's version: the cache has caught up once it holds this or newer
    deadline: float  # monotonic time at which the change is older than the grace
    cap: float  # ... older than three graces: overdue even if its source delivered nothing


@dataclass(frozen=True, slots=True)
class Scope:
    """What a run covers: None means everything the catalog knows."""

    skus: tuple[str, ...] | None = None
    locations: tuple[str, ...] | None = None
    sources: frozenset[str] | None = None  # backend names read; None: all four
    repair: bool = True


@dataclass(slots=True)
class Report:
    """What a run found: counts by kind and location, the worst cells, what was repaired."""

    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    skus: int = 0
    locations: int = 0
    cells: int = 0
    views_read: Counter[str] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)
    by_kind: Counter[str] = field(default_factory=Counter)
    by_location: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    by_status: Counter[str] = field(default_factory=Counter)
    by_severity: Counter[str] = field(default_factory=Counter)
    repaired: int = 0
    repair_skipped: int = 0
    repairs: list[dict[str, Any]] = field(default_factory=list)
    transitions: int = 0
    in_flight: int = 0  # cells found behind a change whose webhook was still due
    caught_up: int = 0  # ... whose webhook then arrived (nothing repaired)
    overdue: int = 0  # ... whose webhook did not arrive within the grace (judged, repaired)
    waited_ms: float = 0.0  # how long the run waited for them
    _pending: list[_InFlight] = field(default_factory=list)
    _top: list[tuple[int, int, int, Finding]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, finding: Finding) -> None:
        kind = finding.kind.value
        self.by_kind[kind] += 1
        self.by_location[finding.location_id][kind] += 1
        self.by_status[finding.status.value] += 1
        self.by_severity[finding.severity.value] += 1
        entry = (finding.severity.rank, abs(finding.delta), -next(self._seq), finding)
        if len(self._top) < TOP_OFFENDERS:
            heapq.heappush(self._top, entry)
        elif entry[:3] > self._top[0][:3]:
            heapq.heapreplace(self._top, entry)

    def add_repair(self, finding: Finding, outcome: str, event_id: str | None) -> None:
        if outcome == "repaired":
            self.repaired += 1
        else:
            self.repair_skipped += 1
        if len(self.repairs) < REPAIRS_LISTED:
            backend, cache = finding.sides[0], finding.sides[1]
            self.repairs.append({
                "sku": finding.sku, "locationId": finding.location_id,
                "source": finding.source, "quantity": backend.quantity,
                "backend": backend.value, "cacheBefore": cache.value, "delta": finding.delta,
                "status": finding.status.value, "outcome": outcome, "eventId": event_id})

    @property
    def top(self) -> list[Finding]:
        return [entry[3] for entry in sorted(self._top, reverse=True)]

    @property
    def duration_seconds(self) -> float:
        end = self.finished_at or datetime.now(UTC)
        return round((end - self.started_at).total_seconds(), 3)

    def as_dict(self) -> dict[str, Any]:
        return {
            "runId": self.run_id, "startedAt": self.started_at.isoformat(),
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
            "durationSeconds": self.duration_seconds,
            "scope": {"skus": self.skus, "locations": self.locations, "cells": self.cells},
            "viewsRead": dict(sorted(self.views_read.items())), "errors": self.errors,
            "discrepancies": sum(self.by_kind.values()),
            "byKind": dict(sorted(self.by_kind.items())),
            "byStatus": dict(sorted(self.by_status.items())),
            "bySeverity": {s.value: self.by_severity[s.value] for s in Severity
                           if self.by_severity[s.value]},
            "byLocation": {loc: dict(sorted(c.items()))
                           for loc, c in sorted(self.by_location.items())},
            "topOffenders": [_finding_dict(f) for f in self.top],
            "repaired": self.repaired, "repairSkipped": self.repair_skipped,
            "repairs": self.repairs, "inFlight": self.in_flight_dict(),
            "transitionsPublished": self.transitions}

    def in_flight_dict(self) -> dict[str, Any]:
        return {"found": self.in_flight, "caughtUp": self.caught_up, "overdue": self.overdue,
                "waitedMs": round(self.waited_ms, 1)}

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2)

    def to_csv(self) -> str:
        """One table: ``section`` says what a row is (summary, count, offender, repair)."""
        out = io.StringIO()
        columns = ["section", "kind", "location_id", "sku", "source", "status", "severity",
                   "delta", "count", "detail"]
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        summary = {"run_id": self.run_id, "started_at": self.started_at.isoformat(),
                   "duration_seconds": self.duration_seconds, "skus": self.skus,
                   "locations": self.locations, "cells": self.cells,
                   "repaired": self.repaired, "repair_skipped": self.repair_skipped,
                   "in_flight": self.in_flight, "in_flight_caught_up": self.caught_up,
                   "in_flight_overdue": self.overdue,
                   **{f"views_read.{k}": v for k, v in sorted(self.views_read.items())},
                   **{f"error.{k}": v for k, v in sorted(self.errors.items())}}
        for key, value in summary.items():
            writer.writerow({"section": "summary", "detail": f"{key}={value}"})
        for kind, count in sorted(self.by_kind.items()):
            writer.writerow({"section": "count", "kind": kind, "count": count})
        for loc, counts in sorted(self.by_location.items()):
            for kind, count in sorted(counts.items()):
                writer.writerow({"section": "count", "kind": kind, "location_id": loc,
                                 "count": count})
        for f in self.top:
            writer.writerow({"section": "offender", "kind": f.kind.value,
                             "location_id": f.location_id, "sku": f.sku, "source": f.source,
                             "status": f.status.value, "severity": f.severity.value,
                             "delta": f.delta, "detail": f.message})
        for r in self.repairs:
            writer.writerow({"section": "repair", "kind": Kind.CACHE_DRIFT.value,
                             "location_id": r["locationId"], "sku": r["sku"],
                             "source": r["source"], "status": r["status"], "delta": r["delta"],
                             "detail": f"{r['quantity']} cache {r['cacheBefore']} -> "
                                       f"{r['backend']} ({r['outcome']})"})
        return out.getvalue()

    def summary_line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items())) or "none"
        waited = (f"; {self.in_flight} in flight ({self.caught_up} caught up, {self.overdue} "
                  f"overdue) waited {self.waited_ms / 1000:.1f}s" if self.in_flight else "")
        return (f"reconciled {self.cells} cells ({self.skus} SKUs x {self.locations} locations)"
                f" in {self.duration_seconds:.1f}s: discrepancies {kinds}; repaired "
                f"{self.repaired}{waited}")


def _finding_dict(f: Finding) -> dict[str, Any]:
    return {"sku": f.sku, "locationId": f.location_id, "kind": f.kind.value,
            "status": f.status.value, "severity": f.severity.value, "delta": f.delta,
            "source": f.source, "explainedByMovements": f.explained, "message": f.message,
            "views": [{"source": s.source, "role": s.role.value, "quantity": s.quantity,
                       "value": s.value, "asOf": s.as_of.isoformat(), "origin": s.origin}
                      for s in f.sides]}


@dataclass(slots=True)
class _Chunk:
    """What one chunk of SKUs read: per source, backend views and cached cells by cell."""

    backend: dict[str, dict[tuple[str, str], StockView]] = field(default_factory=dict)
    cached: dict[str, dict[tuple[str, str], StockView]] = field(default_factory=dict)
    gens: dict[tuple[str, str], int] = field(default_factory=dict)  # (sku, source) -> _gen
    failed: set[str] = field(default_factory=set)


class ReconcileRunner:
    """Runs reconciliations over one gateway's graph, cache and event log."""

    def __init__(self, settings: Settings, graph: RetailGraph, cache: Cache, events: EventLog,
                 applier: Applier, index: DiscrepancyIndex, history: MovementHistory,
                 chunk_size: int = 500, parallel: int = 4) -> None:
        self.settings = settings
        self.graph = graph
        self.cache = cache
        self.events = events
        self.applier = applier
        self.index = index
        self.history = history
        self.chunk_size = chunk_size
        self.parallel = parallel
        self.running = False

    # -- the run -----------------------------------------------------------------------------

    async def heal_source(self, source: str) -> int:
        """Heal a source's gap by reconciling the source; returns the cells repaired."""
        report = await self.run(Scope(sources=frozenset({source})))
        return report.repaired

    async def run(self, scope: Scope | None = None) -> Report:
        scope = scope or Scope()
        catalog = await self.graph.ready_catalog()
        now = datetime.now(UTC)
        report = Report(run_id=f"rec_{ULID()}", started_at=now)
        skus = sorted(catalog.items_by_sku) if scope.skus is None else sorted(
            {s for s in scope.skus if s in catalog.items_by_sku})
        locations = {lid: loc for lid, loc in catalog.locations.items()
                     if scope.locations is None or lid in scope.locations}
        b = self.graph.backends
        sources = {b.pos.name, b.wms.name, b.erp.name, b.commerce.name}
        if scope.sources is not None:
            sources &= scope.sources
        report.skus, report.locations = len(skus), len(locations)
        existing = await self.index.members()
        self.running = True
        try:
            gate = asyncio.Semaphore(self.parallel)

            async def one(chunk: list[str]) -> None:
                async with gate:
                    await self._chunk(chunk, locations, sources, scope, existing, report)

            chunks = [skus[n:n + self.chunk_size] for n in range(0, len(skus),
                                                                  self.chunk_size)]
            await asyncio.gather(*(one(c) for c in chunks))
            await self._settle(report, scope)
        finally:
            self.running = False
        report.finished_at = datetime.now(UTC)
        with contextlib.suppress(RedisError, OSError):
            await self.cache.redis.set(LAST_RUN_KEY, orjson.dumps({
                "runId": report.run_id, "finishedAt": report.finished_at.isoformat(),
                "durationSeconds": report.duration_seconds, "cells": report.cells,
                "discrepancies": sum(report.by_kind.values()), "repaired": report.repaired,
                "inFlight": report.in_flight_dict(), "errors": report.errors}))
        log.info("%s", report.summary_line())
        return report

    def _calls(self, skus: list[str], stores: list[str], warehouses: list[str],
               sources: set[str]) -> dict[str, Awaitable[list[StockView]]]:
        """Each source's batch read of these SKUs at the locations it knows about."""
        b = self.graph.backends
        calls: dict[str, Awaitable[list[StockView]]] = {}
        if b.pos.name in sources and stores:
            calls[b.pos.name] = b.pos.counts(skus, stores)
        if b.wms.name in sources and warehouses:
            calls[b.wms.name] = b.wms.balances(skus, warehouses)
        if b.erp.name in sources and (stores or warehouses):
            calls[b.erp.name] = b.erp.snapshot(skus, [*stores, *warehouses])
        if b.commerce.name in sources and warehouses:
            calls[b.commerce.name] = b.commerce.levels(skus, warehouses)
        return calls

    async def _read(self, chunk: list[str], locations: dict[str, LocationRecord],
                    sources: set[str], report: Report) -> _Chunk:
        stores = [x for x, loc in locations.items() if loc.type is LocationType.STORE]
        warehouses = [x for x, loc in locations.items() if loc.type is LocationType.WAREHOUSE]
        calls = self._calls(chunk, stores, warehouses, sources)
        names = list(calls)
        # The backends first, then the cache: every webhook that arrived while the backends
        # were read is in the cache's answer, so a cache behind a backend means a change whose
        # webhook has not arrived yet (or never will), never one it merely was not read after.
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        raws = await self._cached(chunk, names)
        read = _Chunk()
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, BackendError):
                    raise result
                read.failed.add(name)
                report.errors[name] = str(result)
                continue
            report.views_read[name] += len(result)
            read.backend[name] = {(v.sku, v.location_id): v for v in result}
        for (sku, name), raw in raws.items():
            if not raw:
                continue
            gen, cells = parse_views(sku, name, raw)
            read.gens[sku, name] = gen
            by_cell = read.cached.setdefault(name, {})
            for loc, view in cells.items():
                by_cell[sku, loc] = view
        return read

    async def _cached(self, chunk: list[str], names: list[str]
                      ) -> dict[tuple[str, str], dict[bytes, bytes]]:
        return await self._entries([(sku, name) for name in names for sku in chunk])

    async def _entries(self, pairs: Sequence[tuple[str, str]]
                       ) -> dict[tuple[str, str], dict[bytes, bytes]]:
        """The cache entries of these (SKU, source) pairs, in pipelines of at most
        ``PIPELINE_ENTRIES`` (each answers within the Redis deadline on a loaded machine)."""
        out: dict[tuple[str, str], dict[bytes, bytes]] = {}
        for n in range(0, len(pairs), PIPELINE_ENTRIES):
            part = pairs[n:n + PIPELINE_ENTRIES]
            async with self.cache.redis.pipeline(transaction=False) as pipe:
                for sku, name in part:
                    pipe.hgetall(views_key(sku, name))
                raws = await pipe.execute()
            out.update(zip(part, raws, strict=True))
        return out

    async def _chunk(self, chunk: list[str], locations: dict[str, LocationRecord],
                     sources: set[str], scope: Scope, existing: dict[str, set[tuple[str, str]]],
                     report: Report) -> None:
        read = await self._read(chunk, locations, sources, report)
        b = self.graph.backends
        now = datetime.now(UTC)
        grace = self.settings.sync_grace_seconds
        tolerance = self.settings.discrepancy_tolerance
        skew = self.settings.max_clock_skew_seconds
        ok_sources = [s for s in read.backend if s not in read.failed]
        cells: list[tuple[CellViews, list[Finding], list[str]]] = []
        repairs: list[tuple[Finding, StockView, int, bool]] = []
        need_history: list[tuple[str, str, str]] = []
        pos_views, wms_views = read.backend.get(b.pos.name, {}), read.backend.get(b.wms.name, {})
        erp_views = read.backend.get(b.erp.name, {})
        shop_views = read.backend.get(b.commerce.name, {})
        for done, sku in enumerate(chunk):
            if done and not done % YIELD_EVERY:
                # Judging is CPU work: the other chunks' reads (and their Redis deadlines)
                # get the loop between SKUs, not only once this chunk is judged.
                await asyncio.sleep(0)
            # Most cells are in no cache and agree: judged on the spot, without building views.
            quick = sku not in existing and not any((sku, n) in read.gens for n in ok_sources)
            for loc_id, loc in locations.items():
                store = loc.type is LocationType.STORE
                if quick:
                    agrees = _agrees(pos_views.get((sku, loc_id)) if store
                                     else wms_views.get((sku, loc_id)),
                                     erp_views.get((sku, loc_id)),
                                     None if store else shop_views.get((sku, loc_id)),
                                     tolerance)
                    if agrees is not None:
                        report.cells += agrees
                        continue
                record_source = b.pos.name if store else b.wms.name
                cell = CellViews(sku, loc_id, loc.type)
                drifts: list[Finding] = []
                evaluated: list[str] = []
                for name in ok_sources:
                    view = read.backend[name].get((sku, loc_id))
                    if view is None:
                        continue
                    role = (Role.SYSTEM_OF_RECORD if name == record_source
                            else Role.ERP_SNAPSHOT if name == b.erp.name
                            else Role.ONLINE if name == b.commerce.name else None)
                    if role is None:
                        continue  # a record system's view of the other location type
                    cached = read.cached.get(name, {}).get((sku, loc_id))
                    drift = cache_drift(view, cached, role, now, grace, skew)
                    effective, origin = view, "backend"
                    assert drift is None or cached is not None
                    if drift is not None and cached is not None and in_flight(
                            view, cached, now, 3 * grace, skew):
                        # Behind a change (younger than three graces) whose webhook may be on
                        # its way: judged once it arrived or is overdue (_settle); until then
                        # the slot is not evaluated, so what is listed stays.
                        age = (now - view.as_of).total_seconds()
                        report.in_flight += 1
                        at = time.monotonic()
                        report._pending.append(_InFlight(
                            view, role, version_number(view.version, view.as_of),
                            at + min(grace, max(0.0, grace - age)),
                            at + min(3 * grace, max(0.0, 3 * grace - age))))
                        drift = None
                    else:
                        evaluated.append(f"{Kind.CACHE_DRIFT.value}:{name}")
                    if drift is not None:
                        drifts.append(drift)
                        if scope.repair:
                            assert cached is not None
                            repairs.append((drift, view, read.gens.get((sku, name), 0),
                                            in_the_future(view, cached, now, skew)))
                    elif cached is not None and version_number(cached.version, cached.as_of) \
                            >= version_number(view.version, view.as_of):
                        effective, origin = cached, "cache"
                    cell.origins[name] = origin
                    if role is Role.SYSTEM_OF_RECORD:
                        cell.record = effective
                    elif role is Role.ERP_SNAPSHOT:
                        cell.erp = effective
                    else:
                        cell.online = effective
                if cell.record is not None and cell.erp is not None:
                    evaluated.append(Kind.POS_ERP_STORE_COUNT.value if store
                                     else Kind.ERP_SNAPSHOT_DRIFT.value)
                    if _needs_history(cell, tolerance):
                        need_history.append((sku, cell.record.source, loc_id))
                if cell.record is not None and cell.online is not None and not store:
                    evaluated.append(Kind.ONLINE_OVERSELL_RISK.value)
                if evaluated:
                    report.cells += 1
                cells.append((cell, drifts, evaluated))
        histories = await self.history.load(need_history)
        updates: list[CellUpdate] = []
        for cell, drifts, evaluated in cells:
            history = (histories.get((cell.sku, cell.record.source, cell.location_id))
                       if cell.record is not None else None)
            findings = [*drifts, *assess(cell, history, tolerance, now)]
            for finding in findings:
                report.add(finding)
            known = existing.get(cell.sku)
            had = known is not None and any(loc == cell.location_id for loc, _ in known)
            if findings or had:
                updates.append(CellUpdate(cell.sku, cell.location_id, tuple(evaluated),
                                          tuple(findings)))
        report.transitions += await self.index.update(updates, now)
        if repairs:
            await self._repair(repairs, report)

    async def _settle(self, report: Report, scope: Scope) -> None:
        """Judge the cells found in flight: each one whose cache reached the version the run
        saw caught up by itself (its webhook arrived; nothing is repaired, nothing listed).
        One still behind once its change is older than ``sync_grace_seconds`` and its source
        has since delivered a change made after it (its deliveries are not merely backed up),
        or older than three graces whatever the source sent, is overdue: read again and judged
        WRONG if it still disagrees, then repaired with that newer read. So a repair never
        races the webhook of the change it would repair."""
        waiting, started = report._pending, time.monotonic()
        report._pending = []
        while waiting:
            raws = await self._entries(list({(w.view.sku, w.view.source) for w in waiting}))
            still = []
            for w in waiting:
                if _caught_up(w, raws[w.view.sku, w.view.source]):
                    report.caught_up += 1
                else:
                    still.append(w)
            moment = time.monotonic()
            late = [w for w in still if w.deadline <= moment]
            passed = await self._delivered_since({w.view.source for w in late})
            due = [w for w in late if w.cap <= moment
                   or (passed.get(w.view.source) or w.view.as_of) > w.view.as_of]
            waiting = [w for w in still if w not in due]
            if due:
                await self._overdue(due, report, scope)
            if waiting:
                next_due = min(w.deadline for w in waiting) - time.monotonic()
                await asyncio.sleep(min(IN_FLIGHT_POLL_SECONDS, max(0.0, next_due)))
        report.waited_ms += (time.monotonic() - started) * 1000

    async def _delivered_since(self, sources: set[str]) -> dict[str, datetime | None]:
        """When, by each source's own clock, the latest change it delivered happened (sync
        health's ``last_occurred``): past a waiting change, its deliveries have moved on."""
        out: dict[str, datetime | None] = {}
        for source in sorted(sources):
            raw = await self.cache.redis.hget(sync_key("src", source), "last_occurred")
            text = raw.decode() if isinstance(raw, bytes) else raw
            out[source] = datetime.fromisoformat(text) if text else None
        return out

    async def _overdue(self, due: list[_InFlight], report: Report, scope: Scope) -> None:
        """Cells still behind a change older than the grace: their webhook is overdue (lost,
        or held up past the grace). Each is read again (backend, then cache) and judged."""
        catalog = await self.graph.ready_catalog()
        by_source: dict[str, list[_InFlight]] = defaultdict(list)
        for w in due:
            by_source[w.view.source].append(w)
        repairs: list[tuple[Finding, StockView, int, bool]] = []
        updates: list[CellUpdate] = []
        skew = self.settings.max_clock_skew_seconds
        for source, items in by_source.items():
            skus = sorted({w.view.sku for w in items})
            locs = {w.view.location_id for w in items}
            stores = sorted(x for x in locs if x in catalog.locations
                            and catalog.locations[x].type is LocationType.STORE)
            warehouses = sorted(x for x in locs if x in catalog.locations
                                and catalog.locations[x].type is LocationType.WAREHOUSE)
            calls = self._calls(skus, stores, warehouses, {source})
            try:
                views = [v for call in calls.values() for v in await call]
            except BackendError as exc:
                report.errors[source] = str(exc)
                continue
            fresh = {(v.sku, v.location_id): v for v in views}
            raws = await self._entries([(sku, source) for sku in skus])
            now = datetime.now(UTC)
            for w in items:
                sku, loc = w.view.sku, w.view.location_id
                raw = raws[sku, source]
                view = fresh.get((sku, loc))
                if view is None or _caught_up(w, raw):
                    report.caught_up += 1  # arrived at the last moment (or gone at the source)
                    continue
                report.overdue += 1
                gen, cells = parse_views(sku, source, raw, [loc])
                drift = cache_drift(view, cells.get(loc), w.role, now, 0, skew)
                slot = f"{Kind.CACHE_DRIFT.value}:{source}"
                if drift is not None:
                    age = (now - w.view.as_of).total_seconds()
                    drift = dataclasses.replace(drift, message=(
                        f"{drift.message}; {source} changed it {age:.0f}s ago and its webhook "
                        "has not arrived"))
                    report.add(drift)
                    if scope.repair:
                        repairs.append((drift, view, gen, False))
                updates.append(CellUpdate(sku, loc, (slot,), (drift,) if drift else ()))
        report.transitions += await self.index.update(updates)
        if repairs:
            await self._repair(repairs, report)

    async def _repair(self, repairs: list[tuple[Finding, StockView, int, bool]],
                      report: Report) -> None:
        """Each drifted cell gets the backend's answer back, as a logged REPAIR event (one
        whose cached version lies in the future is replaced whatever its version)."""
        resolved: list[CellUpdate] = []
        for finding, view, gen, future in repairs:
            key = views_key(view.sku, view.source)
            envelope = repair_envelope(report.run_id, view, finding, gen,
                                       self.graph.settings.backends[view.source].format,
                                       replace=future)
            written, entry = 0, None
            try:
                # An event touched the entry since it was read: it is newer than the read, so
                # the repair would not be written; nothing is logged (the next run re-judges).
                if int(await self.cache.redis.hget(key, "_gen") or 0) == gen:
                    appended = await self.events.append(view.source, envelope.source_event_id,
                                                        [envelope])
                    entry = appended.ids[0] if appended.ids else None
                    if appended.new:
                        written = await self.applier.apply(appended.ids[0], envelope)
            except (RedisError, OSError) as exc:
                log.warning("repair of %s at %s in %s failed: %s", finding.sku,
                            finding.location_id, view.source, exc)
                report.add_repair(finding, "failed", None)
                continue
            raw: dict[bytes, bytes] = await self.cache.redis.hgetall(  # type: ignore[assignment]
                key)
            _, cells = parse_views(view.sku, view.source, raw, [view.location_id])
            now_cached = cells.get(view.location_id)
            fixed = now_cached is not None and cache_drift(
                view, now_cached, Role.SYSTEM_OF_RECORD, datetime.now(UTC), 0,
                self.settings.max_clock_skew_seconds) is None
            report.add_repair(finding, "repaired" if written > 0 and fixed
                              else "skipped: changed meanwhile", entry)
            if fixed:
                resolved.append(CellUpdate(finding.sku, finding.location_id, (finding.slot,),
                                           ()))
        report.transitions += await self.index.update(resolved)


def _caught_up(waiting: _InFlight, raw: dict[bytes, bytes]) -> bool:
    """Whether the cache entry now holds the version the run saw in flight (or a newer one),
    or no longer holds the cell at all (the next read fetches it)."""
    loc = waiting.view.location_id
    cached = parse_views(waiting.view.sku, waiting.view.source, raw, [loc])[1].get(loc)
    return cached is None or version_number(cached.version, cached.as_of) >= waiting.seen


def _agrees(record: StockView | None, erp: StockView | None, online: StockView | None,
            tolerance: int) -> int | None:
    """Cells counted (0 or 1) when the systems read for a cell (no cached copy) agree within
    the tolerance; None when it needs judging."""
    if record is None:
        return None if erp is not None or online is not None else 0
    if erp is not None:
        snapshot, current = erp.quantities.on_hand, derived_on_hand(record.quantities)
        if snapshot is None or current is None or abs(snapshot - current) > tolerance:
            return None
    if online is not None:
        shop, warehouse = online.quantities.available, record.quantities.available
        if shop is None or warehouse is None or shop - warehouse > tolerance:
            return None
    return 1


def _needs_history(cell: CellViews, tolerance: int) -> bool:
    assert cell.record is not None
    assert cell.erp is not None
    snapshot, current = cell.erp.quantities.on_hand, derived_on_hand(cell.record.quantities)
    return (snapshot is not None and current is not None
            and abs(snapshot - current) > tolerance and cell.record.as_of > cell.erp.as_of)


def repair_envelope(run_id: str, view: StockView, finding: Finding, gen: int,
                    system: str, replace: bool = False) -> Envelope:
    """The event that records one repair: the backend's own view of the cell, in full
    (``replace``: over a cached version from the future, whatever the versions)."""
    now = datetime.now(UTC)
    cache_side = finding.sides[1]
    return Envelope(
        id=str(ULID()), kind=EventKind.LEVEL_SNAPSHOT, source=view.source, system=system,
        topic="reconcile.repair",
        source_event_id=f"repair:{run_id}:{view.source}:{view.sku}:{view.location_id}",
        delivery_id=run_id, occurred_at=view.as_of, received_at=now,
        source_version=version_number(view.version, view.as_of), sku=view.sku,
        location_id=view.location_id, quantities=view.quantities, full=True,
        movement=Movement(MovementType.REPAIR, abs(finding.delta),
                          documents=(("reconciliation", run_id),)),
        extra={"gen": gen, "cacheBefore": cache_side.value, "quantity": cache_side.quantity,
               "status": finding.status.value, **({"replace": True} if replace else {})})


# -- between runs --------------------------------------------------------------------------

class Rechecker:
    """Re-judges the cells events touched, from the cache (read through where it has no
    copy), in the background: a disagreement is listed seconds after it happens, and one an
    event fixed is resolved, without waiting for the next run."""

    def __init__(self, settings: Settings, graph: RetailGraph, index: DiscrepancyIndex,
                 history: MovementHistory, limit: int = 10_000, batch: int = 200) -> None:
        self.settings = settings
        self.graph = graph
        self.index = index
        self.history = history
        self.limit = limit
        self.batch = batch
        self._queue: dict[tuple[str, str], None] = {}
        self._read_at: dict[tuple[str, str], float] = {}  # (sku, source) read through, when
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def enqueue(self, sku: str, location_id: str) -> None:
        if len(self._queue) < self.limit:
            self._queue[sku, location_id] = None
            self._idle.clear()
            self._wake.set()

    async def idle(self) -> None:
        """Until every queued cell has been judged (tests)."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                cells = list(itertools.islice(self._queue, self.batch))
                for cell in cells:
                    del self._queue[cell]
                try:
                    await self.check(cells)
                except asyncio.CancelledError:
                    raise
                except (BackendError, RedisError, OSError) as exc:
                    log.warning("discrepancy check of %d cells failed: %s", len(cells), exc)
                except Exception:
                    log.exception("discrepancy check failed")
            self._idle.set()

    async def check(self, cells: Sequence[tuple[str, str]]) -> int:
        """Judge these cells from what the cache holds now, reading through what it has no
        copy of; returns transitions published."""
        catalog = await self.graph.ready_catalog()
        b = self.graph.backends
        now = datetime.now(UTC)
        wanted: list[tuple[str, str, LocationType, str, list[str]]] = []
        for sku, loc_id in cells:
            loc = catalog.locations.get(loc_id)
            if loc is None:
                continue
            store = loc.type is LocationType.STORE
            record = b.pos.name if store else b.wms.name
            others = [b.erp.name] if store else [b.erp.name, b.commerce.name]
            wanted.append((sku, loc_id, loc.type, record, others))
        keys = [(sku, source) for sku, _, _, record, others in wanted
                for source in (record, *others)]
        async with self.graph_redis().pipeline(transaction=False) as pipe:
            for sku, source in keys:
                pipe.hgetall(views_key(sku, source))
            raws = dict(zip(keys, await pipe.execute(), strict=True))
        read = await self._read_missing(wanted, raws)
        judged: list[tuple[CellViews, list[str]]] = []
        for sku, loc_id, loc_type, record, _others in wanted:
            def view(source: str, sku: str = sku, loc_id: str = loc_id) -> StockView | None:
                cached = parse_views(sku, source, raws[sku, source], [loc_id])[1].get(loc_id)
                return cached if cached is not None else read.get((sku, source, loc_id))

            store = loc_type is LocationType.STORE
            cell = CellViews(sku, loc_id, loc_type, record=view(record),
                             erp=view(b.erp.name),
                             online=None if store else view(b.commerce.name))
            slots: list[str] = []
            if cell.record is not None and cell.erp is not None:
                slots.append(Kind.POS_ERP_STORE_COUNT.value if store
                             else Kind.ERP_SNAPSHOT_DRIFT.value)
            if cell.record is not None and cell.online is not None and not store:
                slots.append(Kind.ONLINE_OVERSELL_RISK.value)
            if slots:
                judged.append((cell, slots))
        histories = await self.history.load(
            [(c.sku, c.record.source, c.location_id) for c, _ in judged if c.record])
        updates = []
        tolerance = self.settings.discrepancy_tolerance
        for cell, slots in judged:
            assert cell.record is not None
            history = histories.get((cell.sku, cell.record.source, cell.location_id))
            updates.append(CellUpdate(cell.sku, cell.location_id, tuple(slots),
                                      tuple(assess(cell, history, tolerance, now))))
        return await self.index.update(updates, now)

    def graph_redis(self) -> Any:
        return self.index.redis

    async def _read_missing(self, wanted: Sequence[tuple[str, str, LocationType, str, list[str]]],
                            raws: dict[tuple[str, str], Any]
                            ) -> dict[tuple[str, str, str], StockView]:
        """The warehouse's view of a cell whose shop view the cache holds and whose system of
        record's it does not, read through it (one batched call): a shop claim far above
        the warehouse is judged within a second of its webhook even when the warehouse's
        cell was never read. The ERP's
        snapshot is left to the runs (its drift is a slow matter). A SKU read through is not
        read again for ``READ_THROUGH_SECONDS`` (under an event storm the cache may refuse the
        fills: an event touched the entry meanwhile)."""
        b = self.graph.backends
        now = time.monotonic()
        for key in [k for k, at in self._read_at.items() if now - at > READ_THROUGH_SECONDS]:
            del self._read_at[key]
        missing: dict[str, set[str]] = {}
        for sku, loc_id, loc_type, record, _others in wanted:
            if loc_type is not LocationType.WAREHOUSE:
                continue
            def cached(source: str, sku: str = sku, loc_id: str = loc_id) -> bool:
                return loc_id in parse_views(sku, source, raws[sku, source], [loc_id])[1]

            # The shop's claim is cached (its webhook), the warehouse's truth is not: read it.
            # (Not the other way round: the shop's level read through would cache its on-hand
            # and committed, which its webhooks never update.)
            if cached(b.commerce.name) and not cached(record) \
                    and (sku, record) not in self._read_at:
                missing.setdefault(record, set()).add(sku)
        if not missing:
            return {}
        loaders = self.graph.loaders()
        by_source = {b.wms.name: loaders.warehouse_stock}
        out: dict[tuple[str, str, str], StockView] = {}
        for source, skus in missing.items():
            ordered = sorted(skus)
            for sku in ordered:
                self._read_at[sku, source] = now
            results = await asyncio.gather(*(by_source[source].load(sku) for sku in ordered),
                                           return_exceptions=True)
            for found in results:
                if isinstance(found, BaseException):
                    if not isinstance(found, BackendError):
                        raise found
                    continue  # that backend is down: the cell is judged without it
                for v in found:
                    out[v.sku, source, v.location_id] = v
        return out




class ReconcileBookkeeping:
    """What reconciliation keeps per applied stock change (an observer of the applier,
    ``gateway.events.applier.ApplierObserver``): the record system's on-hand history of the
    cell, and a re-check of the cell."""

    def __init__(self, history: MovementHistory, rechecker: Rechecker,
                 is_record: Callable[[str, str], bool]) -> None:
        self.history = history
        self.rechecker = rechecker
        self.is_record = is_record

    def applying(self, entry_id: str, envelope: Envelope) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def publishing(self, entry_id: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def published(self, entry_id: str, envelope: Envelope,
                        cell: StockView | None) -> None:
        if envelope.kind is EventKind.HOLD:  # a reservation: no system's event to check
            return
        try:
            if envelope.sku and envelope.location_id:
                if self.is_record(envelope.location_id, envelope.source):
                    await self.history.record(entry_id, envelope, cell)
                self.rechecker.enqueue(envelope.sku, envelope.location_id)
        except (RedisError, OSError) as exc:
            log.warning("reconciliation bookkeeping of %s failed: %s", entry_id, exc)


async def reconcile_periodically(reconciler: ReconcileRunner, interval: float) -> None:
    """A full run every ``interval`` seconds on one replica at a time (a Redis lock)."""
    redis = reconciler.cache.redis
    token = str(ULID())
    while True:
        await asyncio.sleep(interval)
        try:
            # Held well past a run (which may wait up to the grace for in-flight webhooks).
            hold = interval * 10 + reconciler.settings.sync_grace_seconds
            if not await redis.set(LOCK_KEY, token, nx=True, px=int(hold * 1000)):
                continue
            started = time.monotonic()
            try:
                await reconciler.run()
            finally:
                # Hold the lock for the rest of the interval, so other replicas skip it too.
                left = interval - (time.monotonic() - started)
                if left > 0.05:
                    await redis.pexpire(LOCK_KEY, int(left * 1000))
                else:
                    await redis.delete(LOCK_KEY)
        except asyncio.CancelledError:
            raise
        except (BackendError, RedisError, OSError) as exc:
            log.warning("reconciliation run failed: %s", exc)
        except Exception:
            log.exception("reconciliation run failed")


class ReconcileStage:
    """Everything reconciliation adds to a gateway replica (built by ``gateway.app.build``):
    the discrepancy index and feed, movement history, re-checks, runs and sync health. What
    the schema reads of it is :class:`resolvers.abc.Reconciliation`."""

    def __init__(self, settings: Settings, redis: Any, index: DiscrepancyIndex,
                 feed: DiscrepancyFeed, history: MovementHistory, rechecker: Rechecker,
                 runner: ReconcileRunner, health: SyncHealth) -> None:
        self.settings = settings
        self.redis = redis
        self.index = index
        self.feed = feed
        self.history = history
        self.rechecker = rechecker
        self.runner = runner
        self.health = health

    async def run(self, scope: Scope | None = None) -> Report:
        return await self.runner.run(scope)

    async def mark_volatile(self) -> None:
        # The response cache refuses to store a response with a tag invalidated after the
        # request started; this tag always is.
        await self.redis.set(response_tag_version_key(VOLATILE_TAG), NEVER)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        jobs = [self.feed.run(), self.rechecker.run(), self.health.run()]
        interval = self.settings.reconcile_interval_seconds
        if interval > 0:
            jobs.append(reconcile_periodically(self.runner, interval))
        return jobs

    def close(self) -> None:
        self.feed.close_all()


async def last_run(redis: Any) -> dict[str, Any] | None:
    raw = await redis.get(LAST_RUN_KEY)
    return None if raw is None else dict(orjson.loads(raw))


__all__ = [
    "History",
    "Rechecker",
    "ReconcileBookkeeping",
    "ReconcileRunner",
    "ReconcileStage",
    "Report",
    "Scope",
    "reconcile_periodically",
    "repair_envelope",
]
