"""Where discrepancies are kept: in Redis (``{disc}`` hash tag): ``rg:{disc}:items`` (JSON per
cell and kind), ``rg:{disc}:order`` (lexicographic index ``location|sku|kind``) and
``rg:{disc}:feed``, a stream of transitions (APPEARED / UPDATED / RESOLVED) that every replica
tails for ``discrepancyDetected``. One Lua script per cell swaps the cell's findings and
publishes the transitions atomically, so replicas and reconciliation runs never double-report.

What a discrepancy is and how a cell is judged: ``resolvers/discrepancies.py`` (pure).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.events.envelope import Envelope, MovementType
from gateway.events.fanout import KeyedFeed
from resolvers.discrepancies import (
    CellUpdate,
    DiscrepancyEvent,
    DiscrepancyFilter,
    Finding,
    History,
    HistoryEntry,
    Page,
    decode_event,
    derived_on_hand,
    iso_time,
)
from resolvers.store.keys import DISCREPANCY_FEED_KEY as FEED_KEY
from resolvers.store.keys import DISCREPANCY_ITEMS_KEY as ITEMS_KEY
from resolvers.store.keys import DISCREPANCY_ORDER_KEY as ORDER_KEY
from resolvers.store.keys import history_key
from resolvers.types import StockView

log = logging.getLogger("retailgraph.discrepancies")

FEED_MAXLEN = 100_000
HISTORY_ENTRIES = 32
HISTORY_TTL = 3 * 24 * 3600
UPDATES_PER_PIPELINE = 250  # cells judged per Redis pipeline of index updates


# -- movement history ------------------------------------------------------------------------

# What a movement does to on-hand, where the movement alone says (COUNT, ADJUSTMENT and
# REPAIR set it absolutely: the value before is then unknown).
ON_HAND_EFFECT: dict[MovementType, int] = {
    MovementType.RECEIPT: 1, MovementType.TRANSFER_IN: 1, MovementType.RETURN: 1,
    MovementType.TRANSFER_OUT: -1, MovementType.SALE: -1, MovementType.PUTAWAY: 0,
    MovementType.ALLOCATION: 0}


class MovementHistory:
    """Per cell and source, the last on-hand changes: ``rg:{s:<sku>}:hist:<source>:<loc>``
    (a sorted set by time). Written as events are applied; read to explain snapshot gaps."""

    def __init__(self, redis: Any, entries: int = HISTORY_ENTRIES) -> None:
        self.redis = redis
        self.entries = entries

    key = staticmethod(history_key)

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


# -- the index in Redis ----------------------------------------------------------------------

# KEYS: items hash, order zset, feed stream
# ARGV: feed maxlen, now, cell prefix "loc|sku|", n, n evaluated slots, then (slot, json, sig)*
UPDATE_LUA = """
local function judged(encoded) return (string.gsub(encoded, ',"at":"[^"]*"}$', '}')) end
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
    elseif old_sig ~= new[2] or judged(redis.call('HGET', KEYS[1], f) or '') ~= judged(new[1])
        then
      -- (the same finding judged again, only later, is not rewritten)
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


class DiscrepancyIndex:
    """The current discrepancies in Redis, with their transitions published on a stream."""

    def __init__(self, redis: Any,
                 observers: Sequence[Callable[[Sequence[CellUpdate]], Awaitable[None]]] = (),
                 ) -> None:
        self.redis = redis
        self._update = redis.register_script(UPDATE_LUA)
        # Told every judgement after it is indexed (sync pushes the truth over an
        # ONLINE_OVERSELL_RISK: gateway/sync/).
        self.observers = tuple(observers)

    async def update(self, updates: Sequence[CellUpdate], now: datetime | None = None) -> int:
        """Swap the evaluated slots of each cell for its findings; returns transitions."""
        if not updates:
            return 0
        stamp = iso_time(now or datetime.now(UTC))
        results: list[Any] = []
        # In pipelines of at most UPDATES_PER_PIPELINE cells: a run's thousand-cell chunk in
        # one pipeline missed the Redis write deadline on a loaded machine.
        for n in range(0, len(updates), UPDATES_PER_PIPELINE):
            async with self.redis.pipeline(transaction=False) as pipe:
                for u in updates[n:n + UPDATES_PER_PIPELINE]:
                    args: list[Any] = [FEED_MAXLEN, stamp, f"{u.location_id}|{u.sku}|",
                                       len(u.slots), *u.slots]
                    for f in u.findings:
                        args += [f.slot, f.encode(), f.signature]
                    await self._update(keys=[ITEMS_KEY, ORDER_KEY, FEED_KEY], args=args,
                                       client=pipe)
                results += await pipe.execute()
        for observer in self.observers:
            await observer(updates)
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


class DiscrepancyFeed(KeyedFeed[DiscrepancyEvent]):
    """This replica's tail of ``rg:{disc}:feed``, fanned out to its subscribers."""

    def __init__(self, redis: Any, buffer_limit: int = 1000) -> None:
        super().__init__(redis, FEED_KEY, decode_event, "discrepancy feed", buffer_limit)
