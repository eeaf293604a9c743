"""ERP simulator and connector over real HTTP, webhooks verified independently of the sender."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import resolvers.connectors.erp as erp_module
from gateway.simulators.erp import create_app
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import World
from resolvers.connectors.erp import ErpConnector
from resolvers.errors import BackendProtocolError, BackendStatusError
from resolvers.identity import SHOPIFY_LOCATION, SQUARE_LOCATION, IdentityMap, node_id
from resolvers.settings import BackendSettings
from resolvers.types import LocationType
from tests.support import ServerThread, serve

SECRET = "whsec_" + base64.b64encode(b"erp-test-signing-key").decode()
TOKEN = "erp-test-token"
WORLD = World(seed=7, skus=30, stores=3, warehouses=2)
ALL_SKUS = [item.sku for item in WORLD.items]
ALL_LOCATIONS = [loc.code for loc in WORLD.locations]


class Receiver:
    """A webhook endpoint recording raw deliveries; it can fail the first N on purpose."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.deliveries.append((dict(request.headers), body))
            failing = len(self.deliveries) <= self.fail_first
        return Response(status_code=500 if failing else 200)

    async def wait_for(self, count: int, patience: float = 5.0) -> list[tuple[dict[str, str],
                                                                             bytes]]:
        deadline = time.monotonic() + patience
        while len(self.deliveries) < count:
            assert time.monotonic() < deadline, f"only {len(self.deliveries)} of {count} arrived"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # anything beyond ``count`` would show up here
        with self.lock:
            return list(self.deliveries)


def verify(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """Standard Webhooks verification written out by hand; returns the parsed event."""
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    given = [sig.split(",", 1)[1] for sig in headers["webhook-signature"].split()
             if sig.startswith("v1,")]
    assert any(hmac.compare_digest(expected, sig) for sig in given), "bad signature"
    assert abs(int(stamp) - time.time()) < 300
    event: dict[str, Any] = orjson.loads(body)
    assert event["id"] == msg_id
    assert event["id"].startswith("evt_")
    assert datetime.fromisoformat(event["occurredAt"]).tzinfo is not None
    return event


def sim_settings(url: str = "http://unused", token: str = TOKEN) -> BackendSettings:
    return BackendSettings(name="erp", format="erp", base_url=url, token=token,
                           webhook_secret=SECRET, retries=0)


@dataclasses.dataclass
class Env:
    sim: ServerThread
    receiver: Receiver
    erp: ErpConnector
    identity: IdentityMap
    http: httpx.AsyncClient

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get("/_sim/stats")
        return dict(response.json())

    async def drain(self) -> None:
        await self.http.post("/_sim/webhooks/drain")


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def options() -> DeliveryOptions:
    return DeliveryOptions(backoff=0.05)


@pytest.fixture
def servers(receiver: Receiver, options: DeliveryOptions) -> Iterator[tuple[ServerThread,
                                                                           ServerThread]]:
    with serve(receiver.app) as hook:
        app = create_app(WORLD, sim_settings(), f"{hook.url}/hook", options)
        with serve(app) as sim:
            yield sim, hook


@pytest.fixture
async def env(servers: tuple[ServerThread, ServerThread], receiver: Receiver) -> AsyncIterator[Env]:
    sim, _ = servers
    identity = IdentityMap()
    erp = ErpConnector(sim_settings(sim.url), identity)
    async with httpx.AsyncClient(base_url=sim.url,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield Env(sim, receiver, erp, identity, http)
    await erp.aclose()


async def learned(env: Env) -> None:
    env.identity.learn_master(await env.erp.all_items(), await env.erp.locations())


# -- reads -----------------------------------------------------------------------------------------

async def test_items_page_follows_cursor_to_the_whole_master(env: Env) -> None:
    seen, after, pages = [], None, 0
    while True:
        page, after = await env.erp.items_page(after, 7)
        seen.extend(page)
        pages += 1
        if after is None:
            break
    assert pages == 5
    assert [item.sku for item in seen] == ALL_SKUS
    assert await env.erp.all_items() == seen
    first, world_item = seen[0], WORLD.items[0]
    assert first.list_price == world_item.list_price
    assert isinstance(first.list_price, Decimal)
    assert first.cost == world_item.cost
    assert first.currency == "NOK"
    assert first.gtin14 == "0" + world_item.gtin13
    assert first.item_number == world_item.item_number
    assert first.name == world_item.name
    assert first.source == "erp"
    assert first.as_of.tzinfo is not None
    assert (await env.stats())["requests"]["GET /api/v1/items"] == 6  # 5 pages + 1 for all


async def test_items_batch_is_chunked_and_ignores_unknown(env: Env,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(erp_module, "BATCH", 10)
    wanted = [*ALL_SKUS[::-1], "SKU-999999", "NOPE", ALL_SKUS[0]]  # 32 distinct -> 4 chunks
    found = await env.erp.items(wanted)
    assert sorted(found) == ALL_SKUS
    assert found["SKU-000003"].safety_stock == WORLD.items[2].safety_stock
    assert (await env.stats())["requests"]["GET /api/v1/items"] == 4


async def test_locations_carry_pos_and_webshop_cross_references(env: Env) -> None:
    locations = await env.erp.locations()
    assert [loc.id for loc in locations] == ALL_LOCATIONS
    store, warehouse = locations[0], locations[-1]
    world_store, world_wh = WORLD.locations[0], WORLD.locations[-1]
    assert store.type is LocationType.STORE
    assert warehouse.type is LocationType.WAREHOUSE
    assert store.gln == world_store.gln
    assert warehouse.gln == world_wh.gln
    assert ("square", "location_id", world_store.square_id) in [
        (r.namespace, r.kind, r.value) for r in store.refs]
    assert not any(r.namespace == "shopify" for r in store.refs)
    assert ("shopify", "location_id", str(world_wh.shopify_id)) in [
        (r.namespace, r.kind, r.value) for r in warehouse.refs]
    env.identity.learn_master([], locations)
    assert world_store.square_id is not None
    assert env.identity.location(SQUARE_LOCATION, world_store.square_id) == "ST001"
    assert env.identity.location(SHOPIFY_LOCATION, str(world_wh.shopify_id)) == "WH02"
    assert env.identity.location(SQUARE_LOCATION, "UNKNOWN") is None
    assert ("square", "location_id", "UNKNOWN") in env.identity.unmapped


async def test_purchase_orders_match_the_world(env: Env) -> None:
    await learned(env)
    expected = {(n, WORLD.items[i].sku, WORLD.locations[w].code, q, d)
                for n, i, w, q, d in WORLD.purchase_orders()}
    lines = await env.erp.purchase_orders(ALL_SKUS)
    assert len(expected) >= 5
    assert {(ln.po_number, ln.sku, ln.location_id, ln.quantity_ordered,
             ln.expected_at) for ln in lines} == expected
    assert all(ln.status == "OPEN" and ln.quantity_received == 0 for ln in lines)
    only_wh1 = await env.erp.purchase_orders(ALL_SKUS, ["WH01"])
    assert only_wh1
    assert {ln.location_id for ln in only_wh1} == {"WH01"}
    one = lines[0]
    assert [ln.po_number for ln in await env.erp.purchase_orders([one.sku])] == [
        n for n, sku, *_ in sorted(expected) if sku == one.sku]
    assert await env.erp.purchase_orders(ALL_SKUS, []) == []


async def test_purchase_order_listing_pages(env: Env) -> None:
    numbers, after = [], None
    while True:
        params = {"limit": "3", "status": "all", **({"after": after} if after else {})}
        body = (await env.http.get("/api/v1/purchase-orders", params=params)).json()
        assert len(body["purchaseOrders"]) <= 3
        numbers += [po["poNumber"] for po in body["purchaseOrders"]]
        after = body["nextCursor"]
        if after is None:
            break
    assert numbers == sorted(n for n, *_ in WORLD.purchase_orders())


async def test_snapshot_chunks_and_pages(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    await learned(env)
    monkeypatch.setattr(erp_module, "BATCH", 10)
    monkeypatch.setattr(erp_module, "PAGE", 20)
    await env.http.delete("/_sim/stats")
    views = await env.erp.snapshot(ALL_SKUS, ALL_LOCATIONS)
    # 3 chunks of 10 SKUs x 5 locations = 50 rows each, 20 per page -> 3 pages per chunk
    assert (await env.stats())["requests"]["GET /api/v1/stock-snapshots/latest"] == 9
    cells = {(v.sku, v.location_id): v for v in views}
    assert len(views) == len(cells) == 150
    for i, item in enumerate(WORLD.items):
        for loc in WORLD.locations:
            view = cells[item.sku, loc.code]
            assert view.quantities.on_hand == WORLD.erp_snapshot_on_hand(i, loc.index)
            assert view.quantities.available is None
    view = views[0]
    assert view.as_of == WORLD.snapshot_as_of
    assert view.source == "erp"
    assert view.version.startswith("snap_")
    subset = await env.erp.snapshot(["SKU-000002", "SKU-000001"], ["WH02"])
    assert [(v.sku, v.location_id) for v in subset] == [("SKU-000001", "WH02"),
                                                         ("SKU-000002", "WH02")]
    assert await env.erp.snapshot(ALL_SKUS, []) == []


async def test_rows_outside_the_learned_master_are_reported_and_skipped(env: Env) -> None:
    items, locations = await env.erp.all_items(), await env.erp.locations()
    env.identity.learn_master(items[1:], [loc for loc in locations if loc.id != "ST002"])
    views = await env.erp.snapshot(ALL_SKUS[:3], ["ST001", "ST002"])
    assert {(v.sku, v.location_id) for v in views} == {("SKU-000002", "ST001"),
                                                       ("SKU-000003", "ST001")}
    assert ("erp", "item_number", items[0].item_number) in env.identity.unmapped
    assert env.identity.unmapped[("erp", "location_code", "ST002")].seen_in == "erp"
    po_skus = {WORLD.items[i].sku for _, i, *_ in WORLD.purchase_orders()}
    lines = await env.erp.purchase_orders(ALL_SKUS)
    assert {ln.sku for ln in lines} == po_skus - {"SKU-000001"}


async def test_bad_credential_gets_401(env: Env) -> None:
    response = await env.http.get("/api/v1/items", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert (await env.http.get("/api/v1/locations", headers={"Authorization": ""})
            ).status_code == 401
    intruder = ErpConnector(sim_settings(env.sim.url, token="wrong"), IdentityMap())
    with pytest.raises(BackendStatusError) as info:
        await intruder.locations()
    await intruder.aclose()
    assert info.value.status == 401


# -- parsing, without the simulator ----------------------------------------------------------------

def mock_erp(body: dict[str, Any]) -> tuple[ErpConnector, IdentityMap]:
    identity = IdentityMap()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    return ErpConnector(sim_settings(), identity, transport), identity


ITEM = {"itemNumber": "1", "sku": "A", "gtin": "7012340000001", "description": "Thing",
        "category": "Home", "listPrice": "9.50", "cost": "4.00", "currency": "NOK",
        "safetyStock": 1, "status": "ACTIVE", "updatedAt": "2025-01-01T00:00:00Z"}


async def test_gtins_are_normalised_and_invalid_ones_reported() -> None:
    items = [ITEM, {**ITEM, "sku": "B", "gtin": "7012340000002"},
             {**ITEM, "sku": "C", "gtin": "036000291452"}, {**ITEM, "sku": "D", "gtin": None}]
    erp, identity = mock_erp({"items": items, "nextCursor": None})
    found = await erp.items(["A", "B", "C", "D"])
    await erp.aclose()
    assert found["A"].gtin14 == "07012340000001"
    assert found["C"].gtin14 == "00036000291452"
    assert found["B"].gtin14 is None
    assert found["D"].gtin14 is None
    assert list(identity.unmapped) == [("gs1", "gtin", "7012340000002")]
    assert found["A"].list_price == Decimal("9.50")


@pytest.mark.parametrize("body", [
    {"items": [{**ITEM, "listPrice": None}], "nextCursor": None},
    {"items": [{**ITEM, "listPrice": "cheap"}], "nextCursor": None},
    {"items": [{**ITEM, "safetyStock": "1"}], "nextCursor": None},
    {"items": [{**ITEM, "updatedAt": "yesterday"}], "nextCursor": None},
    {"items": {"A": ITEM}, "nextCursor": None},
    {"nextCursor": 5, "items": []},
])
async def test_malformed_items_raise_protocol_error(body: dict[str, Any]) -> None:
    erp, _ = mock_erp(body)
    with pytest.raises(BackendProtocolError):
        await erp.all_items()
    await erp.aclose()


async def test_malformed_snapshot_and_location_raise_protocol_error() -> None:
    erp, identity = mock_erp({"snapshotId": "s", "asOf": "2025-01-01T00:00:00Z", "nextCursor": None,
                              "rows": [{"itemNumber": "1", "sku": "A", "locationCode": "L",
                                        "onHand": 2.5}]})
    identity.known_skus.add("A")
    identity.known_locations.add("L")
    with pytest.raises(BackendProtocolError, match="onHand"):
        await erp.snapshot(["A"], ["L"])
    await erp.aclose()
    erp, _ = mock_erp({"locations": [{"code": "X", "name": "X", "type": "KIOSK", "gln": None,
                                      "externalIds": {}, "updatedAt": "2025-01-01T00:00:00Z"}]})
    with pytest.raises(BackendProtocolError, match="KIOSK"):
        await erp.locations()
    await erp.aclose()


async def test_snapshot_rows_read_the_same_whether_a_page_is_all_plain_or_not() -> None:
    """Well-formed pages are read straight from their rows; a page with any odd row is read
    through the checked reader. Both give the same views; a row of an unknown SKU or location
    is skipped (and reported) either way, even when its onHand is odd."""
    good = [{"itemNumber": "1", "sku": "A", "locationCode": "L", "onHand": 3},
            {"itemNumber": "2", "sku": "B", "locationCode": "L", "onHand": 0},
            {"itemNumber": "9", "sku": "Z", "locationCode": "L", "onHand": 4}]
    odd = {"itemNumber": "8", "sku": "Y", "locationCode": "L", "onHand": 2**40}
    seen = []
    for rows in (good, [*good, odd]):
        erp, identity = mock_erp({"snapshotId": "s7", "asOf": "2025-01-01T00:00:00Z",
                                  "nextCursor": None, "rows": rows})
        identity.known_skus.update({"A", "B"})
        identity.known_locations.add("L")
        views = await erp.snapshot(["A", "B", "Y", "Z"], ["L"])
        await erp.aclose()
        seen.append(([(v.sku, v.location_id, v.quantities.on_hand, v.version, v.as_of)
                      for v in views], sorted(k[2] for k in identity.unmapped)))
    assert seen[0][0] == seen[1][0] == [
        ("A", "L", 3, "s7", datetime(2025, 1, 1, tzinfo=UTC)),
        ("B", "L", 0, "s7", datetime(2025, 1, 1, tzinfo=UTC))]
    assert seen[0][1] == ["9"]
    assert seen[1][1] == ["8", "9"]


async def test_a_location_code_of_the_form_of_a_global_id_is_refused() -> None:
    """A location's id is its code; other types' global ids are base64 of "Type:key"
    (schema Node). A code of that form would make ``Query.node`` ambiguous."""
    clash = node_id("Product", "SKU-000001")
    rows: list[dict[str, Any]] = [
        {"code": code, "name": code, "type": "STORE", "gln": None, "externalIds": {},
         "updatedAt": "2025-01-01T00:00:00Z"} for code in ("ST001", clash, "QUJD")]
    erp, identity = mock_erp({"locations": rows})
    assert [loc.id for loc in await erp.locations()] == ["ST001", "QUJD"]  # "ABC": no colon
    assert identity.unmapped[("erp", "location_code", clash)].reason.startswith(
        "has the form of another type's global id")
    await erp.aclose()


# -- changes and webhooks --------------------------------------------------------------------------

async def test_item_patch_fires_signed_item_updated(env: Env) -> None:
    response = await env.http.patch("/api/v1/items/SKU-000004",
                                    json={"listPrice": "10.5", "safetyStock": 9})
    assert response.status_code == 200
    assert response.json()["listPrice"] == "10.50"
    [(headers, body)] = await env.receiver.wait_for(1)
    event = verify(headers, body)
    assert event["type"] == "item.updated"
    assert event["sequence"] == 1
    assert event["data"]["sku"] == "SKU-000004"
    assert event["data"]["safetyStock"] == 9
    item = (await env.erp.items(["SKU-000004"]))["SKU-000004"]
    assert item.list_price == Decimal("10.50")
    assert item.safety_stock == 9
    assert item.as_of > datetime.now(UTC) - timedelta(minutes=1)


async def test_receipts_fire_purchase_order_received(env: Env) -> None:
    await learned(env)
    number, i, _, quantity, _ = WORLD.purchase_orders()[0]
    path = f"/api/v1/purchase-orders/{number}/receipts"
    first = await env.http.post(path, json={"lines": [{"lineNumber": 1, "quantity": 1}]})
    assert first.status_code == 200
    assert first.json()["status"] == "PARTIALLY_RECEIVED"
    rest = await env.http.post(path, json={"lines": [{"sku": WORLD.items[i].sku,
                                                      "quantity": quantity - 1}],
                                           "receivedAt": "2026-03-01T10:00:00+01:00"})
    assert rest.json()["status"] == "RECEIVED"
    assert rest.json()["updatedAt"] == (
        "2026-03-01T09:00:00.000Z")
    events = [verify(h, b) for h, b in await env.receiver.wait_for(2)]
    assert [e["type"] for e in events] == ["purchase_order.received"] * 2
    assert [e["sequence"] for e in events] == [1, 2]
    assert [e["data"]["lines"][0]["quantityReceived"] for e in events] == [1, quantity]
    open_numbers = {ln.po_number for ln in await env.erp.purchase_orders(ALL_SKUS)}
    received = await env.erp.purchase_orders(ALL_SKUS, status="received")
    assert number not in open_numbers
    assert [(ln.po_number, ln.quantity_received, ln.status) for ln in received] == [
        (number, quantity, "RECEIVED")]


async def test_snapshot_and_adjustment_fire_stock_events(env: Env) -> None:
    await learned(env)
    before = await env.erp.snapshot(["SKU-000001"], ["ST001", "WH01"])
    created = await env.http.post("/api/v1/stock-snapshots", json={
        "asOf": "2099-01-02T00:00:00Z",
        "rows": [{"sku": "SKU-000001", "locationCode": "ST001", "onHand": 77}]})
    assert created.status_code == 201
    adjusted = await env.http.post("/api/v1/stock-adjustments", json={
        "sku": "SKU-000001", "locationCode": "WH01", "onHand": 5, "reason": "cycle count"})
    assert adjusted.status_code == 201
    assert adjusted.json()["previousOnHand"] == (
        before[1].quantities.on_hand)
    after = await env.erp.snapshot(["SKU-000001"], ["ST001", "WH01", "ST002"])
    assert [(v.location_id, v.quantities.on_hand) for v in after] == [
        ("ST001", 77), ("ST002", WORLD.erp_snapshot_on_hand(0, 1)), ("WH01", 5)]  # ST002 carried
    assert after[0].version == created.json()["snapshotId"] != before[0].version
    assert after[0].as_of == datetime(2099, 1, 2, tzinfo=UTC)
    completed, adjustment = (verify(h, b) for h, b in await env.receiver.wait_for(2))
    assert completed["type"] == "stock.snapshot.completed"
    assert completed["data"] == {"snapshotId": after[0].version, "asOf": "2099-01-02T00:00:00.000Z",
                                 "rowCount": 1, "previousSnapshotId": before[0].version}
    assert adjustment["type"] == "stock.adjusted"
    assert adjustment["sequence"] == 2
    assert {k: adjustment["data"][k] for k in ("sku", "locationCode", "onHand", "reason")} == {
        "sku": "SKU-000001", "locationCode": "WH01", "onHand": 5, "reason": "cycle count"}


ERROR_CODES = {400: "invalid_request", 404: "not_found", 422: "invalid_value"}
BAD_REQUESTS = [
    ("PATCH", "/api/v1/items/SKU-000001", {"gtin": "1"}, 400),
    ("PATCH", "/api/v1/items/SKU-000001", {}, 400),
    ("PATCH", "/api/v1/items/SKU-000001", {"listPrice": 10}, 400),
    ("PATCH", "/api/v1/items/SKU-000001", {"listPrice": "-1"}, 422),
    ("PATCH", "/api/v1/items/SKU-000001", {"listPrice": "1.999"}, 422),
    ("PATCH", "/api/v1/items/SKU-000001", {"safetyStock": -1, "description": "ok"}, 422),
    ("PATCH", "/api/v1/items/SKU-000001", {"description": ""}, 422),
    ("PATCH", "/api/v1/items/NOPE", {"description": "x"}, 404),
    ("PATCH", "/api/v1/items/SKU-000001", b"{not json", 400),
    ("PATCH", "/api/v1/items/SKU-000001", [1], 400),
    ("POST", "/api/v1/purchase-orders/PO-NOPE/receipts", {"lines": []}, 404),
    ("POST", "/api/v1/purchase-orders/{po}/receipts", {"lines": []}, 400),
    ("POST", "/api/v1/purchase-orders/{po}/receipts",
     {"lines": [{"lineNumber": 1, "quantity": 100_000}]}, 422),
    ("POST", "/api/v1/purchase-orders/{po}/receipts",
     {"lines": [{"lineNumber": 1, "quantity": 1}] * 2 + [{"lineNumber": 1, "quantity": 10**6}]},
     422),
    ("POST", "/api/v1/purchase-orders/{po}/receipts",
     {"lines": [{"lineNumber": 2, "quantity": 1}]}, 422),
    ("POST", "/api/v1/purchase-orders/{po}/receipts",
     {"lines": [{"sku": "SKU-999999", "quantity": 1}]}, 422),
    ("POST", "/api/v1/purchase-orders/{po}/receipts",
     {"lines": [{"lineNumber": 1, "sku": "SKU-000001", "quantity": 1}]}, 400),
    ("POST", "/api/v1/purchase-orders/{po}/receipts",
     {"lines": [{"lineNumber": 1, "quantity": 0}]}, 422),
    ("POST", "/api/v1/purchase-orders/{po}/receipts",
     {"lines": [{"lineNumber": 1, "quantity": 1}], "receivedAt": "soon"}, 422),
    ("POST", "/api/v1/stock-snapshots", {"rows": "all"}, 400),
    ("POST", "/api/v1/stock-snapshots", {"rows": [], "asOf": "2000-01-01T00:00:00Z"}, 422),
    ("POST", "/api/v1/stock-snapshots",
     {"rows": [{"sku": "SKU-000001", "locationCode": "ST001", "onHand": 1},
               {"sku": "SKU-999999", "locationCode": "ST001", "onHand": 1}]}, 422),
    ("POST", "/api/v1/stock-snapshots",
     {"rows": [{"sku": "SKU-000001", "locationCode": "ST001", "onHand": 1}] * 2}, 422),
    ("POST", "/api/v1/stock-snapshots",
     {"rows": [{"sku": "SKU-000001", "locationCode": "ST001", "onHand": -4}]}, 422),
    ("POST", "/api/v1/stock-adjustments",
     {"sku": "SKU-000001", "locationCode": "ST001", "onHand": 3}, 400),
    ("POST", "/api/v1/stock-adjustments",
     {"sku": "SKU-000001", "locationCode": "XX9", "onHand": 3, "reason": "r"}, 422),
    ("POST", "/api/v1/stock-adjustments",
     {"sku": "SKU-000001", "locationCode": "ST001", "onHand": True, "reason": "r"}, 400),
]


async def test_bad_input_is_rejected_without_changing_state(env: Env) -> None:
    po = WORLD.purchase_orders()[0][0]
    snapshot_before = (await env.http.get("/api/v1/stock-snapshots/latest")).json()
    item_before = (await env.http.get("/api/v1/items/SKU-000001")).json()
    for method, path, body, status in BAD_REQUESTS:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await env.http.request(method, path.format(po=po), content=content)
        assert response.status_code == status, (path, body, response.text)
        error = response.json()["error"]
        assert error["code"] == ERROR_CODES[status]
        assert error["message"]
    assert (await env.http.get("/api/v1/stock-snapshots/latest")).json() == snapshot_before
    assert (await env.http.get("/api/v1/items/SKU-000001")).json() == item_before
    po_now = (await env.http.get(f"/api/v1/purchase-orders/{po}")).json()
    assert po_now["status"] == "OPEN"
    assert po_now["lines"][0]["quantityReceived"] == 0
    bad_field = await env.http.patch("/api/v1/items/SKU-000001", json={"listPrice": "-1"})
    assert bad_field.json()["error"]["field"] == "listPrice"
    await env.drain()
    assert (await env.stats())["webhooks_sent"] == 0
    assert env.receiver.deliveries == []


async def test_bad_query_parameters_get_400(env: Env) -> None:
    for path in ("/api/v1/items?limit=0", "/api/v1/items?limit=1001",
                 "/api/v1/purchase-orders?status=closed",
                 "/api/v1/stock-snapshots/latest?after=garbage",
                 "/api/v1/items?skus=" + ",".join(f"S{n}" for n in range(1001))):
        response = await env.http.get(path)
        assert response.status_code == 400, path
        assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("receiver", [Receiver(fail_first=1)])
async def test_failed_delivery_is_retried_with_fresh_signature(env: Env) -> None:
    await env.http.patch("/api/v1/items/SKU-000002", json={"category": "Gifts"})
    (h1, b1), (h2, b2) = await env.receiver.wait_for(2)
    assert b1 == b2
    assert h1["webhook-id"] == h2["webhook-id"]
    assert int(h2["webhook-timestamp"]) >= int(h1["webhook-timestamp"])
    assert verify(h1, b1)["data"]["category"] == verify(h2, b2)["data"]["category"] == "Gifts"
    [record] = (await env.http.get("/_sim/webhooks")).json()["deliveries"]
    assert record["attempts"] == 2
    assert record["status"] == 200


@pytest.mark.parametrize("options", [DeliveryOptions(duplicate_rate=1.0, backoff=0.05)])
async def test_duplicate_knob_delivers_twice_with_the_same_id(env: Env) -> None:
    await env.http.post("/api/v1/stock-adjustments", json={
        "sku": "SKU-000003", "locationCode": "ST003", "onHand": 1, "reason": "damaged"})
    (h1, b1), (h2, b2) = await env.receiver.wait_for(2)
    assert h1["webhook-id"] == h2["webhook-id"]
    assert b1 == b2
    assert verify(h2, b2)["type"] == "stock.adjusted"


async def test_sequence_reveals_a_dropped_event(env: Env) -> None:
    await env.http.post("/_sim/faults", json={"drop_rate": 1.0})
    await env.http.patch("/api/v1/items/SKU-000005", json={"description": "lost"})
    await env.http.post("/_sim/faults", json={"drop_rate": 0.0})
    await env.http.patch("/api/v1/items/SKU-000005", json={"description": "found"})
    [(headers, body)] = await env.receiver.wait_for(1)
    event = verify(headers, body)
    assert event["sequence"] == 2
    assert event["data"]["description"] == "found"


# -- scale and determinism -------------------------------------------------------------------------

async def test_large_world_is_lazy_and_deterministic() -> None:
    started = time.monotonic()
    big = World(seed=3, skus=100_000, stores=40, warehouses=10)
    apps = [create_app(big, sim_settings(), ""), create_app(World(seed=3, skus=100_000,
                                                                  stores=40, warehouses=10),
                                                            sim_settings(), "")]
    bodies = []
    for app in apps:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            snap = await http.get("/api/v1/stock-snapshots/latest",
                                  params={"limit": 1000, "after": "SKU-050000|WH10"})
            items = await http.get("/api/v1/items", params={"after": "SKU-099990"})
            bodies.append((snap.json(), items.json()))
    assert time.monotonic() - started < 3
    assert bodies[0] == bodies[1]
    rows = bodies[0][0]["rows"]
    assert len(rows) == 1000
    assert rows[0]["sku"] == "SKU-050001"
    assert bodies[0][0]["nextCursor"] == "SKU-050020|WH10"  # 50 locations per SKU
    assert [i["sku"] for i in bodies[0][1]["items"]][-1] == "SKU-100000"
