"""Live stock over WebSocket, driven by an independent client on both protocols.

The client is :class:`GraphQLWs`: the two GraphQL-over-WebSocket protocols written out on the
plain ``websockets`` library (``graphql-transport-ws``: connection_init/ack, subscribe, next,
error, complete, ping/pong; legacy ``graphql-ws``: connection_init/ack, ka, start, data,
error, complete, stop). Changes are caused through the simulators' own APIs (a Square sale, a
WMS EPCIS capture) and arrive as the simulators' signed webhooks, or, where a test needs many
of them quickly, as signed webhooks posted straight to the gateway.

One stack (four simulators, one gateway) serves the tests of :class:`TestLiveStock`; each test
works on its own SKUs. :class:`TestTightStack` gets a stack with a tiny subscriber buffer and
retention (the stacks share the test Redis, so each lives for its class only).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import redis
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from gateway.config import Settings
from gateway.simulators.world import World
from resolvers.connectors.http import auth_headers
from tests.helpers_webhooks import Signer, apost, now
from tests.support import Stack

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = (TRANSPORT_WS, LEGACY_WS)
CHANGES = "rg:{ev}:changes"

CHANGE_FIELDS = """cursor sku locationId source occurredAt conflated
  previous { onHand available committed }
  movement { type quantity bizStep documents }
  stockLevel { sku location { id } onHand available committed source }"""

STOCK_CHANGED = f"""subscription($skus: [ID!], $locs: [ID!], $after: String) {{
  stockChanged(skus: $skus, locationIds: $locs, after: $after) {{ {CHANGE_FIELDS} }} }}"""

STOCK_EVENTS = f"""query($skus: [ID!], $locs: [ID!], $after: String, $first: Int!) {{
  stockEvents(skus: $skus, locationIds: $locs, after: $after, first: $first) {{
    changes {{ {CHANGE_FIELDS} }} endCursor hasMore }} }}"""

STOCK_LEVEL = """query($sku: ID!, $loc: ID!) {
  stockLevel(sku: $sku, locationId: $loc) { onHand available committed } }"""


# -- the client --------------------------------------------------------------------------------

class SubscriptionError(Exception):
    """The server answered an operation with errors."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors

    @property
    def codes(self) -> list[str]:
        return [str((e.get("extensions") or {}).get("code")) for e in self.errors]


def text_frame(frame: str | bytes) -> str:
    """Both protocols carry their messages in text frames; standard clients (graphql-ws,
    Apollo, gql, browsers) reject a binary one, so this client does too."""
    if not isinstance(frame, str):
        raise AssertionError(f"binary WebSocket frame: {frame[:80]!r}")
    return frame


class Completed(Exception):
    """The server completed the operation."""


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1) + "/graphql"


class GraphQLWs:
    """One WebSocket speaking ``graphql-transport-ws`` or the legacy ``graphql-ws``.

    Nothing is read from the socket except inside :meth:`next` / :meth:`message`, so a test
    can leave a connection unread on purpose (a slow consumer).
    """

    def __init__(self, ws: ClientConnection, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.keepalives = 0
        self.pongs = 0
        self.pending: dict[str, deque[tuple[str, Any]]] = defaultdict(deque)
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, http_url: str, protocol: str, payload: dict[str, Any] | None = None,
                      **kwargs: Any) -> GraphQLWs:
        ws = await websockets.connect(ws_url(http_url), subprotocols=[Subprotocol(protocol)],
                                      open_timeout=10, **kwargs)
        assert ws.subprotocol == protocol
        client = cls(ws, protocol)
        await client.send({"type": "connection_init", "payload": payload or {}})
        while True:
            raw = orjson.loads(text_frame(await asyncio.wait_for(ws.recv(), 10)))
            if raw["type"] == "connection_ack":
                return client
            if raw["type"] == "ka":
                client.keepalives += 1
                continue
            raise AssertionError(f"expected connection_ack, got {raw}")

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def subscribe(self, query: str | None, variables: dict[str, Any] | None = None,
                        extensions: dict[str, Any] | None = None) -> str:
        """Start an operation (a subscription, or a query: one result then complete)."""
        op_id = str(next(self._ids))
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        payload: dict[str, Any] = {"variables": variables or {}}
        if query is not None:
            payload["query"] = query
        if extensions is not None:
            payload["extensions"] = extensions
        await self.send({"id": op_id, "type": kind, "payload": payload})
        return op_id

    async def stop(self, op_id: str) -> None:
        await self.send({"id": op_id,
                         "type": "complete" if self.protocol == TRANSPORT_WS else "stop"})

    async def ping(self) -> None:
        assert self.protocol == TRANSPORT_WS
        await self.send({"type": "ping"})

    async def message(self, within: float = 10) -> dict[str, Any]:
        """Read one protocol message (waiting up to ``within`` seconds), file it, return it."""
        raw: dict[str, Any] = orjson.loads(
            text_frame(await asyncio.wait_for(self.ws.recv(), within)))
        kind = raw["type"]
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "pong":
            self.pongs += 1
        elif kind == "ka":
            self.keepalives += 1
        elif kind in ("next", "data", "error", "complete"):
            self.pending[raw["id"]].append((kind, raw.get("payload")))
        else:
            raise AssertionError(f"unexpected message {raw}")
        return raw

    async def next(self, op_id: str, within: float = 10) -> dict[str, Any]:
        """The operation's next result's ``data``; raises on errors and on complete."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self.pending[op_id]:
            await self.message(max(0.01, deadline - loop.time()))
        kind, payload = self.pending[op_id].popleft()
        if kind == "complete":
            raise Completed(op_id)
        if kind == "error":
            raise SubscriptionError(payload if isinstance(payload, list) else [payload])
        if payload.get("errors"):
            raise SubscriptionError(payload["errors"])
        data: dict[str, Any] = payload["data"]
        return data

    async def take(self, op_id: str, n: int, field: str = "stockChanged",
                   within: float = 10) -> list[dict[str, Any]]:
        return [(await self.next(op_id, within))[field] for _ in range(n)]

    async def close(self) -> None:
        await self.ws.close()


@contextlib.asynccontextmanager
async def connected(http_url: str, protocol: str, **kwargs: Any) -> AsyncIterator[GraphQLWs]:
    client = await GraphQLWs.connect(http_url, protocol, **kwargs)
    try:
        yield client
    finally:
        await client.close()


# -- the stack and ways to change stock ----------------------------------------------------------

@dataclass
class Live:
    stack: Stack
    redis: redis.Redis
    skus: Iterator[int]

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def world(self) -> World:
        return self.stack.world

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    def sku(self, where: int = 0, at_least: int = 0) -> int:
        """A fresh SKU index (no other test uses it) with at least ``at_least`` in stock at
        store ``where``."""
        return next(i for i in self.skus if self.world.store_counts(i, where)[0] >= at_least)

    def feed(self, replica: int = 0) -> Any:
        """The replica's change feed, to wait until a subscription is registered."""
        app: Any = self.stack.gateways[replica].server.config.app
        return app.state.runtime.feed

    def subscribers(self) -> set[Any]:
        return set(self.feed().subscribers)

    async def gone(self, before: set[Any]) -> set[Any]:
        """Wait (up to 5 s) until only subscriptions of ``before`` are left; the others."""
        for _ in range(500):
            if not self.subscribers() - before:
                break
            await asyncio.sleep(0.01)
        return self.subscribers() - before

    async def registered(self, before: set[Any], count: int = 1) -> None:
        """Wait until ``count`` subscriptions newer than ``before`` are registered."""
        for _ in range(1000):
            if len(set(self.feed().subscribers) - before) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("subscription was not registered")

    def sim(self, name: str) -> httpx.AsyncClient:
        backend = self.settings.backends[name]
        return httpx.AsyncClient(base_url=backend.base_url, headers=auth_headers(backend),
                                 timeout=30)

    async def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(f"{self.url}/graphql",
                                         json={"query": query, "variables": variables})
        body: dict[str, Any] = response.json()
        return body

    async def data(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        body = await self.graphql(query, variables)
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data

    # Square (stores) ------------------------------------------------------------------------

    async def sale(self, i: int, store: int, quantity: int) -> int:
        """Sell through the Square simulator; returns its IN_STOCK count afterwards."""
        item, location = self.world.items[i], self.world.stores[store]
        async with self.sim("pos") as pos:
            response = await pos.post("/v2/inventory/changes/batch-create", json={
                "idempotency_key": str(uuid.uuid4()), "changes": [{
                    "type": "ADJUSTMENT", "adjustment": {
                        "catalog_object_id": item.square_variation_id,
                        "location_id": location.square_id, "from_state": "IN_STOCK",
                        "to_state": "SOLD", "quantity": str(quantity)}}]})
        assert response.status_code == 200, response.text
        counts = [c for c in response.json()["counts"] if c["state"] == "IN_STOCK"
                  and c["catalog_object_id"] == item.square_variation_id]
        return int(counts[0]["quantity"])

    async def count(self, i: int, store: int, quantity: int) -> None:
        """A physical count in the Square simulator: IN_STOCK := quantity."""
        item, location = self.world.items[i], self.world.stores[store]
        async with self.sim("pos") as pos:
            response = await pos.post("/v2/inventory/changes/batch-create", json={
                "idempotency_key": str(uuid.uuid4()), "changes": [{
                    "type": "PHYSICAL_COUNT", "physical_count": {
                        "catalog_object_id": item.square_variation_id, "state": "IN_STOCK",
                        "location_id": location.square_id, "quantity": str(quantity),
                        "occurred_at": datetime.now(UTC).isoformat()}}]})
        assert response.status_code == 200, response.text

    async def square_counts(self, i: int, store: int) -> dict[str, int]:
        """The Square simulator's counts of a cell by state (absent states are 0)."""
        item, location = self.world.items[i], self.world.stores[store]
        async with self.sim("pos") as pos:
            response = await pos.post("/v2/inventory/counts/batch-retrieve", json={
                "catalog_object_ids": [item.square_variation_id],
                "location_ids": [location.square_id]})
        assert response.status_code == 200, response.text
        counts: dict[str, int] = defaultdict(int)
        for count in response.json().get("counts", []):
            counts[count["state"]] += int(count["quantity"])
        return counts

    # WMS (warehouses) -----------------------------------------------------------------------

    def epcis_event(self, i: int, warehouse: int, step: str, quantity: int) -> dict[str, Any]:
        gtin = self.world.items[i].gtin14
        epc = f"urn:epc:idpat:sgtin:{gtin[1:7]}.{gtin[0]}{gtin[7:13]}.*"
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        return {"type": "ObjectEvent", "eventTime": stamp, "eventTimeZoneOffset": "+00:00",
                "action": "OBSERVE" if step == "cycle_counting" else "ADD", "bizStep": step,
                "bizLocation": {"id": self.world.warehouses[warehouse].sgln},
                "quantityList": [{"epcClass": epc, "quantity": quantity, "uom": "EA"}]}

    async def capture(self, events: list[dict[str, Any]]) -> None:
        """Capture an EPCIS document in the WMS simulator (one webhook per event)."""
        async with self.sim("wms") as wms:
            response = await wms.post("/api/v1/events", json={
                "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
                "type": "EPCISDocument", "schemaVersion": "2.0",
                "creationDate": datetime.now(UTC).isoformat(),
                "epcisBody": {"eventList": events}})
        assert response.status_code == 202, response.text

    async def wms_balance(self, i: int, warehouse: int) -> dict[str, int]:
        async with self.sim("wms") as wms:
            response = await wms.post("/api/v1/balances/query", json={
                "gtins": [self.world.items[i].gtin14],
                "glns": [self.world.warehouses[warehouse].gln]})
        assert response.status_code == 200, response.text
        balance: dict[str, int] = response.json()["balances"][0]
        return balance


def _flush(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return client


@pytest.fixture(scope="class")
def live(redis_server_url: str) -> Iterator[Live]:
    client = _flush(redis_server_url)
    stack = Stack(redis_server_url, skus=80)
    stack.settings.ws_keepalive_seconds = 0.2
    # One test opens 240 subscriptions from this one (unauthenticated) address.
    stack.settings.max_subscriptions_per_principal = 1000
    try:
        with stack:
            yield Live(stack, client, iter(range(80)))
    finally:
        client.close()


@pytest.fixture(scope="class")
def tight(redis_server_url: str) -> Iterator[Live]:
    """A stack whose subscribers buffer 5 changes and whose changes are kept for 1 s."""
    client = _flush(redis_server_url)
    stack = Stack(redis_server_url, skus=20)
    stack.settings.subscriber_buffer = 5
    stack.settings.change_retention_seconds = 1
    try:
        with stack:
            yield Live(stack, client, iter(range(20)))
    finally:
        client.close()


def cursor_key(cursor: str) -> tuple[int, int]:
    """Cursors are stream ids: ``<ms>-<seq>``, ordered numerically."""
    ms, seq = cursor.split("-")
    return int(ms), int(seq)


def errors_of(body: dict[str, Any]) -> list[str]:
    return [str((e.get("extensions") or {}).get("code")) for e in body.get("errors", [])]


# -- the tests on the shared stack ----------------------------------------------------------------

class TestLiveStock:
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_square_sale_arrives_with_the_simulators_count(self, live: Live,
                                                                 protocol: str) -> None:
        i = live.sku(0, at_least=6)
        sku, store = live.world.items[i].sku, live.world.stores[0].code
        async with connected(live.url, protocol) as client:
            before = live.subscribers()
            op = await client.subscribe(STOCK_CHANGED, {"skus": [sku], "locs": [store]})
            await live.registered(before)
            after_first = await live.sale(i, 0, 1)
            first = (await client.next(op))["stockChanged"]
            truth = await live.square_counts(i, 0)
            assert (first["sku"], first["locationId"], first["source"]) == (sku, store, "pos")
            assert first["stockLevel"]["available"] == after_first == truth["IN_STOCK"]
            assert first["stockLevel"]["committed"] == truth["RESERVED_FOR_SALE"]
            assert first["stockLevel"]["location"]["id"] == store
            assert first["conflated"] is False
            # Published after the cache write: a query right now sees at least this state.
            level = (await live.data(STOCK_LEVEL, {"sku": sku, "loc": store}))["stockLevel"]
            assert level["available"] == after_first

            after_second = await live.sale(i, 0, 2)
            second = (await client.next(op))["stockChanged"]
            assert second["stockLevel"]["available"] == after_second == after_first - 2
            assert second["stockLevel"]["available"] == (await live.square_counts(i, 0))[
                "IN_STOCK"]
            assert second["previous"]["available"] == after_first
            assert second["movement"]["type"] == "SALE"
            assert second["movement"]["quantity"] == 2
            assert cursor_key(second["cursor"]) > cursor_key(first["cursor"])

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_wms_epcis_event_arrives_with_the_simulators_balance(self, live: Live,
                                                                       protocol: str) -> None:
        i = live.sku()
        sku, warehouse = live.world.items[i].sku, live.world.warehouses[1].code
        start = await live.wms_balance(i, 1)
        async with connected(live.url, protocol) as client:
            before = live.subscribers()
            op = await client.subscribe(STOCK_CHANGED, {"skus": [sku], "locs": [warehouse]})
            await live.registered(before)
            await live.capture([live.epcis_event(i, 1, "cycle_counting", start["onHand"] + 9)])
            counted = (await client.next(op))["stockChanged"]
            truth = await live.wms_balance(i, 1)
            assert truth["onHand"] == start["onHand"] + 9
            assert (counted["sku"], counted["locationId"]) == (sku, warehouse)
            assert counted["source"] == "wms"
            assert counted["stockLevel"]["onHand"] == truth["onHand"]
            assert counted["stockLevel"]["available"] == truth["available"]
            assert counted["stockLevel"]["committed"] == truth["allocated"]
            assert counted["movement"]["type"] == "COUNT"
            assert counted["movement"]["bizStep"] == "cycle_counting"

            await live.capture([live.epcis_event(i, 1, "arriving", 4)])
            received = (await client.next(op))["stockChanged"]
            assert received["stockLevel"]["onHand"] == truth["onHand"] + 4
            assert received["stockLevel"]["onHand"] == (await live.wms_balance(i, 1))["onHand"]
            assert received["previous"]["onHand"] == truth["onHand"]
            assert received["movement"]["type"] == "TRANSFER_IN"
            assert received["movement"]["quantity"] == 4

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_filters_keep_other_cells_out(self, live: Live, protocol: str) -> None:
        a, b = live.sku(0, at_least=3), live.sku(0, at_least=3)
        while live.world.store_counts(a, 1)[0] < 3:
            a = live.sku(0, at_least=3)
        sku_a, sku_b = live.world.items[a].sku, live.world.items[b].sku
        st1, st2 = live.world.stores[0].code, live.world.stores[1].code
        async with connected(live.url, protocol) as client:
            before = live.subscribers()
            narrow = await client.subscribe(STOCK_CHANGED, {"skus": [sku_a], "locs": [st1]})
            by_sku = await client.subscribe(STOCK_CHANGED, {"skus": [sku_a]})
            by_location = await client.subscribe(STOCK_CHANGED, {"skus": [sku_a, sku_b],
                                                                 "locs": [st2]})
            await live.registered(before, 3)
            await live.sale(a, 1, 1)  # sku_a at ST002
            await live.sale(b, 0, 1)  # sku_b at ST001
            await live.sale(a, 0, 1)  # sku_a at ST001: the only match of `narrow`
            # Stream order is delivery order, so anything unfiltered would come first.
            assert [(c["sku"], c["locationId"]) for c in await client.take(narrow, 1)] == [
                (sku_a, st1)]
            assert [(c["sku"], c["locationId"]) for c in await client.take(by_sku, 2)] == [
                (sku_a, st2), (sku_a, st1)]
            assert [(c["sku"], c["locationId"]) for c in await client.take(by_location, 1)] \
                == [(sku_a, st2)]
            await live.sale(b, 1, 1)  # sku_b at ST002 matches by_location only
            assert [(c["sku"], c["locationId"]) for c in await client.take(by_location, 1)] \
                == [(sku_b, st2)]
            assert not client.pending[narrow]
            assert not client.pending[by_sku]

    async def test_changes_arrive_in_order_per_cell(self, live: Live) -> None:
        i, j = live.sku(), live.sku()
        skus = [live.world.items[i].sku, live.world.items[j].sku]
        start = {(n, w): (await live.wms_balance(n, w))["onHand"] for n in (i, j)
                 for w in (0, 1)}
        async with connected(live.url, TRANSPORT_WS) as client:
            before = live.subscribers()
            op = await client.subscribe(STOCK_CHANGED, {"skus": skus})
            await live.registered(before)
            # One document, 24 events: the WMS sends one webhook per event, in order.
            events = [live.epcis_event(n, w, "arriving", 1)
                      for _ in range(6) for n in (i, j) for w in (0, 1)]
            await live.capture(events)
            changes = await client.take(op, len(events))
        cursors = [cursor_key(c["cursor"]) for c in changes]
        assert cursors == sorted(cursors)
        assert len(set(cursors)) == len(cursors)
        by_cell: dict[tuple[str, str], list[int]] = defaultdict(list)
        for c in changes:
            by_cell[c["sku"], c["locationId"]].append(c["stockLevel"]["onHand"])
        for (n, w), on_hand in start.items():
            cell = (live.world.items[n].sku, live.world.warehouses[w].code)
            assert by_cell[cell] == [on_hand + k for k in range(1, 7)]
            assert by_cell[cell][-1] == (await live.wms_balance(n, w))["onHand"]

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_history_pages_then_a_subscription_continues_without_gap(
            self, live: Live, protocol: str) -> None:
        i = live.sku()
        cell = {"skus": [live.world.items[i].sku], "locs": [live.world.warehouses[0].code]}
        arrive = [live.epcis_event(i, 0, "arriving", 1)]
        async with connected(live.url, protocol) as client:
            before = live.subscribers()
            watch = await client.subscribe(STOCK_CHANGED, cell)
            await live.registered(before)
            await live.capture(arrive * 7)
            seen = await client.take(watch, 7)

            pages: list[dict[str, Any]] = []
            after = None
            while not pages or pages[-1]["hasMore"]:
                page = (await live.data(STOCK_EVENTS, {**cell, "after": after, "first": 3}))[
                    "stockEvents"]
                pages.append(page)
                after = page["endCursor"]
            assert [len(p["changes"]) for p in pages] == [3, 3, 1]
            assert [p["hasMore"] for p in pages] == [True, True, False]
            # History is the same log, with the same cursors, as what was delivered live.
            assert [c for p in pages for c in p["changes"]] == seen
            assert [p["endCursor"] for p in pages[:2]] == [seen[2]["cursor"], seen[5]["cursor"]]
            assert after is not None
            assert cursor_key(after) >= cursor_key(seen[6]["cursor"])

            # Changes happen before the app subscribes: it gets them first, then live ones.
            await live.capture(arrive * 2)
            missed = await client.take(watch, 2)
            app = await client.subscribe(STOCK_CHANGED, {**cell, "after": after})
            assert await client.take(app, 2) == missed
            await live.capture(arrive * 3)
            later = await client.take(watch, 3)
            assert await client.take(app, 3) == later
            on_hand = [c["stockLevel"]["onHand"] for c in [*seen, *missed, *later]]
            assert on_hand == list(range(on_hand[0], on_hand[0] + 12))
            # Nothing twice: the next change after those is the next one delivered.
            await live.capture(arrive)
            assert await client.take(app, 1) == await client.take(watch, 1)

    async def test_history_of_cells_without_changes_still_gives_a_cursor(self, live: Live
                                                                         ) -> None:
        i = live.sku()
        cell = {"skus": [live.world.items[i].sku], "locs": [live.world.warehouses[1].code]}
        page = (await live.data(STOCK_EVENTS, {**cell, "first": 5}))["stockEvents"]
        assert page["changes"] == []
        assert page["hasMore"] is False
        assert page["endCursor"] is not None
        await live.capture([live.epcis_event(i, 1, "arriving", 2)])  # before subscribing
        async with connected(live.url, TRANSPORT_WS) as client:
            op = await client.subscribe(STOCK_CHANGED, {**cell, "after": page["endCursor"]})
            [change] = await client.take(op, 1)
        assert change["stockLevel"]["onHand"] == (await live.wms_balance(i, 1))["onHand"]

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_cursor_older_than_the_retention_is_refused(self, live: Live,
                                                              protocol: str) -> None:
        i = live.sku()
        cell = {"skus": [live.world.items[i].sku], "locs": [live.world.warehouses[0].code]}
        async with connected(live.url, protocol) as client:
            before = live.subscribers()
            watch = await client.subscribe(STOCK_CHANGED, cell)
            await live.registered(before)
            await live.capture([live.epcis_event(i, 0, "arriving", 1)] * 4)
            c0, _, c2, c3 = (c["cursor"] for c in await client.take(watch, 4))
            # What the retention does: entries before c2 leave the log, so c0 missed one.
            live.redis.xtrim(CHANGES, minid=c2, approximate=False)

            body = await live.graphql(STOCK_EVENTS, {**cell, "after": c0, "first": 5})
            assert errors_of(body) == ["CURSOR_EXPIRED"]
            assert "re-query" in body["errors"][0]["message"]
            expired = await client.subscribe(STOCK_CHANGED, {**cell, "after": c0})
            with pytest.raises(SubscriptionError) as refused:
                await client.next(expired)
            assert refused.value.codes == ["CURSOR_EXPIRED"]
            assert "re-query" in refused.value.errors[0]["message"]

            # A cursor the log still holds resumes exactly after itself.
            page = (await live.data(STOCK_EVENTS, {**cell, "after": c2, "first": 5}))[
                "stockEvents"]
            assert [c["cursor"] for c in page["changes"]] == [c3]
            resumed = await client.subscribe(STOCK_CHANGED, {**cell, "after": c2})
            assert [c["cursor"] for c in await client.take(resumed, 1)] == [c3]

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_invalid_cursor_is_bad_user_input(self, live: Live, protocol: str) -> None:
        for bad in ("yesterday", "12-", "-5", "1-2-3", ""):
            body = await live.graphql(STOCK_EVENTS, {"after": bad, "first": 5})
            assert errors_of(body) == ["BAD_USER_INPUT"], (bad, body)
            assert "cursor" in body["errors"][0]["message"]
        assert errors_of(await live.graphql(STOCK_EVENTS, {"first": 0})) == ["BAD_USER_INPUT"]
        async with connected(live.url, protocol) as client:
            op = await client.subscribe(STOCK_CHANGED, {"after": "yesterday"})
            with pytest.raises(SubscriptionError) as refused:
                await client.next(op)
            assert refused.value.codes == ["BAD_USER_INPUT"]
            # The connection stays usable.
            await client.subscribe(STOCK_CHANGED, {"skus": ["nothing"]})

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_availability_changed_reports_the_new_availability(self, live: Live,
                                                                     protocol: str) -> None:
        i = live.sku(0, at_least=3)
        sku = live.world.items[i].sku
        query = """subscription($skus: [ID!], $channel: Channel!) {
          availabilityChanged(skus: $skus, channel: $channel) {
            channel available sources byLocation { location { id } available sellable
                                                   safetyStock } } }"""
        product = """query($sku: ID!, $channel: Channel!) { product(sku: $sku) {
          availability(channel: $channel) { available } } }"""
        async with connected(live.url, protocol) as client:
            before = live.subscribers()
            store_op = await client.subscribe(query, {"skus": [sku], "channel": "STORE"})
            online_op = await client.subscribe(query, {"skus": [sku], "channel": "ONLINE"})
            await live.registered(before, 2)

            sold = await live.sale(i, 0, 2)
            store = (await client.next(store_op))["availabilityChanged"]
            in_stock = [(await live.square_counts(i, s))["IN_STOCK"]
                        for s in range(len(live.world.stores))]
            assert store["channel"] == "STORE"
            assert store["available"] == sum(in_stock)
            assert {x["location"]["id"]: x["available"] for x in store["byLocation"]} == {
                loc.code: n for loc, n in zip(live.world.stores, in_stock, strict=True)}
            assert in_stock[0] == sold
            assert store["sources"] == ["pos"]
            assert (await live.data(product, {"sku": sku, "channel": "STORE"}))["product"][
                "availability"]["available"] == store["available"]

            await live.capture([live.epcis_event(i, 0, "arriving", 5)])
            online = (await client.next(online_op))["availabilityChanged"]
            balances = [await live.wms_balance(i, w) for w in range(len(live.world.warehouses))]
            safety = {x["location"]["id"]: x["safetyStock"] for x in online["byLocation"]}
            assert online["channel"] == "ONLINE"
            assert online["sources"] == ["wms"]
            assert online["available"] == sum(
                max(0, b["available"] - safety[w.code])
                for w, b in zip(live.world.warehouses, balances, strict=True))
            assert (await live.data(product, {"sku": sku, "channel": "ONLINE"}))["product"][
                "availability"]["available"] == online["available"]

            # The store channel did not fire for the warehouse change: its next one is a sale.
            await live.sale(i, 0, 1)
            assert (await client.next(store_op))["availabilityChanged"]["available"] == \
                store["available"] - 1

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    async def test_stock_status_fires_only_on_crossings(self, live: Live, protocol: str
                                                        ) -> None:
        i = live.sku(0, at_least=10)
        sku, store = live.world.items[i].sku, live.world.stores[0].code
        status_query = """subscription($skus: [ID!], $locs: [ID!], $low: Int!) {
          stockStatusChanged(skus: $skus, locationIds: $locs, lowStockThreshold: $low) {
            status previousStatus change { cursor stockLevel { available } } } }"""
        async with connected(live.url, protocol) as client:
            before = live.subscribers()
            watch = await client.subscribe(STOCK_CHANGED, {"skus": [sku], "locs": [store]})
            await live.registered(before)
            level = await live.sale(i, 0, 1)  # the gateway now knows the cell's level
            await client.take(watch, 1)
            low = level - 3

            before = live.subscribers()
            op = await client.subscribe(status_query, {"skus": [sku], "locs": [store],
                                                       "low": low})
            await live.registered(before)
            assert await live.sale(i, 0, 1) == low + 2  # still in stock: nothing
            assert await live.sale(i, 0, 2) == low  # crosses into low stock
            assert await live.sale(i, 0, 1) == low - 1  # low again: nothing
            assert await live.sale(i, 0, low - 1) == 0  # out of stock
            await live.count(i, 0, 2)  # back to low
            fired = [(await client.next(op))["stockStatusChanged"] for _ in range(3)]
            all_changes = await client.take(watch, 5)
        assert [(f["previousStatus"], f["status"], f["change"]["stockLevel"]["available"])
                for f in fired] == [("IN_STOCK", "LOW_STOCK", low),
                                    ("LOW_STOCK", "OUT_OF_STOCK", 0),
                                    ("OUT_OF_STOCK", "LOW_STOCK", 2)]
        assert [f["change"]["cursor"] for f in fired] == [
            all_changes[k]["cursor"] for k in (1, 3, 4)]

    async def test_keepalives_and_pings(self, live: Live) -> None:
        async with connected(live.url, LEGACY_WS) as client:
            op = await client.subscribe(STOCK_CHANGED, {"skus": ["idle"]})
            while client.keepalives < 3:  # every ws_keepalive_seconds (0.2 s here)
                await client.message(within=5)
            assert not client.pending[op]
        async with connected(live.url, TRANSPORT_WS) as client:
            await client.subscribe(STOCK_CHANGED, {"skus": ["idle"]})
            await client.ping()
            while client.pongs < 1:
                await client.message(within=5)

    async def test_clients_that_leave_at_once_leave_no_subscription_behind(self, live: Live
                                                                           ) -> None:
        before = live.subscribers()
        page = (await live.data(STOCK_EVENTS, {"first": 1}))["stockEvents"]
        for n in range(20):
            async with connected(live.url, PROTOCOLS[n % 2]) as client:
                await client.subscribe(STOCK_CHANGED, {"skus": ["gone"]} if n % 4 < 2 else {
                    "skus": ["gone"], "after": page["endCursor"]})
        assert await live.gone(before) == set()


    async def test_hundreds_of_clients_resuming_at_once_all_get_their_changes(
            self, live: Live) -> None:
        """Each resume reads the log; more at once than the Redis pool holds connections
        must wait for one, not fail."""
        i = live.sku()
        cell = {"skus": [live.world.items[i].sku], "locs": [live.world.warehouses[0].code]}
        after = (await live.data(STOCK_EVENTS, {**cell, "first": 1}))["stockEvents"][
            "endCursor"]
        async with contextlib.AsyncExitStack() as stack:
            clients = await asyncio.gather(*(
                stack.enter_async_context(connected(live.url, PROTOCOLS[n % 2]))
                for n in range(240)))
            ops = await asyncio.gather(*(
                client.subscribe(STOCK_CHANGED, {**cell, "after": after})
                for client in clients))
            await live.capture([live.epcis_event(i, 0, "arriving", 3)])
            got = await asyncio.gather(*(client.take(op, 1, within=30)
                                         for client, op in zip(clients, ops, strict=True)))
        on_hand = (await live.wms_balance(i, 0))["onHand"]
        assert [[c["stockLevel"]["onHand"] for c in changes] for changes in got] == \
            [[on_hand]] * len(clients)


# -- a stack with a tiny subscriber buffer and retention ------------------------------------

SLOW_FIELDS = " ".join(  # ~9 KB per change, so a consumer that does not read backs up soon
    f"l{n}: stockLevel {{ sku location {{ id name type }} onHand available committed incoming "
    "qualityControl damaged safetyStock sellable source asOf stale }" for n in range(24))
SLOW_STOCK_CHANGED = f"""subscription($skus: [ID!], $locs: [ID!]) {{
  stockChanged(skus: $skus, locationIds: $locs) {{ cursor sku locationId conflated
                                                   stockLevel {{ available }} {SLOW_FIELDS} }} }}"""


def small_socket(port: int) -> socket.socket:
    """A connected client socket with a small receive buffer (the kernel's floor)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


class TestTightStack:
    async def test_history_of_an_empty_log_gives_a_cursor_that_misses_nothing(
            self, tight: Live) -> None:
        assert not tight.redis.exists(CHANGES)  # nothing was ever published
        i = tight.sku(0, at_least=2)
        cell = {"skus": [tight.world.items[i].sku], "locs": [tight.world.stores[0].code]}
        page = (await tight.data(STOCK_EVENTS, {**cell, "first": 5}))["stockEvents"]
        assert page["changes"] == []
        assert page["endCursor"] is not None
        level = await tight.sale(i, 0, 1)  # after loading history, before subscribing
        async with connected(tight.url, LEGACY_WS) as client:
            op = await client.subscribe(STOCK_CHANGED, {**cell, "after": page["endCursor"]})
            [change] = await client.take(op, 1)
        assert change["stockLevel"]["available"] == level

    async def test_slow_consumer_is_conflated_and_holds_nobody_back(self, tight: Live) -> None:
        limit = tight.settings.subscriber_buffer
        cells = [tight.sku(), tight.sku()]
        skus = [tight.world.items[i].sku for i in cells]
        cell = {"skus": skus, "locs": [tight.world.stores[0].code]}
        signer = Signer(tight.settings, tight.world)
        hook = f"{tight.url}/webhooks/pos"
        slow_socket = small_socket(tight.stack.gateway_ports[0])
        async with connected(tight.url, TRANSPORT_WS) as fast, \
                connected(tight.url, LEGACY_WS, sock=slow_socket, max_queue=1,
                          compression=None) as slow:
            before = tight.subscribers()
            fast_op = await fast.subscribe(STOCK_CHANGED, cell)
            slow_op = await slow.subscribe(SLOW_STOCK_CHANGED, cell)
            await tight.registered(before, 2)
            ours = tight.subscribers() - before
            received: list[dict[str, Any]] = []

            async def read_fast() -> None:
                while True:
                    received.append((await fast.next(fast_op, within=60))["stockChanged"])

            reader = asyncio.create_task(read_fast())
            sent: list[tuple[str, int]] = []
            peak_queue = peak_conflated = 0
            conflating_since: int | None = None
            async with httpx.AsyncClient(timeout=30) as http:
                # Many changes of two cells while `slow` reads nothing; keep on well past the
                # point where the gateway switched it to conflation.
                while len(sent) < 1000 and (conflating_since is None
                                            or len(sent) < conflating_since + 40):
                    n = len(sent)
                    quantity = 5000 - n
                    delivery = signer.square(hook, [signer.square_count(cells[n % 2], 0,
                                                                        quantity, now())])
                    assert (await apost(http, tight.url, delivery)).status_code == 200
                    sent.append((skus[n % 2], quantity))
                    for sub in ours:
                        peak_queue = max(peak_queue, len(sub.queue))
                        peak_conflated = max(peak_conflated, len(sub.conflated or ()))
                        if sub.conflated is not None and conflating_since is None:
                            conflating_since = len(sent)
            assert conflating_since is not None, "the slow consumer never backed up"
            # The fast consumer got every change, in order, while the slow one read nothing.
            for _ in range(3000):
                if len(received) >= len(sent) or reader.done():
                    break
                await asyncio.sleep(0.01)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader  # a reader that failed says why
            assert [(c["sku"], c["stockLevel"]["available"]) for c in received] == sent
            assert not any(c["conflated"] for c in received)
            # The gateway buffered at most `subscriber_buffer` changes, then one per cell.
            assert peak_queue <= limit
            assert peak_conflated <= len(cells)

            # The slow consumer reads now: in order per cell, and the latest value per cell.
            final = {sku: q for sku, q in sent}
            got: list[dict[str, Any]] = []
            latest: dict[str, int] = {}
            while latest != final:
                change = (await slow.next(slow_op, within=30))["stockChanged"]
                got.append(change)
                latest[change["sku"]] = change["stockLevel"]["available"]
            for sku in skus:
                values = [c["stockLevel"]["available"] for c in got if c["sku"] == sku]
                assert values == sorted(values, reverse=True)
                assert len(set(values)) == len(values)
            assert any(c["conflated"] for c in got)
            assert len(got) < len(sent)
            assert all(c["l0"]["available"] == c["stockLevel"]["available"] for c in got)

    async def test_changes_older_than_the_retention_leave_the_log(self, tight: Live) -> None:
        i = tight.sku()
        cell = {"skus": [tight.world.items[i].sku], "locs": [tight.world.stores[0].code]}
        signer = Signer(tight.settings, tight.world)
        hook = f"{tight.url}/webhooks/pos"

        async def change(quantity: int) -> None:
            delivery = signer.square(hook, [signer.square_count(i, 0, quantity, now())])
            assert (await apost(http, tight.url, delivery)).status_code == 200

        async with httpx.AsyncClient(timeout=30) as http:
            for q in range(40):
                await change(100 + q)
            history = (await tight.data(STOCK_EVENTS, {**cell, "first": 40}))["stockEvents"]
            first = history["changes"][0]["cursor"]
            assert (await tight.graphql(STOCK_EVENTS, {**cell, "after": first, "first": 1})
                    ).get("errors") is None
            await asyncio.sleep(1.5)  # change_retention_seconds = 1
            await change(7)  # publishing trims what is older than the retention
            await change(8)
            body = await tight.graphql(STOCK_EVENTS, {**cell, "after": first, "first": 5})
            assert errors_of(body) == ["CURSOR_EXPIRED"]
            async with connected(tight.url, TRANSPORT_WS) as client:
                op = await client.subscribe(STOCK_CHANGED, {**cell, "after": first})
                with pytest.raises(SubscriptionError) as refused:
                    await client.next(op)
                assert refused.value.codes == ["CURSOR_EXPIRED"]
                # Re-querying the history gives what is left, and a cursor that works.
                page = (await tight.data(STOCK_EVENTS, {**cell, "first": 50}))["stockEvents"]
                left = [c["stockLevel"]["available"] for c in page["changes"]]
                assert left[-2:] == [7, 8]
                assert 100 not in left
                assert left == [*range(140 - len(left) + 2, 140), 7, 8]
                resumed = await client.subscribe(STOCK_CHANGED, {**cell,
                                                                 "after": page["endCursor"]})
                await change(9)
                assert [c["stockLevel"]["available"]
                        for c in await client.take(resumed, 1)] == [9]
