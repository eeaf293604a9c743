"""Reservations in Redis: holds on stock, checked and recorded atomically.

A reservation holds units of one SKU at one location for a while. The one rule that matters
is checked and recorded in one Lua script, against the state of that instant::

    available to sell = system of record's available - safety stock - units held

The system of record's ``available`` is read from the event cache's views hash of the SKU
(kept current by webhooks); the holds live next to it under the same hash tag (see
:mod:`resolvers.store.keys`), so the script is one slot, Cluster-safe.

Lifecycle: ``ACTIVE`` (holding) -> ``RELEASED`` (by the client) or ``EXPIRED`` (its
``expiresAt`` passed) or ``COMMITTED`` (the order was placed). A committed reservation keeps
holding its units until the system of record shows the commitment (its ``committed`` quantity
reached what it was at the commit plus every unit committed before and not yet seen, plus
this one; or a movement names the reservation's order reference or reference), or until its
expiry, which a commit extends to at least ``commit_hold_seconds`` after it. So the units are
never counted twice (held and committed in the system of record) and never freed early.

Idempotency: a key (per caller) is claimed once, with a digest of the request and the cell
it is bound to (for ``channel: ONLINE`` the location chosen on first use). The reservation id
is derived from the caller and the key, so every retry, on any replica, reaches the same
record; the cell script creates it only once.

Expiry needs no timer of any process: every reservation is in the sorted set
``rg:{rsv}:due`` by when a sweeper must look at it next; every replica sweeps it
(:meth:`ReservationStore.sweep`), and each step is idempotent, so two sweepers or a crash in
between change nothing twice. A change of a hold is published through the port given to the
store (the gateway's one event path); a sweeper publishes again what a stopped replica might
not have (the event log deduplicates by reservation and change number).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson

from resolvers.errors import RetailgraphError
from resolvers.store.keys import (
    RESERVATIONS_DUE,
    RESERVATIONS_INDEX,
    claim_key,
    holds_key,
    reservations_key,
    views_key,
)
from resolvers.types import Quantities

# The source of the stock changes a reservation's hold makes (gateway/events/holds.py).
HOLDS_SOURCE = "retailgraph"
# Quantities of a cell, in this order, as the scripts return them from the views hash.
CELL_FIELDS = ("on_hand", "available", "committed", "incoming", "quality_control", "damaged")

# Shared by the scripts below: the time in ms, a record's (de)coding, and a cell's fields.
_LUA_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function cell(views, loc)
  return redis.call('HMGET', views, loc .. '/on_hand', loc .. '/available',
                    loc .. '/committed', loc .. '/incoming', loc .. '/quality_control',
                    loc .. '/damaged', loc .. '/_as_of')
end
local function held(holds, loc)
  return redis.call('HGET', holds, 'h:' .. loc) or '0'
end
local function drop_committed(holds, loc, id, qty)
  redis.call('HINCRBY', holds, 'p:' .. loc, -qty)
  local kept = {}
  for other in string.gmatch(redis.call('HGET', holds, 'c:' .. loc) or '', '%S+') do
    if other ~= id then kept[#kept + 1] = other end
  end
  if #kept > 0 then redis.call('HSET', holds, 'c:' .. loc, table.concat(kept, ' '))
  else redis.call('HDEL', holds, 'c:' .. loc, 'p:' .. loc) end
end
local function unhold(holds, loc, qty)
  if redis.call('HINCRBY', holds, 'h:' .. loc, -qty) <= 0 then
    redis.call('HDEL', holds, 'h:' .. loc)
  end
end
"""

# KEYS: claim, due, index. ARGV: claim value, ttl seconds, id, grace ms.
# The claim stands for the key's whole life; the reservation's due and index entries are
# made with it (NX: never moved), so a record created later is always swept.
CLAIM_LUA = _LUA_COMMON + """
local now = now_ms()
redis.call('ZADD', KEYS[2], 'NX', now + tonumber(ARGV[4]), ARGV[3])
redis.call('ZADD', KEYS[3], 'NX', now, ARGV[3])
local seen = redis.call('GET', KEYS[1])
if seen then return {0, seen} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {1, ARGV[1]}
"""

# KEYS: records, holds, the system of record's views hash.
# ARGV: id, loc, qty, ttl ms, safety stock, reference, fingerprint, fallback available ('':
# none), the views' generation the fallback was read at.
# Returns {1, record, held, cell} (it existed), {2, record, held, cell} (created),
# {0, available to sell} (not enough), {-2, generation} (the cache does not hold the cell).
RESERVE_LUA = _LUA_COMMON + """
local id, loc = ARGV[1], ARGV[2]
local raw = redis.call('HGET', KEYS[1], id)
if raw then return {1, raw, held(KEYS[2], loc), cell(KEYS[3], loc)} end
local available = redis.call('HGET', KEYS[3], loc .. '/available')
local gen = redis.call('HGET', KEYS[3], '_gen') or '0'
if not available then
  if ARGV[8] ~= '' and ARGV[9] == gen then available = ARGV[8] else return {-2, gen} end
end
local qty = tonumber(ARGV[3])
local ats = tonumber(available) - tonumber(ARGV[5]) - tonumber(held(KEYS[2], loc))
if ats < qty then return {0, tostring(math.max(ats, 0))} end
local now = now_ms()
local record = cjson.encode({loc = loc, qty = qty, status = 'ACTIVE', created = now,
                             expires = now + tonumber(ARGV[4]), ref = ARGV[6], fp = ARGV[7],
                             seq = 1, holding = true})
redis.call('HSET', KEYS[1], id, record)
local h = redis.call('HINCRBY', KEYS[2], 'h:' .. loc, qty)
return {2, record, tostring(h), cell(KEYS[3], loc)}
"""

# KEYS: records, holds, views. ARGV: id, action ('release' | 'commit' | 'tick'), order
# reference, commit hold ms, retention ms.
# Returns {-1} (no such reservation), or {code, record, held, cell, next due ms, changed}
# with code 2 = done, 1 = nothing to do (an idempotent repeat), 0 = refused (already final);
# changed = 1 when the record changed (a hold past its expiry ends whatever the action).
CHANGE_LUA = _LUA_COMMON + """
local id, action = ARGV[1], ARGV[2]
local raw = redis.call('HGET', KEYS[1], id)
if not raw then return {-1} end
local r = cjson.decode(raw)
local loc = r.loc
local now = now_ms()
local retention = tonumber(ARGV[5])
local code, changed = 1, 0
local function save()
  r.seq = r.seq + 1
  raw = cjson.encode(r)
  redis.call('HSET', KEYS[1], id, raw)
  code, changed = 2, 1
end
-- Whatever the action: a hold past its expiry ends first.
if r.holding and r.expires <= now then
  r.holding = false
  r.ended = now
  unhold(KEYS[2], loc, r.qty)
  if r.status == 'ACTIVE' then r.status = 'EXPIRED'
  else r.ended_by = 'EXPIRY'; drop_committed(KEYS[2], loc, id, r.qty) end
  save()
  if action ~= 'tick' and r.status == 'EXPIRED' then
    return {0, raw, held(KEYS[2], loc), cell(KEYS[3], loc), r.ended + retention, 1}
  end
end
if action == 'release' then
  if r.status == 'RELEASED' then code = 1
  elseif r.status ~= 'ACTIVE' then code = 0
  else
    r.status = 'RELEASED'; r.holding = false; r.ended = now
    unhold(KEYS[2], loc, r.qty)
    save()
  end
elseif action == 'commit' then
  local oref = ARGV[3]
  if r.status == 'COMMITTED' then
    if oref ~= '' and oref ~= (r.oref or '') then code = 0 else code = 1 end
  elseif r.status ~= 'ACTIVE' then code = 0
  else
    local committed = tonumber(redis.call('HGET', KEYS[3], loc .. '/committed') or '0')
    local pending = tonumber(redis.call('HGET', KEYS[2], 'p:' .. loc) or '0')
    r.status = 'COMMITTED'; r.oref = oref; r.committed_at = now
    r.target = committed + pending + r.qty
    r.expires = math.max(r.expires, now + tonumber(ARGV[4]))
    redis.call('HINCRBY', KEYS[2], 'p:' .. loc, r.qty)
    local ids = redis.call('HGET', KEYS[2], 'c:' .. loc)
    redis.call('HSET', KEYS[2], 'c:' .. loc, ids and (ids .. ' ' .. id) or id)
    save()
  end
elseif action == 'tick' then
  if not r.holding and (r.ended or 0) + retention <= now then
    redis.call('HDEL', KEYS[1], id)
    return {-1}
  end
end
local next_due = r.holding and r.expires or ((r.ended or now) + retention)
return {code, raw, held(KEYS[2], loc), cell(KEYS[3], loc), next_due, changed}
"""

# KEYS: records, holds. ARGV: loc, the system of record's committed now ('' unknown), then
# the ids of the documents an event's movement carries.
# Ends the holds of committed reservations at the cell that the system of record now shows.
# Returns {units held at the cell, {records changed...}}.
OBSERVE_LUA = _LUA_COMMON + """
local loc = ARGV[1]
local ids = redis.call('HGET', KEYS[2], 'c:' .. loc)
if not ids then return {held(KEYS[2], loc), {}} end
local committed = tonumber(ARGV[2])
local docs = {}
for i = 3, #ARGV do docs[ARGV[i]] = true end
local now = now_ms()
local changed = {}
for id in string.gmatch(ids, '%S+') do
  local raw = redis.call('HGET', KEYS[1], id)
  local r = raw and cjson.decode(raw)
  if not r or not r.holding then
    drop_committed(KEYS[2], loc, id, 0)
  elseif (committed and committed >= r.target) or ((r.oref or '') ~= '' and docs[r.oref])
      or ((r.ref or '') ~= '' and docs[r.ref]) then
    r.holding = false; r.ended = now; r.ended_by = 'SYSTEM_OF_RECORD'; r.seq = r.seq + 1
    raw = cjson.encode(r)
    redis.call('HSET', KEYS[1], id, raw)
    unhold(KEYS[2], loc, r.qty)
    drop_committed(KEYS[2], loc, id, r.qty)
    changed[#changed + 1] = id
    changed[#changed + 1] = raw
  end
end
return {held(KEYS[2], loc), changed}
"""

# KEYS: due, index. ARGV: id, the score the sweeper saw, the next score ('' = forget it).
# Only if nobody moved the entry since (a reservation made or changed meanwhile moves it).
RESCHEDULE_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"""


class ReservationStatus(StrEnum):
    ACTIVE = "ACTIVE"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


class HoldEnd(StrEnum):
    """How a committed reservation's hold ended."""

    SYSTEM_OF_RECORD = "SYSTEM_OF_RECORD"  # the system of record shows the commitment
    EXPIRY = "EXPIRY"


def _ms(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


@dataclass(frozen=True, slots=True)
class Reservation:
    """One reservation as the store holds it."""

    id: str
    sku: str
    location_id: str
    quantity: int
    status: ReservationStatus
    created_at: datetime
    expires_at: datetime
    reference: str | None
    order_reference: str | None
    holding: bool  # its units still count as held at the location
    ended_by: HoldEnd | None  # COMMITTED: how its hold ended, once it has
    seq: int  # changes so far: (id, seq) names each change once
    fingerprint: str

    @classmethod
    def decode(cls, reservation_id: str, sku: str, raw: bytes | str) -> Reservation:
        r = orjson.loads(raw)
        return cls(id=reservation_id, sku=sku, location_id=r["loc"], quantity=int(r["qty"]),
                   status=ReservationStatus(r["status"]), created_at=_ms(r["created"]),
                   expires_at=_ms(r["expires"]), reference=r.get("ref") or None,
                   order_reference=r.get("oref") or None, holding=bool(r["holding"]),
                   ended_by=HoldEnd(r["ended_by"]) if r.get("ended_by") else None,
                   seq=int(r["seq"]), fingerprint=str(r.get("fp", "")))


@dataclass(frozen=True, slots=True)
class HoldChange:
    """A reservation after a change, the units now held at its cell, and the system of
    record's cell as the cache holds it (None when it holds none of it)."""

    reservation: Reservation
    held: int
    quantities: Quantities | None
    as_of: datetime | None


class HoldPublisher(Protocol):
    """Publishes a hold change as a stock change (the gateway's event path)."""

    async def __call__(self, change: HoldChange) -> None: ...


def reservation_id(scope: str, idempotency_key: str, sku: str, location_id: str) -> str:
    """The id of the reservation a caller's idempotency key stands for: the cell it is
    bound to (so every operation finds its record without a lookup) and a digest of the
    caller and key."""
    digest = hashlib.sha256(f"{scope}\0{idempotency_key}".encode()).hexdigest()[:24]
    packed = orjson.dumps([sku, location_id, digest])
    return base64.urlsafe_b64encode(packed).decode().rstrip("=")


def parse_reservation_id(value: str) -> tuple[str, str] | None:
    """The (sku, location) of a reservation id; None if it is none of ours."""
    if len(value) > 2048:
        return None
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError):
        return None
    if (not isinstance(parts, list) or len(parts) != 3
            or not all(isinstance(x, str) and x for x in parts)
            or not _digest_ok(parts[2])):
        return None
    return parts[0], parts[1]


def _digest_ok(digest: str) -> bool:
    return len(digest) == 24 and all(c in "0123456789abcdef" for c in digest)


def claim_digest(scope: str, idempotency_key: str) -> str:
    return hashlib.sha256(f"claim\0{scope}\0{idempotency_key}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """What an idempotency key is bound to: the request's fingerprint and its cell."""

    new: bool
    fingerprint: str
    sku: str
    location_id: str


@dataclass(frozen=True, slots=True)
class Reserved:
    """A reserve attempt's outcome: the reservation (created now or before), or how many
    units were available to sell when it was refused."""

    reservation: Reservation | None
    created: bool
    available_to_sell: int | None = None


@dataclass(frozen=True, slots=True)
class Changed:
    """A release or commit: the reservation after it (None: no such reservation), and
    whether it was refused because the reservation had already reached another end."""

    reservation: Reservation | None
    refused: bool = False


class CellMissing(RetailgraphError):
    """The event cache holds no ``available`` for the cell: read it from the backend and
    try again with it (``generation``: the views entry's generation before the read).
    Caught by the reservation service, never shown to a client."""

    code = "CELL_MISSING"

    def __init__(self, generation: str) -> None:
        super().__init__(generation)
        self.generation = generation


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cell(fields: Sequence[Any]) -> tuple[Quantities | None, datetime | None]:
    values = [None if v is None else int(v) for v in fields[:len(CELL_FIELDS)]]
    as_of = fields[len(CELL_FIELDS)]
    if all(v is None for v in values):
        return None, None
    return (Quantities(**dict(zip(CELL_FIELDS, values, strict=True))),
            datetime.fromisoformat(_text(as_of)) if as_of is not None else None)


class HoldsStore:
    """The units held at each cell, which needs nothing but Redis: read them
    (:class:`resolvers.abc.HeldUnits`, the graph's loaders) and end the committed holds a
    system of record now shows (the applier's side, ``gateway/events/holds.py``). Built
    before the graph and the applier, which the reservations' own store comes after."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._observe = redis.register_script(OBSERVE_LUA)

    async def held(self, skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """Units held per location, for each SKU."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sku in skus:
                pipe.hgetall(holds_key(sku))
            rows: list[dict[bytes, bytes]] = await pipe.execute()
        out: dict[str, dict[str, int]] = {}
        for sku, row in zip(skus, rows, strict=True):
            out[sku] = {_text(k)[2:]: int(v) for k, v in row.items()
                        if _text(k).startswith("h:") and int(v) > 0}
        return out

    async def observe(self, sku: str, location_id: str, committed: int | None,
                      documents: Sequence[str] = ()) -> tuple[int, list[Reservation]]:
        """After the system of record's cell changed: end the holds of committed
        reservations it now shows; the units then held at the cell, and the reservations
        whose hold ended."""
        held, changed = await self._observe(
            keys=[reservations_key(sku), holds_key(sku)],
            args=[location_id, "" if committed is None else committed, *documents])
        ended = [Reservation.decode(_text(changed[i]), sku, changed[i + 1])
                 for i in range(0, len(changed), 2)]
        return int(held), ended


class ReservationStore:
    """The reservations' Redis part: claims, the cell scripts, the sweep and listing.

    ``record_source(location_id)`` names the backend that is the system of record for stock
    at a location (whose views hash holds the cell's ``available``); ``publish`` is the port
    every hold change goes out through.
    """

    def __init__(self, redis: Any, record_source: Callable[[str], str | None],
                 publish: HoldPublisher | None = None, *, units: HoldsStore | None = None,
                 retention_seconds: int = 7 * 86_400, commit_hold_seconds: int = 3600,
                 grace_ms: int = 5000) -> None:
        self.redis = redis
        self.record_source = record_source
        self.publish = publish
        self.retention_ms = retention_seconds * 1000
        self.commit_hold_ms = commit_hold_seconds * 1000
        self.grace_ms = grace_ms
        self._claim = redis.register_script(CLAIM_LUA)
        self._reserve = redis.register_script(RESERVE_LUA)
        self._change = redis.register_script(CHANGE_LUA)
        self._reschedule = redis.register_script(RESCHEDULE_LUA)
        self._units = units or HoldsStore(redis)

    def _views(self, sku: str, location_id: str) -> str:
        source = self.record_source(location_id)
        # No system of record known: a views hash nothing writes (the cell reads as absent).
        return views_key(sku, source or "_none")

    # -- reserving -----------------------------------------------------------------------------

    async def claim(self, scope: str, idempotency_key: str, fingerprint: str, sku: str,
                    location_id: str) -> Claim:
        """Bind ``idempotency_key`` (of caller ``scope``) to this request and cell, unless
        it is bound already: then what it is bound to."""
        value = orjson.dumps([fingerprint, sku, location_id])
        rid = reservation_id(scope, idempotency_key, sku, location_id)
        new, seen = await self._claim(
            keys=[claim_key(claim_digest(scope, idempotency_key)), RESERVATIONS_DUE,
                  RESERVATIONS_INDEX],
            args=[value, self.retention_ms // 1000, rid, self.grace_ms])
        fp, bound_sku, bound_location = orjson.loads(seen)
        if not new and (bound_sku, bound_location) != (sku, location_id):
            # The due and index entries were made for the cell of this attempt; those of
            # the bound cell were made when the key was first claimed.
            await self.redis.zrem(RESERVATIONS_DUE, rid)
            await self.redis.zrem(RESERVATIONS_INDEX, rid)
        return Claim(bool(new), str(fp), str(bound_sku), str(bound_location))

    async def reserve(self, reservation_id: str, sku: str, location_id: str, quantity: int,
                      ttl_ms: int, safety_stock: int, reference: str | None, fingerprint: str,
                      fallback: tuple[int, str] | None = None) -> Reserved:
        """Hold ``quantity`` units if available to sell covers them now (or return the
        reservation this id already names). :class:`CellMissing` if the cache holds no
        ``available`` for the cell: call again with ``fallback`` = (available read from the
        backend, the generation CellMissing gave)."""
        result = await self._reserve(
            keys=[reservations_key(sku), holds_key(sku), self._views(sku, location_id)],
            args=[reservation_id, location_id, quantity, ttl_ms, safety_stock, reference or "",
                  fingerprint, "" if fallback is None else fallback[0],
                  "" if fallback is None else fallback[1]])
        code = int(result[0])
        if code == -2:
            raise CellMissing(_text(result[1]))
        if code == 0:
            return Reserved(None, False, int(result[1]))
        reservation = Reservation.decode(reservation_id, sku, result[1])
        if code == 2:
            await self._published(reservation, result[2], result[3])
            # Published: the next look is at its expiry. (Should this process stop before
            # here, the entry the claim made brings a sweeper after the grace period.)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(RESERVATIONS_DUE, {
                    reservation_id: round(reservation.expires_at.timestamp() * 1000)})
                pipe.zadd(RESERVATIONS_INDEX, {
                    reservation_id: round(reservation.created_at.timestamp() * 1000)})
                await pipe.execute()
        return Reserved(reservation, code == 2)

    async def _now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- changing ------------------------------------------------------------------------------

    async def release(self, reservation_id: str) -> Changed:
        return await self._act(reservation_id, "release", "")

    async def commit(self, reservation_id: str, order_reference: str | None) -> Changed:
        return await self._act(reservation_id, "commit", order_reference or "")

    async def get(self, reservation_id: str) -> Reservation | None:
        cell = parse_reservation_id(reservation_id)
        if cell is None:
            return None
        raw = await self.redis.hget(reservations_key(cell[0]), reservation_id)
        return None if raw is None else Reservation.decode(reservation_id, cell[0], raw)

    async def _act(self, reservation_id: str, action: str, order_reference: str) -> Changed:
        cell = parse_reservation_id(reservation_id)
        if cell is None:
            return Changed(None)
        sku, location_id = cell
        result = await self._change(
            keys=[reservations_key(sku), holds_key(sku), self._views(sku, location_id)],
            args=[reservation_id, action, order_reference, self.commit_hold_ms,
                  self.retention_ms])
        code = int(result[0])
        if code == -1:
            return Changed(None)
        reservation = Reservation.decode(reservation_id, sku, result[1])
        if int(result[5]):
            # A sweep checks it was published (a few seconds of this process' clock off
            # only move that check).
            await self.redis.zadd(RESERVATIONS_DUE, {
                reservation_id: round(time.time() * 1000) + self.grace_ms}, lt=True)
            await self._published(reservation, result[2], result[3])
        return Changed(reservation, refused=code == 0)

    async def _published(self, reservation: Reservation, held: Any,
                         cell: Sequence[Any]) -> None:
        if self.publish is None:
            return
        quantities, as_of = _cell(cell)
        await self.publish(HoldChange(reservation, int(held), quantities, as_of))

    # -- the system of record's side -----------------------------------------------------------

    async def observe(self, sku: str, location_id: str, committed: int | None,
                      documents: Sequence[str] = ()) -> tuple[int, list[Reservation]]:
        """See :meth:`HoldsStore.observe`."""
        return await self._units.observe(sku, location_id, committed, documents)

    async def held(self, skus: Sequence[str]) -> dict[str, dict[str, int]]:
        """Units held per location, for each SKU."""
        return await self._units.held(skus)

    # -- the sweep -----------------------------------------------------------------------------

    async def sweep(self, limit: int = 500) -> int:
        """Look at every reservation that is due (a publish check, an expiry, the end of its
        retention); how many were looked at."""
        now = await self._now_ms()
        due = await self.redis.zrangebyscore(RESERVATIONS_DUE, "-inf", now, start=0,
                                             num=limit, withscores=True)
        for member, score in due:
            await self._tick(_text(member), int(score))
        return len(due)

    async def _tick(self, reservation_id: str, score: int) -> None:
        cell = parse_reservation_id(reservation_id)
        next_due: int | None = None
        if cell is not None:
            sku, location_id = cell
            result = await self._change(
                keys=[reservations_key(sku), holds_key(sku), self._views(sku, location_id)],
                args=[reservation_id, "tick", "", self.commit_hold_ms, self.retention_ms])
            if int(result[0]) != -1:
                reservation = Reservation.decode(reservation_id, sku, result[1])
                # Whatever a replica stopped before publishing is published now (the event
                # log drops it if it was).
                await self._published(reservation, result[2], result[3])
                next_due = int(result[4])
        await self._reschedule(keys=[RESERVATIONS_DUE, RESERVATIONS_INDEX],
                               args=[reservation_id, score,
                                     "" if next_due is None else next_due])

    # -- listing -------------------------------------------------------------------------------

    async def page(self, accept: Callable[[Reservation], bool], after: tuple[int, str] | None,
                   first: int, chunk: int = 500) -> tuple[list[Reservation], bool]:
        """Up to ``first`` reservations ``accept`` takes, oldest first, after the position
        (created ms, id) ``after``; and whether more follow."""
        out: list[Reservation] = []
        low: str = "-inf" if after is None else str(after[0])
        skip_to = after
        while True:
            members = await self.redis.zrangebyscore(RESERVATIONS_INDEX, low, "+inf", start=0,
                                                     num=chunk, withscores=True)
            batch = [(_text(m), int(s)) for m, s in members]
            batch = [(m, s) for m, s in batch if skip_to is None or (s, m) > skip_to]
            batch.sort(key=lambda x: (x[1], x[0]))
            records = await self._records([m for m, _ in batch])
            for (member, score), record in zip(batch, records, strict=True):
                skip_to = (score, member)
                if record is not None and accept(record):
                    if len(out) == first:
                        return out, True
                    out.append(record)
            if len(members) < chunk:
                return out, False
            low = str(int(members[-1][1]))

    async def _records(self, ids: Sequence[str]) -> list[Reservation | None]:
        cells = [parse_reservation_id(x) for x in ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid, cell in zip(ids, cells, strict=True):
                pipe.hget(reservations_key(cell[0] if cell else "_"), rid)
            raws = await pipe.execute()
        return [None if raw is None or cell is None
                else Reservation.decode(rid, cell[0], raw)
                for rid, cell, raw in zip(ids, cells, raws, strict=True)]

