"""The demo's background activity, end to end: simulators, real webhooks, gateway, GraphQL.

The promise checked here is the product's: while tills, web orders, receipts and transfers
change stock in four systems, every cell they touched reads through the gateway exactly as
the system of record reports it, once the webhooks are delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections import defaultdict
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config import demo_settings
from gateway.demo import simulator_app
from gateway.simulators.activity import WEIGHTS, Activity, Plan
from gateway.simulators.world import World
from resolvers.connectors.http import auth_headers
from resolvers.store.keys import LOG_KEY
from tests.support import ServerThread, Stack, free_port, serve

# Every operation the activity performs, primary and follow-up.
KINDS = (*WEIGHTS, "allocate", "ship", "fulfil", "receive", "putaway", "in_transit",
         "transfer_in", "arrive", "stock_sync")
STORE_FIELDS = {"available": ("IN_STOCK",), "committed": ("RESERVED_FOR_SALE",),
                "incoming": ("IN_TRANSIT_TO", "IN_TRANSIT")}
WAREHOUSE_FIELDS = {"onHand": "onHand", "available": "available", "committed": "allocated",
                    "incoming": "incoming", "qualityControl": "qualityControl",
                    "damaged": "damaged"}


def plans(seed: int, n: int = 300) -> list[Plan]:
    activity = Activity(demo_settings(environ={}), World(7, 60, 3, 2), 10, seed=seed)
    return [activity.choose() for _ in range(n)]


def test_same_seed_chooses_the_same_operations() -> None:
    first = plans(5)
    assert plans(5) == first
    assert plans(6) != first
    assert {p.kind for p in first} == set(WEIGHTS)


async def run_activity(activity: Activity, least_seconds: float, patience: float) -> None:
    """Run until every kind of operation has happened (at least ``least_seconds``)."""
    task = asyncio.create_task(activity.run())
    started = time.monotonic()
    try:
        while time.monotonic() - started < patience:
            await asyncio.sleep(0.1)
            assert not task.done(), "the activity stopped by itself"
            if time.monotonic() - started >= least_seconds and all(
                    activity.stats[k] for k in KINDS):
                break
    finally:
        activity.stop()
        await asyncio.wait_for(task, 30)


def sim_clients(stack: Stack) -> dict[str, httpx.AsyncClient]:
    return {name: httpx.AsyncClient(base_url=b.base_url, headers=auth_headers(b), timeout=30)
            for name, b in stack.settings.backends.items()}


Served = dict[tuple[str, str], dict[str, int]]


async def graph_stock(stack: Stack, skus: list[str]) -> tuple[Served, dict[str, set[str]]]:
    """(sku, location id) -> quantities as the gateway's GraphQL serves them, and per source
    where they came from ("cache" or "backend")."""
    fields = "location { id } onHand available committed incoming qualityControl damaged"
    out: Served = {}
    origin: dict[str, set[str]] = defaultdict(set)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        for start in range(0, len(skus), 20):
            chunk = skus[start:start + 20]
            query = "{ " + " ".join(f'p{n}: product(sku: "{sku}") {{ stock {{ {fields} }} }}'
                                    for n, sku in enumerate(chunk)) + " }"
            body = (await http.post("/graphql", json={"query": query})).json()
            assert "errors" not in body, body["errors"]
            for source, info in body["extensions"]["freshness"]["sources"].items():
                origin[source].update(info["servedFrom"])
            for n, sku in enumerate(chunk):
                for level in body["data"][f"p{n}"]["stock"]:
                    out[sku, level["location"]["id"]] = {
                        k: v for k, v in level.items() if k != "location"}
    return out, origin


async def keep_reading(stack: Stack, skus: list[str]) -> None:
    """A client reading while stock changes: read-through fills race the events."""
    n = 0
    while True:
        await graph_stock(stack, skus[n % len(skus):][:10])
        n += 7


async def test_activity_keeps_the_graph_exactly_in_step_with_the_systems(
        stack: Stack, redis_url: str) -> None:
    skus = [item.sku for item in stack.world.items]
    await graph_stock(stack, skus)  # every cell cached: from here on, only events change them
    activity = Activity(stack.settings, stack.world, 40, seed=3, follow_up_delay=(0.2, 0.8))
    reader = asyncio.create_task(keep_reading(stack, skus))
    try:
        await run_activity(activity, least_seconds=2.0, patience=60.0)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    missing = [k for k in KINDS if not activity.stats[k]]
    assert not missing, f"never happened: {missing}; stats {dict(activity.stats)}"
    broken = {k: v for k, v in activity.stats.items()
              if k.endswith((".failed", ".retried", ".dropped"))}
    assert not broken, broken

    clients = sim_clients(stack)
    try:
        # Every webhook the activity caused reached the gateway and was accepted.
        delivered = 0
        for name, client in clients.items():
            assert (await client.post("/_sim/webhooks/drain")).json() == {"pending": 0}
            deliveries = (await client.get("/_sim/webhooks",
                                           params={"limit": 2000})).json()["deliveries"]
            assert deliveries, f"{name} sent no webhooks"
            assert {d["status"] for d in deliveries} == {200}, name
            stats = (await client.get("/_sim/stats")).json()
            assert stats["webhooks_failed"] == stats["webhooks_dropped"] == 0, (name, stats)
            assert stats["webhooks_sent"] == len(deliveries), "history must hold them all"
            delivered += len(deliveries)
        redis = aioredis.Redis.from_url(redis_url)
        try:
            assert await redis.xlen(LOG_KEY) >= delivered  # each logged once, >= 1 entry each
            assert await redis.xlen("rg:{ev}:dlq") == 0
        finally:
            await redis.aclose()

        # What the systems of record say about every cell the activity touched...
        world = stack.world
        cells = sorted(activity.touched)
        assert len(cells) > 20
        expected: dict[tuple[str, str], dict[str, int]] = {}
        store_cells = [(i, loc) for i, loc in cells if world.locations[loc].type == "STORE"]
        counts = (await clients["pos"].post("/v2/inventory/counts/batch-retrieve", json={
            "catalog_object_ids": sorted({world.item(i).square_variation_id
                                          for i, _ in store_cells}),
            "location_ids": sorted({world.locations[loc].square_id for _, loc in store_cells}),
            "limit": 1000})).json()
        assert "cursor" not in counts
        by_state: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for c in counts["counts"]:
            by_state[c["catalog_object_id"], c["location_id"]][c["state"]] = int(c["quantity"])
        for i, loc in store_cells:
            item, site = world.item(i), world.locations[loc]
            assert site.square_id is not None, site  # a store: Square knows it
            states = by_state[item.square_variation_id, site.square_id]
            expected[item.sku, site.code] = {
                k: sum(states.get(s, 0) for s in names) for k, names in STORE_FIELDS.items()}
        for i, loc in cells:
            item, site = world.item(i), world.locations[loc]
            if site.type != "WAREHOUSE":
                continue
            [row] = (await clients["wms"].post("/api/v1/balances/query", json={
                "gtins": [item.gtin14], "glns": [site.gln]})).json()["balances"]
            expected[item.sku, site.code] = {k: row[f] for k, f in WAREHOUSE_FIELDS.items()}
    finally:
        for client in clients.values():
            await client.aclose()

    # ... is exactly what the gateway serves.
    served, origin = await graph_stock(stack, sorted({sku for sku, _ in expected}))
    # Served from the cache the webhooks maintain, not read through from the systems.
    assert origin["pos"] == origin["wms"] == {"cache"}, origin
    got = {cell: {k: served[cell][k] for k in want} for cell, want in expected.items()}
    wrong = {cell: (want, got[cell]) for cell, want in expected.items() if got[cell] != want}
    assert not wrong, f"{len(wrong)} of {len(expected)} cells differ (want, got): {wrong}"


async def test_the_shop_stock_feed_can_be_switched_off(stack: Stack) -> None:
    """For the sync: without the built-in WMS -> Shopify feed nothing sets shop stock."""
    stack.reset_requests()
    activity = Activity(stack.settings, stack.world, 40, seed=5, follow_up_delay=(0.1, 0.3),
                        shop_stock_feed=False)
    await run_activity(activity, least_seconds=2.0, patience=2.5)  # never has every kind
    assert activity.stats["allocate"] + activity.stats["receive"] > 0  # WMS changes happened
    assert activity.stats["stock_sync"] == 0
    sets = {k: v for k, v in stack.requests("commerce").items()
            if k.startswith("POST") and "inventory_levels" in k}
    assert sets == {}


async def test_unreachable_system_is_retried_later_and_the_rest_goes_on(stack: Stack) -> None:
    settings = copy.deepcopy(stack.settings)
    erp = settings.backends["erp"]
    port = free_port()
    erp.base_url = f"http://127.0.0.1:{port}"  # nothing listens here yet
    activity = Activity(settings, stack.world, 40, seed=3, follow_up_delay=(0.2, 0.8))
    task = asyncio.create_task(activity.run())
    late: ServerThread | None = None
    try:
        deadline = time.monotonic() + 20
        while not activity.stats["receipt.retried"] or not activity.stats["sale"]:
            assert time.monotonic() < deadline, dict(activity.stats)
            await asyncio.sleep(0.05)
        assert not activity.stats["receipt"]
        # The ERP comes up: the receipts that failed are done on a later attempt.
        late = ServerThread(simulator_app(stack.world, erp, ""), port).start()
        while not activity.stats["receipt"]:
            assert time.monotonic() < deadline, dict(activity.stats)
            assert not task.done()
            await asyncio.sleep(0.05)
    finally:
        activity.stop()
        await asyncio.wait_for(task, 30)
        if late is not None:
            late.stop()
    assert not activity.stats["receipt.dropped"]
    assert all(not k.endswith(".failed") for k in activity.stats), dict(activity.stats)


class Receiver:
    """A webhook endpoint that accepts everything (the ids are read back from the sender)."""

    def __init__(self) -> None:
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        await request.body()
        return Response(status_code=200)


async def one_boot(world: World, receiver_url: str) -> tuple[set[str], list[Any]]:
    """Boot the four simulators, make one change in each; (event and delivery ids, data)."""
    settings = demo_settings(environ={})
    ids: set[str] = set()
    data: list[Any] = []
    item, store, site = world.item(0), world.stores[0], world.warehouses[0]
    changes = {
        "pos": ("/v2/locations", "/v2/inventory/changes/batch-create", {
            "idempotency_key": "k1", "changes": [{"type": "ADJUSTMENT", "adjustment": {
                "catalog_object_id": item.square_variation_id, "location_id": store.square_id,
                "from_state": "NONE", "to_state": "IN_STOCK", "quantity": "1"}}]}),
        "wms": ("/api/v1/sites", "/api/v1/events", {
            "type": "ObjectEvent", "eventTime": "2025-03-01T10:00:00.000Z",
            "eventTimeZoneOffset": "+00:00", "action": "ADD", "bizStep": "arriving",
            "bizLocation": {"id": site.sgln}, "quantityList": [{
                "epcClass": "urn:epc:idpat:sgtin:701234.0000000.*", "quantity": 1,
                "uom": "EA"}]}),
        "erp": ("/api/v1/locations", "/api/v1/stock-adjustments", {
            "sku": item.sku, "locationCode": site.code, "onHand": 5, "reason": "count"}),
        "commerce": ("/admin/api/2025-01/locations.json",
                     "/admin/api/2025-01/inventory_levels/set.json", {
                         "location_id": site.shopify_id,
                         "inventory_item_id": item.shopify_inventory_item_id, "available": 9}),
    }
    for name, backend in settings.backends.items():
        read, write, body = changes[name]
        with serve(simulator_app(world, backend, receiver_url)) as sim:
            async with httpx.AsyncClient(base_url=sim.url, headers=auth_headers(backend),
                                         timeout=30) as http:
                data.append((await http.get(read)).json())
                assert (await http.post(write, json=body)).is_success
                await http.post("/_sim/webhooks/drain")
                [delivery] = (await http.get("/_sim/webhooks")).json()["deliveries"]
        assert delivery["status"] == 200
        payload = orjson.loads(delivery["body"])
        headers = {k.lower(): v for k, v in delivery["headers"].items()}
        ids.add(f"{name}:delivery:{delivery['delivery_id']}")
        for key in ("webhook-id", "x-shopify-webhook-id", "x-shopify-event-id"):
            if key in headers:
                ids.add(f"{name}:{key}:{headers[key]}")
        if name == "pos":
            ids |= {f"pos:event:{payload['event_id']}", f"pos:data:{payload['data']['id']}"}
        if name == "wms":
            ids.add(f"wms:event:{payload['epcisBody']['eventList'][0]['eventID']}")
        if name == "erp":
            ids.add(f"erp:event:{payload['id']}")
    return ids, data


async def test_a_restarted_simulator_never_repeats_event_ids() -> None:
    """A gateway with a persistent Redis dedupes on these ids: a repeat after a demo restart
    would silently drop a real new event. Data ids stay the same for the same seed."""
    world = World(7, 30, 2, 2)
    receiver = Receiver()
    with serve(receiver.app) as hook:
        first_ids, first_data = await one_boot(world, f"{hook.url}/hook")
        second_ids, second_data = await one_boot(world, f"{hook.url}/hook")
    assert len(first_ids) == len(second_ids) == 12
    assert not first_ids & second_ids
    assert first_data == second_data
