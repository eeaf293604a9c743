"""The stock change history (``stockEvents``, and subscriptions resuming ``after:`` a cursor)
reads the change stream's per-SKU and per-location indexes: its cost follows what matches,
not the length of the stream, and its pages are exactly those a scan of the stream gives.

Against a real Redis-protocol server, through :class:`ChangeFeed` and
:class:`ChangePublisher` themselves; the Redis client is handed in wrapped in a
:class:`Counting` client that counts the stream entries each key gave back."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from redis import asyncio as aioredis

from gateway.events.changes import ChangeFeed, ChangePublisher, Filter, HistoryPage
from gateway.events.envelope import Envelope, EventKind
from resolvers.changes import make_filter
from resolvers.errors import CursorExpired
from resolvers.store.keys import CHANGES_KEY, sku_index_key
from resolvers.types import Quantities
from tests.support import stream_entries

SKUS = [f"SKU-{n:03d}" for n in range(40)]
LOCATIONS = ["ST001", "ST002", "ST003", "WH01", "WH02"]
SOURCES = ["pos", "wms", "erp"]
STREAM_COMMANDS = ("xrange", "xrevrange")
ENTRIES = itertools.count(1)


class Counting:
    """A Redis client that counts the stream entries each key returned (pipelines too)."""

    def __init__(self, inner: aioredis.Redis) -> None:
        self.inner = inner
        self.entries: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in STREAM_COMMANDS:
            return attribute

        async def counted(key: str, *args: Any, **kwargs: Any) -> Any:
            reply = await attribute(key, *args, **kwargs)
            self.entries[key] += len(reply)
            return reply
        return counted

    def pipeline(self, **kwargs: Any) -> CountingPipeline:
        return CountingPipeline(self, self.inner.pipeline(**kwargs))

    def reset(self) -> None:
        self.entries.clear()

    def read(self, key: str | None = None) -> int:
        """Entries read from ``key`` (from any key: None)."""
        return sum(n for k, n in self.entries.items() if key is None or k == key)


class CountingPipeline:
    def __init__(self, owner: Counting, inner: Any) -> None:
        self.owner = owner
        self.inner = inner
        self.keys: list[str | None] = []

    async def __aenter__(self) -> CountingPipeline:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)

        def queued(*args: Any, **kwargs: Any) -> CountingPipeline:
            self.keys.append(args[0] if name in STREAM_COMMANDS else None)
            attribute(*args, **kwargs)
            return self
        return queued

    async def execute(self, **kwargs: Any) -> list[Any]:
        replies: list[Any] = await self.inner.execute(**kwargs)
        for key, reply in zip(self.keys, replies, strict=True):
            if key is not None and isinstance(reply, list):
                self.owner.entries[key] += len(reply)
        self.keys = []
        return replies


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Counting]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield Counting(client)
    finally:
        await client.aclose()


def envelope(n: int, sku: str, location: str, source: str) -> Envelope:
    at = datetime.now(UTC)
    return Envelope(id=f"e{n}", kind=EventKind.LEVEL_SNAPSHOT, source=source, system=source,
                    topic="test", source_event_id=f"s{n}", delivery_id=f"d{n}",
                    occurred_at=at, received_at=at, source_version=n, sku=sku,
                    location_id=location, quantities=Quantities(on_hand=n, available=n),
                    full=True)


async def publish(redis: Counting | aioredis.Redis, cells: list[tuple[str, str, str]],
                  retention: int = 3600) -> None:
    publisher = ChangePublisher(redis, retention)
    for sku, location, source in cells:
        n = next(ENTRIES)  # each log entry is published once
        await publisher(f"{n}-1", envelope(n, sku, location, source), None)


def record(location: str, source: str) -> bool:
    """The system of record: the POS for stores, the WMS for warehouses."""
    return source == ("pos" if location.startswith("ST") else "wms")


def scanning(accept: Filter) -> Filter:
    """``accept`` as a plain function, which the feed cannot match to its indexes: it scans."""
    return lambda change: accept(change)


def same(page: HistoryPage, other: HistoryPage) -> bool:
    return ([c.cursor for c in page.changes], page.end_cursor, page.has_more) == (
        [c.cursor for c in other.changes], other.end_cursor, other.has_more)


async def test_pages_are_those_of_a_scan(redis: Counting) -> None:
    rng = random.Random(11)
    cells = [(rng.choice(SKUS[:12]), rng.choice(LOCATIONS), rng.choice(SOURCES))
             for _ in range(600)]
    await publish(redis, cells)
    feed = ChangeFeed(redis, page=50)
    cursors = [None, *(e[0].decode()
                        for e in stream_entries(await redis.inner.xrange(CHANGES_KEY)))]
    filters = [(SKUS[:1], None), (SKUS[:3], None), (None, ["WH01"]), (None, ["ST001", "WH02"]),
               (SKUS[:4], ["ST002"]), (["SKU-NONE"], None), (None, ["NOWHERE"]),
               (SKUS[5:12], LOCATIONS[:2]), (SKUS, LOCATIONS)]
    for skus, locations in filters:
        for sources in (None, record):
            accept = make_filter(skus, locations, sources)
            for after in rng.sample(cursors, 6):
                for first in (1, 3, 50):
                    indexed = await feed.history(accept, after, first)
                    scanned = await feed.history(scanning(accept), after, first)
                    assert same(indexed, scanned), (skus, locations, sources, after, first)
                    # Paging on from the end cursor misses nothing and repeats nothing.
                    page, seen = indexed, [c.cursor for c in indexed.changes]
                    while page.has_more:
                        page = await feed.history(accept, page.end_cursor, first)
                        seen += [c.cursor for c in page.changes]
                    everything = await feed.history(scanning(accept), after, 10_000)
                    assert seen == [c.cursor for c in everything.changes]


async def test_cost_follows_what_matches_not_the_stream(redis: Counting) -> None:
    rng = random.Random(5)
    cells = [(rng.choice(SKUS[1:]), rng.choice(LOCATIONS), "pos") for _ in range(1500)]
    cells[700] = (SKUS[0], "ST001", "pos")  # one change of SKU-000 among 1,500
    cells[900] = (SKUS[0], "WH01", "pos")
    await publish(redis, cells)
    feed = ChangeFeed(redis)

    redis.reset()
    page = await feed.history(make_filter(["SKU-NONE"], None), None, 50)
    assert (page.changes, page.has_more) == ([], False)
    assert redis.read(CHANGES_KEY) <= 2  # its first and last entry: where the history ends
    assert redis.read() <= 2

    redis.reset()
    page = await feed.history(make_filter([SKUS[0]], ["ST001"]), None, 50)
    assert [(c.sku, c.location_id) for c in page.changes] == [(SKUS[0], "ST001")]
    assert redis.read(sku_index_key(SKUS[0])) == 2  # the SKU's index: the smaller one
    assert redis.read() <= 2 + 2 + 1

    # A page of a busy location reads that location's index, then only what it returns.
    redis.reset()
    page = await feed.history(make_filter(None, ["WH02"]), None, 20)
    assert len(page.changes) == 20
    assert page.has_more
    assert redis.read(CHANGES_KEY) <= 2 + 20
    assert redis.read() <= 2 + 21 + 20


async def test_changes_from_before_the_indexes_are_scanned(redis: Counting) -> None:
    """A log written by an older gateway (no indexes) is read as before, until it has
    been trimmed away."""
    old = await redis.inner.xadd(CHANGES_KEY, {
        "c": envelope_change(SKUS[0], "ST001"), "p": b""})
    assert isinstance(old, bytes), old
    await publish(redis, [(SKUS[0], "ST001", "pos"), (SKUS[1], "ST001", "pos")])
    feed = ChangeFeed(redis)
    page = await feed.history(make_filter([SKUS[0]], None), None, 10)
    assert page.changes[0].cursor == old.decode()
    assert len(page.changes) == 2
    after_old = await feed.history(make_filter([SKUS[0]], None), old.decode(), 10)
    assert len(after_old.changes) == 1


def envelope_change(sku: str, location: str) -> bytes:
    from gateway.events.changes import _encode

    e = envelope(0, sku, location, "pos")
    assert e.quantities is not None
    return _encode(e, e.quantities)


async def test_retention_trims_the_indexes_with_the_stream(redis: Counting) -> None:
    await publish(redis, [(SKUS[0], "ST001", "pos")] * 3, retention=3600)
    feed = ChangeFeed(redis)
    first = (await feed.history(make_filter([SKUS[0]], None), None, 1)).changes[0].cursor
    await asyncio.sleep(0.01)  # the next change's millisecond is later than theirs
    await publish(redis, [(SKUS[1], "ST002", "pos")], retention=0)  # trims everything older
    assert await redis.inner.xlen(CHANGES_KEY) == 1
    with pytest.raises(CursorExpired):
        await feed.history(make_filter([SKUS[0]], None), first, 5)
    page = await feed.history(make_filter([SKUS[0]], None), None, 5)
    assert page.changes == []
    assert await redis.inner.ttl(sku_index_key(SKUS[1])) > 0
