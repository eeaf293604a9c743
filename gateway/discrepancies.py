"""Where the systems disagree: what a discrepancy is, how a cell is judged, where they are kept.

A *cell* is one SKU at one location. Up to three systems have a view of it besides the
gateway's own cache: the system of record (POS at stores, WMS at warehouses), the web shop
(warehouses only: Shopify's ``available``) and the ERP's nightly snapshot (``on_hand``).
:func:`assess` compares them like with like and returns a :class:`Finding` per disagreement:

- ``ONLINE_OVERSELL_RISK``: the shop offers more than the warehouse can ship (commerce
  ``available`` > WMS ``available``). Delta: the units the shop could sell that do not exist.
- ``ERP_SNAPSHOT_DRIFT`` (warehouses) / ``POS_ERP_STORE_COUNT`` (stores): the ERP snapshot's
  on-hand differs from the system of record's by more than the movements since the snapshot
  explain. Delta: the unexplained units (snapshot minus the record's on-hand at snapshot time).
- ``CACHE_DRIFT``: the gateway's cache disagrees with its own backend (found by reconciliation
  runs, which repair it), or holds a version from the future: a timestamp version further
  ahead of the clock than ``max_clock_skew_seconds``, or a higher version than its backend's
  although the backend changed after it (a sequence number sent ahead of the source's own).
  Such a cell would win over every genuine event, so it is a drift even where the values
  agree, and its repair replaces it whatever its version.

Lagging or wrong: a view older than the last movement it has not seen is ``LAGGING`` (it may
catch up by itself: a snapshot taken before today's sales, a stock feed a few seconds behind);
otherwise it is ``WRONG``. For the ERP the movements are the system of record's history of the
cell (recorded per cell as events are applied, :class:`MovementHistory`): the record's on-hand
at the snapshot's time is what the snapshot should say; when that is unknown and the record has
moved since the snapshot, the difference is LAGGING.

Discrepancies live in Redis (``{disc}`` hash tag): ``rg:{disc}:items`` (JSON per cell and kind),
``rg:{disc}:order`` (lexicographic index ``location|sku|kind``) and ``rg:{disc}:feed``, a stream
of transitions (APPEARED / UPDATED / RESOLVED) that every replica tails for
``discrepancyDetected``. One Lua script per cell swaps the cell's findings and publishes the
transitions atomically, so replicas and reconciliation runs never double-report.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.cache import Backoff, epoch_micros, is_sequence, version_number
from gateway.events import Envelope, MovementType
from resolvers.types import LocationType, Quantities, StockView

log = logging.getLogger("retailgraph.discrepancies")

ITEMS_KEY = "rg:{disc}:items"
ORDER_KEY = "rg:{disc}:order"
FEED_KEY = "rg:{disc}:feed"
FEED_MAXLEN = 100_000
HISTORY_ENTRIES = 32
HISTORY_TTL = 3 * 24 * 3600


class Kind(StrEnum):
    ONLINE_OVERSELL_RISK = "ONLINE_OVERSELL_RISK"
    ERP_SNAPSHOT_DRIFT = "ERP_SNAPSHOT_DRIFT"
    POS_ERP_STORE_COUNT = "POS_ERP_STORE_COUNT"
    CACHE_DRIFT = "CACHE_DRIFT"


class Status(StrEnum):
    LAGGING = "LAGGING"
    WRONG = "WRONG"


class Severity(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return SEVERITY_ORDER.index(self)

    def lower(self) -> Severity:
        return SEVERITY_ORDER[max(0, self.rank - 1)]


SEVERITY_ORDER = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


class Role(StrEnum):
    SYSTEM_OF_RECORD = "SYSTEM_OF_RECORD"
    ONLINE = "ONLINE"
    ERP_SNAPSHOT = "ERP_SNAPSHOT"


class Transition(StrEnum):
    APPEARED = "APPEARED"
    UPDATED = "UPDATED"
    RESOLVED = "RESOLVED"


# -- views -----------------------------------------------------------------------------------

def derived_on_hand(q: Quantities) -> int | None:
    """On-hand as the merge rules count it (Square has no on-hand: its on-shelf states add up)."""
    if q.on_hand is not None:
        return q.on_hand
    a, c, qc, d = q.available, q.committed, q.quality_control, q.damaged
    if a is None and c is None and qc is None and d is None:
        return None
    return (a or 0) + (c or 0) + (qc or 0) + (d or 0)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class Side:
    """One system's value in a finding: which quantity, how much, as of when, read from where."""

    source: str
    role: Role
    quantity: str  # "onHand" | "available"
    value: int
    as_of: datetime
    origin: str  # "cache" | "backend"

    def encode(self) -> list[Any]:
        return [self.source, self.role.value, self.quantity, self.value, _iso(self.as_of),
                self.origin]

    @classmethod
    def decode(cls, raw: list[Any]) -> Side:
        return cls(raw[0], Role(raw[1]), raw[2], int(raw[3]), _time(raw[4]), raw[5])


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement at one cell. ``source`` is the view found lagging or wrong."""

    sku: str
    location_id: str
    kind: Kind
    status: Status
    severity: Severity
    delta: int
    source: str
    sides: tuple[Side, ...]
    detected_at: datetime
    explained: int | None = None  # units the movements since the older view account for
    last_movement_at: datetime | None = None
    message: str = ""
    since: datetime | None = None  # first detected (kept by the index across updates)

    @property
    def slot(self) -> str:
        """The kind as the index keys it: cache drift once per drifting source."""
        return f"{self.kind.value}:{self.source}" if self.kind is Kind.CACHE_DRIFT \
            else self.kind.value

    @property
    def key(self) -> str:
        return f"{self.location_id}|{self.sku}|{self.slot}"

    @property
    def signature(self) -> str:
        """What a subscriber is told about when it changes (not mere ageing)."""
        return f"{self.status.value}|{self.severity.value}|{self.delta}"

    def encode(self) -> bytes:
        return orjson.dumps({
            "sku": self.sku, "loc": self.location_id, "kind": self.kind.value,
            "status": self.status.value, "severity": self.severity.value, "delta": self.delta,
            "source": self.source, "sides": [s.encode() for s in self.sides],
            "at": _iso(self.detected_at), "explained": self.explained,
            "moved": _iso(self.last_movement_at) if self.last_movement_at else None,
            "msg": self.message})

    @classmethod
    def decode(cls, raw: bytes | str, since: str | bytes | None = None) -> Finding:
        d = orjson.loads(raw)
        since_text = since.decode() if isinstance(since, bytes) else since
        return cls(sku=d["sku"], location_id=d["loc"], kind=Kind(d["kind"]),
                   status=Status(d["status"]), severity=Severity(d["severity"]),
                   delta=int(d["delta"]), source=d["source"],
                   sides=tuple(Side.decode(s) for s in d["sides"]),
                   detected_at=_time(d["at"]), explained=d.get("explained"),
                   last_movement_at=_time(d["moved"]) if d.get("moved") else None,
                   message=d.get("msg", ""),
                   since=_time(since_text) if since_text else None)


# -- movement history ------------------------------------------------------------------------

# What a movement does to on-hand, where the movement alone says (COUNT, ADJUSTMENT and
# REPAIR set it absolutely: the value before is then unknown).
ON_HAND_EFFECT: dict[MovementType, int] = {
    MovementType.RECEIPT: 1, MovementType.TRANSFER_IN: 1, MovementType.RETURN: 1,
    MovementType.TRANSFER_OUT: -1, MovementType.SALE: -1, MovementType.PUTAWAY: 0,
    MovementType.ALLOCATION: 0}


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    before: int | None
    after: int


@dataclass(frozen=True, slots=True)
class History:
    """A cell's recent on-hand changes at its system of record, oldest first."""

    entries: tuple[HistoryEntry, ...] = ()

    @property
    def last_movement(self) -> datetime | None:
        return self.entries[-1].at if self.entries else None

    def on_hand_at(self, moment: datetime) -> int | None:
        """On-hand at ``moment`` if the history tells (None when it starts later, unknown)."""
        known: int | None = None
        for entry in self.entries:
            if entry.at <= moment:
                known = entry.after
            else:
                return known if known is not None else entry.before
        return known


class MovementHistory:
    """Per cell and source, the last on-hand changes: ``rg:{s:<sku>}:hist:<source>:<loc>``
    (a sorted set by time). Written as events are applied; read to explain snapshot gaps."""

    def __init__(self, redis: Any, entries: int = HISTORY_ENTRIES) -> None:
        self.redis = redis
        self.entries = entries

    @staticmethod
    def key(sku: str, source: str, location_id: str) -> str:
        return f"rg:{{s:{sku}}}:hist:{source}:{location_id}"

    async def record(self, entry_id: str, envelope: Envelope, cell: StockView | None) -> None:
        e = envelope
        if e.sku is None or e.location_id is None or e.quantities is None:
            return
        quantities = cell.quantities if cell is not None else (e.quantities if e.full else None)
        after = derived_on_hand(quantities) if quantities is not None else None
        if after is None:
            return
        before: int | None = None
        if e.movement is not None and e.movement.type in ON_HAND_EFFECT:
            before = after - ON_HAND_EFFECT[e.movement.type] * e.movement.quantity
        ms = int(e.occurred_at.timestamp() * 1000)
        key = self.key(e.sku, e.source, e.location_id)
        member = f"{ms}:{entry_id}:{'' if before is None else before}:{after}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {member: ms})
            pipe.zremrangebyrank(key, 0, -(self.entries + 1))
            pipe.expire(key, HISTORY_TTL)
            await pipe.execute()

    async def load(self, cells: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str],
                                                                          History]:
        """History of (sku, source, location) cells; empty History where none was recorded."""
        if not cells:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for sku, source, loc in cells:
                pipe.zrange(self.key(sku, source, loc), 0, -1)
            rows = await pipe.execute()
        out = {}
        for cell, members in zip(cells, rows, strict=True):
            entries = []
            for raw in members:
                ms, _, before, after = _split(raw)
                entries.append(HistoryEntry(datetime.fromtimestamp(int(ms) / 1000, UTC),
                                            int(before) if before else None, int(after)))
            out[cell] = History(tuple(entries))
        return out


def _split(raw: bytes | str) -> tuple[str, str, str, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, rest = text.split(":", 1)
    rest, before, after = rest.rsplit(":", 2)
    return ms, rest, before, after


# -- judging one cell ------------------------------------------------------------------------

@dataclass(slots=True)
class CellViews:
    """What each system says about one cell (None: no view, or not read)."""

    sku: str
    location_id: str
    location_type: LocationType
    record: StockView | None = None
    erp: StockView | None = None
    online: StockView | None = None
    origins: dict[str, str] = field(default_factory=dict)  # source -> "cache" | "backend"

    def origin(self, view: StockView) -> str:
        return self.origins.get(view.source, "cache")


def _drift_severity(delta: int, reference: int) -> Severity:
    size = abs(delta)
    ratio = size / max(reference, 1)
    if size >= 25 or (ratio >= 0.5 and size >= 5):
        return Severity.HIGH
    if size >= 5 or ratio >= 0.2:
        return Severity.MEDIUM
    return Severity.LOW


def _oversell_severity(delta: int, warehouse_available: int) -> Severity:
    if warehouse_available <= 0 or delta >= 10:
        return Severity.CRITICAL
    if delta >= 5:
        return Severity.HIGH
    return Severity.MEDIUM


def assess(cell: CellViews, history: History | None, tolerance: int,
           now: datetime) -> list[Finding]:
    """The cross-system findings at one cell (cache drift is judged by :func:`cache_drift`)."""
    out: list[Finding] = []
    record = cell.record
    if record is None:
        return out
    history = history or History()
    moved_at = max(filter(None, (record.as_of, history.last_movement)))
    if cell.erp is not None:
        found = _snapshot_drift(cell, cell.erp, record, history, moved_at, tolerance, now)
        if found is not None:
            out.append(found)
    online = cell.online
    if online is not None and cell.location_type is LocationType.WAREHOUSE:
        shop, warehouse = online.quantities.available, record.quantities.available
        if shop is not None and warehouse is not None and shop - warehouse > tolerance:
            delta = shop - warehouse
            lagging = moved_at > online.as_of
            severity = _oversell_severity(delta, warehouse)
            status = Status.LAGGING if lagging else Status.WRONG
            message = (f"the web shop offers {shop} but the warehouse has {warehouse} "
                       f"available: {delta} unit(s) could be sold that cannot ship")
            if lagging:
                message += " (the shop has not caught up with the warehouse's last movement)"
            out.append(Finding(
                sku=cell.sku, location_id=cell.location_id, kind=Kind.ONLINE_OVERSELL_RISK,
                status=status, severity=severity.lower() if lagging else severity,
                delta=delta, source=online.source, detected_at=now, last_movement_at=moved_at,
                sides=(_side(cell, online, Role.ONLINE, "available"),
                       _side(cell, record, Role.SYSTEM_OF_RECORD, "available")),
                message=message))
    return out


def _side(cell: CellViews, view: StockView, role: Role, quantity: str = "onHand") -> Side:
    value = (view.quantities.available if quantity == "available"
             else derived_on_hand(view.quantities))
    return Side(view.source, role, quantity, int(value or 0), view.as_of, cell.origin(view))


def _snapshot_drift(cell: CellViews, erp: StockView, record: StockView, history: History,
                    moved_at: datetime, tolerance: int, now: datetime) -> Finding | None:
    snapshot, current = erp.quantities.on_hand, derived_on_hand(record.quantities)
    if snapshot is None or current is None:
        return None
    diff = snapshot - current
    if abs(diff) <= tolerance:
        return None
    moved = moved_at > erp.as_of
    at_snapshot = current if not moved else history.on_hand_at(erp.as_of)
    store = cell.location_type is LocationType.STORE
    kind = Kind.POS_ERP_STORE_COUNT if store else Kind.ERP_SNAPSHOT_DRIFT
    what = "store count" if store else "warehouse on-hand"
    explained: int | None = None
    if at_snapshot is not None:
        residual = snapshot - at_snapshot
        explained = diff - residual
        if abs(residual) <= tolerance:
            status, delta = Status.LAGGING, diff
            message = (f"ERP snapshot says {snapshot}, the {what} is {current}: the "
                       f"{abs(diff)} unit(s) moved since the snapshot explain it")
        else:
            status, delta = Status.WRONG, residual
            message = (f"ERP snapshot says {snapshot}, the {what} was {at_snapshot} at the "
                       f"snapshot and is {current} now: {residual:+d} unit(s) unexplained")
    else:
        status, delta = Status.LAGGING, diff
        message = (f"ERP snapshot says {snapshot}, the {what} is {current}; it moved since the "
                   "snapshot and the movements are not all known")
    severity = Severity.LOW if status is Status.LAGGING else _drift_severity(delta, current)
    return Finding(
        sku=cell.sku, location_id=cell.location_id, kind=kind, status=status,
        severity=severity, delta=delta, source=erp.source, detected_at=now,
        explained=explained, last_movement_at=moved_at, message=message,
        sides=(_side(cell, erp, Role.ERP_SNAPSHOT), _side(cell, record, Role.SYSTEM_OF_RECORD)))


QUANTITY_NAMES = {"on_hand": "onHand", "available": "available", "committed": "committed",
                  "incoming": "incoming", "quality_control": "qualityControl",
                  "damaged": "damaged"}
ONLINE_COMPARED = ("available",)


def in_the_future(backend: StockView, cached: StockView, now: datetime,
                  max_skew_seconds: float) -> bool:
    """Whether the cached cell's version lies in the future: ahead of its backend's although
    the backend changed more than the allowed clock skew after the cached state (a version
    that high was never the source's), or, for timestamp versions, further ahead of ``now``
    than that skew. Either would win over every genuine event to come. (A cached version
    ahead of the backend's is otherwise an event that arrived after the backend was read.)"""
    held = version_number(cached.version, cached.as_of)
    if held <= version_number(backend.version, backend.as_of):
        return False
    if (backend.as_of - cached.as_of).total_seconds() > max_skew_seconds:
        return True
    horizon = epoch_micros(now + timedelta(seconds=max_skew_seconds))
    return not is_sequence(backend.version) and held > horizon


def cache_drift(backend: StockView, cached: StockView | None, role: Role, now: datetime,
                grace_seconds: float, max_skew_seconds: float = 300.0) -> Finding | None:
    """The cache's cell against the backend's own answer; None when they agree or the cache
    is newer than the read (an event arrived after it), unless its version lies in the
    future (:func:`in_the_future`: a drift whatever the values, repaired by replacing)."""
    if cached is None:
        return None
    future = in_the_future(backend, cached, now, max_skew_seconds)
    if not future and version_number(cached.version, cached.as_of) > version_number(
            backend.version, backend.as_of):
        return None
    differing = []
    # The shop's stock channel (its ``inventory_levels/update`` webhook) carries ``available``
    # only, so its other quantities in the cache age between reads by design: only
    # ``available`` is compared for it.
    for name in ONLINE_COMPARED if role is Role.ONLINE else QUANTITY_NAMES:
        b, c = getattr(backend.quantities, name), getattr(cached.quantities, name)
        if b is not None and c is not None and b != c:
            differing.append((name, c - b))
    if not differing and not future:
        return None
    main = "available" if role is Role.ONLINE else "on_hand"
    b_main = (backend.quantities.available if role is Role.ONLINE
              else derived_on_hand(backend.quantities))
    c_main = (cached.quantities.available if role is Role.ONLINE
              else derived_on_hand(cached.quantities))
    delta = (c_main - b_main) if b_main is not None and c_main is not None else 0
    if delta == 0 and differing:
        delta = max((d for _, d in differing), key=abs)
    age = (now - backend.as_of).total_seconds()
    lagging = age <= grace_seconds and not future
    severity = Severity.HIGH if role is Role.SYSTEM_OF_RECORD else Severity.MEDIUM
    fields_text = ", ".join(f"{QUANTITY_NAMES[n]} {d:+d}" for n, d in differing)
    message = f"the gateway's cache of {backend.source} differs from {backend.source} itself " \
              f"({fields_text})"
    if future:
        message = (f"the gateway's cache of {backend.source} holds version {cached.version} "
                   f"from the future (the backend's is {backend.version}): no later event "
                   f"would apply" + (f" ({fields_text})" if differing else ""))
    if lagging:
        message += "; the change is seconds old, its webhook may still be on the way"
    quantity = QUANTITY_NAMES[main]
    sides = (Side(backend.source, role, quantity, int(b_main or 0), backend.as_of, "backend"),
             Side(backend.source, role, quantity, int(c_main or 0), cached.as_of, "cache"))
    return Finding(sku=backend.sku, location_id=backend.location_id, kind=Kind.CACHE_DRIFT,
                   status=Status.LAGGING if lagging else Status.WRONG,
                   severity=severity.lower() if lagging else severity, delta=delta,
                   source=backend.source, sides=sides, detected_at=now,
                   last_movement_at=backend.as_of, message=message)


# -- the index in Redis ----------------------------------------------------------------------

# KEYS: items hash, order zset, feed stream
# ARGV: feed maxlen, now, cell prefix "loc|sku|", n, n evaluated slots, then (slot, json, sig)*
UPDATE_LUA = """
local prefix, n = ARGV[3], tonumber(ARGV[4])
local found = {}
for i = 5 + n, #ARGV, 3 do found[ARGV[i]] = {ARGV[i + 1], ARGV[i + 2]} end
local published = 0
for k = 5, 4 + n do
  local f = prefix .. ARGV[k]
  local new = found[ARGV[k]]
  local old_sig = redis.call('HGET', KEYS[1], f .. '#s')
  if new then
    if not old_sig then
      redis.call('HSET', KEYS[1], f, new[1], f .. '#s', new[2], f .. '#t', ARGV[2])
      redis.call('ZADD', KEYS[2], 0, f)
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 't', 'APPEARED', 'd', new[1],
                 's', ARGV[2])
      published = published + 1
    else
      redis.call('HSET', KEYS[1], f, new[1], f .. '#s', new[2])
      if old_sig ~= new[2] then
        local since = redis.call('HGET', KEYS[1], f .. '#t') or ARGV[2]
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 't', 'UPDATED', 'd', new[1],
                   's', since)
        published = published + 1
      end
    end
  elseif old_sig then
    local old = redis.call('HGET', KEYS[1], f)
    local since = redis.call('HGET', KEYS[1], f .. '#t') or ARGV[2]
    redis.call('HDEL', KEYS[1], f, f .. '#s', f .. '#t')
    redis.call('ZREM', KEYS[2], f)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 't', 'RESOLVED', 'd', old,
               's', since, 'r', ARGV[2])
    published = published + 1
  end
end
return published
"""


def cell_slots(location_type: LocationType, sources: Iterable[str] = ()) -> list[str]:
    """Every slot a fully judged cell can have (cache drift per given source)."""
    slots = [Kind.POS_ERP_STORE_COUNT.value if location_type is LocationType.STORE
             else Kind.ERP_SNAPSHOT_DRIFT.value]
    if location_type is LocationType.WAREHOUSE:
        slots.append(Kind.ONLINE_OVERSELL_RISK.value)
    slots += [f"{Kind.CACHE_DRIFT.value}:{s}" for s in sources]
    return slots


@dataclass(frozen=True, slots=True)
class CellUpdate:
    """The judgement of one cell: ``slots`` were evaluated, ``findings`` are what was found."""

    sku: str
    location_id: str
    slots: tuple[str, ...]
    findings: tuple[Finding, ...]


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(("d:" + member).encode()).decode()


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith("d:"):
        raise ValueError(f"invalid cursor {cursor!r}")
    return raw[2:]


@dataclass(frozen=True, slots=True)
class Page:
    findings: list[Finding]
    cursors: list[str]
    end_cursor: str | None
    has_more: bool


@dataclass(frozen=True, slots=True)
class DiscrepancyFilter:
    """Filters of a discrepancy listing or subscription."""

    location_ids: frozenset[str] | None = None
    skus: frozenset[str] | None = None
    min_delta: int = 0
    kinds: frozenset[Kind] | None = None
    statuses: frozenset[Status] | None = None
    min_severity: Severity = Severity.LOW

    def accepts(self, f: Finding) -> bool:
        return ((self.location_ids is None or f.location_id in self.location_ids)
                and (self.skus is None or f.sku in self.skus)
                and abs(f.delta) >= self.min_delta
                and (self.kinds is None or f.kind in self.kinds)
                and (self.statuses is None or f.status in self.statuses)
                and f.severity.rank >= self.min_severity.rank)


class DiscrepancyIndex:
    """The current discrepancies in Redis, with their transitions published on a stream."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._update = redis.register_script(UPDATE_LUA)

    async def update(self, updates: Sequence[CellUpdate], now: datetime | None = None) -> int:
        """Swap the evaluated slots of each cell for its findings; returns transitions."""
        if not updates:
            return 0
        stamp = _iso(now or datetime.now(UTC))
        async with self.redis.pipeline(transaction=False) as pipe:
            for u in updates:
                args: list[Any] = [FEED_MAXLEN, stamp, f"{u.location_id}|{u.sku}|",
                                   len(u.slots), *u.slots]
                for f in u.findings:
                    args += [f.slot, f.encode(), f.signature]
                await self._update(keys=[ITEMS_KEY, ORDER_KEY, FEED_KEY], args=args,
                                   client=pipe)
            results = await pipe.execute()
        return sum(int(r) for r in results)

    async def members(self) -> dict[str, set[tuple[str, str]]]:
        """Every indexed (location, slot) by SKU (proportional to the discrepancies, not the
        cells): what a reconciliation run must re-judge or resolve."""
        out: dict[str, set[tuple[str, str]]] = {}
        start = 0
        while True:
            batch = await self.redis.zrange(ORDER_KEY, start, start + 9999)
            for raw in batch:
                loc, sku, slot = raw.decode().split("|", 2)
                out.setdefault(sku, set()).add((loc, slot))
            if len(batch) < 10_000:
                return out
            start += len(batch)

    async def count(self) -> int:
        return int(await self.redis.zcard(ORDER_KEY))

    async def get(self, members: Sequence[str]) -> list[Finding | None]:
        if not members:
            return []
        fields: list[str] = []
        for m in members:
            fields += [m, m + "#t"]
        raw = await self.redis.hmget(ITEMS_KEY, fields)
        out: list[Finding | None] = []
        for n in range(0, len(raw), 2):
            out.append(Finding.decode(raw[n], raw[n + 1]) if raw[n] is not None else None)
        return out

    async def page(self, query: DiscrepancyFilter, first: int, after: str | None) -> Page:
        """Up to ``first`` matching discrepancies after cursor ``after``, by location, SKU."""
        found: list[Finding] = []
        cursors: list[str] = []
        matches = self._matching(query, decode_cursor(after) if after else None)
        async with contextlib.aclosing(matches):
            async for member, finding in matches:
                if len(found) == first:
                    return Page(found, cursors, cursors[-1] if cursors else None, True)
                found.append(finding)
                cursors.append(encode_cursor(member))
        return Page(found, cursors, cursors[-1] if cursors else None, False)

    async def total(self, query: DiscrepancyFilter) -> int:
        """How many current discrepancies match ``query`` (its filters and the caller's
        locations): what a listing with these arguments would page through."""
        if query == DiscrepancyFilter():
            return await self.count()
        total = 0
        async for _ in self._matching(query, None):
            total += 1
        return total

    async def _matching(self, query: DiscrepancyFilter, cursor: str | None
                        ) -> AsyncGenerator[tuple[str, Finding], None]:
        """Every matching discrepancy after member ``cursor``, in order, with its member."""
        if query.location_ids is not None:
            # Members are "location|sku|slot": one location's are in [loc| , loc} ).
            ranges = [(loc + "|", loc + "}") for loc in sorted(query.location_ids)]
        else:
            ranges = [("", "")]
        for low, high in ranges:
            if high and cursor is not None and cursor >= high:
                continue
            first_of_range = "[" + low if low else "-"
            lo = "(" + cursor if cursor is not None and cursor >= low else first_of_range
            hi = "(" + high if high else "+"
            while True:
                batch = [b.decode() for b in await self.redis.zrangebylex(
                    ORDER_KEY, lo, hi, start=0, num=500)]
                candidates = [m for m in batch if _member_matches(m, query)]
                for member, finding in zip(candidates, await self.get(candidates),
                                           strict=True):
                    if finding is not None and query.accepts(finding):
                        yield member, finding
                if len(batch) < 500:
                    break
                lo = "(" + batch[-1]


def _member_matches(member: str, query: DiscrepancyFilter) -> bool:
    loc, sku, slot = member.split("|", 2)
    if query.location_ids is not None and loc not in query.location_ids:
        return False
    if query.skus is not None and sku not in query.skus:
        return False
    return query.kinds is None or slot.split(":", 1)[0] in {k.value for k in query.kinds}


# -- live transitions ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DiscrepancyEvent:
    """A discrepancy appeared, changed (status, severity or delta) or resolved."""

    cursor: str
    transition: Transition
    finding: Finding
    at: datetime

    def key(self) -> str:
        return self.finding.key


def decode_event(entry_id: str, fields: dict[bytes, bytes]) -> DiscrepancyEvent:
    since = fields.get(b"s")
    finding = Finding.decode(fields[b"d"], since)
    transition = Transition(fields[b"t"].decode())
    at = _time(fields[b"r"].decode()) if b"r" in fields else finding.detected_at
    return DiscrepancyEvent(entry_id, transition, finding, at)


@dataclass(slots=True, eq=False)
class _Listener:
    accept: Callable[[DiscrepancyEvent], bool]
    limit: int
    queue: OrderedDict[str, DiscrepancyEvent] = field(default_factory=OrderedDict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    seq: int = 0

    def offer(self, event: DiscrepancyEvent) -> None:
        if not self.accept(event):
            return
        if len(self.queue) >= self.limit:
            # Over the buffer: keep only the latest transition per discrepancy.
            self.queue.pop(event.key(), None)
            if len(self.queue) >= self.limit:
                self.queue.popitem(last=False)
            self.queue[event.key()] = event
        else:
            self.seq += 1
            self.queue[f"{event.key()}#{self.seq}"] = event
        self.wake.set()

    def take(self) -> list[DiscrepancyEvent]:
        out = list(self.queue.values())
        self.queue.clear()
        self.wake.clear()
        return out


class DiscrepancyFeed:
    """This replica's tail of ``rg:{disc}:feed``, fanned out to its subscribers."""

    def __init__(self, redis: Any, buffer_limit: int = 1000) -> None:
        self.redis = redis
        self.buffer_limit = buffer_limit
        self.listeners: set[_Listener] = set()
        self._last_id = "$"
        self._listening = asyncio.Event()
        self.running = False

    async def run(self) -> None:
        backoff = Backoff("discrepancy feed")
        while True:
            try:
                if not self.listeners:
                    self.running = True
                    await self._listening.wait()
                    continue
                self.running = True
                result = await self.redis.xread({FEED_KEY: self._last_id}, count=500,
                                                block=1000)
                backoff.succeeded()
                for _stream, entries in result or []:
                    for entry_id, fields in entries:
                        self._last_id = entry_id.decode()
                        event = decode_event(self._last_id, fields)
                        for listener in list(self.listeners):
                            listener.offer(event)
            except asyncio.CancelledError:
                self.running = False
                raise
            except (RedisError, OSError) as exc:
                self.running = False
                await asyncio.sleep(backoff.failed(exc))

    async def _tail_id(self) -> str:
        last = await self.redis.xrevrange(FEED_KEY, count=1)
        return last[0][0].decode() if last else "0-0"

    async def subscribe(self, accept: Callable[[DiscrepancyEvent], bool]
                        ) -> AsyncIterator[DiscrepancyEvent]:
        listener = _Listener(accept, self.buffer_limit)
        if not self.listeners:
            self._last_id = await self._tail_id()
        self.listeners.add(listener)
        self._listening.set()
        try:
            while not listener.closed:
                await listener.wake.wait()
                for event in listener.take():
                    yield event
        finally:
            self.listeners.discard(listener)
            if not self.listeners:
                self._listening.clear()

    def close_all(self) -> None:
        for listener in self.listeners:
            listener.closed = True
            listener.wake.set()
