"""How far behind each system runs, in Redis so every replica answers the same.

Per source the intake and the applier record, in small keys under the ``{sync}`` hash tag:

- ``rg:{sync}:src:<source>`` (hash): events received, last received / occurred, dead letters,
  rejects by reason, gaps detected and healed;
- ``rg:{sync}:rate:<source>:<10 s bucket>``: events per 10 s (events per minute = the last six);
- ``rg:{sync}:lag:received:<source>`` / ``lag:applied:<source>`` (lists, last 1,000 samples):
  milliseconds from occurred-at to received, and from received to applied (p50/p95 on read);
- ``rg:{sync}:gaps:<source>`` + ``gapidx``: the last 50 gaps, healed or not.

Gaps, and healing them:

- The ERP numbers every event with one global ``sequence``: a skip is a lost delivery. Numbers
  above the contiguous high-water mark wait ``GAP_GRACE`` (a reordered delivery fills its hole
  in that time); a hole still open then is a gap, healed by a reconciliation run of the ERP
  alone (its missed events cannot be fetched, but their effect is in the snapshot it serves).
  Number 1 after others (a restarted ERP), or a number more than 2^32 away from the mark
  either way, starts the numbering again there.
- The WMS numbers each cell (``wms:sequence``): an event whose number is more than one past
  the cached cell's is a gap at that cell, healed by fetching the cell's missed movements
  (``GET /api/v1/events?after=``) and applying them, in order, through the log.
- A source silent for longer than its ``heartbeat_seconds``: the POS is asked for the events
  it sent since (Square's Events API, ``POST /v2/events``, which keeps 28 days), and each
  ``inventory.count.updated`` goes through the same normaliser, dedupe and applier as its
  webhook would have (one already received is a duplicate and changes nothing). Where the
  Events API cannot serve (silent for longer than it keeps events, or it refuses: it needs a
  personal access token), the fallback polls what changed since (Square's inventory changes,
  ``updated_after``) and re-reads and applies those cells. The others, which have no change
  feed, get a reconciliation run of that source, which repairs what the cache missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.exceptions import RedisError
from ulid import ULID

from gateway.config import Settings
from gateway.events.applier import Applier
from gateway.events.envelope import Envelope, EventKind, Movement, MovementType
from gateway.events.log import EventLog
from gateway.intake.normalize import EPCIS_MOVEMENTS, NORMALIZERS, Delivery, Malformed, Unappliable
from resolvers.connectors import wms as wms_connector
from resolvers.errors import BackendError, BackendStatusError
from resolvers.graph import RetailGraph
from resolvers.identity import SQUARE_LOCATION, SQUARE_VARIATION
from resolvers.settings import BackendSettings
from resolvers.store.client import Backoff, optional
from resolvers.store.keys import SYNC_LOCK_KEY, views_key
from resolvers.store.keys import sync_key as _k
from resolvers.syncstatus import GAPS_KEPT, Gap, Lag, SourceStatus
from resolvers.types import StockView
from resolvers.values import version_number

log = logging.getLogger("retailgraph.synchealth")

BUCKET_SECONDS = 10
LAG_SAMPLES = 1000
GAP_GRACE_MS = 3000
TICK_SECONDS = 1.0
# Square's Events API keeps the events of the last 28 days; a little is left for clock skew.
SQUARE_EVENTS_KEPT = timedelta(days=28) - timedelta(hours=1)
# Events are fetched from a little before the last delivery received: deliveries are not
# ordered, so one created earlier may be the one lost (duplicates change nothing).
SQUARE_EVENTS_MARGIN = timedelta(minutes=5)

# A number this far from the high-water mark, either way, is a renumbering, not a hole or a
# late delivery: no ERP sends 2^32 events within a gap's grace, and one numbered 2^53 (signed,
# but no number the ERP's own counter reached) would otherwise turn into a hole of billions
# and leave every genuine number after it "already seen", so that a real loss afterwards
# was never detected. The numbering starts again from it; the next genuine number, as far
# the other way, starts it again from there.
RENUMBER_DISTANCE = 2**32

SEQUENCE_LUA = """
local s, now, far = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local hwm = tonumber(redis.call('HGET', KEYS[1], 'hwm') or '-1')
if hwm < 0 or (s == 1 and hwm >= 1) or s > hwm + far or s < hwm - far then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'hwm', s)
  redis.call('HDEL', KEYS[1], 'since')
  if hwm >= 0 and s ~= 1 then return 2 end
  return 0
end
if s <= hwm then return 0 end
if s == hwm + 1 then
  hwm = s
  while redis.call('ZSCORE', KEYS[2], tostring(hwm + 1)) do
    redis.call('ZREM', KEYS[2], tostring(hwm + 1))
    hwm = hwm + 1
  end
  redis.call('HSET', KEYS[1], 'hwm', hwm)
  if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('HDEL', KEYS[1], 'since') end
  return 0
end
redis.call('ZADD', KEYS[2], s, tostring(s))
redis.call('HSETNX', KEYS[1], 'since', now)
return 1
"""

# A hole open longer than the grace is a gap: skip it (it is being healed) and return it.
CONFIRM_LUA = """
local since = tonumber(redis.call('HGET', KEYS[1], 'since') or '-1')
if since < 0 or tonumber(ARGV[1]) - since < tonumber(ARGV[2]) then return false end
local hwm = tonumber(redis.call('HGET', KEYS[1], 'hwm'))
local first = redis.call('ZRANGE', KEYS[2], 0, 0)
if #first == 0 then redis.call('HDEL', KEYS[1], 'since') return false end
local low = tonumber(first[1])
local gap_from, gap_to = hwm + 1, low - 1
hwm = low - 1
while redis.call('ZSCORE', KEYS[2], tostring(hwm + 1)) do
  redis.call('ZREM', KEYS[2], tostring(hwm + 1))
  hwm = hwm + 1
end
redis.call('HSET', KEYS[1], 'hwm', hwm)
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('HDEL', KEYS[1], 'since')
else redis.call('HSET', KEYS[1], 'since', ARGV[1]) end
return {gap_from, gap_to}
"""


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _percentile(samples: Sequence[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return float(ordered[rank])


Heal = Callable[[str], Awaitable[int]]  # heal a source by reconciling it; returns repairs


class AppliedLag:
    """From receipt to readable, per source (``syncStatus.lagReceivedToApplied``): an
    observer of the applier (``gateway.events.applier.ApplierObserver``)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def applying(self, entry_id: str, envelope: Envelope) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def publishing(self, entry_id: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def published(self, entry_id: str, envelope: Envelope,
                        cell: StockView | None) -> None:
        """After the applier wrote an event: how long it took from receipt."""
        if envelope.kind is EventKind.HOLD:  # a reservation: not a source system's event
            return
        lag = max(0, _ms(datetime.now(UTC)) - _ms(envelope.received_at))
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(_k("lag:applied", envelope.source), lag)
                pipe.ltrim(_k("lag:applied", envelope.source), 0, LAG_SAMPLES - 1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("applied lag of %s not recorded: %s", entry_id, exc)


class SyncHealth:
    """Shared (Redis) sync statistics, gap detection and healing for one gateway replica."""

    def __init__(self, redis: Any, settings: Settings, graph: RetailGraph, events: EventLog,
                 applier: Applier, reconcile_source: Heal | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.graph = graph
        self.events = events
        self.applier = applier
        self.reconcile_source = reconcile_source
        self._sequence = redis.register_script(SEQUENCE_LUA)
        self._confirm = redis.register_script(CONFIRM_LUA)
        self._heals: asyncio.Queue[tuple[str, str, str, int, int, str]] = asyncio.Queue(1000)
        self.started = datetime.now(UTC)
        self.healing = 0

    def _source(self, name: str) -> str:
        return name if name in self.settings.backends else "_unknown"

    # -- recording (intake and applier) ------------------------------------------------------

    async def received(self, backend: BackendSettings, payload: Any,
                       envelopes: Sequence[Envelope]) -> None:
        """A new delivery was logged (not yet applied): count it, its lag, and look for gaps."""
        if not envelopes:
            return
        try:
            await self._received(backend, payload, envelopes)
        except (RedisError, OSError) as exc:
            log.warning("sync statistics for %s not recorded: %s", backend.name, exc)

    async def _received(self, backend: BackendSettings, payload: Any,
                        envelopes: Sequence[Envelope]) -> None:
        name = backend.name
        received = max(e.received_at for e in envelopes)
        occurred = max(e.occurred_at for e in envelopes)
        bucket = int(received.timestamp()) // BUCKET_SECONDS
        cells = [e for e in envelopes if backend.format == "epcis" and e.sku and e.location_id
                 and e.kind is EventKind.MOVEMENT and e.source_version > 0]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(_k("src", name), "received", len(envelopes))
            pipe.hset(_k("src", name), mapping={"last_received": received.isoformat()})
            pipe.hget(_k("src", name), "last_occurred")
            rate = f"{_k('rate', name)}:{bucket}"
            pipe.incrby(rate, len(envelopes))
            pipe.expire(rate, BUCKET_SECONDS * 8)
            lags = [max(0, _ms(e.received_at) - _ms(e.occurred_at)) for e in envelopes]
            pipe.lpush(_k("lag:received", name), *lags)
            pipe.ltrim(_k("lag:received", name), 0, LAG_SAMPLES - 1)
            for e in cells:
                assert e.sku is not None
                pipe.hget(views_key(e.sku, name), f"{e.location_id}/_as_of#v")
            results = await pipe.execute()
        last = results[2]
        if last is None or datetime.fromisoformat(last.decode()) < occurred:
            await self.redis.hset(_k("src", name), "last_occurred", occurred.isoformat())
        for e, held in zip(cells, results[7:], strict=True):
            if held is None:
                continue
            known = int(held)
            if e.source_version > known + 1:
                assert e.sku is not None
                assert e.location_id is not None
                gap = Gap(id=str(ULID()), source=name, detected_at=datetime.now(UTC),
                          reason="cell-sequence", from_sequence=known + 1,
                          to_sequence=e.source_version - 1, sku=e.sku,
                          location_id=e.location_id)
                await self._add_gap(gap)
                with contextlib.suppress(asyncio.QueueFull):
                    self._heals.put_nowait((gap.id, name, e.sku, known, e.source_version,
                                            e.location_id))
        if backend.format == "erp" and isinstance(payload, dict):
            sequence = payload.get("sequence")
            if isinstance(sequence, int) and not isinstance(sequence, bool) and sequence > 0:
                found = await self._sequence(
                    keys=[_k("seq", name), _k("seqpending", name)],
                    args=[sequence, _ms(datetime.now(UTC)), RENUMBER_DISTANCE])
                if found == 2:
                    log.warning("%s: event numbered %d is more than 2^32 from the ones before "
                                "it: its numbering starts again there", name, sequence)

    async def rejected(self, source: str, reason: str) -> None:
        # Counters only: they must not hold up the answer (a 503 while Redis is sick).
        with optional(), contextlib.suppress(RedisError, OSError):
            await self.redis.hincrby(_k("src", self._source(source)), f"reject:{reason}", 1)

    async def dead_lettered(self, source: str) -> None:
        with optional(), contextlib.suppress(RedisError, OSError):
            await self.redis.hincrby(_k("src", self._source(source)), "dead_letters", 1)

    # -- gaps ----------------------------------------------------------------------------------

    async def _add_gap(self, gap: Gap) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(_k("gaps", gap.source), gap.id, gap.encode())
            pipe.zadd(_k("gapidx", gap.source), {gap.id: _ms(gap.detected_at)})
            pipe.hincrby(_k("src", gap.source), "gaps", 1)
            pipe.zrange(_k("gapidx", gap.source), 0, -(GAPS_KEPT + 1))
            results = await pipe.execute()
        old = [x.decode() for x in results[-1]]
        if old:
            await self.redis.zrem(_k("gapidx", gap.source), *old)
            await self.redis.hdel(_k("gaps", gap.source), *old)
        log.warning("gap in %s: %s", gap.source, gap.detail or gap.reason)

    async def _healed(self, gap: Gap, applied: int, detail: str = "") -> None:
        done = Gap(id=gap.id, source=gap.source, detected_at=gap.detected_at,
                   reason=gap.reason, from_sequence=gap.from_sequence,
                   to_sequence=gap.to_sequence, sku=gap.sku, location_id=gap.location_id,
                   healed_at=datetime.now(UTC), applied=applied,
                   detail=detail or gap.detail)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(_k("gaps", gap.source), gap.id, done.encode())
            pipe.hincrby(_k("src", gap.source), "healed", 1)
            await pipe.execute()

    async def _gap(self, source: str, gap_id: str) -> Gap | None:
        raw = await self.redis.hget(_k("gaps", source), gap_id)
        return Gap.decode(raw) if raw is not None else None

    async def heal_cell(self, gap_id: str, source: str, sku: str, known: int, upto: int,
                        location_id: str) -> int:
        """Fetch a WMS cell's movements after ``known`` and apply those before ``upto``."""
        wms = self.graph.backends.wms
        movements = await wms.movements(sku, location_id, after=known)
        backend = self.settings.backends[source]
        applied = 0
        for m in sorted(movements, key=lambda m: m.sequence or 0):
            if m.sequence is None or not known < m.sequence < upto:
                continue
            envelope = movement_envelope(m, backend, self.graph)
            if envelope is None:
                continue
            appended = await self.events.append(source, f"heal:{m.event_id}", [envelope])
            if appended.new:
                await self.applier.apply(appended.ids[0], envelope)
                applied += 1
        gap = await self._gap(source, gap_id)
        if gap is not None:
            await self._healed(gap, applied, f"{applied} missed movement(s) of {sku} at "
                                             f"{location_id} fetched and applied")
        return applied

    async def tick(self) -> None:
        """Confirm sequence gaps and check heartbeats; one replica at a time."""
        now = datetime.now(UTC)
        if not await self.redis.set(SYNC_LOCK_KEY, "1", nx=True, px=int(TICK_SECONDS * 900)):
            return
        for backend in self.settings.backends.values():
            if backend.format == "erp":
                found = await self._confirm(
                    keys=[_k("seq", backend.name), _k("seqpending", backend.name)],
                    args=[_ms(now), GAP_GRACE_MS])
                if found:
                    low, high = int(found[0]), int(found[1])
                    gap = Gap(id=str(ULID()), source=backend.name, detected_at=now,
                              reason="sequence", from_sequence=low, to_sequence=high,
                              detail=f"{backend.name} events {low}..{high} never arrived")
                    await self._add_gap(gap)
                    repaired = await self._reconcile(backend.name)
                    await self._healed(gap, repaired, f"{backend.name} events {low}..{high} "
                                       f"never arrived; reconciled {backend.name}, "
                                       f"{repaired} cell(s) repaired")
            if backend.heartbeat_seconds > 0:
                await self._heartbeat(backend, now)

    async def _reconcile(self, source: str) -> int:
        if self.reconcile_source is None:
            return 0
        try:
            return await self.reconcile_source(source)
        except BackendError as exc:
            log.warning("healing %s by reconciliation failed: %s", source, exc)
            return 0

    async def _heartbeat(self, backend: BackendSettings, now: datetime) -> None:
        stats = await self.redis.hmget(_k("src", backend.name), ["last_received", "beat"])
        # Silent since the last webhook or check; never heard: since this replica started.
        last = max((datetime.fromisoformat(x.decode()) for x in stats if x is not None),
                   default=self.started)
        silent = (now - last).total_seconds()
        if silent < backend.heartbeat_seconds:
            return
        await self.redis.hset(_k("src", backend.name), "beat", now.isoformat())
        how = "cell(s) applied"
        if backend.format == "square":
            from_events = await self._square_events(backend, last, now)
            if from_events is not None:
                applied, how = from_events, "event(s) from the Events API applied"
            else:
                applied = await self._square_changes(backend, last)
        else:
            applied = await self._reconcile(backend.name)
        if applied:
            gap = Gap(id=str(ULID()), source=backend.name, detected_at=now, reason="silent",
                      detail=f"{backend.name} silent for {silent:.0f}s while it changed")
            await self._add_gap(gap)
            await self._healed(gap, applied, f"{backend.name} silent for {silent:.0f}s while "
                                             f"it changed; {applied} {how}")

    async def _square_events(self, backend: BackendSettings, since: datetime,
                             now: datetime) -> int | None:
        """The POS's ``inventory.count.updated`` events since ``since`` from the Events API,
        each ingested like its webhook (normaliser, dedupe by ``event_id``, applier); how many
        envelopes were new. None when the Events API cannot serve: ``since`` is older than it
        keeps, or it refuses (401/403/404: e.g. an OAuth token, which it does not accept)."""
        catalog = self.graph.catalog
        start = since - SQUARE_EVENTS_MARGIN
        if catalog is None or now - start > SQUARE_EVENTS_KEPT:
            return None
        pos = self.graph.backends.pos
        body: dict[str, Any] = {"limit": 100, "query": {
            "filter": {"event_types": ["inventory.count.updated"],
                       "created_at": {"start_at": start.isoformat()}},
            "sort": {"field": "DEFAULT", "order": "ASC"}}}
        applied = 0
        for _ in range(1000):  # 100,000 events: more is a reconciliation's job
            try:
                page = await pos.client.json("POST", "/v2/events", json=body, idempotent=True)
            except BackendStatusError as exc:
                if exc.status in (401, 403, 404):
                    log.warning("%s Events API refused (%s); polling changes instead",
                                backend.name, exc.status)
                    return None
                raise
            events = page.get("events") if isinstance(page, dict) else None
            for event in events if isinstance(events, list) else []:
                applied += await self._ingest_square_event(backend, event, now)
            cursor = page.get("cursor") if isinstance(page, dict) else None
            if not isinstance(cursor, str) or not cursor:
                break
            body = {**body, "cursor": cursor}
        return applied

    async def _ingest_square_event(self, backend: BackendSettings, event: Any,
                                   now: datetime) -> int:
        assert self.graph.catalog is not None
        delivery = Delivery(backend=backend, body=orjson.dumps(event), payload=event,
                            headers={}, received_at=now,
                            max_skew_seconds=self.settings.max_clock_skew_seconds)
        try:
            dedupe_id, envelopes = NORMALIZERS[backend.format](delivery,
                                                               self.graph.catalog.identity)
        except (Malformed, Unappliable) as exc:
            # Nobody will send it again (a webhook's sender retries a 400): into the dead
            # letters like a webhook that cannot be applied (replayable the same way).
            await self._dead_letter_event(backend, delivery, event, f"from the Events API: {exc}")
            return 0
        if not dedupe_id or not envelopes:
            return 0
        appended = await self.events.append(backend.name, dedupe_id, envelopes)
        if not appended.new:
            return 0  # its webhook arrived after all
        await self.applier.apply_all(list(zip(appended.ids, envelopes, strict=True)))
        return len(envelopes)

    async def _dead_letter_event(self, backend: BackendSettings, delivery: Delivery,
                                 event: Any, reason: str) -> None:
        topic = event.get("type") if isinstance(event, dict) else None
        # The same key as its webhook's letter would have: kept once whichever came first.
        await self.events.dead_letter(backend.name, delivery.raw_ref, reason,
                                      topic if isinstance(topic, str) else "",
                                      delivery.received_at, delivery.body, {})
        await self.dead_lettered(backend.name)
        log.warning("%s event from the Events API dead-lettered: %s", backend.name, reason)

    async def _square_changes(self, backend: BackendSettings, since: datetime) -> int:
        """Ask the POS what changed since ``since`` and apply those cells as read now."""
        pos = self.graph.backends.pos
        identity = pos.identity
        body: dict[str, Any] = {"updated_after": since.isoformat(), "limit": 1000}
        cells: set[tuple[str, str]] = set()
        for _ in range(100):
            page = await pos.client.json("POST", "/v2/inventory/changes/batch-retrieve",
                                         json=body, idempotent=True)
            for change in page.get("changes", []) if isinstance(page, dict) else []:
                for part in (change.get("adjustment"), change.get("physical_count"),
                             change.get("transfer")):
                    if not isinstance(part, dict):
                        continue
                    sku = identity.sku(SQUARE_VARIATION, str(part.get("catalog_object_id")))
                    for key in ("location_id", "from_location_id", "to_location_id"):
                        loc = identity.location(SQUARE_LOCATION, str(part.get(key)))
                        if sku and loc:
                            cells.add((sku, loc))
            cursor = page.get("cursor") if isinstance(page, dict) else None
            if not cursor:
                break
            body = {**body, "cursor": cursor}
        if not cells:
            return 0
        views = await pos.counts(sorted({s for s, _ in cells}), sorted({x for _, x in cells}))
        now = datetime.now(UTC)
        applied = 0
        for view in views:
            if (view.sku, view.location_id) not in cells:
                continue
            envelope = Envelope(
                id=str(ULID()), kind=EventKind.LEVEL_SNAPSHOT, source=backend.name,
                system=backend.format, topic="heal.heartbeat",
                source_event_id=f"heal:{view.sku}:{view.location_id}:{view.version}",
                delivery_id="heartbeat", occurred_at=view.as_of, received_at=now,
                source_version=_version(view.version, view.as_of), sku=view.sku,
                location_id=view.location_id, quantities=view.quantities, full=True)
            appended = await self.events.append(backend.name, envelope.source_event_id,
                                                [envelope])
            if appended.new:
                await self.applier.apply(appended.ids[0], envelope)
                applied += 1
        return applied

    async def run(self) -> None:
        """Heal cell gaps as they are found; confirm sequence gaps and heartbeats each tick."""
        async def heal_cells() -> None:
            while True:
                job = await self._heals.get()
                self.healing += 1
                try:
                    await self.heal_cell(*job)
                except asyncio.CancelledError:
                    raise
                except (BackendError, RedisError, OSError) as exc:
                    log.warning("healing a gap in %s failed: %s", job[1], exc)
                finally:
                    self.healing -= 1
                    self._heals.task_done()

        healer = asyncio.create_task(heal_cells())
        backoff = Backoff("sync health")
        try:
            delay = TICK_SECONDS
            while True:
                await asyncio.sleep(delay)
                delay = TICK_SECONDS
                try:
                    await self.tick()
                    backoff.succeeded()
                except asyncio.CancelledError:
                    raise
                except (RedisError, OSError) as exc:
                    delay = max(delay, backoff.failed(exc))
                except BackendError as exc:
                    log.warning("sync health tick failed: %s", exc)
                except Exception:
                    log.exception("sync health tick failed")
        finally:
            healer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await healer

    async def settled(self) -> None:
        """Until queued cell heals are done (tests)."""
        await self._heals.join()

    # -- reading -------------------------------------------------------------------------------

    async def statuses(self, recent: int = 10) -> list[SourceStatus]:
        """Every source's status, with its ``recent`` (at most GAPS_KEPT) newest gaps."""
        now = datetime.now(UTC)
        bucket = int(now.timestamp()) // BUCKET_SECONDS
        names = list(self.settings.backends)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(_k("src", name))
                pipe.mget([f"{_k('rate', name)}:{b}" for b in range(bucket - 5, bucket + 1)])
                pipe.lrange(_k("lag:received", name), 0, -1)
                pipe.lrange(_k("lag:applied", name), 0, -1)
                pipe.zrevrange(_k("gapidx", name), 0, min(recent, GAPS_KEPT) - 1)
                pipe.hget(_k("seq", name), "since")
            rows = await pipe.execute()
        out = []
        for n, name in enumerate(names):
            stats, rates, lag_r, lag_a, gap_ids, since = rows[6 * n:6 * n + 6]
            data = {k.decode(): v.decode() for k, v in stats.items()}
            gaps: list[Gap] = []
            if gap_ids:
                raw = await self.redis.hmget(_k("gaps", name), gap_ids)
                gaps = [Gap.decode(r) for r in raw if r is not None]
            backend = self.settings.backends[name]
            last = data.get("last_received")
            last_at = datetime.fromisoformat(last) if last else None
            occurred = data.get("last_occurred")
            out.append(SourceStatus(
                source=name, system=backend.format, last_received_at=last_at,
                last_occurred_at=datetime.fromisoformat(occurred) if occurred else None,
                events_total=int(data.get("received", 0)),
                events_per_minute=float(sum(int(r) for r in rates if r is not None)),
                lag_received=_lag(lag_r), lag_applied=_lag(lag_a),
                rejects={k.removeprefix("reject:"): int(v) for k, v in sorted(data.items())
                         if k.startswith("reject:")},
                dead_letters=int(data.get("dead_letters", 0)),
                gaps_detected=int(data.get("gaps", 0)), gaps_healed=int(data.get("healed", 0)),
                recent_gaps=gaps,
                heartbeat_seconds=backend.heartbeat_seconds or None,
                silent_seconds=round((now - last_at).total_seconds(), 3) if last_at else None,
                open_sequence_gap=since is not None))
        return out


def _lag(raw: list[bytes]) -> Lag:
    samples = [float(x) for x in raw]
    return Lag(_percentile(samples, 0.5), _percentile(samples, 0.95), len(samples))


def _version(version: str, as_of: datetime) -> int:
    return version_number(version, as_of)


def movement_envelope(m: wms_connector.Movement, backend: BackendSettings,
                      graph: RetailGraph) -> Envelope | None:
    """A WMS movement fetched from its event API as the envelope its webhook would have made."""
    row = m.balance_row()
    if row is None or graph.catalog is None:
        return None
    view = wms_connector.balance_to_view(row, graph.catalog.identity, backend.name)
    if view is None:
        return None
    return Envelope(
        id=str(ULID()), kind=EventKind.MOVEMENT, source=backend.name, system=backend.format,
        topic=m.biz_step, source_event_id=m.event_id, delivery_id="heal",
        occurred_at=m.occurred_at, received_at=datetime.now(UTC),
        source_version=m.sequence or 0, sku=view.sku, location_id=view.location_id,
        quantities=view.quantities, full=True,
        movement=Movement(type=EPCIS_MOVEMENTS.get(m.biz_step, MovementType.OTHER),
                          quantity=m.quantity, biz_step=m.biz_step, to_state=m.disposition,
                          documents=tuple((x["type"], x["id"]) for x in m.documents)),
        extra={"healed": True})
