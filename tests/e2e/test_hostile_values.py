"""Hostile values (issue 11 §2): the scenarios that take more than one request, over real
HTTP with correctly signed webhooks. The single-delivery probes (quantities past 32 bits,
saturated sums and deltas, far-future timestamps, the unsigned Shopify header) are in the
hostile corpus, tests/e2e/test_hostile.py (``TestValues``).

- A backend API reporting a quantity past 32 bits (2^40 units) is a BACKEND_BAD_RESPONSE
  naming the value, never an ``Int cannot represent`` error; its webhook is dead-lettered.
- Reconciliation repairs cells whose cached version lies in the future (written before the
  intake checked timestamps, or by a backend whose clock ran ahead, or by a sequence number
  sent ahead of the source's own); a later genuine event is then shown again.
- While a backend is down, a cached response holding its values is not served (an execution
  flags them stale), on plain and persisted-query requests alike.

Every scenario also asserts: no 5xx, no error logged by the gateway, ``/healthz`` live.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway.simulators.activity import epc_class, now_iso
from tests.helpers_webhooks import DLQ, Signer, now, post, rfc3339, stream
from tests.support import ErrorLog, ServerThread, Stack, errors_logged

FAR = "9999-12-31T23:59:59.000000Z"

CELL = """query($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) {
  onHand available committed incoming qualityControl damaged safetyStock sellable stale
  views { source role onHand available committed incoming qualityControl damaged } } }"""


@dataclass
class Hub:
    """A running stack (four simulators, one gateway) and what the probes need."""

    stack: Stack
    redis_url: str
    signer: Signer
    client: httpx.Client
    logs: ErrorLog
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

    def healthy(self) -> None:
        assert self.client.get(f"{self.url}/healthz").status_code == 200
        assert not self.logs.records, self.logs.messages()

    def in_gateway(self, make: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
        return in_gateway(self.stack, make)


def in_gateway(stack: Stack, make: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``make(runtime)`` on the gateway's own event loop (its Redis client lives there)."""
    server = stack.gateways[0]
    app: Any = server.app  # the gateway, maybe inside middleware: walked to its state
    while not hasattr(app, "state") or not hasattr(app.state, "runtime"):
        app = app.app
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(make(app.state.runtime),
                                            server.loop).result(timeout=60)


@pytest.fixture(scope="module")
def hub(redis_server_url: str) -> Iterator[Hub]:
    flusher = redis.Redis.from_url(redis_server_url)
    flusher.flushdb()
    flusher.close()
    stack = Stack(redis_server_url, skus=20, stores=2, warehouses=2)
    with errors_logged() as logs, stack, httpx.Client(timeout=30) as client:
        yield Hub(stack, redis_server_url, Signer(stack.settings, stack.world), client, logs,
                  itertools.count(1))


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
    from gateway.reconcile.runner import Scope

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


# -- reconciliation repairs cells from the future -----------------------------------------------

@pytest.fixture
def skewed(redis_url: str) -> Iterator[Stack]:
    """A stack allowing 2 s of clock skew, so a test need not wait five minutes."""
    stack = Stack(redis_url, skus=12, stores=2, warehouses=2)
    stack.settings.max_clock_skew_seconds = 2
    with errors_logged() as logs, stack:
        yield stack
        assert not logs.records, logs.messages()


def pin(stack: Stack, source: str, i: int, loc: str, on_hand: int, version: str) -> None:
    """Write a cell as a gateway before this fix did for a signed event dated 9999 (or a
    backend whose clock runs ahead): through the cache's own event path."""
    from resolvers.types import Quantities, StockView
    from resolvers.values import version_number

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
    from gateway.reconcile.runner import Scope

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
    from gateway.reconcile.runner import Scope

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
    from resolvers.discrepancies import Role, cache_drift, in_the_future
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
ORDERS = "query($sku: ID!) { product(sku: $sku) { name purchaseOrders { poNumber } } }"


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
    """With the WMS and the ERP known down, the same bytes that were a fresh hit must answer
    what an execution answers: warehouse stock served from the event cache with
    stale: true, for a plain and a persisted-query request; purchase orders (read from the
    ERP, never cached) with the ERP's error. Once they are back, the responses are cached
    and served from the cache again."""
    sku = stack.world.items[2].sku
    plain = orjson.dumps({"query": LEVEL, "variables": {"sku": sku}})
    digest = hashlib.sha256(LEVEL.encode()).hexdigest()
    persisted = orjson.dumps({"variables": {"sku": sku}, "extensions": {
        "persistedQuery": {"version": 1, "sha256Hash": digest}}})
    registered = orjson.dumps({"query": LEVEL, "variables": {"sku": sku}, "extensions": {
        "persistedQuery": {"version": 1, "sha256Hash": digest}}})
    orders = orjson.dumps({"query": ORDERS, "variables": {"sku": sku}})
    headers = {"content-type": "application/json"}

    def ask(body: bytes) -> httpx.Response:
        response = httpx.post(f"{stack.url}/graphql", content=body, headers=headers,
                              timeout=30)
        assert response.status_code == 200, response.text
        return response

    def truth(body: bytes) -> tuple[bool, bool]:
        answer = ask(body).json()
        assert "errors" not in answer, answer
        return (answer["data"]["stockLevel"]["stale"],
                answer["extensions"]["freshness"]["sources"]["wms"]["stale"])

    def hit(body: bytes) -> bool:
        cache: str | None = ask(body).headers.get("x-retailgraph-cache")
        return cache == "hit"

    ask(registered)
    for body in (plain, persisted, orders):
        _wait("the response to be cached", partial(hit, body), 10)
    for body in (plain, persisted):
        assert truth(body) == (False, False)
    assert "errors" not in ask(orders).json()
    stopped = {name: (stack.sims[name].app, stack.sims[name].port)
               for name in ("wms", "erp")}
    for name in stopped:
        stack.sims[name].stop()
    try:
        _wait("the gateway to know the WMS and the ERP are down",
              lambda: {"wms", "erp"} <= set(_ready(stack)["checks"]["backends"]["down"]))
        executed = truth(orjson.dumps({"query": LEVEL + " # other bytes",
                                       "variables": {"sku": sku}}))
        assert executed == (True, True)
        for body in (plain, persisted):
            assert truth(body) == executed
            assert not hit(body)
        answer = ask(orders)
        assert answer.headers.get("x-retailgraph-cache") != "hit"
        [error] = answer.json()["errors"]
        assert error["extensions"]["backend"] == "erp", error
    finally:
        for name, (app, port) in stopped.items():
            stack.sims[name] = ServerThread(app, port).start()
    _wait("the gateway to know the backends are back",
          lambda: not _ready(stack)["checks"]["backends"]["down"])
    for body in (plain, persisted, orders):
        _wait("the response to be cached again", partial(hit, body), 10)
    for body in (plain, persisted):
        assert truth(body) == (False, False)


def test_max_clock_skew_is_one_setting_in_the_file_and_the_environment() -> None:
    from pathlib import Path

    from gateway import config

    example = Path(__file__).resolve().parents[2] / "retailgraph.example.toml"
    assert "max_clock_skew_seconds = 300" in example.read_text()
    assert config.load(example, environ={}).max_clock_skew_seconds == 300
    assert config.load(example, environ={
        "RETAILGRAPH_MAX_CLOCK_SKEW_SECONDS": "30"}).max_clock_skew_seconds == 30
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(config.ConfigError, match=r"(?i)max_clock_skew_seconds"):
            config.load(example, environ={"RETAILGRAPH_MAX_CLOCK_SKEW_SECONDS": bad})
