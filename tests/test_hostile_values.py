"""Hostile values (issue 11 §2), over real HTTP with correctly signed webhooks: what is accepted
can always be served, nothing pins a cell, and a cached response tells the same freshness
truth as an execution.

- Quantities: every quantity a vendor sends must fit GraphQL's 32-bit ``Int``; a delivery
  holding a larger (or, where negatives are real, a smaller) one is dead-lettered (202, the
  reason names the field and value) and changes nothing else. Sums the gateway computes
  (derived on-hand, availability over locations, discrepancy deltas, inferred movements)
  saturate at 2,147,483,647. A backend API reporting such a number is a BACKEND_BAD_RESPONSE
  naming it, never an ``Int cannot represent`` error.
- Versions: no signed timestamp may lie more than ``max_clock_skew_seconds`` ahead (it would
  outrank every later event); the unsigned ``X-Shopify-Triggered-At`` never orders anything;
  reconciliation repairs cells whose cached version lies in the future.
- Freshness: while a backend is down, a cached response holding its values is not served
  (an execution flags them stale), on plain and persisted-query requests alike.

Every probe also asserts: no 5xx, no error logged by the gateway, ``/healthz`` live.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway.simulators.activity import epc_class, now_iso
from gateway.simulators.erp import CURRENCY
from tests.helpers_webhooks import DLQ, Delivery, Signer, now, post, redis_state, rfc3339, stream
from tests.support import ServerThread, Stack

INT_MAX = 2**31 - 1
INT_MIN = -(2**31)
FAR = "9999-12-31T23:59:59.000000Z"

CELL = """query($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) {
  onHand available committed incoming qualityControl damaged safetyStock sellable stale
  views { source role onHand available committed incoming qualityControl damaged } } }"""
PRODUCT = """query($sku: ID!) { product(sku: $sku) {
  safetyStock
  stock { location { id } onHand available committed incoming qualityControl damaged
          safetyStock sellable }
  online: availability(channel: ONLINE) { available byLocation { available sellable } }
  store: availability(channel: STORE) { available byLocation { available sellable } } } }"""


class Collected(logging.Handler):
    """Error records of the gateway (and of uvicorn, whose loggers do not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def collecting() -> Iterator[Collected]:
    collected = Collected()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"),
               logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(collected)
    try:
        yield collected
    finally:
        for logger in loggers:
            logger.removeHandler(collected)


@dataclass
class Hub:
    """A running stack (four simulators, one gateway) and what the probes need."""

    stack: Stack
    redis_url: str
    signer: Signer
    client: httpx.Client
    logs: Collected
    indexes: Iterator[int]

    @property
    def url(self) -> str:
        return self.stack.url

    def fresh(self) -> int:
        """A SKU index no other test of the module touches."""
        return next(self.indexes)

    def sku(self, i: int) -> str:
        return self.stack.world.items[i].sku

    def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Executed (a unique comment defeats the response cache); no 5xx."""
        response = self.client.post(f"{self.url}/graphql", json={
            "query": f"{query}\n# {uuid.uuid4()}", "variables": variables})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def served(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """``data`` of a query that must answer without any error."""
        body = self.graphql(query, variables)
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    def cell(self, i: int, loc: str) -> dict[str, Any]:
        level: dict[str, Any] = self.served(CELL, {"sku": self.sku(i), "loc": loc})["stockLevel"]
        return level

    def view(self, i: int, loc: str, role: str) -> dict[str, Any]:
        views = [v for v in self.cell(i, loc)["views"] if v["role"] == role]
        assert len(views) == 1, views
        return views[0]

    def product(self, i: int) -> dict[str, Any]:
        product: dict[str, Any] = self.served(PRODUCT, {"sku": self.sku(i)})["product"]
        return product

    def healthy(self) -> None:
        assert self.client.get(f"{self.url}/healthz").status_code == 200
        assert not self.logs.records, [r.getMessage() for r in self.logs.records]

    def erp_sequence(self) -> int:
        """The ERP's next event number as the gateway's gap detector expects it (a jump
        would be a gap, healed by reconciling the ERP in the background)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            hwm = client.hget("rg:{sync}:seq:erp", "hwm")
        finally:
            client.close()
        return int(hwm) + 1 if hwm is not None else 1

    def in_gateway(self, make: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
        return in_gateway(self.stack, make)


def in_gateway(stack: Stack, make: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``make(runtime)`` on the gateway's own event loop (its Redis client lives there)."""
    server = stack.gateways[0]
    app = server.server.config.app
    while not hasattr(app, "state") or not hasattr(app.state, "runtime"):
        app = app.app
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(make(app.state.runtime),
                                            server.loop).result(timeout=60)


@pytest.fixture(scope="module")
def hub(redis_server_url: str) -> Iterator[Hub]:
    flusher = redis.Redis.from_url(redis_server_url)
    flusher.flushall()
    flusher.close()
    stack = Stack(redis_server_url, skus=90, stores=2, warehouses=2)
    with collecting() as logs, stack, httpx.Client(timeout=30) as client:
        yield Hub(stack, redis_server_url, Signer(stack.settings, stack.world), client, logs,
                  itertools.count(1))


def state(hub: Hub) -> dict[str, Any]:
    """Redis but the response cache and the bookkeeping a refusal may touch (sync-health
    counters count dead letters; the discrepancy index is re-judged in the background)."""
    return {k: v for k, v in redis_state(hub.redis_url).items()
            if not k.startswith(("rg:{rc}:", "rg:{sync}:", "rg:{disc}:"))}


def dead_lettered(hub: Hub, delivery: Delivery, *words: str) -> dict[str, Any]:
    """Post ``delivery``: 202 dead-lettered, the reason naming ``words``, kept once in the
    DLQ whole, nothing else changed, the gateway healthy."""
    before = state(hub)
    letters_before = len(stream(hub.redis_url, DLQ))
    response = post(hub.url, delivery, hub.client)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "dead-lettered", body
    for word in words:
        assert word in body["reason"], (word, body["reason"])
    letters = stream(hub.redis_url, DLQ)
    assert len(letters) == letters_before + 1
    assert letters[-1]["reason"] == body["reason"]
    assert letters[-1]["body"].encode() == delivery.body
    after = state(hub)
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    assert all(k == DLQ or k.startswith("rg:{ev}:dlqseen:") for k in changed), changed
    hub.healthy()
    return body


def accepted(hub: Hub, delivery: Delivery) -> None:
    response = post(hub.url, delivery, hub.client)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted", response.text
    hub.healthy()


# -- deliveries, one builder per vendor format ---------------------------------------------------

def square(hub: Hub, i: int, quantity: Any, store: int = 0, state_name: str = "IN_STOCK",
           **count: Any) -> Delivery:
    c = hub.signer.square_count(i, store, 0, now(), state_name)
    c["quantity"] = quantity
    c.update(count)
    return hub.signer.square(f"{hub.url}/webhooks/pos", [c])


def shopify_level(hub: Hub, i: int, available: Any, **level: Any) -> Delivery:
    body = hub.signer.shopify_level(i, 0, 0, now())
    body["available"] = available
    body.update(level)
    return hub.signer.shopify({k: v for k, v in body.items() if v is not None})


def shopify_order(hub: Hub, i: int, quantity: Any) -> Delivery:
    item = hub.stack.world.items[i]
    return hub.signer.shopify({
        "id": 450789469 + i, "name": f"#{1000 + i}", "created_at": rfc3339(now()),
        "line_items": [{"id": 1, "variant_id": item.shopify_variant_id, "sku": item.sku,
                        "quantity": quantity, "price": "1.00"}]}, topic="orders/create")


_wms_sequences = itertools.count(1_000_000)


def epcis(hub: Hub, i: int, on_hand: int = 5, warehouse: int = 0,
          balance: dict[str, Any] | None = None, **event: Any) -> Delivery:
    e = hub.signer.epcis_event(i, warehouse, on_hand, next(_wms_sequences))
    e["wms:balance"].update(balance or {})
    e.update(event)
    return hub.signer.epcis([e])


def erp_stock(hub: Hub, i: int, on_hand: Any, loc: str = "WH01",
              data: dict[str, Any] | None = None, **event: Any) -> Delivery:
    payload = hub.signer.erp_stock(i, loc, 0, hub.erp_sequence())
    payload["data"]["onHand"] = on_hand
    payload["data"].update(data or {})
    payload.update(event)
    payload["data"] = {k: v for k, v in payload["data"].items() if v is not None}
    return hub.signer.erp(payload)


def erp_item(hub: Hub, i: int, **changes: Any) -> Delivery:
    item = hub.stack.world.items[i]
    data = {"itemNumber": item.item_number, "sku": item.sku, "gtin": item.gtin13,
            "description": item.name, "category": item.category,
            "listPrice": str(item.list_price), "cost": str(item.cost), "currency": CURRENCY,
            "safetyStock": item.safety_stock, "status": "ACTIVE",
            "updatedAt": rfc3339(now())} | changes
    return hub.signer.erp(hub.signer.erp_event("item.updated", hub.erp_sequence(), data))


# -- 1. quantities past 32 bits ------------------------------------------------------------------

# (builder, location of the cell it lands on, words the reason must name)
OUT_OF_RANGE: dict[str, tuple[Callable[[Hub, int], Delivery], str, tuple[str, ...]]] = {
    "epcis onHand 2^31": (lambda h, i: epcis(h, i, 2**31), "WH01", ("2147483648",)),
    "epcis wms:balance.available 2^31": (
        lambda h, i: epcis(h, i, 5, balance={"available": 2**31}), "WH01",
        ("available", "2147483648")),
    "epcis wms:balance.incoming 2^40": (
        lambda h, i: epcis(h, i, 5, balance={"incoming": 2**40}), "WH01",
        ("incoming", str(2**40))),
    "epcis wms:sequence 2^53": (
        lambda h, i: epcis(h, i, 5, **{"wms:sequence": 2**53}), "WH01",
        ("wms:sequence", str(2**53))),
    "square quantity 2^31": (lambda h, i: square(h, i, str(2**31)), "ST001",
                             ("count quantity", "2147483648")),
    "square quantity -2^31-1": (lambda h, i: square(h, i, str(-2**31 - 1)), "ST001",
                                ("-2147483649",)),
    "square quantity 2^63 with decimals": (
        lambda h, i: square(h, i, "9223372036854775808.00000"), "ST001",
        ("9223372036854775808",)),
    "shopify available 2^31": (lambda h, i: shopify_level(h, i, 2**31), "WH01",
                               ("available", "2147483648")),
    "shopify available -2^31-1": (lambda h, i: shopify_level(h, i, -2**31 - 1), "WH01",
                                  ("-2147483649",)),
    "shopify order line quantity 2^31": (lambda h, i: shopify_order(h, i, 2**31), "WH01",
                                         ("quantity", "2147483648")),
    "erp onHand 2^31": (lambda h, i: erp_stock(h, i, 2**31), "WH01",
                        ("onHand", "2147483648")),
    "erp item safetyStock 2^31": (lambda h, i: erp_item(h, i, safetyStock=2**31), "WH01",
                                  ("safetyStock", "2147483648")),
    "erp sequence 2^53": (lambda h, i: erp_stock(h, i, 5, sequence=2**53), "WH01",
                          ("sequence", str(2**53))),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_quantity_past_32_bits_is_dead_lettered_and_the_cell_still_served(
        hub: Hub, case: str) -> None:
    build, loc, words = OUT_OF_RANGE[case]
    i = hub.fresh()
    before = hub.cell(i, loc)  # primes the cell in the cache
    product = hub.product(i)
    dead_lettered(hub, build(hub, i), *words)
    assert hub.cell(i, loc) == before
    assert hub.product(i) == product
    # The sender retries: still 202, kept once.
    letters = len(stream(hub.redis_url, DLQ))
    delivery = build(hub, i)
    assert post(hub.url, delivery, hub.client).status_code == 202
    assert post(hub.url, delivery, hub.client).status_code == 202
    assert len(stream(hub.redis_url, DLQ)) == letters + 1


def test_the_largest_int_is_accepted_and_served_exactly(hub: Hub) -> None:
    i = hub.fresh()
    accepted(hub, epcis(hub, i, INT_MAX))
    level = hub.cell(i, "WH01")
    assert (level["onHand"], level["available"]) == (INT_MAX, INT_MAX)
    accepted(hub, square(hub, i, str(INT_MAX) + ".00000"))
    assert hub.cell(i, "ST001")["available"] == INT_MAX
    accepted(hub, shopify_level(hub, i, INT_MIN))
    assert hub.view(i, "WH01", "ONLINE")["available"] == INT_MIN
    accepted(hub, erp_stock(hub, i, INT_MAX))
    assert hub.view(i, "WH01", "ERP_SNAPSHOT")["onHand"] == INT_MAX


def test_sums_past_32_bits_saturate_instead_of_failing(hub: Hub) -> None:
    """Availability over two warehouses at 2^31 - 1 each, and a store's on-hand made of two
    states at 2^31 - 1 each: served as 2147483647 ("at least"), not as an error."""
    i = hub.fresh()
    for warehouse in (0, 1):
        accepted(hub, epcis(hub, i, INT_MAX, warehouse=warehouse))
    for state_name in ("IN_STOCK", "RESERVED_FOR_SALE"):
        accepted(hub, square(hub, i, str(INT_MAX), state_name=state_name))
    accepted(hub, square(hub, i, str(INT_MAX), store=1))
    product = hub.product(i)
    assert product["online"]["available"] == INT_MAX
    assert [x["available"] for x in product["online"]["byLocation"]] == [INT_MAX, INT_MAX]
    assert product["store"]["available"] == INT_MAX
    store = next(s for s in product["stock"] if s["location"]["id"] == "ST001")
    assert (store["available"], store["committed"], store["onHand"]) == (INT_MAX, INT_MAX,
                                                                        INT_MAX)
    assert hub.view(i, "ST001", "SYSTEM_OF_RECORD")["onHand"] == INT_MAX


def test_deltas_and_inferred_movements_past_32_bits_saturate(hub: Hub) -> None:
    """A store count going from -2^31 (an oversold POS) to 2^31 - 1 is a movement of 2^32 - 1
    units, and an ERP snapshot of 2^31 - 1 against -2^31 a drift as large: the change
    history and the discrepancy listing serve them saturated, with the true numbers in the
    message."""
    i = hub.fresh()
    sku = hub.sku(i)
    hub.cell(i, "ST001")
    accepted(hub, square(hub, i, str(INT_MIN)))
    accepted(hub, erp_stock(hub, i, INT_MAX, loc="ST001"))

    async def settled(runtime: Any) -> None:
        await runtime.reconciliation.rechecker.idle()

    hub.in_gateway(settled)
    listing = hub.served("""query($skus: [ID!]) { discrepancies(skus: $skus, minDelta: 0) {
        nodes { kind delta explainedByMovements message views { value } } } }""",
                         {"skus": [sku]})["discrepancies"]["nodes"]
    drift = next(n for n in listing if n["kind"] == "POS_ERP_STORE_COUNT")
    assert drift["delta"] == INT_MAX
    assert str(INT_MAX) in drift["message"]
    assert sorted(v["value"] for v in drift["views"])[-1] == INT_MAX
    accepted(hub, square(hub, i, str(INT_MAX)))
    changes = hub.served("""query($skus: [ID!]) { stockEvents(skus: $skus, first: 50) {
        changes { locationId movement { type quantity } stockLevel { available } } } }""",
                         {"skus": [sku]})["stockEvents"]["changes"]
    last = [c for c in changes if c["locationId"] == "ST001"][-1]
    assert last["stockLevel"]["available"] == INT_MAX
    assert last["movement"] == {"type": "RETURN", "quantity": INT_MAX}


def wms_capture(stack: Stack, i: int, code: str, quantity: int) -> None:
    """A cycle count (on-hand := quantity) recorded at the WMS through its own API; the WMS
    then fires its webhook."""
    site = next(w for w in stack.world.warehouses if w.code == code)
    event = {"type": "ObjectEvent", "eventID": f"urn:uuid:{uuid.uuid4()}",
             "eventTime": now_iso(), "eventTimeZoneOffset": "+00:00", "action": "OBSERVE",
             "bizStep": "cycle_counting", "bizLocation": {"id": site.sgln},
             "quantityList": [{"epcClass": epc_class(stack.world.item(i).gtin14),
                               "quantity": quantity, "uom": "EA"}]}
    with stack.sim("wms") as wms:
        response = wms.post("/api/v1/events", json={
            "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": now_iso(),
            "epcisBody": {"eventList": [event]}})
        assert response.status_code < 300, response.text


def test_a_backend_reporting_2_to_the_40_is_a_bad_response_not_an_int_overflow(
        hub: Hub) -> None:
    """The WMS itself holds 2^40 units (a receipt through its API): its webhook is
    dead-lettered, and reading the cell from the WMS is a BACKEND_BAD_RESPONSE naming the
    value; other SKUs are served, and reconciliation reports the WMS unreadable there."""
    from gateway.reconcile import Scope

    i, other = hub.fresh(), hub.fresh()
    letters = len(stream(hub.redis_url, DLQ))
    wms_capture(hub.stack, i, "WH01", 2**40)
    hub.stack.drain_webhooks()
    dlq = stream(hub.redis_url, DLQ)
    assert len(dlq) == letters + 1
    assert str(2**40) in dlq[-1]["reason"]
    body = hub.graphql(CELL, {"sku": hub.sku(i), "loc": "WH01"})
    assert body["data"]["stockLevel"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BACKEND_BAD_RESPONSE", error
    assert str(2**40) in error["message"]
    assert "out of range" in error["message"]
    assert "cannot represent" not in str(body)
    assert hub.cell(other, "WH01")["onHand"] >= 0
    report = hub.in_gateway(lambda runtime: runtime.reconciliation.run(Scope(
        skus=(hub.sku(i),))))
    assert str(2**40) in report.errors["wms"]
    hub.healthy()


def test_a_shop_reporting_2_to_the_40_leaves_the_other_views_served(hub: Hub) -> None:
    i = hub.fresh()
    item = hub.stack.world.items[i]
    warehouse = hub.stack.world.warehouses[0]
    with hub.stack.sim("commerce") as shop:
        response = shop.post("/admin/api/2025-01/inventory_levels/set.json", json={
            "inventory_item_id": item.shopify_inventory_item_id,
            "location_id": warehouse.shopify_id, "available": 2**40})
        assert response.status_code == 200, response.text
    hub.stack.drain_webhooks()
    level = hub.cell(i, "WH01")  # no error: the shop's view is left out, the others stay
    assert {v["role"] for v in level["views"]} == {"SYSTEM_OF_RECORD", "ERP_SNAPSHOT"}
    hub.healthy()


# -- 2. far-future versions ----------------------------------------------------------------------

FUTURE: dict[str, tuple[Callable[[Hub, int], Delivery], str, tuple[str, ...]]] = {
    "erp occurredAt 9999 without adjustedAt": (
        lambda h, i: erp_stock(h, i, 7, data={"adjustedAt": None}, occurredAt=FAR), "WH01",
        ("occurredAt", "9999-12-31", "max_clock_skew_seconds")),
    "erp adjustedAt 9999": (
        lambda h, i: erp_stock(h, i, 7, data={"adjustedAt": FAR}), "WH01",
        ("adjustedAt", "max_clock_skew_seconds")),
    "erp item updatedAt 9999": (
        lambda h, i: erp_item(h, i, updatedAt=FAR), "WH01", ("updatedAt",)),
    "shopify updated_at 9999": (
        lambda h, i: shopify_level(h, i, 7, updated_at=FAR), "WH01", ("updated_at",)),
    "square calculated_at 9999": (
        lambda h, i: square(h, i, "7", calculated_at=FAR), "ST001", ("calculated_at",)),
    "epcis eventTime 9999": (
        lambda h, i: epcis(h, i, 7, eventTime=FAR), "WH01", ("eventTime",)),
    "epcis recordTime 9999": (
        lambda h, i: epcis(h, i, 7, recordTime=FAR), "WH01", ("recordTime",)),
    "erp occurredAt ten minutes ahead": (
        lambda h, i: erp_stock(h, i, 7, data={"adjustedAt": None},
                               occurredAt=rfc3339(now() + timedelta(minutes=10))),
        "WH01", ("occurredAt", "in the future")),
}

# What shows a later genuine change of each cell: (role, field) in the cell's views.
SHOWN_IN = {"erp": ("ERP_SNAPSHOT", "onHand"), "commerce": ("ONLINE", "available"),
            "pos": ("SYSTEM_OF_RECORD", "available"), "wms": ("SYSTEM_OF_RECORD", "onHand")}


def genuine(hub: Hub, backend: str, i: int, value: int) -> Delivery:
    return {"erp": lambda: erp_stock(hub, i, value),
            "commerce": lambda: shopify_level(hub, i, value),
            "pos": lambda: square(hub, i, str(value)),
            "wms": lambda: epcis(hub, i, value)}[backend]()


@pytest.mark.parametrize("case", list(FUTURE))
def test_far_future_timestamp_is_dead_lettered_and_later_events_still_apply(
        hub: Hub, case: str) -> None:
    build, loc, words = FUTURE[case]
    i = hub.fresh()
    before = hub.cell(i, loc)
    delivery = build(hub, i)
    dead_lettered(hub, delivery, *words)
    assert hub.cell(i, loc) == before
    if delivery.backend == "erp" and b"item.updated" in delivery.body:
        return
    role, field = SHOWN_IN[delivery.backend]
    accepted(hub, genuine(hub, delivery.backend, i, 4242))
    assert hub.view(i, loc, role)[field] == 4242


def test_timestamp_within_the_clock_skew_is_accepted(hub: Hub) -> None:
    i = hub.fresh()
    soon = rfc3339(now() + timedelta(seconds=120))
    accepted(hub, erp_stock(hub, i, 31, data={"adjustedAt": soon}))
    assert hub.view(i, "WH01", "ERP_SNAPSHOT")["onHand"] == 31


def test_shopify_level_without_updated_at_is_ordered_by_receipt_not_the_unsigned_header(
        hub: Hub) -> None:
    """X-Shopify-Triggered-At is not covered by the HMAC: a year-9999 header must not make
    the level outrank every later one."""
    i = hub.fresh()
    hub.cell(i, "WH01")
    undated = shopify_level(hub, i, 55, updated_at=None).with_headers(
        **{"X-Shopify-Triggered-At": FAR})
    accepted(hub, undated)
    assert hub.view(i, "WH01", "ONLINE")["available"] == 55
    accepted(hub, shopify_level(hub, i, 56))
    assert hub.view(i, "WH01", "ONLINE")["available"] == 56


def test_a_garbled_triggered_at_header_on_an_order_is_refused(hub: Hub) -> None:
    i = hub.fresh()
    before = state(hub)
    delivery = shopify_order(hub, i, 1).with_headers(**{"X-Shopify-Triggered-At": "soon"})
    response = post(hub.url, delivery, hub.client)
    assert response.status_code == 400, response.text
    assert "X-Shopify-Triggered-At" in response.json()["error"]
    assert state(hub) == before
    hub.healthy()


# -- reconciliation repairs cells from the future -----------------------------------------------

@pytest.fixture
def skewed(redis_url: str) -> Iterator[Stack]:
    """A stack allowing 2 s of clock skew, so a test need not wait five minutes."""
    stack = Stack(redis_url, skus=12, stores=2, warehouses=2)
    stack.settings.max_clock_skew_seconds = 2
    with collecting() as logs, stack:
        yield stack
        assert not logs.records, [r.getMessage() for r in logs.records]


def pin(stack: Stack, source: str, i: int, loc: str, on_hand: int, version: str) -> None:
    """Write a cell as a gateway before this fix did for a signed event dated 9999 (or a
    backend whose clock runs ahead): through the cache's own event path."""
    from gateway.cache import version_number
    from resolvers.types import Quantities, StockView

    sku = stack.world.items[i].sku
    quantities = (Quantities(on_hand=on_hand) if source == "erp"
                  else Quantities(available=on_hand, committed=0, incoming=0,
                                  quality_control=0, damaged=0) if source == "pos"
                  else Quantities(available=on_hand))
    view = StockView(sku=sku, location_id=loc, source=source, quantities=quantities,
                     as_of=datetime.now(UTC),
                     version=str(version_number(version, datetime.now(UTC))))

    async def write(runtime: Any) -> None:
        await runtime.cache.apply_view(view, full=True)
    in_gateway(stack, write)


def views(stack: Stack, i: int, loc: str) -> dict[str, dict[str, Any]]:
    body = stack.graphql(CELL + f"\n# {uuid.uuid4()}", {"sku": stack.world.items[i].sku,
                                                        "loc": loc})
    assert "errors" not in body, body
    return {v["role"]: v for v in body["data"]["stockLevel"]["views"]}


def test_reconciliation_repairs_cells_whose_timestamp_version_lies_in_the_future(
        skewed: Stack) -> None:
    """ERP, POS and shop cells cached with a version dated 9999: genuine events are answered
    200 and never shown, until a reconciliation run replaces the cells with the backends'
    own answers; after it, the next genuine event is shown again."""
    from gateway.reconcile import Scope

    stack = skewed
    signer = Signer(stack.settings, stack.world)
    i = 3
    cells = [("erp", "WH01", "ERP_SNAPSHOT", "onHand"), ("commerce", "WH01", "ONLINE",
                                                          "available"),
             ("pos", "ST001", "SYSTEM_OF_RECORD", "available")]
    truth = {role: views(stack, i, loc)[role][field] for _, loc, role, field in cells}
    for source, loc, _, _ in cells:
        pin(stack, source, i, loc, 777_777, FAR)
    square_url = f"{stack.url}/webhooks/pos"

    def send(source: str, value: int) -> None:
        delivery = {"erp": lambda: signer.erp(signer.erp_stock(i, "WH01", value, 1)),
                    "commerce": lambda: signer.shopify(signer.shopify_level(i, 0, value,
                                                                            now())),
                    "pos": lambda: signer.square(square_url, [signer.square_count(
                        i, 0, value, now())])}[source]()
        response = post(stack.url, delivery)
        assert response.status_code == 200, response.text

    for source, loc, role, field in cells:
        send(source, 12)
        assert views(stack, i, loc)[role][field] == 777_777  # pinned: 200, never shown
    report = in_gateway(stack, lambda runtime: runtime.reconciliation.run(Scope(
        skus=(stack.world.items[i].sku,))))
    repaired = {(r["source"], r["locationId"]): r for r in report.repairs}
    for source, loc, role, field in cells:
        assert repaired[source, loc]["outcome"] == "repaired", report.repairs
        assert views(stack, i, loc)[role][field] == truth[role]
    for source, loc, role, field in cells:
        send(source, 13)
        assert views(stack, i, loc)[role][field] == 13


def test_reconciliation_repairs_a_cell_pinned_by_a_sequence_ahead_of_the_source(
        skewed: Stack) -> None:
    """A signed WMS event numbered 2^52 (in range, but no sequence the WMS ever gave that
    cell) wins over every genuine one. Once the WMS has changed the cell after it, the cached
    version is one from the future: reconciliation replaces the cell with the WMS's own."""
    from gateway.reconcile import Scope

    stack = skewed
    signer = Signer(stack.settings, stack.world)
    i = 4
    sku = stack.world.items[i].sku
    views(stack, i, "WH01")
    response = post(stack.url, signer.epcis([signer.epcis_event(i, 0, 999_999, 2**52)]))
    assert response.status_code == 200, response.text
    assert views(stack, i, "WH01")["SYSTEM_OF_RECORD"]["onHand"] == 999_999
    time.sleep(2.5)  # more than the stack's max_clock_skew_seconds
    wms_capture(stack, i, "WH01", 10)  # genuine: its webhook is accepted and never shown
    stack.drain_webhooks()
    assert views(stack, i, "WH01")["SYSTEM_OF_RECORD"]["onHand"] == 999_999
    with stack.sim("wms") as wms:
        gtin = stack.world.items[i].gtin14
        rows = wms.post("/api/v1/balances/query", json={
            "gtins": [gtin], "glns": [stack.world.warehouses[0].gln], "limit": 10,
            "cursor": None}).json()["balances"]
    report = in_gateway(stack, lambda runtime: runtime.reconciliation.run(Scope(skus=(sku,))))
    [repair] = [r for r in report.repairs if r["locationId"] == "WH01"]
    assert repair["outcome"] == "repaired", report.repairs
    assert views(stack, i, "WH01")["SYSTEM_OF_RECORD"]["onHand"] == rows[0]["onHand"]
    wms_capture(stack, i, "WH01", 5)
    stack.drain_webhooks()
    assert views(stack, i, "WH01")["SYSTEM_OF_RECORD"]["onHand"] == 5


def test_reconciliation_leaves_an_event_newer_than_its_read(skewed: Stack) -> None:
    """A cached version ahead of the backend's is normal for an event that arrived after the
    backend was read: not in the future, not a drift, not repaired."""
    from gateway.discrepancies import Role, cache_drift, in_the_future
    from resolvers.types import Quantities, StockView

    at = datetime.now(UTC)
    backend = StockView("SKU-1", "WH01", "wms", Quantities(on_hand=5), at, "7")
    cached = StockView("SKU-1", "WH01", "wms", Quantities(on_hand=4), at + timedelta(
        seconds=1), "8")
    assert not in_the_future(backend, cached, at, 2)
    assert cache_drift(backend, cached, Role.SYSTEM_OF_RECORD, at, 10, 2) is None
    stamped = StockView("SKU-1", "ST001", "pos", Quantities(available=4), at,
                        rfc3339(at + timedelta(seconds=1)))
    earlier = StockView("SKU-1", "ST001", "pos", Quantities(available=5), at, rfc3339(at))
    assert not in_the_future(earlier, stamped, at, 2)
    ahead = StockView("SKU-1", "ST001", "pos", Quantities(available=5), at,
                      rfc3339(at + timedelta(seconds=60)))
    assert in_the_future(earlier, ahead, at, 2)
    drift = cache_drift(earlier, ahead, Role.SYSTEM_OF_RECORD, at, 10, 2)
    assert drift is not None
    assert drift.status.value == "WRONG"
    assert "future" in drift.message


# -- 3. cached responses and freshness -----------------------------------------------------------

LEVEL = "query($sku: ID!) { stockLevel(sku: $sku, locationId: \"WH01\") { onHand stale } }"


def _ready(stack: Stack) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{stack.url}/readyz", timeout=10).json()
    return body


def _wait(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_cached_response_tells_the_freshness_truth_while_a_source_is_down(
        stack: Stack) -> None:
    """With the WMS known down, the same bytes that were a fresh hit must answer what an
    execution answers (stale: true), for a plain and a persisted-query request; once the
    WMS is back, the response is cached and served from the cache again."""
    sku = stack.world.items[2].sku
    plain = orjson.dumps({"query": LEVEL, "variables": {"sku": sku}})
    digest = hashlib.sha256(LEVEL.encode()).hexdigest()
    persisted = orjson.dumps({"variables": {"sku": sku}, "extensions": {
        "persistedQuery": {"version": 1, "sha256Hash": digest}}})
    registered = orjson.dumps({"query": LEVEL, "variables": {"sku": sku}, "extensions": {
        "persistedQuery": {"version": 1, "sha256Hash": digest}}})
    headers = {"content-type": "application/json"}

    def ask(body: bytes) -> httpx.Response:
        response = httpx.post(f"{stack.url}/graphql", content=body, headers=headers,
                              timeout=30)
        assert response.status_code == 200, response.text
        assert "errors" not in response.json(), response.text
        return response

    def truth(body: bytes) -> tuple[bool, bool]:
        answer = ask(body).json()
        return (answer["data"]["stockLevel"]["stale"],
                answer["extensions"]["freshness"]["sources"]["wms"]["stale"])

    def hit(body: bytes) -> bool:
        return ask(body).headers.get("x-retailgraph-cache") == "hit"

    ask(registered)
    for body in (plain, persisted):
        _wait("the response to be cached", lambda body=body: hit(body), 10)
        assert truth(body) == (False, False)
    wms = stack.sims["wms"]
    app, port = wms.server.config.app, wms.port
    wms.stop()
    try:
        _wait("the gateway to know the WMS is down",
              lambda: "wms" in _ready(stack)["checks"]["backends"]["down"])
        executed = truth(orjson.dumps({"query": LEVEL + " # other bytes",
                                       "variables": {"sku": sku}}))
        assert executed == (True, True)
        for body in (plain, persisted):
            assert truth(body) == executed
            assert not hit(body)
    finally:
        stack.sims["wms"] = ServerThread(app, port).start()
    _wait("the gateway to know the WMS is back",
          lambda: not _ready(stack)["checks"]["backends"]["down"])
    for body in (plain, persisted):
        _wait("the response to be cached again", lambda body=body: hit(body), 10)
        assert truth(body) == (False, False)


def test_max_clock_skew_is_one_setting_in_the_file_and_the_environment() -> None:
    from pathlib import Path

    from gateway import config

    example = Path(__file__).resolve().parent.parent / "retailgraph.example.toml"
    assert "max_clock_skew_seconds = 300" in example.read_text()
    assert config.load(example, environ={}).max_clock_skew_seconds == 300
    assert config.load(example, environ={
        "RETAILGRAPH_MAX_CLOCK_SKEW_SECONDS": "30"}).max_clock_skew_seconds == 30
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(config.ConfigError, match=r"(?i)max_clock_skew_seconds"):
            config.load(example, environ={"RETAILGRAPH_MAX_CLOCK_SKEW_SECONDS": bad})
