"""A caller restricted to locations receives only what is computed from what it may see,
over HTTP and WebSocket alike: sync gaps of its locations, discrepancy totals of what it may
list, and ``extensions.freshness`` of the values it was served.

One gateway with API keys (an admin, a warehouse WH01 key, a store ST001 key), its seeded
world's opening ERP drift found by a reconciliation run, and two lost WMS events (one per
warehouse) that become cell-sequence gaps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.test_reconcile import reconcile
from tests.e2e.test_subscriptions import PROTOCOLS, GraphQLWs
from tests.e2e.test_sync_health import faults, wms_event
from tests.e2e.test_ws_guard import ask
from tests.support import Stack

KEYS = {"admin": ("visibility-admin-key-0001", ["admin"], None),
        "wh1": ("visibility-wh1-key-000001", ["stock:read", "discrepancies:read"], ["WH01"]),
        "st1": ("visibility-st1-key-000001", ["stock:read", "discrepancies:read"], ["ST001"])}
SOURCE_WIDE = ("lastEventReceivedAt", "lastEventOccurredAt", "eventsReceived",
               "eventsPerMinute", "lagOccurredToReceived", "lagReceivedToApplied", "rejects",
               "deadLetters", "openSequenceGap", "silentSeconds")
STATUS = """{ syncStatus { source lastEventReceivedAt lastEventOccurredAt eventsReceived
  eventsPerMinute lagOccurredToReceived { samples } lagReceivedToApplied { samples }
  rejects { reason count } deadLetters openSequenceGap silentSeconds heartbeatSeconds
  gapsDetected gapsHealed recentGaps { reason sku locationId healedAt } } }"""
TOTALS = """query($locs: [ID!], $min: Int!) {
  all: discrepancies(first: 100) { total edges { node { locationId delta } } }
  some: discrepancies(first: 100, locationIds: $locs, minDelta: $min) {
    total edges { node { locationId delta } } }
  one: discrepancies(first: 1) { total pageInfo { hasNextPage } } }"""
STOCK = """query($sku: ID!) { product(sku: $sku) { stock { location { id } available } } }"""


def key(name: str) -> str:
    return KEYS[name][0]


def query(stack: Stack, text: str, who: str, variables: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    response = httpx.post(f"{stack.url}/graphql", timeout=30,
                          headers={"authorization": f"Bearer {key(who)}"},
                          json={"query": text, "variables": variables or {}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    return body


async def over_ws(stack: Stack, protocol: str, text: str, who: str,
                  variables: dict[str, Any] | None = None) -> dict[str, Any]:
    client = await GraphQLWs.connect(stack.url, protocol,
                                     {"Authorization": f"Bearer {key(who)}"})
    try:
        kind, payload = await ask(client, text, variables)
    finally:
        await client.close()
    assert kind == "next", payload
    assert "errors" not in payload, payload
    body: dict[str, Any] = payload
    return body


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def restricted(redis_server_url: str) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    stack = Stack(redis_server_url, skus=24, stores=2, warehouses=2)
    stack.settings.api_keys = {
        name: {"key": k, "scopes": scopes, **({"locations": locs} if locs else {})}
        for name, (k, scopes, locs) in KEYS.items()}
    stack.settings.rate_limit_per_minute = 0
    with stack:
        reconcile(stack)  # the seeded ERP snapshot's opening drift
        # One lost WMS event per warehouse: a cell-sequence gap at each, healed.
        for n, warehouse in enumerate(stack.world.warehouses):
            item = stack.world.item(4 + n)
            query(stack, "query($s: ID!, $l: ID!) { stockLevel(sku: $s, locationId: $l) "
                         "{ onHand } }", "admin", {"s": item.sku, "l": warehouse.code})
            faults(stack, "wms", drop_rate=1.0)
            wms_event(stack, 4 + n, warehouse.code, "cycle_counting", 70 + n)
            faults(stack, "wms", drop_rate=0.0)
            wms_event(stack, 4 + n, warehouse.code, "picking", 1)
            stack.drain_webhooks()
        wait_for(lambda: sync_status(stack, "admin")["wms"]["gapsHealed"] == 2)
        yield stack


def sync_status(stack: Stack, who: str) -> dict[str, dict[str, Any]]:
    return {s["source"]: s for s in query(stack, STATUS, who)["data"]["syncStatus"]}


def test_sync_status_shows_only_the_callers_gaps(restricted: Stack) -> None:
    admin = sync_status(restricted, "admin")["wms"]
    assert {g["locationId"] for g in admin["recentGaps"]} == {"WH01", "WH02"}
    assert admin["eventsReceived"] > 0
    assert admin["lastEventReceivedAt"] is not None
    for who, visible in (("wh1", ["WH01"]), ("st1", [])):
        wms = sync_status(restricted, who)["wms"]
        assert [g["locationId"] for g in wms["recentGaps"]] == visible, who
        assert wms["gapsDetected"] == wms["gapsHealed"] == len(visible)
        # What is computed over every location (and would tell when and how much the
        # other locations changed) is not given to a restricted caller at all.
        assert {f: wms[f] for f in SOURCE_WIDE} == dict.fromkeys(SOURCE_WIDE)
        assert wms["heartbeatSeconds"] == admin["heartbeatSeconds"]  # configuration


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_sync_status_over_websocket_is_the_same(restricted: Stack, protocol: str
                                                       ) -> None:
    for who in ("wh1", "admin"):
        over_http = await asyncio.to_thread(query, restricted, STATUS, who)
        got = await over_ws(restricted, protocol, STATUS, who)
        for status in (*over_http["data"]["syncStatus"], *got["data"]["syncStatus"]):
            status.pop("silentSeconds")  # measured at the moment of each query
            status.pop("eventsPerMinute")
        assert got["data"] == over_http["data"]


def test_discrepancy_totals_count_what_the_caller_may_list(restricted: Stack) -> None:
    admin = query(restricted, TOTALS, "admin", {"locs": ["ST001"], "min": 2})["data"]
    assert admin["all"]["total"] == len(admin["all"]["edges"]) > 1
    assert admin["some"]["total"] == len(admin["some"]["edges"]) == len(
        [e for e in admin["all"]["edges"] if e["node"]["locationId"] == "ST001"
         and abs(e["node"]["delta"]) >= 2])
    assert admin["one"]["total"] == admin["all"]["total"]
    assert len({e["node"]["locationId"] for e in admin["all"]["edges"]} | {"ST001"}) > 1, \
        "the seed drifts at ST001 and elsewhere (else this proves nothing)"
    # locationIds null: every location the caller may see.
    store = query(restricted, TOTALS, "st1", {"locs": None, "min": 2})["data"]
    mine = [e for e in admin["all"]["edges"] if e["node"]["locationId"] == "ST001"]
    assert store["all"]["total"] == len(store["all"]["edges"]) == len(mine)
    assert store["some"]["total"] == len([e for e in mine if abs(e["node"]["delta"]) >= 2])
    assert store["one"]["total"] == len(mine) < admin["all"]["total"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_discrepancy_totals_over_websocket(restricted: Stack, protocol: str) -> None:
    variables = {"locs": None, "min": 2}
    over_http = await asyncio.to_thread(query, restricted, TOTALS, "st1", variables)
    got = await over_ws(restricted, protocol, TOTALS, "st1", variables)
    assert got["data"] == over_http["data"]


def freshness(body: dict[str, Any]) -> dict[str, Any]:
    sources: dict[str, Any] = body["extensions"]["freshness"]["sources"]
    return sources


def test_freshness_tells_nothing_about_other_locations(restricted: Stack) -> None:
    world = restricted.world
    item = next(i for i in range(world.n_skus)
                if world.store_counts(i, 0)[0] > 2 and world.store_counts(i, 1)[0] > 2)
    sku = world.item(item).sku
    before = query(restricted, STOCK, "st1", {"sku": sku})
    assert [s["location"]["id"] for s in before["data"]["product"]["stock"]] == ["ST001"]
    # The store's system of record (and the item master, which is no location's).
    assert set(freshness(before)) == {"pos", "erp"}
    assert {"pos", "wms", "erp"} <= set(freshness(query(restricted, STOCK, "admin",
                                                        {"sku": sku})))
    with restricted.sim("pos") as pos:
        response = pos.post("/v2/inventory/changes/batch-create", json={
            "idempotency_key": f"vis-{time.time_ns()}", "changes": [{
                "type": "ADJUSTMENT", "adjustment": {
                    "catalog_object_id": world.item(item).square_variation_id,
                    "location_id": world.stores[1].square_id, "from_state": "IN_STOCK",
                    "to_state": "SOLD", "quantity": "1"}}]})
        assert response.status_code == 200, response.text
    restricted.drain_webhooks()
    admin = query(restricted, STOCK, "admin", {"sku": sku})
    assert freshness(admin)["pos"]["newest"] > freshness(before)["pos"]["newest"]
    after = query(restricted, STOCK, "st1", {"sku": sku})
    # The sale at ST002 moved nothing this caller may see: not even when "newest" was.
    assert freshness(after)["pos"]["newest"] == freshness(before)["pos"]["newest"]
    assert freshness(after)["pos"]["oldest"] == freshness(before)["pos"]["oldest"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_freshness_over_websocket(restricted: Stack, protocol: str) -> None:
    sku = restricted.world.item(3).sku
    over_http = await asyncio.to_thread(query, restricted, STOCK, "st1", {"sku": sku})
    got = await over_ws(restricted, protocol, STOCK, "st1", {"sku": sku})
    assert set(freshness(got)) == set(freshness(over_http)) == {"pos", "erp"}
    assert freshness(got)["pos"]["newest"] == freshness(over_http)["pos"]["newest"]
