"""POS (Square) simulator and connector, over real HTTP on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.intake.signatures import square_sign
from gateway.simulators.pos import create_app
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import World
from resolvers.connectors.pos import PosConnector, counts_to_views
from resolvers.errors import BackendProtocolError, BackendStatusError
from resolvers.identity import SQUARE_LOCATION, SQUARE_VARIATION, IdentityMap
from resolvers.settings import BackendSettings
from resolvers.types import ExternalRef, LocationRecord, LocationType, MasterItem
from tests.support import ServerThread, serve

TOKEN = "pos-test-token"
SECRET = "pos-webhook-secret"
COUNTS = "/v2/inventory/counts/batch-retrieve"
CREATE = "/v2/inventory/changes/batch-create"
CHANGES = "/v2/inventory/changes/batch-retrieve"


def settings(base_url: str = "http://unused", token: str = TOKEN) -> BackendSettings:
    return BackendSettings(name="pos", format="square", base_url=base_url, token=token,
                           webhook_secret=SECRET, retries=0)


def expected_signature(url: str, body: bytes, key: str = SECRET) -> str:
    """Square's scheme, computed here independently of gateway.intake.signatures."""
    digest = hmac.new(key.encode(), url.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


@dataclass
class Receiver:
    """Records every webhook POST; answers 500 to the first ``fail_first`` of them."""

    fail_first: int = 0
    calls: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    server: ServerThread | None = None

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.calls.append((await request.body(), dict(request.headers)))
            return Response(status_code=500 if len(self.calls) <= self.fail_first else 200)
        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for body, _ in self.calls]


@dataclass
class Sim:
    world: World
    server: ServerThread
    receiver: Receiver
    http: httpx.AsyncClient

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(path, json=body)

    async def drain(self) -> None:
        response = await self.http.post("/_sim/webhooks/drain")
        assert response.json()["pending"] == 0

    async def requests(self, key: str) -> int:
        return int((await self.http.get("/_sim/stats")).json()["requests"].get(key, 0))


@pytest.fixture
def world() -> World:
    return World(seed=7, skus=30, stores=3, warehouses=2)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    with serve(rec.app()) as server:
        rec.server = server
        yield rec


@pytest.fixture
def options() -> DeliveryOptions:
    return DeliveryOptions(backoff=0.02)


@pytest.fixture
async def sim(world: World, receiver: Receiver, options: DeliveryOptions
              ) -> AsyncIterator[Sim]:
    app = create_app(world, settings(), receiver.url, options)
    app.state.sim.catalog_page_size = 7
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            yield Sim(world, server, receiver, http)


def identity_for(world: World) -> IdentityMap:
    """What the ERP master teaches: SKUs with GTINs, stores with their Square location ids."""
    identity = IdentityMap()
    now = datetime.now(UTC)
    items = [MasterItem(sku=i.sku, item_number=i.item_number, gtin14=i.gtin14, name=i.name,
                        category=i.category, list_price=i.list_price, cost=i.cost,
                        currency="NOK", safety_stock=i.safety_stock, source="erp", as_of=now)
             for i in world.items]
    locations = [LocationRecord(id=loc.code, name=loc.name, type=LocationType(loc.type),
                                gln=loc.gln, source="erp", as_of=now,
                                refs=(ExternalRef("square", "location_id", loc.square_id),)
                                if loc.square_id else ())
                 for loc in world.locations]
    identity.learn_master(items, locations)
    return identity


@pytest.fixture
async def pos(sim: Sim) -> AsyncIterator[PosConnector]:
    connector = PosConnector(settings(sim.server.url), identity_for(sim.world))
    connector.identity.learn_store(await connector.catalog())
    yield connector
    await connector.aclose()


# Square takes changes that occurred at most 24 hours before the request (and not later).
OCCURRED = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


def adjustment(world: World, item: int, store: int, from_state: str, to_state: str,
               quantity: str = "2") -> dict[str, Any]:
    return {"type": "ADJUSTMENT", "adjustment": {
        "from_state": from_state, "to_state": to_state, "quantity": quantity,
        "location_id": world.stores[store].square_id,
        "catalog_object_id": world.item(item).square_variation_id,
        "occurred_at": OCCURRED.strftime("%Y-%m-%dT%H:%M:%SZ")}}


def webhook_counts(receiver: Receiver) -> list[dict[str, Any]]:
    return [c for b in receiver.bodies() for c in b["data"]["object"]["inventory_counts"]]


# -- signatures ------------------------------------------------------------------------------

def test_square_published_test_vector() -> None:
    vector = "2kRE5qRU2tR+tBGlDwMEw2avJ7QM4ikPYD/PJ3bd9Og="
    url, body = "https://example.com/webhook", b'{"hello":"world"}'
    assert expected_signature(url, body, "asdf1234") == vector
    assert square_sign("asdf1234", url, body) == vector


# -- reads -----------------------------------------------------------------------------------

async def test_locations(sim: Sim, pos: PosConnector) -> None:
    natives = await pos.locations()
    assert [(n.namespace, n.native_id, n.name) for n in natives] == [
        ("square", s.square_id, s.name) for s in sim.world.stores]
    raw = (await sim.http.get("/v2/locations")).json()["locations"]
    assert {(r["status"], r["type"], r["currency"]) for r in raw} == {
        ("ACTIVE", "PHYSICAL", "NOK")}
    assert len({r["merchant_id"] for r in raw}) == 1


async def test_catalog_pages_prices_and_unmapped_variation(sim: Sim) -> None:
    connector = PosConnector(settings(sim.server.url), identity_for(sim.world))
    listings = await connector.catalog()
    await connector.aclose()
    assert len(listings) == 31
    assert await sim.requests("GET /v2/catalog/list") == 5  # 7 per page
    by_id = {listing.catalog_object_id: listing for listing in listings}
    for item in sim.world.items:
        listing = by_id[item.square_variation_id]
        assert (listing.sku, listing.upc, listing.price, listing.currency) == (
            item.sku, item.gtin13, item.list_price, "NOK")
    gift = listings[-1]
    assert (gift.sku, gift.upc, gift.name) == (None, None, "Gift wrapping")
    connector.identity.learn_store(listings)
    assert list(connector.identity.unmapped) == [("square", "catalog_object_id",
                                                  gift.catalog_object_id)]
    assert connector.identity.sku(SQUARE_VARIATION, sim.world.item(3).square_variation_id) \
        == sim.world.item(3).sku


async def test_counts_fold_opening_stock(sim: Sim, pos: PosConnector) -> None:
    w = sim.world
    skus = [w.item(i).sku for i in range(5)] + ["SKU-NOT-AT-POS"]
    stores = [s.code for s in w.stores] + ["WH01"]
    views = await pos.counts(skus, stores)
    assert len(views) == 15
    assert await sim.requests(f"POST {COUNTS}") == 1
    for view in views:
        i, loc = int(view.sku[4:]) - 1, next(s.index for s in w.stores
                                           if s.code == view.location_id)
        in_stock, reserved = w.store_counts(i, loc)
        q = view.quantities
        assert (q.available, q.committed, q.on_hand, q.incoming, q.damaged) == (
            in_stock, reserved, None, 0, 0)
        assert view.source == "pos"
        assert view.as_of == w.snapshot_as_of
        assert view.version == w.snapshot_as_of.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_counts_chunk_ids_and_follow_cursor(sim: Sim, pos: PosConnector) -> None:
    pos.max_ids, pos.page_limit = 7, 10
    skus = [i.sku for i in sim.world.items]
    views = await pos.counts(skus, [s.code for s in sim.world.stores])
    assert {(v.sku, v.location_id) for v in views} == {
        (sku, s.code) for sku in skus for s in sim.world.stores}
    # 5 chunks of <= 7 SKUs, each read in pages of 10 counts.
    calls = await sim.requests(f"POST {COUNTS}")
    chunks = [sim.world.items[k:k + 7] for k in range(0, 30, 7)]
    per_chunk = [sum(1 + (sim.world.store_counts(i.index, s.index)[1] > 0)
                     for i in chunk for s in sim.world.stores) for chunk in chunks]
    assert calls == sum(-(-n // 10) for n in per_chunk) > len(chunks)
    assert await pos.counts([], ["ST001"]) == []
    assert await sim.requests(f"POST {COUNTS}") == calls


def test_counts_to_views_reports_unmapped_and_partial(world: World) -> None:
    identity = identity_for(world)
    item, store = world.item(0), world.stores[0]
    identity.add_sku(SQUARE_VARIATION, item.square_variation_id, item.sku)
    base: dict[str, Any] = {"catalog_object_type": "ITEM_VARIATION",
                            "calculated_at": "2025-06-01T10:00:00Z"}
    counts: list[dict[str, Any]] = [
        base | {"catalog_object_id": item.square_variation_id, "location_id": store.square_id,
                "state": "RESERVED_FOR_SALE", "quantity": "3"},
        base | {"catalog_object_id": item.square_variation_id, "location_id": store.square_id,
                "state": "WASTE", "quantity": "4.00000",
                "calculated_at": "2025-06-01T11:00:00.5Z"},
        base | {"catalog_object_id": "UNKNOWNVARIATION", "location_id": store.square_id,
                "state": "IN_STOCK", "quantity": "1"},
        base | {"catalog_object_id": item.square_variation_id, "location_id": "NOWHERE",
                "state": "IN_STOCK", "quantity": "1"},
    ]
    [view] = counts_to_views(counts, identity, "pos", partial=True)
    assert (view.sku, view.location_id) == (item.sku, store.code)
    q = view.quantities
    assert (q.available, q.committed, q.on_hand, q.damaged) == (None, 3, None, 0)
    assert view.as_of == datetime(2025, 6, 1, 11, 0, 0, 500000, tzinfo=UTC)
    assert ("square", "catalog_object_id", "UNKNOWNVARIATION") in identity.unmapped
    assert ("square", "location_id", "NOWHERE") in identity.unmapped
    [full] = counts_to_views(counts[:1], identity, "pos")
    assert (full.quantities.available, full.quantities.committed) == (0, 3)
    assert full.quantities.on_hand is None  # Square has no on-hand; the merge derives it
    with pytest.raises(BackendProtocolError, match="whole number"):
        counts_to_views([counts[0] | {"quantity": "1.5"}], identity, "pos")
    with pytest.raises(BackendProtocolError, match="calculated_at"):
        counts_to_views([counts[0] | {"calculated_at": None}], identity, "pos")
    with pytest.raises(BackendProtocolError, match="lacks"):
        counts_to_views([{"quantity": "1"}], identity, "pos")


async def test_malformed_payload_is_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"counts": "nope"})
    identity = IdentityMap()
    identity.add_sku(SQUARE_VARIATION, "V1", "SKU-1")
    identity.add_location(SQUARE_LOCATION, "L1", "ST001")
    connector = PosConnector(settings(), identity, httpx.MockTransport(handler))
    with pytest.raises(BackendProtocolError, match="counts is not a list"):
        await connector.counts(["SKU-1"], ["ST001"])
    await connector.aclose()


async def test_raw_count_retrieval_filters(sim: Sim) -> None:
    w = sim.world
    ids = [w.item(0).square_variation_id, "UNKNOWN", w.item(1).square_variation_id]
    body = {"catalog_object_ids": ids, "location_ids": [w.stores[1].square_id]}
    counts = (await sim.post(COUNTS, body)).json()["counts"]
    assert {c["catalog_object_id"] for c in counts} == {ids[0], ids[2]}
    assert {c["location_id"] for c in counts} == {w.stores[1].square_id}
    only = (await sim.post(COUNTS, body | {"states": ["IN_STOCK"]})).json()["counts"]
    assert [c["state"] for c in only] == ["IN_STOCK", "IN_STOCK"]
    assert (await sim.post(COUNTS, {"limit": 0})).status_code == 400
    too_many = (await sim.post(COUNTS, {"catalog_object_ids": ["X"] * 1001})).json()
    assert too_many["errors"][0]["code"] == "TOO_MANY_ARRAY_ELEMENTS"
    everything = (await sim.post(COUNTS, {"limit": 1000})).json()
    assert "cursor" not in everything
    assert {(c["catalog_object_id"], c["location_id"]) for c in everything["counts"]} == {
        (i.square_variation_id, s.square_id) for i in w.items for s in w.stores}


def test_large_world_is_lazy() -> None:
    started = time.monotonic()
    world = World(seed=7, skus=100_000, stores=40, warehouses=10)
    app = create_app(world, settings(), "")
    assert time.monotonic() - started < 1.0
    assert app.state.sim.overrides == {}


async def test_large_world_counts_page_lazily() -> None:
    world = World(seed=7, skus=100_000, stores=40, warehouses=10)
    app = create_app(world, settings(), "")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim",
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        started = time.monotonic()
        first = (await http.post(COUNTS, json={"limit": 50})).json()
        second = (await http.post(COUNTS, json={"limit": 50, "cursor": first["cursor"]})).json()
        assert time.monotonic() - started < 1.0
    assert len(first["counts"]) == len(second["counts"]) == 50
    assert not {orjson.dumps(c) for c in first["counts"]} & {
        orjson.dumps(c) for c in second["counts"]}


# -- auth --------------------------------------------------------------------------------------

async def test_unauthorized(sim: Sim) -> None:
    async with httpx.AsyncClient(base_url=sim.server.url) as anonymous:
        response = await anonymous.get("/v2/locations")
    assert response.status_code == 401
    assert response.json()["errors"][0]["category"] == "AUTHENTICATION_ERROR"
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    connector = PosConnector(settings(sim.server.url, token="wrong"), IdentityMap())
    with pytest.raises(BackendStatusError) as info:
        await connector.locations()
    assert info.value.status == 401
    await connector.aclose()


# -- changes and webhooks ----------------------------------------------------------------------

async def test_sale_fires_signed_webhook(sim: Sim, pos: PosConnector) -> None:
    w, receiver = sim.world, sim.receiver
    i = next(i for i in range(30) if w.store_counts(i, 0)[0] >= 2)
    before = w.store_counts(i, 0)[0]
    response = await sim.post(CREATE, {"idempotency_key": "sale-1", "changes": [
        adjustment(w, i, 0, "IN_STOCK", "SOLD")]})
    assert response.status_code == 200
    assert response.json()["counts"][0] == response.json()["counts"][0] | {
        "state": "IN_STOCK", "quantity": str(before - 2)}
    await sim.drain()
    [(body, headers)] = receiver.calls
    assert headers["x-square-hmacsha256-signature"] == expected_signature(receiver.url, body)
    assert headers["square-environment"] == "Production"
    datetime.fromisoformat(headers["square-initial-delivery-timestamp"])
    assert "square-retry-number" not in headers
    payload = orjson.loads(body)
    assert set(payload) == {"merchant_id", "type", "event_id", "created_at", "data"}
    assert payload["type"] == "inventory.count.updated"
    assert payload["data"]["type"] == "inventory_counts"
    [count] = payload["data"]["object"]["inventory_counts"]
    assert count | {"calculated_at": ""} == {
        "catalog_object_id": w.item(i).square_variation_id,
        "catalog_object_type": "ITEM_VARIATION", "state": "IN_STOCK",
        "location_id": w.stores[0].square_id, "quantity": str(before - 2), "calculated_at": ""}
    [view] = await pos.counts([w.item(i).sku], [w.stores[0].code])
    assert view.quantities.available == before - 2
    assert view.version == count["calculated_at"]
    [webhook_view] = counts_to_views([count], pos.identity, "pos", partial=True)
    assert webhook_view.quantities.available == before - 2
    assert webhook_view.version == view.version
    history = (await sim.post(CHANGES, {"types": ["ADJUSTMENT"]})).json()["changes"]
    [change] = history
    assert change["adjustment"]["from_state"] == "IN_STOCK"
    assert change["adjustment"]["to_state"] == "SOLD"
    assert change["adjustment"]["source"]["product"] == "SQUARE_POS"
    assert change["adjustment"]["occurred_at"] == OCCURRED.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


async def test_delivery_goes_through_in_transit(sim: Sim, pos: PosConnector) -> None:
    w = sim.world
    start = w.store_counts(4, 1)
    await sim.post(CREATE, {"idempotency_key": "ship", "changes": [
        adjustment(w, 4, 1, "NONE", "IN_TRANSIT_TO", "12")]})
    [view] = await pos.counts([w.item(4).sku], [w.stores[1].code])
    assert (view.quantities.incoming, view.quantities.available) == (12, start[0])
    await sim.post(CREATE, {"idempotency_key": "arrive", "changes": [
        adjustment(w, 4, 1, "IN_TRANSIT_TO", "IN_STOCK", "12")]})
    [view] = await pos.counts([w.item(4).sku], [w.stores[1].code])
    assert (view.quantities.incoming, view.quantities.available) == (0, start[0] + 12)
    assert view.quantities.committed == start[1]
    await sim.drain()
    first, second = sim.receiver.bodies()
    assert [c["state"] for c in first["data"]["object"]["inventory_counts"]] == [
        "IN_TRANSIT_TO"]
    assert {(c["state"], c["quantity"]) for c in second["data"]["object"]["inventory_counts"]} \
        == {("IN_TRANSIT_TO", "0"), ("IN_STOCK", str(start[0] + 12))}
    assert first["event_id"] != second["event_id"]


async def test_physical_count_and_transfer(sim: Sim, pos: PosConnector) -> None:
    w = sim.world
    vid = w.item(2).square_variation_id
    s0, s1 = w.stores[0].square_id, w.stores[2].square_id
    response = await sim.post(CREATE, {"idempotency_key": "count-and-move", "changes": [
        {"type": "PHYSICAL_COUNT", "physical_count": {
            "catalog_object_id": vid, "state": "IN_STOCK", "location_id": s0, "quantity": "40",
            "occurred_at": OCCURRED.astimezone(timezone(timedelta(hours=2))).isoformat()}},
        {"type": "TRANSFER", "transfer": {
            "catalog_object_id": vid, "state": "IN_STOCK", "from_location_id": s0,
            "to_location_id": s1, "quantity": "15"}}]})
    assert response.status_code == 200
    assert [c["type"] for c in response.json()["changes"]] == ["PHYSICAL_COUNT", "TRANSFER"]
    views = {v.location_id: v for v in await pos.counts([w.item(2).sku],
                                                         [w.stores[0].code, w.stores[2].code])}
    assert views[w.stores[0].code].quantities.available == 25
    assert views[w.stores[2].code].quantities.available == w.store_counts(2, 2)[0] + 15
    await sim.drain()
    [payload] = sim.receiver.bodies()
    assert {(c["location_id"], c["quantity"]) for c in
            payload["data"]["object"]["inventory_counts"]} == {
        (s0, "25"), (s1, str(w.store_counts(2, 2)[0] + 15))}
    by_location = (await sim.post(CHANGES, {"location_ids": [s1]})).json()["changes"]
    assert [c["type"] for c in by_location] == ["TRANSFER"]


async def test_unchanged_physical_count_is_ignored(sim: Sim) -> None:
    w = sim.world
    same = str(w.store_counts(5, 0)[0])
    change = {"type": "PHYSICAL_COUNT", "physical_count": {
        "catalog_object_id": w.item(5).square_variation_id, "state": "IN_STOCK",
        "location_id": w.stores[0].square_id, "quantity": same}}
    response = await sim.post(CREATE, {"idempotency_key": "noop", "changes": [change]})
    assert response.status_code == 200
    assert response.json()["changes"] == []
    await sim.drain()
    assert sim.receiver.calls == []


@pytest.mark.parametrize(("bad", "code", "field"), [
    ({"catalog_object_id": "NOPE"}, "NOT_FOUND", "changes[1].adjustment.catalog_object_id"),
    ({"location_id": "NOPE"}, "NOT_FOUND", "changes[1].adjustment.location_id"),
    ({"quantity": "two"}, "INVALID_VALUE", "changes[1].adjustment.quantity"),
    ({"quantity": 2}, "INVALID_VALUE", "changes[1].adjustment.quantity"),
    ({"quantity": "1000"}, "INSUFFICIENT_INVENTORY", "changes[1].adjustment"),
    ({"to_state": "MELTED"}, "INVALID_ENUM_VALUE", "changes[1].adjustment.to_state"),
    ({"occurred_at": "yesterday"}, "INVALID_TIME", "changes[1].adjustment.occurred_at"),
])
async def test_bad_batch_is_rejected_atomically(sim: Sim, bad: dict[str, Any], code: str,
                                                field: str) -> None:
    w = sim.world
    good = adjustment(w, 0, 0, "NONE", "IN_STOCK", "5")
    wrong = adjustment(w, 1, 0, "IN_STOCK", "WASTE", "1")
    wrong["adjustment"] |= bad
    before = (await sim.post(COUNTS, {})).json()
    response = await sim.post(CREATE, {"idempotency_key": "bad", "changes": [good, wrong]})
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert (error["category"], error["code"], error["field"]) == (
        "INVALID_REQUEST_ERROR", code, field)
    assert (await sim.post(COUNTS, {})).json() == before
    assert (await sim.post(CHANGES, {})).json() == {"changes": []}
    await sim.drain()
    assert sim.receiver.calls == []


async def test_bad_batch_envelopes(sim: Sim) -> None:
    good = adjustment(sim.world, 0, 0, "NONE", "IN_STOCK")
    cases: list[tuple[dict[str, Any], str]] = [({"changes": [good]}, "idempotency_key"),
             ({"idempotency_key": "k", "changes": []}, "changes"),
             ({"idempotency_key": "k", "changes": [good] * 101}, "changes"),
             ({"idempotency_key": "k", "changes": [{"type": "MAGIC"}]}, "changes[0].type")]
    for body, field_name in cases:
        response = await sim.post(CREATE, body)
        assert response.status_code == 400
        assert response.json()["errors"][0]["field"] == field_name
    response = await sim.http.post(CREATE, content=b"[1,")
    assert response.json()["errors"][0]["code"] == "BAD_REQUEST"


async def test_idempotency_key(sim: Sim) -> None:
    w = sim.world
    body = {"idempotency_key": "once", "changes": [adjustment(w, 3, 2, "NONE", "WASTE", "3")]}
    first = (await sim.post(CREATE, body)).json()
    second = (await sim.post(CREATE, body)).json()
    assert first == second
    counts = (await sim.post(COUNTS, {"catalog_object_ids": [w.item(3).square_variation_id],
                                      "states": ["WASTE"]})).json()["counts"]
    assert [c["quantity"] for c in counts] == ["3"]
    reused = await sim.post(CREATE, body | {"changes": [
        adjustment(w, 3, 2, "NONE", "WASTE", "4")]})
    assert reused.json()["errors"][0]["code"] == "IDEMPOTENCY_KEY_REUSED"
    await sim.drain()
    assert len(sim.receiver.calls) == 1


async def test_large_batch_splits_notifications(sim: Sim) -> None:
    w = sim.world
    transfers = [{"type": "TRANSFER", "transfer": {
        "catalog_object_id": w.item(i).square_variation_id, "state": "IN_STOCK",
        "from_location_id": w.stores[0].square_id, "to_location_id": w.stores[1].square_id,
        "quantity": "1"}} for i in range(30) if w.store_counts(i, 0)[0] >= 1]
    waste = [adjustment(w, i, 2, "NONE", state, "1") for i in range(30)
             for state in ("WASTE", "RECEIVED_FROM_VENDOR")]
    assert len(transfers) > 20
    response = await sim.post(CREATE, {"idempotency_key": "big", "changes": transfers + waste})
    assert response.status_code == 200
    await sim.drain()
    sizes = [len(b["data"]["object"]["inventory_counts"]) for b in sim.receiver.bodies()]
    assert sizes == [100, 2 * len(transfers) + 60 - 100]
    delivered = {(c["catalog_object_id"], c["location_id"], c["state"])
                 for c in webhook_counts(sim.receiver)}
    assert len(delivered) == sum(sizes)  # each changed count exactly once


async def test_changes_retrieve_paginates(sim: Sim) -> None:
    w = sim.world
    for n in range(5):
        await sim.post(CREATE, {"idempotency_key": f"k{n}", "changes": [
            adjustment(w, n, 0, "NONE", "RECEIVED_FROM_VENDOR", str(n + 1))]})
    first = (await sim.post(CHANGES, {"limit": 3})).json()
    rest = (await sim.post(CHANGES, {"limit": 3, "cursor": first["cursor"]})).json()
    assert "cursor" not in rest
    quantities = [c["adjustment"]["quantity"] for c in first["changes"] + rest["changes"]]
    assert quantities == ["1", "2", "3", "4", "5"]
    mid = first["changes"][2]["adjustment"]["created_at"]
    later = (await sim.post(CHANGES, {"updated_after": mid})).json()["changes"]
    assert [c["adjustment"]["quantity"] for c in later] == ["4", "5"]
    changed = (await sim.post(COUNTS, {"updated_after": mid})).json()["counts"]
    assert {(c["catalog_object_id"], c["state"]) for c in changed} == {
        (w.item(n).square_variation_id, "RECEIVED_FROM_VENDOR") for n in (3, 4)}


async def test_retry_carries_attempt_headers(sim: Sim) -> None:
    sim.receiver.fail_first = 1
    await sim.post(CREATE, {"idempotency_key": "retry", "changes": [
        adjustment(sim.world, 0, 0, "NONE", "IN_STOCK")]})
    await sim.drain()
    (body1, h1), (body2, h2) = sim.receiver.calls
    assert body1 == body2
    assert "square-retry-number" not in h1
    assert (h2["square-retry-number"], h2["square-retry-reason"]) == ("1", "http_error")
    assert h1["square-initial-delivery-timestamp"] == h2["square-initial-delivery-timestamp"]
    assert h2["x-square-hmacsha256-signature"] == expected_signature(sim.receiver.url, body2)
    stats = (await sim.http.get("/_sim/webhooks")).json()["deliveries"]
    assert [(d["attempts"], d["status"]) for d in stats] == [(2, 200)]


@pytest.mark.parametrize("options", [DeliveryOptions(backoff=0.02, duplicate_rate=1.0)])
async def test_duplicates_share_event_id(sim: Sim) -> None:
    await sim.post(CREATE, {"idempotency_key": "dup", "changes": [
        adjustment(sim.world, 0, 0, "NONE", "IN_STOCK")]})
    await sim.drain()
    first, second = sim.receiver.bodies()
    assert first == second
    assert first["event_id"] == second["event_id"]


async def test_notification_url_setting_is_signed(world: World, receiver: Receiver) -> None:
    public = "https://pos.example.com/webhooks/square"
    config = settings()
    config.notification_url = public
    with serve(create_app(world, config, receiver.url)) as server:
        async with httpx.AsyncClient(base_url=server.url,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            await http.post(CREATE, json={"idempotency_key": "n", "changes": [
                adjustment(world, 0, 0, "NONE", "IN_STOCK")]})
            await http.post("/_sim/webhooks/drain")
    [(body, headers)] = receiver.calls
    assert headers["x-square-hmacsha256-signature"] == expected_signature(public, body)


def test_deterministic_ids(world: World) -> None:
    a = create_app(world, settings(), "").state.sim
    b = create_app(World(seed=7, skus=30, stores=3, warehouses=2), settings(), "").state.sim
    c = create_app(World(seed=8, skus=30, stores=3, warehouses=2), settings(), "").state.sim
    assert (a.merchant_id, a.gift_wrap_id) == (b.merchant_id, b.gift_wrap_id)
    assert a.merchant_id != c.merchant_id
    # Event ids carry a boot nonce: a restarted simulator never repeats them.
    assert a.next_uuid() != b.next_uuid()
    assert Decimal(a.count(0, 0, "IN_STOCK")["quantity"]) == world.store_counts(0, 0)[0]
