"""Subscribers grouped by what they asked for (issue 15): a change's payload is executed once
per group - same selection, same values of the variables that shape the result, same
visibility - and every member gets that same payload; subscribers in different groups get
their own, each correct for what it asked.

One gateway with API keys (an admin, two keys restricted to warehouse WH01 with the same
grant, so the same visibility); subscribers on both WebSocket protocols; a WMS count through
the simulator's own API. Which groups a change was executed for is read from the replica's
change feed, where the shared results are kept per change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.e2e.test_subscriptions import (
    LEGACY_WS,
    TRANSPORT_WS,
    GraphQLWs,
    Live,
    _flush,
)
from tests.support import Stack

KEYS = {"admin": ("groups-admin-key-00000001", ["admin"], None),
        "wh1": ("groups-wh1-key-0000000001", ["stock:read"], ["WH01"]),
        "wh1b": ("groups-wh1b-key-000000001", ["stock:read"], ["WH01"])}

FULL = """subscription($skus: [ID!], $locs: [ID!]) {
  stockChanged(skus: $skus, locationIds: $locs) {
    cursor sku locationId conflated stockLevel { onHand available location { id } } } }"""
NARROW = """subscription($skus: [ID!]) {
  stockChanged(skus: $skus) { sku stockLevel { onHand } } }"""
SHAPED = """subscription($skus: [ID!], $moved: Boolean!) {
  stockChanged(skus: $skus) { sku movement @include(if: $moved) { type quantity } } }"""


@pytest.fixture(scope="module")
def keyed(redis_server_url: str) -> Iterator[Live]:
    client = _flush(redis_server_url)
    stack = Stack(redis_server_url, skus=12, stores=1, warehouses=2)
    stack.settings.api_keys = {
        name: {"key": k, "scopes": scopes, **({"locations": locs} if locs else {})}
        for name, (k, scopes, locs) in KEYS.items()}
    stack.settings.rate_limit_per_minute = 0
    try:
        with stack:
            yield Live(stack, client, iter(range(12)))
    finally:
        client.close()


@contextlib.asynccontextmanager
async def as_(live: Live, who: str, protocol: str = TRANSPORT_WS) -> AsyncIterator[GraphQLWs]:
    client = await GraphQLWs.connect(live.url, protocol,
                                     {"Authorization": f"Bearer {KEYS[who][0]}"})
    try:
        yield client
    finally:
        await client.close()


def executions(live: Live, cursor: str) -> int:
    """How many group payloads the replica executed for the change at ``cursor``."""
    memo: dict[Any, Any] = live.feed()._memo
    return sum(1 for c, what in memo if c == cursor and isinstance(what, tuple)
               and what[0] == "event")


async def test_each_group_executes_once_and_gets_its_own_payload(keyed: Live) -> None:
    live = keyed
    i, other = live.sku(), live.sku()
    sku, other_sku = live.world.items[i].sku, live.world.items[other].sku
    start = await live.wms_balance(i, 0)
    counted = start["onHand"] + 7
    async with contextlib.AsyncExitStack() as stack:
        admin = await stack.enter_async_context(as_(live, "admin"))
        legacy = await stack.enter_async_context(as_(live, "admin", LEGACY_WS))
        wh1 = await stack.enter_async_context(as_(live, "wh1"))
        wh1b = await stack.enter_async_context(as_(live, "wh1b", LEGACY_WS))
        before = live.subscribers()
        ops = {
            # One group: same document and visibility; the filters differ.
            "a": (admin, await admin.subscribe(FULL, {"skus": [sku]})),
            "b": (admin, await admin.subscribe(FULL, {"skus": [other_sku, sku],
                                                      "locs": ["WH01", "WH02"]})),
            "legacy": (legacy, await legacy.subscribe(FULL, {"skus": [sku]})),
            # Another visibility (WH01 only): a group of its own, for both of its keys.
            "wh1": (wh1, await wh1.subscribe(FULL, {"skus": [sku]})),
            "wh1b": (wh1b, await wh1b.subscribe(FULL, {"skus": [sku], "locs": ["WH01"]})),
            # Another selection; and a variable that shapes the result, both ways.
            "narrow": (admin, await admin.subscribe(NARROW, {"skus": [sku]})),
            "moved": (admin, await admin.subscribe(SHAPED, {"skus": [sku], "moved": True})),
            "still": (admin, await admin.subscribe(SHAPED, {"skus": [sku], "moved": False})),
        }
        await live.registered(before, len(ops))
        await live.capture([live.epcis_event(i, 0, "cycle_counting", counted)])
        got = {name: (await client.next(op))["stockChanged"]
               for name, (client, op) in ops.items()}
        truth = await live.wms_balance(i, 0)
        assert truth["onHand"] == counted

        full = got["a"]
        assert (full["sku"], full["locationId"], full["conflated"]) == (sku, "WH01", False)
        assert full["stockLevel"] == {"onHand": counted, "available": truth["available"],
                                      "location": {"id": "WH01"}}
        for same in ("b", "legacy", "wh1", "wh1b"):
            assert got[same] == full, same
        assert got["narrow"] == {"sku": sku, "stockLevel": {"onHand": counted}}
        assert got["moved"] == {"sku": sku, "movement": {"type": "COUNT",
                                                         "quantity": counted}}
        assert got["still"] == {"sku": sku}
        # admin FULL (a, b, legacy), WH01 FULL (wh1, wh1b), NARROW, SHAPED x 2.
        assert executions(live, full["cursor"]) == 5

        # The other SKU's change reaches only "b" (its filter), once, correct.
        await live.capture([live.epcis_event(other, 1, "cycle_counting", 3)])
        moved = (await ops["b"][0].next(ops["b"][1]))["stockChanged"]
        assert (moved["sku"], moved["locationId"]) == (other_sku, "WH02")
        assert moved["stockLevel"]["onHand"] == 3
        await asyncio.sleep(0.5)
        for name, (client, op) in ops.items():
            assert not client.pending[op], name


async def test_a_restricted_caller_gets_only_its_locations_in_a_shared_group(
        keyed: Live) -> None:
    live = keyed
    i = live.sku()
    sku = live.world.items[i].sku
    async with as_(live, "wh1") as wh1, as_(live, "wh1b") as wh1b, \
            as_(live, "admin") as admin:
        before = live.subscribers()
        mine = await wh1.subscribe(FULL, {"skus": [sku]})
        theirs = await wh1b.subscribe(FULL, {"skus": [sku]})
        everything = await admin.subscribe(FULL, {"skus": [sku]})
        await live.registered(before, 3)
        await live.capture([live.epcis_event(i, 1, "cycle_counting", 11)])  # WH02
        await live.capture([live.epcis_event(i, 0, "cycle_counting", 12)])  # WH01
        first, second = await admin.take(everything, 2)
        assert [(c["locationId"], c["stockLevel"]["onHand"]) for c in (first, second)] == [
            ("WH02", 11), ("WH01", 12)]
        for client, op in ((wh1, mine), (wh1b, theirs)):
            only = (await client.next(op))["stockChanged"]
            assert only == second
        await asyncio.sleep(0.5)
        assert not wh1.pending[mine]
        assert not wh1b.pending[theirs]
