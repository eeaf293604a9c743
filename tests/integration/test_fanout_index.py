"""The fan-out offers a change only to the subscribers that can want it (issue 15): an index
from SKU and location to subscribers, and a catch-all bucket for those that name neither.

Against a real Redis-protocol server: changes are published with the gateway's own
:class:`ChangePublisher` and read by :class:`ChangeFeed`'s fan-out; each listener records
every entry it was *offered* (before its own filter), so the test sees what the index let
through, not only what the filters kept."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from redis import asyncio as aioredis

from gateway.events.changes import Change, ChangeFeed, change_routes, decode_change, filter_routes
from gateway.events.fanout import StreamFanout
from resolvers.changes import make_filter
from resolvers.store.keys import CHANGES_KEY
from tests.integration.test_stock_events import publish


@dataclass(eq=False)
class Recording:
    """A fan-out listener that keeps everything it is offered."""

    offered: list[Change] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def offer(self, entry: Change) -> None:
        self.offered.append(entry)
        self.wake.set()


def change_fanout(redis: aioredis.Redis) -> StreamFanout[Change, Recording]:
    """The fan-out as ChangeFeed builds it (its stream, decoder and routes)."""
    return StreamFanout(redis, CHANGES_KEY, decode_change, "change feed", routes=change_routes)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_change_is_offered_only_to_subscribers_that_can_want_it(
        redis: aioredis.Redis) -> None:
    fanout = change_fanout(redis)
    filters = {
        "sku-a": make_filter(["SKU-A"], None),
        "skus-a-b": make_filter(["SKU-A", "SKU-B"], None),
        "loc-2": make_filter(None, ["L2"]),
        "sku-c-at-l1": make_filter(["SKU-C"], ["L1"]),
        "everything": make_filter(None, None),
    }
    listeners = {name: Recording() for name in filters}
    for name, accept in filters.items():
        await fanout.join(listeners[name], filter_routes(accept))
    reader = asyncio.create_task(fanout.run())
    cells = [("SKU-A", "L1", "wms"), ("SKU-B", "L2", "wms"), ("SKU-C", "L3", "wms"),
             ("SKU-C", "L1", "wms"), ("SKU-D", "L2", "wms")]
    try:
        await publish(redis, cells)
        every = listeners["everything"]
        async with asyncio.timeout(10):
            while len(every.offered) < len(cells):
                every.wake.clear()
                await every.wake.wait()
        await asyncio.sleep(0.1)  # anything offered late to the others would be seen now
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    def offered(name: str) -> list[tuple[str, str]]:
        return [(c.sku, c.location_id) for c in listeners[name].offered]

    assert offered("everything") == [(s, x) for s, x, _ in cells]
    assert offered("sku-a") == [("SKU-A", "L1")]
    assert offered("skus-a-b") == [("SKU-A", "L1"), ("SKU-B", "L2")]
    assert offered("loc-2") == [("SKU-B", "L2"), ("SKU-D", "L2")]
    # Indexed by its SKUs: offered SKU-C anywhere (its own filter drops L3), never others.
    assert offered("sku-c-at-l1") == [("SKU-C", "L3"), ("SKU-C", "L1")]
    assert [filters["sku-c-at-l1"](c) for c in listeners["sku-c-at-l1"].offered] == [
        False, True]


async def test_the_change_feed_fans_out_by_its_index(redis: aioredis.Redis) -> None:
    assert ChangeFeed(redis).fanout.routes is change_routes


async def test_leaving_empties_the_index(redis: aioredis.Redis) -> None:
    fanout = change_fanout(redis)
    one, two, every = Recording(), Recording(), Recording()
    await fanout.join(one, filter_routes(make_filter(["SKU-A"], None)))
    await fanout.join(two, filter_routes(make_filter(["SKU-A", "SKU-B"], None)))
    await fanout.join(every, None)
    assert set(fanout.index) == {("sku", "SKU-A"), ("sku", "SKU-B")}
    fanout.leave(two)
    assert fanout.index == {("sku", "SKU-A"): {one}}
    fanout.leave(one)
    fanout.leave(every)
    assert fanout.index == {}
    assert not fanout.catch_all
    assert not fanout.listeners


async def test_a_listener_joins_for_one_family_of_routes(redis: aioredis.Redis) -> None:
    fanout = change_fanout(redis)
    with pytest.raises(ValueError, match="one family"):
        await fanout.join(Recording(), {("sku", "SKU-A"), ("loc", "L1")})
