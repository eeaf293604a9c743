"""The event cache under races, deterministically: forced read-vs-event interleavings,
out-of-order and duplicated deliveries, a stampede of misses, and the response cache.

Interleavings are forced with ``Cache.before_fill``, a hook the gateway awaits between a
backend read and the cache fill: a :class:`Gate` holds the first fill until the test has
applied a newer event, then lets it go. Everything else is real: simulators and gateways on
loopback ports, the test Redis, signed webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.app import Runtime, create_app
from tests.helpers_webhooks import (
    STOCK_LEVEL,
    Signer,
    hash_of,
    level_data,
    new_id,
    now,
    post,
    rfc3339,
    stock_level,
)
from tests.support import Stack, serve


def runtime_of(app: Any) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def gateway_runtime(stack: Stack, replica: int = 0) -> Runtime:
    return runtime_of(stack.gateways[replica].server.config.app)


class Gate:
    """``before_fill`` hook: holds the first fill until released (from another thread)."""

    def __init__(self, hold: int = 1) -> None:
        self.hold = hold
        self.calls = 0
        self.reached = threading.Event()
        self.release = threading.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls > self.hold:
            return
        self.reached.set()
        assert await asyncio.to_thread(self.release.wait, 15), "the gate was never released"

    def wait_reached(self) -> None:
        assert self.reached.wait(15), "no read-through reached the cache fill"


def in_background(fn: Any, *args: Any) -> Future[Any]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def served_from(response: httpx.Response, source: str) -> list[str]:
    found: list[str] = response.json()["extensions"]["freshness"]["sources"][source][
        "servedFrom"]
    return found


def epcis_capture(stack: Stack, sku_index: int, warehouse_index: int, on_hand: int) -> None:
    """A cycle count through the WMS's own API; its webhook reaches gateway 0."""
    item, warehouse = stack.world.items[sku_index], stack.world.warehouses[warehouse_index]
    gtin = item.gtin14
    with stack.sim("wms") as wms:
        captured = wms.post("/api/v1/events", json={
            "type": "ObjectEvent", "eventTime": now().isoformat(timespec="milliseconds"),
            "eventTimeZoneOffset": "+00:00", "action": "OBSERVE", "bizStep": "cycle_counting",
            "bizLocation": {"id": warehouse.sgln},
            "quantityList": [{"epcClass": f"urn:epc:idpat:sgtin:{gtin[1:7]}.{gtin[0]}"
                                          f"{gtin[7:13]}.*", "quantity": on_hand,
                              "uom": "EA"}]})
        assert captured.status_code == 202, captured.text


def square_sale(stack: Stack, sku_index: int, store_index: int, quantity: int) -> None:
    item, store = stack.world.items[sku_index], stack.world.stores[store_index]
    with stack.sim("pos") as pos:
        sale = pos.post("/v2/inventory/changes/batch-create", json={
            "idempotency_key": new_id(), "changes": [{"type": "ADJUSTMENT", "adjustment": {
                "catalog_object_id": item.square_variation_id, "location_id": store.square_id,
                "from_state": "IN_STOCK", "to_state": "SOLD", "quantity": str(quantity)}}]})
        assert sale.status_code == 200, sale.text


def delivered_ok(stack: Stack, name: str) -> None:
    """Drain the simulator's webhooks and check every one was acknowledged."""
    stack.drain_webhooks()
    with stack.sim(name) as sim:
        deliveries = sim.get("/_sim/webhooks").json()["deliveries"]
    assert deliveries
    assert all(d["status"] == 200 for d in deliveries), deliveries


# -- (a) a backend read that started before an event never overwrites it -----------------------


def test_read_through_that_started_before_an_event_keeps_the_event(stack: Stack) -> None:
    i = 3
    sku, warehouse = stack.world.items[i].sku, stack.world.warehouses[0].code
    before = stack.world.warehouse_balance(i, stack.world.warehouses[0].index).on_hand
    gate = Gate()
    gateway_runtime(stack).cache.before_fill = gate
    stack.reset_requests()
    slow = in_background(stock_level, stack.url, sku, warehouse)
    gate.wait_reached()  # the backend has answered `before`; the fill is held
    epcis_capture(stack, i, 0, before + 40)
    delivered_ok(stack, "wms")  # the event is applied and acknowledged meanwhile
    gate.release.set()
    assert level_data(slow.result(15))["onHand"] == before  # it read before the event
    entry = hash_of(stack.settings.redis_url, f"rg:{{s:{sku}}}:views:wms")
    assert entry[f"{warehouse}/on_hand"] == str(before + 40)
    after = stock_level(stack.url, sku, warehouse)
    assert after.headers.get("x-retailgraph-cache") != "hit"  # the held response was not kept
    assert level_data(after)["onHand"] == before + 40
    assert level_data(stock_level(stack.url, sku, warehouse))["onHand"] == before + 40


def test_square_read_through_that_started_before_a_sale_keeps_the_sale(stack: Stack) -> None:
    world = stack.world
    i = next(n for n in range(world.n_skus) if world.store_counts(n, 0)[0] >= 3)
    sku, store = world.items[i].sku, world.stores[0].code
    before = world.store_counts(i, 0)[0]
    gate = Gate()
    gateway_runtime(stack).cache.before_fill = gate
    slow = in_background(stock_level, stack.url, sku, store)
    gate.wait_reached()
    square_sale(stack, i, 0, 2)
    delivered_ok(stack, "pos")
    gate.release.set()
    assert level_data(slow.result(15))["available"] == before
    entry = hash_of(stack.settings.redis_url, f"rg:{{s:{sku}}}:views:pos")
    assert entry[f"{store}/available"] == str(before - 2)
    for _ in range(2):  # whether served from the cache or read through again
        assert level_data(stock_level(stack.url, sku, store))["available"] == before - 2


def test_replica_reading_before_an_event_on_the_other_replica_keeps_it(redis_url: str) -> None:
    """The event lands on replica 0 while replica 1's read-through is held."""
    with Stack(redis_url, replicas=2) as stack:
        signer = Signer(stack.settings, stack.world)
        i = 5
        sku = stack.world.items[i].sku
        gate = Gate()
        gateway_runtime(stack, 1).cache.before_fill = gate
        slow = in_background(stock_level, stack.gateways[1].url, sku, "WH01")
        gate.wait_reached()
        delivery = signer.epcis([signer.epcis_event(i, 0, 999, 50)])
        assert post(stack.gateways[0].url, delivery).status_code == 200
        gate.release.set()
        assert level_data(slow.result(15))["onHand"] != 999
        for url in (stack.gateways[1].url, stack.gateways[0].url):
            assert level_data(stock_level(url, sku, "WH01"))["onHand"] == 999


# -- (b) out-of-order and duplicated deliveries converge ---------------------------------------

ORDERS = [(3, 1, 2, 3), (1, 3, 3, 2), (2, 3, 1, 1)]


def _deliveries(signer: Signer, stack: Stack, backend: str, i: int,
                order: tuple[int, ...]) -> tuple[list[Any], dict[int, int]]:
    """One delivery per version (a repeated version is the same delivery again), and each
    version's value."""
    base = now()
    values = {v: 100 * v + 7 for v in set(order)}
    built: dict[int, Any] = {}
    for v in sorted(values):
        at = base + timedelta(seconds=v)
        if backend == "pos":
            built[v] = signer.square(f"{stack.url}/webhooks/pos",
                                     [signer.square_count(i, 0, values[v], at)])
        elif backend == "commerce":
            built[v] = signer.shopify(signer.shopify_level(i, 0, values[v], at))
        elif backend == "wms":
            built[v] = signer.epcis([signer.epcis_event(i, 0, values[v], v)])
        elif backend == "erp":
            built[v] = signer.erp(signer.erp_stock(i, "WH01", values[v], 10_000 + v, at=at))
        else:  # ERP item master, ordered by updatedAt
            item = stack.world.items[i]
            built[v] = signer.erp(signer.erp_event("item.updated", 10_000 + v, {
                "itemNumber": item.item_number, "sku": item.sku, "gtin": item.gtin13,
                "description": f"Name v{v}", "category": item.category,
                "listPrice": f"{values[v]}.00", "cost": "1.00", "currency": "NOK",
                "safetyStock": 0, "status": "ACTIVE", "updatedAt": rfc3339(at)}))
    return [built[v] for v in order], values


def _current(stack: Stack, backend: str, i: int) -> int:
    sku = stack.world.items[i].sku
    if backend == "pos":
        return int(level_data(stock_level(stack.url, sku, "ST001"))["available"])
    if backend == "wms":
        return int(level_data(stock_level(stack.url, sku, "WH01"))["onHand"])
    if backend == "item":
        body = stack.graphql('query($s: ID!) { product(sku: $s) { name price { amount } } }',
                             {"s": sku})
        product = body["data"]["product"]
        return int(product["price"]["amount"].split(".")[0])
    field = "available" if backend == "commerce" else "on_hand"
    return int(hash_of(stack.settings.redis_url,
                       f"rg:{{s:{sku}}}:views:{backend}")[f"WH01/{field}"])


@pytest.fixture(scope="module")
def shared(redis_server_url: str) -> Iterator[tuple[Stack, Iterator[int]]]:
    """One stack for the convergence cases, each on its own SKU."""
    flusher = redis.Redis.from_url(redis_server_url)
    flusher.flushdb()
    flusher.close()
    with Stack(redis_server_url) as stack:
        yield stack, itertools.count(20)


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(map(str, o)) for o in ORDERS])
@pytest.mark.parametrize("backend", ["pos", "wms", "commerce", "erp", "item"])
def test_out_of_order_and_duplicate_deliveries_converge(
        shared: tuple[Stack, Iterator[int]], backend: str, order: tuple[int, ...]) -> None:
    stack, skus = shared
    signer = Signer(stack.settings, stack.world)
    i = next(skus)
    if backend in ("pos", "wms", "item"):
        _current(stack, backend, i)  # the cell is cached before the events arrive
    deliveries, values = _deliveries(signer, stack, backend, i, order)
    seen: set[int] = set()
    for version, delivery in zip(order, deliveries, strict=True):
        response = post(stack.url, delivery)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == ("duplicate" if version in seen else "accepted")
        seen.add(version)
        newest = max(seen)
        assert _current(stack, backend, i) == values[newest]
    assert _current(stack, backend, i) == values[3]
    if backend == "item":
        assert stack.graphql('query($s: ID!) { product(sku: $s) { name } }',
                             {"s": stack.world.items[i].sku})["data"]["product"]["name"] == \
            "Name v3"


# -- (c) stampede: many concurrent misses, one backend call -------------------------------------


class CountRequests:
    """ASGI wrapper counting GraphQL requests that reached the gateway."""

    def __init__(self, app: ASGIApp, expected: int) -> None:
        self.app = app
        self.expected = expected
        self.graphql = 0
        self.all_in: asyncio.Event | None = None

    def arrived(self) -> asyncio.Event:
        if self.all_in is None:  # created in the server's event loop
            self.all_in = asyncio.Event()
        return self.all_in

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/graphql":
            self.graphql += 1
            if self.graphql >= self.expected:
                self.arrived().set()
        await self.app(scope, receive, send)


@pytest.mark.parametrize(("source", "location", "call"), [
    ("wms", "WH01", "POST /api/v1/balances/query"),
    ("pos", "ST001", "POST /v2/inventory/counts/batch-retrieve"),
])
def test_fifty_concurrent_misses_make_one_backend_call(stack: Stack, source: str,
                                                        location: str, call: str) -> None:
    # Coalescing with a working cache, not deadlines: on a loaded machine a cache read that
    # misses the 250 ms read deadline rightly goes to the backend (tests/e2e/test_sick_redis.py).
    app = create_app(dataclasses.replace(stack.settings, redis_read_timeout_ms=10_000))
    counted = CountRequests(app, 50)
    fills = 0

    async def hold_until_all_arrived() -> None:
        # Hold the one backend read's fill until all 50 queries are in, and a moment more
        # for them to reach the cache: then they have all missed while the read was on.
        nonlocal fills
        fills += 1
        await asyncio.wait_for(counted.arrived().wait(), 15)
        await asyncio.sleep(0.3)

    with serve(counted) as server:
        runtime_of(app).cache.before_fill = hold_until_all_arrived
        sku = stack.world.items[11].sku
        stack.reset_requests()

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(
                    max_connections=60)) as client:
                body = {"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": location}}
                return await asyncio.gather(*(client.post(f"{server.url}/graphql", json=body)
                                              for _ in range(50)))

        responses = asyncio.run(burst())
    levels = [level_data(r) for r in responses]
    assert all(level == levels[0] for level in levels)
    assert stack.requests(source).get(call) == 1
    assert fills == 1
    coalesced = [r for r in responses if served_from(r, source) == ["backend"]]
    assert len(coalesced) >= 2  # concurrent misses shared the one read


# -- (d) the response cache ----------------------------------------------------------------------

PAIR = """query($a: ID!, $b: ID!) {
  a: stockLevel(sku: $a, locationId: "WH01") { onHand }
  b: stockLevel(sku: $b, locationId: "ST001") { available }
}"""


def _ask(url: str, variables: dict[str, Any]) -> httpx.Response:
    response = httpx.post(f"{url}/graphql", json={"query": PAIR, "variables": variables},
                          timeout=30)
    assert "errors" not in response.json(), response.text
    return response


def _until_hit(url: str, variables: dict[str, Any]) -> httpx.Response:
    """The miss stores its response just after answering; ask until it is served."""
    for _ in range(200):
        response = _ask(url, variables)
        if response.headers.get("x-retailgraph-cache") == "hit":
            return response
        time.sleep(0.01)
    raise AssertionError("the response was never served from the response cache")


def test_repeated_query_is_served_from_the_response_cache(stack: Stack) -> None:
    world = stack.world
    variables = {"a": world.items[1].sku, "b": world.items[2].sku}
    first = _ask(stack.url, variables)
    assert first.headers.get("x-retailgraph-cache") != "hit"
    assert first.json()["extensions"]["freshness"]["responseCache"] == "miss"
    stack.reset_requests()
    hit = _until_hit(stack.url, variables)
    assert hit.json()["data"] == first.json()["data"]
    assert hit.json()["extensions"]["freshness"]["responseCache"] == "hit"
    again = _ask(stack.url, variables)
    assert again.headers.get("x-retailgraph-cache") == "hit"
    assert all(not counts for counts in (stack.requests(n) for n in stack.sims))


def test_a_hit_is_one_redis_round_trip_with_the_rate_limit(redis_url: str) -> None:
    """With the rate limit on, a hit sends two commands, the bucket's EVALSHA and the
    response cache's MGET (entry and epoch), in one pipeline, and nothing else about the
    request: MONITOR shows what the gateway sent about it, and the client's command guard,
    which runs every command or pipeline (one round trip each), ran the MGET in none of its
    own."""
    running = Stack(redis_url, skus=5)
    running.settings.rate_limit_per_minute = 100_000
    with running:
        world = running.world
        variables = {"a": world.items[1].sku, "b": world.items[2].sku}
        _until_hit(running.url, variables)
        guard = gateway_runtime(running).redis.guard  # type: ignore[union-attr]
        trips: list[str] = []
        run = guard.run

        async def counted(block: float, call: Any, what: str) -> Any:
            trips.append(what)
            return await run(block, call, what)

        sent: list[str] = []
        watcher = redis.Redis.from_url(redis_url)
        # redis-py leaves Redis.monitor() unannotated.
        with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
            started = threading.Event()

            def watch() -> None:
                started.set()
                with contextlib.suppress(redis.RedisError, OSError, ValueError):
                    for command in monitor.listen():
                        if command.get("client_type") != "lua":  # not a script's inside
                            sent.append(str(command["command"]))

            threading.Thread(target=watch, daemon=True).start()
            started.wait(5)
            httpx.get(f"{running.url}/healthz", timeout=10)
            time.sleep(0.3)
            first = len(sent)
            guard.run = counted
            try:
                for _ in range(5):
                    answer = _ask(running.url, variables)
                    assert answer.headers["x-retailgraph-cache"] == "hit"
            finally:
                guard.run = run
            time.sleep(0.3)
            mine = sent[first:]
        ours = [text.split(" ", 1)[0].upper() for text in mine
                if "rg:rl:" in text or "rg:{rc}:" in text]
        assert ours == ["EVALSHA", "MGET"] * 5, mine
        assert trips.count("pipeline of 2") >= 5, trips
        assert "MGET" not in trips, trips


def test_event_on_a_contained_sku_invalidates_the_response(stack: Stack) -> None:
    world, signer = stack.world, Signer(stack.settings, stack.world)
    variables = {"a": world.items[1].sku, "b": world.items[2].sku}
    _until_hit(stack.url, variables)
    # An event on a SKU the response does not contain leaves it cached.
    other = signer.epcis([signer.epcis_event(9, 0, 4242, 9)])
    assert post(stack.url, other).status_code == 200
    assert _ask(stack.url, variables).headers.get("x-retailgraph-cache") == "hit"
    # One on a SKU it contains does not.
    for n, delivery, check in (
            (1, signer.epcis([signer.epcis_event(1, 0, 3131, 9)]), ("a", "onHand", 3131)),
            (2, signer.square(f"{stack.url}/webhooks/pos", [signer.square_count(2, 0, 23, now())]),
             ("b", "available", 23))):
        assert post(stack.url, delivery).status_code == 200, n
        after = _ask(stack.url, variables)
        assert after.headers.get("x-retailgraph-cache") != "hit"
        alias, field, value = check
        assert after.json()["data"][alias][field] == value
        assert after.json()["extensions"]["freshness"]["responseCache"] == "miss"
        assert _until_hit(stack.url, variables).json()["data"][alias][field] == value


def test_response_computed_while_an_event_arrives_is_not_stored(stack: Stack) -> None:
    world, signer = stack.world, Signer(stack.settings, stack.world)
    variables = {"a": world.items[4].sku, "b": world.items[6].sku}
    gate = Gate()
    gateway_runtime(stack).cache.before_fill = gate
    slow = in_background(_ask, stack.url, variables)
    gate.wait_reached()  # executing: the backend has been read, nothing filled or stored
    assert post(stack.url, signer.epcis([signer.epcis_event(4, 0, 5151, 9)])).status_code == 200
    gate.release.set()
    computed = slow.result(15)
    assert computed.json()["data"]["a"]["onHand"] != 5151  # computed from before the event
    for _ in range(5):  # never served from the cache with the pre-event value
        response = _ask(stack.url, variables)
        assert response.json()["data"]["a"]["onHand"] == 5151
    assert _until_hit(stack.url, variables).json()["data"]["a"]["onHand"] == 5151


def test_each_replica_serves_the_invalidated_response_fresh(redis_url: str) -> None:
    with Stack(redis_url, replicas=2) as stack:
        signer = Signer(stack.settings, stack.world)
        variables = {"a": stack.world.items[1].sku, "b": stack.world.items[2].sku}
        urls = [g.url for g in stack.gateways]
        for url in urls:
            _until_hit(url, variables)
        for value in itertools.islice(itertools.count(600), 5):
            delivery = signer.epcis([signer.epcis_event(1, 0, value, value)])
            assert post(urls[0], delivery).status_code == 200
            for url in reversed(urls):
                assert _ask(url, variables).json()["data"]["a"]["onHand"] == value
