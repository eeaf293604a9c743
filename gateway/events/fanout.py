"""One replica's tail of a Redis stream, offered to each of its listeners: the fan-out the live
feeds share (stock changes, ``gateway.events.changes.ChangeFeed``; discrepancy transitions,
``gateway.reconcile.discrepancies.DiscrepancyFeed``; finished sync actions, ``gateway.sync``).
:class:`KeyedFeed` is the subscription side for entries with a key: each subscriber's own
filter and bounded buffer, past which only the latest entry per key is kept.

The stream is read only while someone listens, from where the first listener joined; every
entry is decoded once and offered only to the listeners that can want it: a fan-out given
``routes`` (what an entry is about, e.g. its SKU and its location) keeps an index from each
route to the listeners that joined for it (a listener filtered to SKUs a and b is offered
entries about a or b only); a listener that names no routes is in the catch-all bucket and is
offered everything. Each listener still applies its own filter and keeps its own bounded
buffer (and says so with ``wake``). Redis outages are waited out with a backoff. A
cancellation that an awaited call swallowed is honoured (:func:`raise_if_cancelled`), so a
listener whose client left never waits forever.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from redis.exceptions import RedisError

from resolvers.store.client import Backoff

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
# Offers made before the reader lets the event loop run something else: a page of entries x
# every listener is a long step, and webhook intake must not wait for it.
OFFERS_PER_STEP = 2000


class Listener(Protocol[T_contra]):
    """What a fan-out delivers to: ``offer`` buffers (and filters) an entry and sets ``wake``;
    ``closed`` ends the listener's stream."""

    closed: bool
    wake: asyncio.Event

    def offer(self, entry: T_contra) -> None: ...


L = TypeVar("L", bound=Listener[Any])
# What an entry is about, as (family, value): ("sku", "SKU-1"), ("loc", "WH-1"). An entry has
# at most one route per family, and a listener joins for routes of one family only, so no
# listener is offered an entry twice.
Route: TypeAlias = tuple[str, str]


def raise_if_cancelled() -> None:
    """Honour a cancellation that an awaited call swallowed.

    redis-py writes commands with ``asyncio.wait_for(drain)``, and on Python 3.11 that loses
    a cancellation arriving as the write completes (CPython gh-86296): a subscription whose
    client left at that moment would wait for entries forever (and hold up shutdown).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class StreamFanout(Generic[T, L]):
    """Tails ``key`` while anyone listens and offers each decoded entry to every listener."""

    def __init__(self, redis: Any, key: str, decode: Callable[[str, dict[bytes, bytes]], T],
                 what: str, page: int = 500,
                 routes: Callable[[T], tuple[Route, ...]] | None = None) -> None:
        self.redis = redis
        self.key = key
        self.decode = decode
        self.what = what
        self.page = page
        self.routes = routes
        self.listeners: set[L] = set()
        # The index: route -> the listeners that joined for it; and those that named none.
        self.index: dict[Route, set[L]] = {}
        self.catch_all: set[L] = set()
        self._joined: dict[L, frozenset[Route]] = {}
        self.running = False
        self.last_id = "$"
        self._listening = asyncio.Event()

    async def run(self) -> None:
        """Tail the stream while anyone listens, until cancelled, surviving Redis outages."""
        backoff = Backoff(self.what)
        while True:
            try:
                raise_if_cancelled()
                if not self.listeners:
                    # Nobody to deliver to: don't read (and parse) every entry. The next
                    # listener starts from the tail (see join).
                    self.running = True
                    await self._listening.wait()
                    continue
                if self.last_id == "$":
                    self.last_id = await self.tail_id()
                self.running = True
                result = await self.redis.xread({self.key: self.last_id}, count=self.page,
                                                block=1000)
                backoff.succeeded()
                offered = 0
                for _stream, entries in result or []:
                    for entry_id, fields in entries:
                        self.last_id = entry_id.decode()
                        offered += 1 + self.offer(self.decode(self.last_id, fields))
                        if offered >= OFFERS_PER_STEP:
                            offered = 0
                            await asyncio.sleep(0)
            except asyncio.CancelledError:
                self.running = False
                raise
            except (RedisError, OSError) as exc:
                self.running = False
                await asyncio.sleep(backoff.failed(exc))

    def offer(self, entry: T) -> int:
        """Offer ``entry`` to the listeners that can want it; how many were offered it."""
        offered = len(self.catch_all)
        for listener in self.catch_all:
            listener.offer(entry)
        if self.routes is not None and self.index:
            for route in self.routes(entry):
                bucket = self.index.get(route)
                if bucket:
                    offered += len(bucket)
                    for listener in bucket:
                        listener.offer(entry)
        return offered

    async def tail_id(self) -> str:
        """The id of the stream's last entry (``0-0`` while it holds none)."""
        last = await self.redis.xrevrange(self.key, count=1)
        return last[0][0].decode() if last else "0-0"

    async def join(self, listener: L, routes: Collection[Route] | None = None) -> None:
        """Start offering to ``listener``: only entries about one of ``routes`` (all of one
        family; None or a fan-out without ``routes``: every entry). The first listener pins
        the reader's start at the tail before anything can be published for it."""
        joined = frozenset(routes) if routes is not None and self.routes is not None else None
        if joined is not None and len({family for family, _ in joined}) > 1:
            raise ValueError("a listener joins for routes of one family only")
        if not self.listeners:
            self.last_id = await self.tail_id()
        self.listeners.add(listener)
        if joined is None:
            self.catch_all.add(listener)
        else:
            self._joined[listener] = joined
            for route in joined:
                self.index.setdefault(route, set()).add(listener)
        self._listening.set()

    def leave(self, listener: L) -> None:
        self.listeners.discard(listener)
        self.catch_all.discard(listener)
        for route in self._joined.pop(listener, ()):
            bucket = self.index.get(route)
            if bucket is not None:
                bucket.discard(listener)
                if not bucket:
                    del self.index[route]
        if not self.listeners:
            self._listening.clear()

    def close_all(self) -> None:
        for listener in self.listeners:
            listener.closed = True
            listener.wake.set()


class Keyed(Protocol):
    def key(self) -> str: ...


K = TypeVar("K", bound=Keyed)


@dataclass(slots=True, eq=False)
class KeyedListener(Generic[K]):
    """One subscriber of a :class:`KeyedFeed`: its filter and its bounded buffer."""

    accept: Callable[[K], bool]
    limit: int
    queue: OrderedDict[str, K] = field(default_factory=OrderedDict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    seq: int = 0

    def offer(self, entry: K) -> None:
        if not self.accept(entry):
            return
        if len(self.queue) >= self.limit:
            # Over the buffer: keep only the latest entry per key.
            self.queue.pop(entry.key(), None)
            if len(self.queue) >= self.limit:
                self.queue.popitem(last=False)
            self.queue[entry.key()] = entry
        else:
            self.seq += 1
            self.queue[f"{entry.key()}#{self.seq}"] = entry
        self.wake.set()

    def take(self) -> list[K]:
        out = list(self.queue.values())
        self.queue.clear()
        self.wake.clear()
        return out


class KeyedFeed(Generic[K]):
    """This replica's tail of a stream of keyed entries, fanned out to its subscribers."""

    def __init__(self, redis: Any, key: str, decode: Callable[[str, dict[bytes, bytes]], K],
                 what: str, buffer_limit: int = 1000,
                 routes: Callable[[K], tuple[Route, ...]] | None = None) -> None:
        self.redis = redis
        self.buffer_limit = buffer_limit
        self.fanout: StreamFanout[K, KeyedListener[K]] = StreamFanout(redis, key, decode, what,
                                                                      routes=routes)

    @property
    def listeners(self) -> set[KeyedListener[K]]:
        return self.fanout.listeners

    @property
    def running(self) -> bool:
        return self.fanout.running

    async def run(self) -> None:
        await self.fanout.run()

    async def subscribe(self, accept: Callable[[K], bool],
                        routes: Collection[Route] | None = None) -> AsyncGenerator[K, None]:
        """The entries ``accept`` takes (offered only those about one of ``routes``, if
        given: see :meth:`StreamFanout.join`)."""
        listener: KeyedListener[K] = KeyedListener(accept, self.buffer_limit)
        await self.fanout.join(listener, routes)
        try:
            while not listener.closed:
                raise_if_cancelled()
                await listener.wake.wait()
                for entry in listener.take():
                    yield entry
        finally:
            self.fanout.leave(listener)

    def close_all(self) -> None:
        self.fanout.close_all()


__all__ = ["OFFERS_PER_STEP", "KeyedFeed", "KeyedListener", "Listener", "Route", "StreamFanout",
           "raise_if_cancelled"]
