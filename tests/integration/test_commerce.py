"""The Shopify simulator's REST side and webhooks, and the connector (GraphQL Admin 2026-10)
reading it, over real HTTP on loopback. Writes: tests/integration/test_writes.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.simulators.commerce import create_app
from gateway.simulators.shop import Shop
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import World
from resolvers.connectors import commerce
from resolvers.connectors.commerce import GRAPHQL_PATH, CommerceConnector, level_to_view
from resolvers.errors import BackendProtocolError, BackendStatusError
from resolvers.identity import SHOPIFY_INVENTORY_ITEM, SHOPIFY_VARIANT, IdentityMap
from resolvers.settings import BackendSettings
from resolvers.types import ExternalRef, LocationRecord, LocationType, MasterItem, Quantities
from resolvers.writes import ItemWrite, Outcome, StockWrite
from tests.support import serve

WORLD = World(seed=7, skus=30, stores=3, warehouses=2)
TOKEN = "shpat_commerce_test"
SECRET = "shpss_commerce_webhook_secret"
API = "/admin/api/2025-01"
WH1, WH2 = WORLD.warehouses
L1, L2 = (int(w.shopify_id or 0) for w in WORLD.warehouses)  # Shopify location ids
GIFT_VARIANT = WORLD.item(0).shopify_variant_id + WORLD.n_skus
GIFT_INVENTORY_ITEM = WORLD.item(0).shopify_inventory_item_id + WORLD.n_skus


@dataclass
class Receiver:
    """Records raw webhook deliveries; can answer 500 to each delivery's first attempt."""

    fail_first: bool = False
    deliveries: list[tuple[int, bytes, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        seen = any(h["x-shopify-webhook-id"] == headers.get("x-shopify-webhook-id")
                   for _, _, h in self.deliveries)
        status = 500 if self.fail_first and not seen else 200
        self.deliveries.append((status, body, headers))
        return Response(status_code=status)

    def accepted(self) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
        """(topic, payload, headers) of every 2xx delivery, signature checked independently."""
        return [(verify(body, headers), json.loads(body), headers)
                for status, body, headers in self.deliveries if status == 200]


def verify(body: bytes, headers: dict[str, str]) -> str:
    expected = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest())
    assert hmac.compare_digest(headers["x-shopify-hmac-sha256"].encode(), expected)
    assert headers["x-shopify-shop-domain"] == "retailgraph-7.myshopify.com"
    assert headers["x-shopify-api-version"] == "2025-01"
    assert uuid.UUID(headers["x-shopify-webhook-id"]).version == 4
    assert uuid.UUID(headers["x-shopify-event-id"]).version == 4
    assert datetime.fromisoformat(headers["x-shopify-triggered-at"]).tzinfo is not None
    return headers["x-shopify-topic"]


@dataclass
class Sim:
    url: str
    settings: BackendSettings
    shop: Shop
    http: httpx.AsyncClient

    async def drain(self) -> None:
        response = await self.http.post("/_sim/webhooks/drain")
        assert response.json() == {"pending": 0}

    async def requests(self, path: str) -> int:
        stats = (await self.http.get("/_sim/stats")).json()
        return int(stats["requests"].get(f"GET {API}/{path}", 0))

    async def graphql_requests(self) -> int:
        stats = (await self.http.get("/_sim/stats")).json()
        return int(stats["requests"].get(f"POST {GRAPHQL_PATH}", 0))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hooks", rec.handle, methods=["POST"])])
    with serve(app) as server:
        rec.url = server.url + "/hooks"
        yield rec


def start_sim(world: World, webhook_url: str) -> tuple[Starlette, BackendSettings]:
    settings = BackendSettings(name="commerce", format="shopify", base_url="", token=TOKEN,
                               webhook_secret=SECRET)
    return create_app(world, settings, webhook_url, DeliveryOptions(backoff=0.01)), settings


@pytest.fixture
async def sim(receiver: Receiver) -> AsyncIterator[Sim]:
    app, settings = start_sim(WORLD, receiver.url)
    with serve(app) as server:
        settings.base_url = server.url
        headers = {"X-Shopify-Access-Token": TOKEN}
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as http:
            yield Sim(server.url, settings, app.state.sim, http)


def master_identity(world: World) -> IdentityMap:
    """What the ERP's masters teach the identity map (warehouses carry their Shopify id)."""
    now = datetime.now(UTC)
    identity = IdentityMap()
    items = [MasterItem(i.sku, i.item_number, i.gtin14, i.name, i.category, i.list_price,
                        i.cost, "NOK", i.safety_stock, "erp", now) for i in world.items]
    locations = [LocationRecord(
        loc.code, loc.name, LocationType(loc.type), loc.gln,
        (ExternalRef("shopify", "location_id", str(loc.shopify_id)),) if loc.shopify_id else (),
        "erp", now) for loc in world.locations]
    identity.learn_master(items, locations)
    return identity


@pytest.fixture
async def conn(sim: Sim) -> AsyncIterator[CommerceConnector]:
    connector = CommerceConnector(sim.settings, master_identity(WORLD))
    yield connector
    await connector.aclose()


def opening_available(i: int, loc: int) -> int:
    return max(0, WORLD.warehouse_balance(i, loc).available - WORLD.online_committed(i, loc))


async def get_level(sim: Sim, inventory_item_id: int, location_id: int) -> dict[str, Any]:
    response = await sim.http.get(f"{API}/inventory_levels.json", params={
        "inventory_item_ids": inventory_item_id, "location_ids": location_id})
    [level] = response.json()["inventory_levels"]
    return dict(level)


# -- catalog ----------------------------------------------------------------------------------


async def test_products_follow_cursor_pagination_and_feed_identity(
        sim: Sim, conn: CommerceConnector) -> None:
    conn.page_limit = 7
    conn.bulk_catalog = False
    listings = await conn.products()
    assert await sim.graphql_requests() == 1 + 5  # the shop's currency; 31 variants, 7 a page
    assert len(listings) == WORLD.n_skus + 1
    item = WORLD.item(3)
    listing = listings[3]
    assert (listing.sku, listing.product_id, listing.variant_id, listing.inventory_item_id) == (
        item.sku, str(item.shopify_product_id), str(item.shopify_variant_id),
        str(item.shopify_inventory_item_id))
    assert (listing.title, listing.price, listing.currency, listing.status, listing.barcode) == (
        item.name, item.online_price, "NOK", "active", item.gtin13)
    assert isinstance(listing.price, Decimal)
    gift = listings[-1]
    assert (gift.sku, gift.title, gift.barcode) == ("GIFTCARD-500", "Gift Card", None)

    conn.identity.learn_online(listings)
    assert conn.identity.sku(SHOPIFY_VARIANT, str(item.shopify_variant_id)) == item.sku
    assert ("shopify", "variant_id", str(GIFT_VARIANT)) in conn.identity.unmapped


async def test_a_catalog_of_several_pages_is_read_by_a_bulk_operation(
        sim: Sim, conn: CommerceConnector, monkeypatch: pytest.MonkeyPatch) -> None:
    conn.bulk_catalog = False
    paged = await conn.products()
    conn.bulk_catalog = True
    conn.page_limit = 7
    sent: list[httpx.Request] = []
    download = conn._downloads.get

    async def recorded(url: str) -> httpx.Response:
        response = await download(url)
        sent.append(response.request)
        return response

    monkeypatch.setattr(conn._downloads, "get", recorded)
    before = await sim.graphql_requests()
    listings = await conn.products()
    assert listings == paged
    # one page to see it is larger, the bulk mutation, its status until COMPLETED
    assert await sim.graphql_requests() - before == 1 + 1 + 2
    [fetched] = sent
    assert fetched.url.path.endswith(".jsonl")
    assert "x-shopify-access-token" not in fetched.headers  # the file store gets no token

    # Five bulk operations running already: the shop refuses a sixth, and it is paged.
    for _ in range(5):
        running = await sim.http.post(GRAPHQL_PATH, json={
            "query": "mutation($q: String!) { bulkOperationRunQuery(query: $q) { "
                     "userErrors { code } } }",
            "variables": {"q": "{ productVariants { edges { node { id } } } }"}})
        assert running.json()["data"]["bulkOperationRunQuery"]["userErrors"] == []
    before = await sim.graphql_requests()
    assert await conn.products() == paged
    # the first page, the refused bulk mutation, then the 4 further pages from its cursor
    assert await sim.graphql_requests() - before == 1 + 1 + 4


async def test_graphql_listings_are_what_the_rest_products_said(
        sim: Sim, conn: CommerceConnector) -> None:
    """The GraphQL read gives the listings the REST Admin API's products gave before."""
    rest = (await sim.http.get(f"{API}/products.json", params={"limit": 250})).json()
    before = {str(v["id"]): (p, v) for p in rest["products"] for v in p["variants"]}
    listings = await conn.products()
    assert {x.variant_id for x in listings} == set(before)
    for x in listings:
        product, variant = before[x.variant_id]
        assert (x.sku, x.product_id, x.inventory_item_id, x.title, x.price, x.status,
                x.barcode) == (variant["sku"], str(product["id"]),
                               str(variant["inventory_item_id"]), product["title"],
                               Decimal(variant["price"]), product["status"],
                               variant["barcode"])
        assert x.as_of == datetime.fromisoformat(variant["updated_at"])


async def test_link_header_is_shopify_cursor_pagination(sim: Sim) -> None:
    base = f"{sim.url}{API}/products.json?limit=10&page_info="
    first = await sim.http.get(f"{API}/products.json", params={"limit": 10})
    link = first.headers["link"]
    assert link.startswith(f"<{base}")
    assert link.endswith('>; rel="next"')
    assert 'rel="previous"' not in link
    second = await sim.http.get(link[1:link.index(">")])
    prev_link, next_link = second.headers["link"].split(", ")
    assert prev_link.endswith('>; rel="previous"')
    assert next_link.endswith('>; rel="next"')
    again = await sim.http.get(prev_link[1:prev_link.index(">")])
    ids = [p["id"] for p in first.json()["products"]]
    assert [p["id"] for p in again.json()["products"]] == ids
    assert [p["id"] for p in second.json()["products"]] == [i + 10 for i in ids]
    variant = first.json()["products"][0]["variants"][0]
    assert variant["inventory_management"] == "shopify"
    assert variant["inventory_policy"] == "deny"

    bad = await sim.http.get(f"{API}/products.json", params={"page_info": "not-a-cursor"})
    assert (bad.status_code, bad.json()) == (400, {"errors": {"page_info": "Invalid value."}})
    too_many = await sim.http.get(f"{API}/products.json", params={"limit": 251})
    assert too_many.status_code == 400


async def test_locations_are_the_warehouses(sim: Sim, conn: CommerceConnector) -> None:
    natives = await conn.locations()
    assert [(n.namespace, n.native_id, n.name) for n in natives] == [
        ("shopify", str(L1), WH1.name), ("shopify", str(L2), WH2.name)]
    raw = (await sim.http.get(f"{API}/locations.json")).json()["locations"][0]
    assert (raw["active"], raw["legacy"], raw["country_code"]) == (True, False, "NO")
    assert raw["admin_graphql_api_id"] == f"gid://shopify/Location/{L1}"


async def test_unauthorized_without_the_access_token(sim: Sim) -> None:
    response = await sim.http.get(f"{API}/products.json",
                                  headers={"X-Shopify-Access-Token": "wrong"})
    assert response.status_code == 401
    assert response.json() == {"errors": "[API] Invalid API key or access token "
                                         "(unrecognized login or wrong password)"}
    settings = BackendSettings(name="commerce", format="shopify", base_url=sim.url,
                               token="wrong")
    connector = CommerceConnector(settings, IdentityMap())
    with pytest.raises(BackendStatusError) as err:
        await connector.locations()
    await connector.aclose()
    assert err.value.status == 401


# -- inventory levels ------------------------------------------------------------------------


async def test_levels_by_quantity_name_translate_identity(
        sim: Sim, conn: CommerceConnector) -> None:
    conn.identity.learn_online(await conn.products())
    skus = [i.sku for i in WORLD.items]
    before = await sim.graphql_requests()
    views = await conn.levels([*skus, "SKU-NOT-THERE"], ["WH01", "WH02", "ST001"])
    assert await sim.graphql_requests() - before == 1  # 30 items: one query
    assert len(views) == 2 * WORLD.n_skus
    by_key = {(v.sku, v.location_id): v for v in views}
    for item in WORLD.items:
        for loc in (WH1, WH2):
            view = by_key[(item.sku, loc.code)]
            committed = WORLD.online_committed(item.index, loc.index)
            assert view.quantities == Quantities(
                on_hand=opening_available(item.index, loc.index) + committed,
                available=opening_available(item.index, loc.index), committed=committed,
                incoming=0, quality_control=0, damaged=0)
            assert view.as_of == WORLD.snapshot_as_of
            assert view.source == "commerce"
    assert await conn.levels([], ["WH01"]) == []
    assert await conn.levels(skus, ["ST001"]) == []


async def test_graphql_levels_are_what_the_rest_levels_said(
        sim: Sim, conn: CommerceConnector) -> None:
    """``available``, ``as_of`` and the version read through GraphQL are what the REST
    inventory levels (and so the webhooks, which carry them) say, after changes too."""
    conn.identity.learn_online(await conn.products())
    item = WORLD.item(6)
    await sim.http.post("/_sim/shop/admin-edit", json={"sku": item.sku, "location_id": L2,
                                                       "available": 3})
    rest = (await sim.http.get(f"{API}/inventory_levels.json", params={
        "location_ids": f"{L1},{L2}", "limit": 250})).json()["inventory_levels"]
    views = await conn.levels([i.sku for i in WORLD.items], ["WH01", "WH02"])
    assert len(views) == len(rest) - 2  # the gift card maps to no SKU
    by_key = {(v.sku, v.location_id): v for v in views}
    identity = master_identity(WORLD)
    identity.learn_online(await conn.products())
    for level in rest:
        old = level_to_view(level, identity, "commerce")
        if old is None:
            continue
        new = by_key[old.sku, old.location_id]
        assert (new.quantities.available, new.as_of, new.version) == (
            old.quantities.available, old.as_of, old.version)
    assert by_key[item.sku, WH2.code].quantities.available == 3


async def test_levels_page_each_items_levels(sim: Sim, conn: CommerceConnector,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    conn.identity.learn_online(await conn.products())
    monkeypatch.setattr(commerce, "LEVELS_PAGE", 1)
    before = await sim.graphql_requests()
    views = await conn.levels([i.sku for i in WORLD.items[:4]], ["WH01", "WH02"])
    assert await sim.graphql_requests() - before == 1 + 4  # each item's second level
    assert sorted((v.sku, v.location_id) for v in views) == sorted(
        (i.sku, w) for i in WORLD.items[:4] for w in ("WH01", "WH02"))


async def test_levels_chunk_to_fifty_items(receiver: Receiver) -> None:
    world = World(seed=7, skus=120, stores=0, warehouses=2)
    app, settings = start_sim(world, receiver.url)
    with serve(app) as server:
        settings.base_url = server.url
        connector = CommerceConnector(settings, master_identity(world))
        connector.identity.learn_online(await connector.products())
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.delete("/_sim/stats")
            views = await connector.levels([i.sku for i in world.items], ["WH01", "WH02"])
            stats = (await http.get("/_sim/stats")).json()["requests"]
        await connector.aclose()
    assert stats[f"POST {GRAPHQL_PATH}"] == 3  # 50 + 50 + 20 items
    assert len(views) == 240
    assert len({(v.sku, v.location_id) for v in views}) == 240


async def test_level_listing_rejects_bad_queries(sim: Sim) -> None:
    url = f"{API}/inventory_levels.json"
    many = ",".join(str(WORLD.item(0).shopify_inventory_item_id + i) for i in range(51))
    too_many = await sim.http.get(url, params={"inventory_item_ids": many})
    assert too_many.status_code == 422
    assert too_many.json()["errors"] == {
        "inventory_item_ids": ["must contain at most 50 ids"]}
    neither = await sim.http.get(url)
    assert neither.status_code == 422
    assert "errors" in neither.json()
    garbage = await sim.http.get(url, params={"location_ids": "abc"})
    assert garbage.status_code == 400
    by_location = await sim.http.get(url, params={"location_ids": L2, "limit": 250})
    levels = by_location.json()["inventory_levels"]
    assert len(levels) == WORLD.n_skus + 1
    assert {lv["location_id"] for lv in levels} == {
        L2}


async def test_level_to_view_reports_unmapped_and_rejects_malformed() -> None:
    identity = master_identity(WORLD)
    item = WORLD.item(0)
    identity.add_sku(SHOPIFY_INVENTORY_ITEM, str(item.shopify_inventory_item_id), item.sku)
    level = {"inventory_item_id": item.shopify_inventory_item_id, "location_id": L1,
             "available": 4, "updated_at": "2025-03-01T10:00:00.000Z"}
    view = level_to_view(level, identity, "commerce")
    assert view is not None
    assert (view.sku, view.location_id, view.quantities.available) == (item.sku, "WH01", 4)
    assert view.version == "2025-03-01T10:00:00.000Z"

    gift = {**level, "inventory_item_id": GIFT_INVENTORY_ITEM}
    assert level_to_view(gift, identity, "commerce") is None
    assert ("shopify", "inventory_item_id", str(GIFT_INVENTORY_ITEM)) in identity.unmapped
    stray = {**level, "location_id": 123}
    assert level_to_view(stray, identity, "commerce") is None
    assert identity.unmapped[("shopify", "location_id", "123")].seen_in == "commerce"

    for broken in ({k: v for k, v in level.items() if k != "location_id"},
                   {**level, "available": "4"}, {**level, "updated_at": "yesterday"},
                   {**level, "updated_at": None}, {**level, "inventory_item_id": True}):
        with pytest.raises(BackendProtocolError):
            level_to_view(broken, identity, "commerce")
    triggered = datetime(2025, 3, 2, tzinfo=UTC)
    no_time = {k: v for k, v in level.items() if k != "updated_at"}
    fallback = level_to_view(no_time, identity, "commerce", fallback_as_of=triggered)
    assert fallback is not None
    assert fallback.as_of == triggered


# -- mutations and webhooks ------------------------------------------------------------------


async def test_set_and_adjust_change_levels_and_fire_webhooks(
        sim: Sim, receiver: Receiver) -> None:
    item = WORLD.item(2).shopify_inventory_item_id
    target = {"location_id": L1, "inventory_item_id": item}
    before = await get_level(sim, item, L1)
    set_resp = await sim.http.post(f"{API}/inventory_levels/set.json",
                                   json={**target, "available": 77})
    adjusted = await sim.http.post(f"{API}/inventory_levels/adjust.json",
                                   json={**target, "available_adjustment": -5})
    same = await sim.http.post(f"{API}/inventory_levels/set.json",
                               json={**target, "available": 72})  # no change, no webhook
    assert set_resp.status_code == adjusted.status_code == same.status_code == 200
    assert set_resp.json()["inventory_level"]["available"] == 77
    level = adjusted.json()["inventory_level"]
    assert level["available"] == 72
    assert level == await get_level(sim, item, L1)
    assert level["updated_at"] > set_resp.json()["inventory_level"]["updated_at"] > \
        before["updated_at"]
    assert level["admin_graphql_api_id"] == (
        f"gid://shopify/InventoryLevel/{L1}?inventory_item_id={item}")

    await sim.drain()
    accepted = receiver.accepted()
    assert [(topic, body) for topic, body, _ in accepted] == [
        ("inventory_levels/update", set_resp.json()["inventory_level"]),
        ("inventory_levels/update", level)]
    assert accepted[0][2]["x-shopify-event-id"] != accepted[1][2]["x-shopify-event-id"]


async def test_bad_input_is_refused_without_changing_state(
        sim: Sim, receiver: Receiver) -> None:
    item = WORLD.item(1)
    target = {"location_id": L1, "inventory_item_id": item.shopify_inventory_item_id}
    cases: list[tuple[str, Any, int, Any]] = [
        ("inventory_levels/set.json", target, 400,
         {"available": "Required parameter missing or invalid"}),
        ("inventory_levels/set.json", {**target, "available": "many"}, 422,
         {"available": ["must be an integer"]}),
        ("inventory_levels/set.json", {**target, "location_id": 1, "available": 1}, 404,
         "Not Found"),
        ("inventory_levels/adjust.json",
         {**target, "inventory_item_id": 9, "available_adjustment": 1}, 404, "Not Found"),
        ("orders.json", {}, 400, {"order": "Required parameter missing or invalid"}),
        ("orders.json", {"order": {"line_items": []}}, 422, None),
        ("orders.json", {"order": {"line_items": [{"variant_id": 5, "quantity": 1}]}}, 422,
         None),
        ("orders.json", {"order": {"line_items": [
            {"variant_id": item.shopify_variant_id, "quantity": 0}]}}, 422, None),
        ("orders.json", {"order": {"line_items": [
            {"variant_id": item.shopify_variant_id, "quantity": 10_000}]}}, 422, None),
        ("orders.json", {"order": {"location_id": 99, "line_items": [
            {"variant_id": item.shopify_variant_id, "quantity": 1}]}}, 422, None),
        ("orders/55/fulfillments.json", {"fulfillment": {}}, 404, "Not Found"),
    ]
    for path, body, status, errors in cases:
        response = await sim.http.post(f"{API}/{path}", json=body)
        assert response.status_code == status, (path, body, response.text)
        if errors is not None:
            assert response.json() == {"errors": errors}
        else:
            assert response.json()["errors"]
    not_json = await sim.http.post(f"{API}/inventory_levels/set.json", content=b"{oops")
    assert not_json.status_code == 400
    assert (await get_level(sim, item.shopify_inventory_item_id, L1))[
        "available"] == opening_available(1, WH1.index)
    await sim.drain()
    assert receiver.deliveries == []
    assert sim.shop.levels == {}
    assert sim.shop.orders == {}


async def test_order_commits_stock_and_fulfilment_ships_it(
        sim: Sim, receiver: Receiver) -> None:
    a, b = WORLD.item(4), WORLD.item(5)
    lines = [{"variant_id": a.shopify_variant_id, "quantity": 2},
             {"variant_id": b.shopify_variant_id, "quantity": 1},
             {"variant_id": a.shopify_variant_id, "quantity": 1}]
    created = await sim.http.post(f"{API}/orders.json", json={"order": {
        "line_items": lines, "email": "kari@example.no", "location_id": L2}})
    assert created.status_code == 201
    order = created.json()["order"]
    assert (order["name"], order["financial_status"], order["fulfillment_status"],
            order["currency"]) == ("#1001", "paid", None, "NOK")
    assert Decimal(order["total_price"]) == a.online_price * 3 + b.online_price
    assert [(li["sku"], li["quantity"], li["product_id"]) for li in order["line_items"]] == [
        (a.sku, 2, a.shopify_product_id), (b.sku, 1, b.shopify_product_id), (a.sku, 1,
                                                                             a.shopify_product_id)]
    level_a = await get_level(sim, a.shopify_inventory_item_id, L2)
    level_b = await get_level(sim, b.shopify_inventory_item_id, L2)
    assert level_a["available"] == opening_available(4, WH2.index) - 3
    assert level_b["available"] == opening_available(5, WH2.index) - 1
    variant_a = sim.shop.variant(4)
    committed_a = WORLD.online_committed(4, WH2.index)
    assert sim.shop.level(variant_a, L2).committed == committed_a + 3

    fulfil = await sim.http.post(f"{API}/orders/{order['id']}/fulfillments.json",
                                 json={"fulfillment": {"location_id": L2}})
    assert fulfil.status_code == 201
    assert fulfil.json()["fulfillment"]["status"] == "success"
    assert sim.shop.level(variant_a, L2).committed == committed_a
    assert (await get_level(sim, a.shopify_inventory_item_id, L2)) == level_a
    again = await sim.http.post(f"{API}/orders/{order['id']}/fulfillments.json",
                                json={"fulfillment": {}})
    assert again.status_code == 422

    await sim.drain()
    accepted = receiver.accepted()
    assert [topic for topic, _, _ in accepted] == [
        "orders/create", "inventory_levels/update", "inventory_levels/update",
        "orders/fulfilled"]
    assert accepted[0][1] == order
    assert [body for _, body, _ in accepted[1:3]] == [level_a, level_b]
    events = [headers["x-shopify-event-id"] for _, _, headers in accepted]
    assert events[0] == events[1] == events[2] != events[3]
    assert len({headers["x-shopify-webhook-id"] for _, _, headers in accepted}) == 4
    assert accepted[3][1]["fulfillment_status"] == "fulfilled"

    default = await sim.http.post(f"{API}/orders.json", json={"order": {"line_items": [
        {"variant_id": GIFT_VARIANT, "quantity": 1}]}})
    assert default.json()["order"]["location_id"] == L1
    assert default.json()["order"]["name"] == "#1002"


async def test_failed_delivery_is_retried_with_the_same_headers(
        sim: Sim, receiver: Receiver) -> None:
    receiver.fail_first = True
    response = await sim.http.post(f"{API}/inventory_levels/adjust.json", json={
        "location_id": L1, "inventory_item_id": WORLD.item(0).shopify_inventory_item_id,
        "available_adjustment": 3})
    assert response.status_code == 200
    await sim.drain()
    (s1, body1, h1), (s2, body2, h2) = receiver.deliveries
    assert (s1, s2) == (500, 200)
    assert body1 == body2
    assert h1 == h2
    assert verify(body2, h2) == "inventory_levels/update"
    history = (await sim.http.get("/_sim/webhooks")).json()["deliveries"]
    assert [(d["attempts"], d["status"]) for d in history] == [(2, 200)]


async def test_duplicate_knob_redelivers_with_the_same_webhook_id(
        sim: Sim, receiver: Receiver) -> None:
    knobs = await sim.http.post("/_sim/faults", json={"duplicate_rate": 1.0})
    assert knobs.json()["duplicate_rate"] == 1.0
    await sim.http.post(f"{API}/inventory_levels/set.json", json={
        "location_id": L2, "inventory_item_id": WORLD.item(9).shopify_inventory_item_id,
        "available": 1})
    await sim.drain()
    (t1, body1, h1), (t2, body2, h2) = receiver.accepted()
    assert t1 == t2 == "inventory_levels/update"
    assert body1 == body2
    assert h1["x-shopify-webhook-id"] == h2["x-shopify-webhook-id"]


# -- scale and determinism -------------------------------------------------------------------


async def fetch(app: Starlette, path: str, params: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
        return await http.get(path, params=params, headers={"X-Shopify-Access-Token": TOKEN})


async def test_large_world_is_lazy_and_same_seed_gives_same_data() -> None:
    started = time.monotonic()
    big, _ = start_sim(World(seed=7, skus=100_000, stores=40, warehouses=10), "")
    page = await fetch(big, f"{API}/inventory_levels.json",
                       {"location_ids": "70000000009", "limit": 250})
    assert time.monotonic() - started < 3
    assert len(page.json()["inventory_levels"]) == 250
    assert 'rel="next"' in page.headers["link"]

    first, _ = start_sim(WORLD, "")
    second, _ = start_sim(World(seed=7, skus=30, stores=3, warehouses=2), "")
    one = await fetch(first, f"{API}/products.json", {"limit": 250})
    two = await fetch(second, f"{API}/products.json", {"limit": 250})
    assert one.content == two.content
    assert len(one.json()["products"]) == 31


# -- a shop answering nonsense ----------------------------------------------------------------


def hostile_shop(answers: list[Any]) -> Starlette:
    """A stand-in shop that answers each GraphQL request with the next of ``answers``."""
    async def graphql(request: Request) -> Response:
        body = answers.pop(0) if answers else {"data": None}
        return Response(json.dumps(body), media_type="application/json")
    return Starlette(routes=[Route(GRAPHQL_PATH, graphql, methods=["POST"])])


def cost(available: float = 1000.0) -> dict[str, Any]:
    return {"cost": {"requestedQueryCost": 4, "actualQueryCost": 4, "throttleStatus": {
        "maximumAvailable": 2000.0, "currentlyAvailable": available, "restoreRate": 100.0}}}


@pytest.mark.parametrize(("answer", "message"), [
    ({"errors": [{"message": "boom", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]},
     "INTERNAL_SERVER_ERROR: boom"),
    ({"data": {"inventoryItem": {"id": "x", "inventoryLevel": {
        "location": {"id": "gid://shopify/Location/1"}, "updatedAt": "2026-01-01T00:00:00Z",
        "quantities": [{"name": "available", "quantity": "7"}]}}}}, "not a named integer"),
    ({"data": {"inventoryItem": {"id": "x", "inventoryLevel": {
        "location": {"id": "gid://shopify/Location/1"}, "updatedAt": "2026-01-01T00:00:00Z",
        "quantities": [{"name": "available", "quantity": 2**31}]}}}}, "out of range"),
    ({"data": {"inventoryItem": {"id": "x", "inventoryLevel": {
        "location": {"id": "Location/1"}, "updatedAt": "2026-01-01T00:00:00Z",
        "quantities": []}}}}, "not a Location GID"),
    ({"data": {"inventoryItem": {"id": "x", "inventoryLevel": {
        "location": {"id": "gid://shopify/Location/1"}, "updatedAt": "yesterday",
        "quantities": []}}}}, "not RFC 3339"),
    ([1, 2], "answer is not an object"),
    ({"errors": "nope"}, "errors is not a list"),
])
async def test_a_shop_answering_nonsense_is_a_protocol_error(answer: Any, message: str) -> None:
    with serve(hostile_shop([answer])) as server:
        settings = BackendSettings(name="commerce", format="shopify", base_url=server.url,
                                   token=TOKEN)
        identity = master_identity(WORLD)
        item = WORLD.item(0)
        identity.add_sku(SHOPIFY_INVENTORY_ITEM, str(item.shopify_inventory_item_id), item.sku)
        connector = CommerceConnector(settings, identity)
        try:
            with pytest.raises(BackendProtocolError, match=message):
                await connector.read_available(item.sku, "WH01")
        finally:
            await connector.aclose()


async def test_a_write_to_a_shop_answering_nonsense_fails_without_raising() -> None:
    item = WORLD.item(0)
    answers: list[Any] = [{"data": {"inventorySetQuantities": "done!"}, "extensions": cost()},
                          {"data": {"productVariant": {"id": "v", "product": None}}}]
    with serve(hostile_shop(answers)) as server:
        settings = BackendSettings(name="commerce", format="shopify", base_url=server.url,
                                   token=TOKEN)
        identity = master_identity(WORLD)
        identity.add_sku(SHOPIFY_INVENTORY_ITEM, str(item.shopify_inventory_item_id), item.sku)
        identity.add_sku(SHOPIFY_VARIANT, str(item.shopify_variant_id), item.sku)
        connector = CommerceConnector(settings, identity)
        try:
            stock = await connector.set_available(StockWrite(item.sku, "WH01", 5, 4, "k"))
            named = await connector.update_item(ItemWrite(item.sku, "Name", None, "k"))
        finally:
            await connector.aclose()
    assert stock.outcome is Outcome.FAILED
    assert "no payload" in (stock.error or "")
    assert named.outcome is Outcome.FAILED
    assert connector.bucket.current() is not None  # the cost it reported was taken in
