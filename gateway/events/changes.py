"""Live stock changes: a durable change stream, one reader per replica, bounded subscribers.

After the applier has written an event to the cache it publishes the resulting cell state
once (a Lua-guarded ``XADD`` to ``rg:{ev}:changes``). Every replica tails that stream, so a
webhook received by replica A reaches subscribers on replica B. Each change's stream id is
its cursor: ``after: <cursor>`` replays what a client missed (within the retention), then
continues live, with no gap and no duplicate. Filtering happens here, on the server.

A slow consumer cannot hold others back or grow memory without bound: each subscriber has a
bounded buffer; on overflow it switches to conflation and delivers only the latest change per
SKU x location (flagged ``conflated``), which is what a stock screen needs. One caller cannot
hold more than ``max_subscriptions_per_principal`` subscriptions on a replica
(:class:`SubscriptionQuota`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import logging
import re
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import orjson
from redis.exceptions import ResponseError

from gateway.events.envelope import Envelope, Movement, MovementType
from gateway.events.fanout import Route, StreamFanout, raise_if_cancelled
from gateway.http.limits import LimitExceeded
from resolvers.changes import MAX_FILTER_IDS, CellFilter, InvalidCursor
from resolvers.errors import BackendError, CursorExpired
from resolvers.store.keys import (
    CHANGES_KEY,
    INDEXED_KEY,
    LAST_KEY,
    PENDING_KEY,
    location_index_key,
    published_key,
    sku_index_key,
)
from resolvers.types import Quantities, StockView

log = logging.getLogger("retailgraph.subscriptions")

_ID_PART = re.compile(r"[0-9]{1,20}")
# Per change: its safety stock, its StockChange, each group's payload (schema/events.py).
MEMO_SIZE = 8192
T = TypeVar("T")
# The change stream's indexes: per SKU and per location, a stream with the same entry ids
# whose entries name their cell ("sku|location|source"), so a filtered history reads only
# the entries of the SKUs or locations it asks for, not the whole stream.


# Trimming is exact (MINID without ~) on the stream and on its indexes alike, so an index
# never lacks an entry the stream still holds, and the retention check on a cursor
# (ChangeFeed._start) holds for both. An index not written to for the retention plus an
# hour expires: what it listed has left the stream by then (or will with the next change).
PUBLISH_LUA = """
redis.call('ZREM', KEYS[4], ARGV[5])
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return false end
local prev = redis.call('HGET', KEYS[3], ARGV[3]) or ''
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
local now = redis.call('TIME')
local min_id = tostring((tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
                        - tonumber(ARGV[2]))
local id = redis.call('XADD', KEYS[2], 'MINID', min_id, '*', 'c', ARGV[4], 'p', prev)
for i = 5, 6 do
  redis.call('XADD', KEYS[i], 'MINID', min_id, id, 'k', ARGV[3])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]) + 3600000)
end
redis.call('SET', KEYS[7], id, 'NX')
return id
"""


class SubscriptionQuota:
    """Live subscriptions per caller on this replica (``max_subscriptions_per_principal``;
    0 = no limit), across all its sockets and streams and every subscription field. A
    caller is its API key or JWT subject, or its address when auth is off."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.held: Counter[str] = Counter()

    def check(self, owner: str) -> None:
        """:class:`~gateway.http.limits.LimitExceeded` if ``owner`` holds the maximum already."""
        if self.maximum and self.held[owner] >= self.maximum:
            raise LimitExceeded(
                f"Too many subscriptions: this caller already holds {self.maximum} live "
                "subscriptions on this gateway (limit max_subscriptions_per_principal); "
                "complete some first", "max_subscriptions_per_principal", self.maximum)

    @contextlib.contextmanager
    def hold(self, owner: str) -> Iterator[None]:
        """One of ``owner``'s subscriptions, for as long as the block runs."""
        self.check(owner)
        self.held[owner] += 1
        try:
            yield
        finally:
            self.held[owner] -= 1
            if self.held[owner] <= 0:
                del self.held[owner]


DELIVERY_SLOTS = 4
INTAKE_FIRST_SECONDS = 0.1
_slot: contextvars.ContextVar[asyncio.Semaphore | None] = contextvars.ContextVar(
    "retailgraph_delivery_slot", default=None)


class Deliveries:
    """How subscription events share this replica's event loop with webhook intake.

    Computing an event (its fields, its GraphQL execution) is CPU on the loop that also
    acknowledges webhooks, so intake goes first: no event starts while a webhook is being
    acknowledged (each waits at most ``INTAKE_FIRST_SECONDS``, so a steady stream of webhooks
    cannot starve subscribers: they fall behind and are conflated), and at most
    ``DELIVERY_SLOTS`` are computed at once. A slot is held from the change to its result,
    not while the result is sent (a slow socket must not hold one): the schema extension
    ``gateway.http.graphql.DeliverySlots`` calls :func:`delivered` for every streamed result,
    whatever the transport; otherwise it is given back when the next change is asked for.
    """

    def __init__(self, slots: int = DELIVERY_SLOTS) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.acknowledging = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.contextmanager
    def intake_first(self) -> Iterator[None]:
        """Around a webhook's acknowledgement: deliveries wait until it is done."""
        self.acknowledging += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.acknowledging -= 1
            if not self.acknowledging:
                self.idle.set()

    async def turn(self) -> None:
        """Wait until this task may compute an event; it holds a slot until delivered()."""
        delivered()
        await self.slots.acquire()
        _slot.set(self.slots)
        # Only the slots' holders wait for intake: no herd of waiters woken per webhook.
        if self.acknowledging:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), INTAKE_FIRST_SECONDS)


    @staticmethod
    def delivered() -> None:
        """The current task's event is computed (about to be sent): give its slot back."""
        delivered()


def delivered() -> None:
    """The current task's event is computed (about to be sent): give its slot back."""
    held = _slot.get()
    if held is not None:
        _slot.set(None)
        held.release()


@dataclass(frozen=True, slots=True)
class Change:
    """One published stock change: the cell's state after an applied event."""

    cursor: str
    sku: str
    location_id: str
    source: str
    occurred_at: datetime
    quantities: Quantities
    previous: Quantities | None
    movement: Movement | None
    event_id: str
    conflated: bool = False
    # Units held at the cell by reservations after the change, and before it (None: not
    # known).
    reserved: int | None = None
    previous_reserved: int | None = None

    def key(self) -> tuple[str, str]:
        return self.sku, self.location_id


def _encode(envelope: Envelope, quantities: Quantities) -> bytes:
    m = envelope.movement
    return orjson.dumps({
        "sku": envelope.sku, "loc": envelope.location_id, "src": envelope.source,
        "at": envelope.occurred_at.isoformat(), "id": envelope.id,
        "q": [getattr(quantities, f) for f in Quantities.__slots__],
        "r": envelope.extra.get("reserved"),
        "m": None if m is None else [m.type.value, m.quantity, m.biz_step, m.from_state,
                                     m.to_state, [list(d) for d in m.documents]]})


def _quantities(raw: list[int | None]) -> Quantities:
    return Quantities(*raw)


def infer_movement(prev: Quantities | None, new: Quantities) -> Movement | None:
    """What a count change most likely was, for sources whose webhooks carry only counts
    (Square sends states, not the adjustment behind them). Marked as inferred."""
    if prev is None:
        return None

    def delta(name: str) -> int:
        before, after = getattr(prev, name), getattr(new, name)
        return 0 if before is None or after is None else int(after) - int(before)

    available, committed, incoming = delta("available"), delta("committed"), delta("incoming")
    documents = (("inferred", "count delta"),)
    if incoming > 0 or (available > 0 and incoming < 0):
        return Movement(MovementType.TRANSFER_IN, max(incoming, available), documents=documents)
    if committed and available == -committed:
        return Movement(MovementType.ALLOCATION, committed, documents=documents)
    if available < 0:
        return Movement(MovementType.SALE, -available, documents=documents)
    if available > 0:
        return Movement(MovementType.RETURN, available, documents=documents)
    return None


def decode_change(cursor: str, fields: dict[bytes, bytes]) -> Change:
    d = orjson.loads(fields[b"c"])
    prev = fields.get(b"p") or b""
    m = d["m"]
    movement = None if m is None else Movement(
        type=MovementType(m[0]), quantity=m[1], biz_step=m[2], from_state=m[3], to_state=m[4],
        documents=tuple(tuple(x) for x in m[5]))
    quantities = _quantities(d["q"])
    before = orjson.loads(prev) if prev else None
    previous = _quantities(before["q"]) if before is not None else None
    return Change(cursor=cursor, sku=d["sku"], location_id=d["loc"], source=d["src"],
                  occurred_at=datetime.fromisoformat(d["at"]), quantities=quantities,
                  previous=previous, movement=movement or infer_movement(previous, quantities),
                  event_id=d["id"], reserved=d.get("r"),
                  previous_reserved=before.get("r") if before is not None else None)


def check_cursor(cursor: str) -> str:
    """A cursor is a stream id, ``<ms>-<seq>``, both 64-bit (and not the very last id,
    after which Redis cannot start a range): anything else would reach Redis and fail there
    (``after:`` on any transport, SSE ``Last-Event-ID``)."""
    ms, _, seq = cursor.partition("-")
    if not (_ID_PART.fullmatch(ms) and _ID_PART.fullmatch(seq)
            and int(ms) < 2**64 - 1 and int(seq) < 2**64 - 1):
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}: expected a cursor from a "
                            "StockChange")
    return cursor


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_tuple(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)


def _check_retention(info: dict[Any, Any], after: str) -> None:
    """:class:`CursorExpired` if entries after ``after`` may have been trimmed away.

    Trimming (the retention's XADD MINID) does not move max-deleted-entry-id (XDEL does):
    entries before the first one left were trimmed if fewer remain than were added, and a
    cursor before the first remaining entry may have missed some of them."""
    cursor = _id_tuple(after)
    deleted = _id_tuple(_text(info.get("max-deleted-entry-id") or b"0-0"))
    first = info.get("first-entry")
    oldest = _id_tuple(_text(first[0] if first else info.get("last-generated-id") or "0-0"))
    trimmed = int(info.get("entries-added", -1)) != int(info.get("length", 0))
    if cursor < deleted or (trimmed and cursor < oldest):
        raise CursorExpired(
            f"cursor {after} is older than the change retention; re-query the current "
            "state (stockLevel/product) and subscribe without a cursor")


def _raised(reply: Any) -> Any:
    """A pipeline reply, raising it if it is an error."""
    if isinstance(reply, Exception):
        raise reply
    return reply


@dataclass(frozen=True, slots=True)
class HistoryPage:
    changes: list[Change]
    end_cursor: str | None
    has_more: bool


class ChangePublisher:
    """Publishes an applied event's cell state exactly once per log entry."""

    def __init__(self, redis: Any, retention_seconds: int,
                 complete: Callable[[str, str], Awaitable[StockView | None]] | None = None,
                 is_record: Callable[[str, str], bool] | None = None) -> None:
        self.redis = redis
        # Only a system of record's cell is completed from its backend.
        self.is_record = is_record
        # Reads a cell the cache holds only partly (a webhook carried some states only).
        self.complete = complete
        self.retention_ms = retention_seconds * 1000
        self._publish = redis.register_script(PUBLISH_LUA)

    async def __call__(self, entry_id: str, envelope: Envelope, cell: StockView | None) -> None:
        """Publish once, and take the log entry off the pending set."""
        if envelope.sku is None or envelope.location_id is None or envelope.quantities is None:
            return
        if cell is None and self.complete is not None and self.is_record is not None \
                and self.is_record(envelope.location_id, envelope.source):
            try:
                cell = await self.complete(envelope.sku, envelope.location_id)
            except BackendError as exc:
                log.warning("publishing a partial change (%s)", exc)
            if cell is not None and cell.source != envelope.source:
                cell = None
        quantities = cell.quantities if cell is not None else envelope.quantities
        await self._publish(
            keys=[published_key(entry_id), CHANGES_KEY, LAST_KEY, PENDING_KEY,
                  sku_index_key(envelope.sku), location_index_key(envelope.location_id),
                  INDEXED_KEY],
            args=[self.retention_ms // 1000 + 3600, self.retention_ms,
                  # A reservation's change continues its cell's history (its previous
                  # state is the system of record's last change, and the other way round).
                  f"{envelope.sku}|{envelope.location_id}|"
                  f"{envelope.extra.get('record_source') or envelope.source}",
                  _encode(envelope, quantities), entry_id])


Filter = Callable[[Change], bool]


def change_routes(change: Change) -> tuple[Route, ...]:
    """What a change is about, for the fan-out's index: its SKU and its location."""
    return ("sku", change.sku), ("loc", change.location_id)


def filter_routes(accept: object) -> frozenset[Route] | None:
    """The routes a subscriber's filter can match (its SKUs, else its locations), for the
    fan-out's index; None (offered every change) for a filter that names neither."""
    if isinstance(accept, CellFilter):
        if accept.skus is not None:
            return frozenset(("sku", s) for s in accept.skus)
        if accept.locations is not None:
            return frozenset(("loc", x) for x in accept.locations)
    return None


@dataclass(slots=True, eq=False)
class Subscriber:
    accept: Filter
    limit: int
    queue: deque[Change] = field(default_factory=deque)
    conflated: OrderedDict[tuple[str, str], Change] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def offer(self, change: Change) -> None:
        if not self.accept(change):
            return
        if self.conflated is None and len(self.queue) < self.limit:
            self.queue.append(change)
        else:
            if self.conflated is None:
                self.conflated = OrderedDict((c.key(), c) for c in self.queue)
                self.queue.clear()
            self.conflated.pop(change.key(), None)
            self.conflated[change.key()] = change
        self.wake.set()

    def take(self) -> list[Change]:
        if self.conflated is not None:
            out = [_flag(c) for c in self.conflated.values()]
            self.conflated = None
        else:
            out = list(self.queue)
        self.queue.clear()
        self.wake.clear()
        return out


def _flag(change: Change) -> Change:
    return Change(change.cursor, change.sku, change.location_id, change.source,
                  change.occurred_at, change.quantities, change.previous, change.movement,
                  change.event_id, conflated=True, reserved=change.reserved,
                  previous_reserved=change.previous_reserved)


class ChangeFeed:
    """This replica's tail of the change stream, fanned out to its subscribers."""

    def __init__(self, redis: Any, buffer_limit: int = 1000, page: int = 500,
                 max_per_owner: int = 0) -> None:
        self.redis = redis
        self.buffer_limit = buffer_limit
        self.page = page
        # Every live subscription of this replica (stock and discrepancy ones) holds one.
        self.quota = SubscriptionQuota(max_per_owner)
        self.deliveries = Deliveries()
        # What every subscriber of one change would otherwise read again (its SKU's safety
        # stock): computed once per change, shared.
        self._memo: OrderedDict[tuple[str, Hashable], asyncio.Future[Any]] = OrderedDict()
        self.fanout: StreamFanout[Change, Subscriber] = StreamFanout(
            redis, CHANGES_KEY, decode_change, "change feed", page, routes=change_routes)

    @property
    def subscribers(self) -> set[Subscriber]:
        return self.fanout.listeners

    @property
    def running(self) -> bool:
        return self.fanout.running

    async def run(self) -> None:
        """Tail the stream while anyone listens, until cancelled, surviving Redis outages. A
        new subscriber without a cursor starts from the tail; one with a cursor catches up
        from history first."""
        await self.fanout.run()

    async def history(self, accept: Filter, after: str | None, first: int) -> HistoryPage:
        """Up to ``first`` matching changes after ``after``, oldest first.

        ``end_cursor`` is where to continue (or subscribe from) without a gap: the last
        change returned, or, when the history is exhausted, the last entry of the stream
        (``0-0`` for a log that holds nothing yet). A :class:`CellFilter` naming SKUs or
        locations reads their indexes: its cost follows what matches.
        """
        if isinstance(accept, CellFilter):
            if after is not None:
                check_cursor(after)
            page = await self._indexed(accept, after, first)
            if page is not None:
                return page
        return await self._scan(accept, await self._start(after), after, first)

    async def _indexed(self, accept: CellFilter, after: str | None, first: int
                       ) -> HistoryPage | None:
        """The history from the indexes of the SKUs or locations ``accept`` names (the one
        with fewer entries if it names both): merged in id order up to the stream's last
        entry (read first: everything up to it is in the indexes), kept where ``accept``
        matches, then those entries alone read from the stream. None (scan instead) when
        it names neither, or the stream holds entries older than the indexes. One round
        trip for the indexes' state (and their first entries when one family is named),
        one for the entries returned."""
        families = [[sku_index_key(s) for s in sorted(accept.skus)]
                    if accept.skus is not None else None,
                    [location_index_key(x) for x in sorted(accept.locations)]
                    if accept.locations is not None else None]
        candidates = [f for f in families if f is not None and len(f) <= MAX_FILTER_IDS]
        if not candidates:
            return None
        batch = first + 1
        start = f"({after}" if after is not None else "-"
        async with self.redis.pipeline(transaction=False) as pipe:
            if after is not None:
                pipe.xinfo_stream(CHANGES_KEY)
            pipe.xrevrange(CHANGES_KEY, count=1)
            pipe.xrange(CHANGES_KEY, count=1)
            pipe.get(INDEXED_KEY)
            for key in candidates[0] if len(candidates) == 1 else ():
                pipe.xrange(key, min=start, count=batch)
            for key in (k for f in candidates for k in f) if len(candidates) > 1 else ():
                pipe.xlen(key)
            replies = await pipe.execute(raise_on_error=False)
        if after is not None:
            info = replies.pop(0)
            if not isinstance(info, ResponseError):  # none: nothing was ever published
                _check_retention(_raised(info), after)
        last, oldest, since = (_raised(r) for r in replies[:3])
        rest = [_raised(r) for r in replies[3:]]
        if last and (since is None or (
                _id_tuple(_text(oldest[0][0])) < _id_tuple(_text(since))
                and (after is None or _id_tuple(after) < _id_tuple(_text(since))))):
            return None  # changes published before the indexes existed: scan
        if not last:
            return HistoryPage([], after or "0-0", False)
        tail = _text(last[0][0])
        if len(candidates) == 1:
            keys, batches = candidates[0], rest
        else:  # both named: read the index with fewer entries
            lengths = iter(rest)
            sizes = [sum(next(lengths) for _ in family) for family in candidates]
            keys = candidates[sizes.index(min(sizes))]
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.xrange(key, min=start, max=tail, count=batch)
                batches = await pipe.execute()
        wanted = await self._merge(accept, keys, batches, batch, tail,
                                   None if after is not None else _text(oldest[0][0]))
        out: list[Change] = []
        if wanted:
            async with self.redis.pipeline(transaction=False) as pipe:
                for wanted_id in wanted[:first]:
                    pipe.xrange(CHANGES_KEY, min=wanted_id, max=wanted_id)
                found = await pipe.execute()
            # An entry trimmed since the index was read has left the history.
            out = [decode_change(_text(e[0][0]), e[0][1]) for e in found if e]
        more = len(wanted) > first
        if more:
            end = wanted[first - 1]
        elif after is None or _id_tuple(tail) > _id_tuple(after):
            end = tail
        else:
            end = after
        return HistoryPage(out, end, more)

    async def _merge(self, accept: CellFilter, keys: list[str],
                     batches: list[list[tuple[bytes, dict[bytes, bytes]]]], batch: int,
                     tail: str, floor: str | None) -> list[str]:
        """Ids of up to ``batch`` matching entries of the index streams ``keys`` (whose first
        entries are ``batches``), in id order, none past ``tail`` nor before ``floor`` (an
        index can still list entries trimmed from the stream until it is next written)."""
        last, low = _id_tuple(tail), _id_tuple(floor) if floor else (0, 0)
        buffers = [deque(entries) for entries in batches]
        full = [len(entries) == batch for entries in batches]
        heads = [(_id_tuple(_text(b[0][0])), n) for n, b in enumerate(buffers) if b]
        heapq.heapify(heads)
        wanted: list[str] = []
        while heads:
            at, n = heapq.heappop(heads)
            entry_id, fields = buffers[n].popleft()
            if at > last:  # published after the history was asked for: not in this page
                buffers[n].clear()
                continue
            sku, location_id, source = _text(fields[b"k"]).rsplit("|", 2)
            if at >= low and accept.cell(sku, location_id, source):
                wanted.append(_text(entry_id))
                if len(wanted) == batch:
                    break
            if not buffers[n] and full[n]:
                refill = await self.redis.xrange(keys[n], min=f"({_text(entry_id)}",
                                                 count=batch)
                buffers[n].extend(refill)
                full[n] = len(refill) == batch
            if buffers[n]:
                heapq.heappush(heads, (_id_tuple(_text(buffers[n][0][0])), n))
        return wanted

    async def _scan(self, accept: Filter, start: str, after: str | None, first: int
                    ) -> HistoryPage:
        """The history by reading the stream itself, for filters no index serves."""
        out: list[Change] = []
        scanned = after
        more = False
        while not more:
            entries = await self.redis.xrange(CHANGES_KEY, min=start, count=self.page)
            if not entries:
                break
            for entry_id, fields in entries:
                change = decode_change(entry_id.decode(), fields)
                if accept(change):
                    if len(out) == first:
                        more = True
                        break
                    out.append(change)
                scanned = change.cursor
            start = "(" + entries[-1][0].decode()
        # An empty log still gives a cursor: subscribing after it misses nothing.
        end = out[-1].cursor if more else scanned or "0-0"
        return HistoryPage(out, end, more)

    async def shared(self, change: Any, what: Hashable,
                     compute: Callable[[], Awaitable[T]]) -> T:
        """``compute()`` once per change (anything with its ``cursor``) and ``what``, for all
        of its subscribers."""
        key = (change.cursor, what)
        found = self._memo.get(key)
        if found is None:
            found = asyncio.ensure_future(compute())
            self._memo[key] = found
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        result: T = await asyncio.shield(found)
        return result

    async def check_cursor(self, after: str) -> None:
        """:class:`InvalidCursor` or :class:`CursorExpired` now, rather than when the
        subscription starts reading."""
        await self._start(after)

    async def _start(self, after: str | None) -> str:
        if after is None:
            return "-"
        check_cursor(after)
        try:
            info = await self.redis.xinfo_stream(CHANGES_KEY)
        except ResponseError:  # no stream yet: nothing was ever published
            return f"({after}"
        _check_retention(info, after)
        return f"({after}"

    async def subscribe(self, accept: Filter, after: str | None,
                        routes: frozenset[Route] | None = None,
                        ) -> AsyncGenerator[Change, None]:
        """Missed changes after ``after`` (if given), then live ones; in stream order. Live
        ones are offered to this subscriber only if they are about one of ``routes``
        (default: those of ``accept``, :func:`filter_routes`)."""
        sub = Subscriber(accept, self.buffer_limit)
        await self.fanout.join(sub, routes if routes is not None else filter_routes(accept))
        try:
            last = after
            if after is not None:
                while True:
                    page = await self.history(accept, last, self.page)
                    for change in page.changes:
                        yield change
                    last = page.end_cursor
                    if not page.has_more:
                        break
            while not sub.closed:
                raise_if_cancelled()
                await sub.wake.wait()
                for change in sub.take():
                    if last is not None and _id_tuple(change.cursor) <= _id_tuple(last):
                        continue  # already replayed from history
                    last = change.cursor
                    yield change
        finally:
            self.fanout.leave(sub)

    def close_all(self) -> None:
        self.fanout.close_all()
