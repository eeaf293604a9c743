"""The commerce simulator's GraphQL Admin API (2026-10), over real HTTP on loopback.

Compare-and-set, idempotency, the cost bucket, product writes, the webhooks every write
fires, the outage knob and a real refused connection; the official client libraries are in
tests/integration/test_sim_vendor_sdks.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.simulators.commerce import create_app
from gateway.simulators.shop import Shop
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import World
from resolvers.settings import BackendSettings
from tests.integration.test_commerce import SECRET, TOKEN, Receiver
from tests.support import ServerThread, serve

WORLD = World(seed=7, skus=30, stores=3, warehouses=2)
GQL = "/admin/api/2026-10/graphql.json"
REST = "/admin/api/2025-01"
L1, L2 = (int(w.shopify_id or 0) for w in WORLD.warehouses)
LOC1, LOC2 = f"gid://shopify/Location/{L1}", f"gid://shopify/Location/{L2}"
NAMES = ["available", "on_hand", "committed", "incoming", "reserved", "damaged",
         "quality_control", "safety_stock"]
SET = """mutation Set($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) @idempotent(key: "%s") {
    inventoryAdjustmentGroup { id reason referenceDocumentUri
      changes { name delta quantityAfterChange item { id sku } location { id } } }
    userErrors { code field message } } }"""
LEVEL = """query($item: ID!, $loc: ID!, $names: [String!]!) {
  inventoryItem(id: $item) { id sku inventoryLevel(locationId: $loc) {
    id updatedAt quantities(names: $names) { name quantity } } } }"""


def item_gid(index: int) -> str:
    return f"gid://shopify/InventoryItem/{WORLD.item(index).shopify_inventory_item_id}"


@dataclass
class Sim:
    server: ServerThread
    shop: Shop
    http: httpx.Client
    receiver: Receiver

    def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post(GQL, json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def quantities(self, index: int, loc: str = LOC1) -> dict[str, int]:
        body = self.gql(LEVEL, {"item": item_gid(index), "loc": loc, "names": NAMES})
        level = body["data"]["inventoryItem"]["inventoryLevel"]
        return {q["name"]: q["quantity"] for q in level["quantities"]}

    def set(self, key: str, quantities: list[dict[str, Any]], name: str = "available",
            reason: str = "correction") -> dict[str, Any]:
        body = self.gql(SET % key, {"input": {
            "name": name, "reason": reason,
            "referenceDocumentUri": "gid://retailgraph/SyncAction/1",
            "quantities": quantities}})
        return body

    def writes(self) -> dict[str, Any]:
        found: dict[str, Any] = self.http.get("/_sim/shop/writes").json()
        return found

    def drain(self) -> None:
        assert self.http.post("/_sim/webhooks/drain").json() == {"pending": 0}

    def level_updates(self) -> list[dict[str, Any]]:
        self.drain()
        return [p for topic, p, _ in self.receiver.accepted()
                if topic == "inventory_levels/update"]


@pytest.fixture
def sim() -> Iterator[Sim]:
    receiver = Receiver()
    hooks = Starlette(routes=[Route("/hooks", receiver.handle, methods=["POST"])])
    with serve(hooks) as hook_server:
        receiver.url = hook_server.url + "/hooks"
        settings = BackendSettings(name="commerce", format="shopify", base_url="", token=TOKEN,
                                   webhook_secret=SECRET)
        app = create_app(WORLD, settings, receiver.url, DeliveryOptions(backoff=0.01))
        with serve(app) as server, httpx.Client(
                base_url=server.url, headers={"X-Shopify-Access-Token": TOKEN},
                timeout=10) as http:
            yield Sim(server, app.state.sim, http, receiver)


def q(index: int, quantity: int, change_from: Any, loc: str = LOC1) -> dict[str, Any]:
    out = {"inventoryItemId": item_gid(index), "locationId": loc, "quantity": quantity}
    if change_from != "omit":
        out["changeFromQuantity"] = change_from
    return out


# -- reads ---------------------------------------------------------------------------------------

def test_reads_variants_by_sku_with_every_quantity_name_and_gids(sim: Sim) -> None:
    item = WORLD.item(4)
    body = sim.gql("""query($q: String!) { productVariants(first: 5, query: $q) { nodes {
        id sku price product { id title } inventoryItem { id sku
          inventoryLevels(first: 5) { edges { cursor node { id location { id name }
            quantities(names: ["available", "on_hand", "committed", "incoming", "reserved",
              "damaged", "quality_control", "safety_stock"]) { name quantity } } } } } } } }""",
                   {"q": f"sku:{item.sku}"})
    [variant] = body["data"]["productVariants"]["nodes"]
    assert variant["id"] == f"gid://shopify/ProductVariant/{item.shopify_variant_id}"
    assert variant["sku"] == item.sku
    assert variant["price"] == str(item.online_price)
    assert variant["product"]["id"] == f"gid://shopify/Product/{item.shopify_product_id}"
    levels = [e["node"] for e in variant["inventoryItem"]["inventoryLevels"]["edges"]]
    assert [lv["location"]["id"] for lv in levels] == [LOC1, LOC2]
    rest = sim.http.get(f"{REST}/inventory_levels.json",
                        params={"inventory_item_ids": item.shopify_inventory_item_id}).json()
    for level, rest_level in zip(levels, rest["inventory_levels"], strict=True):
        values = {x["name"]: x["quantity"] for x in level["quantities"]}
        assert list(values) == NAMES
        assert values["available"] == rest_level["available"]
        assert values["on_hand"] == sum(values[n] for n in (
            "available", "committed", "reserved", "damaged", "quality_control", "safety_stock"))
        assert level["id"] == rest_level["admin_graphql_api_id"]
    cost = body["extensions"]["cost"]
    assert cost["requestedQueryCost"] >= cost["actualQueryCost"] > 0
    assert set(cost["throttleStatus"]) == {"maximumAvailable", "currentlyAvailable",
                                           "restoreRate"}


def test_connections_page_by_cursor_and_need_first_or_last(sim: Sim) -> None:
    page = "query($after: String) { inventoryItems(first: 12, after: $after) { " \
           "nodes { sku } pageInfo { hasNextPage endCursor } } }"
    skus: list[str] = []
    after = None
    while True:
        found = sim.gql(page, {"after": after})["data"]["inventoryItems"]
        skus += [n["sku"] for n in found["nodes"]]
        if not found["pageInfo"]["hasNextPage"]:
            break
        after = found["pageInfo"]["endCursor"]
    assert skus == [i.sku for i in WORLD.items] + ["GIFTCARD-500"]
    body = sim.gql("{ inventoryItems { nodes { sku } } }")
    assert body["errors"][0]["message"] == "you must provide one of first or last"
    body = sim.gql('{ inventoryItems(first: 1, after: "garbage") { nodes { sku } } }')
    assert "Invalid cursor" in body["errors"][0]["message"]


def test_unknown_ids_resolve_to_null(sim: Sim) -> None:
    body = sim.gql("""query($loc: ID!) {
        a: inventoryItem(id: "gid://shopify/InventoryItem/1") { id }
        b: inventoryItem(id: "not-a-gid") { id }
        c: productVariant(id: "gid://shopify/Product/1") { id }
        d: node(id: $loc) { id ... on Location { name } } }""", {"loc": LOC2})
    assert body["data"]["a"] is None
    assert body["data"]["b"] is None
    assert body["data"]["c"] is None
    assert body["data"]["d"] == {"id": LOC2, "name": WORLD.warehouses[1].name}


# -- inventorySetQuantities ------------------------------------------------------------------------

def test_set_quantities_compares_applies_once_and_fires_the_rest_webhook(sim: Sim) -> None:
    before = sim.quantities(3)
    body = sim.set("key-1", [q(3, before["available"] - 4, before["available"])])
    result = body["data"]["inventorySetQuantities"]
    assert result["userErrors"] == []
    group = result["inventoryAdjustmentGroup"]
    assert group["reason"] == "correction"
    assert group["referenceDocumentUri"] == "gid://retailgraph/SyncAction/1"
    assert {c["name"]: c["delta"] for c in group["changes"]} == {"available": -4,
                                                                 "on_hand": -4}
    after = sim.quantities(3)
    assert after["available"] == before["available"] - 4
    assert after["on_hand"] == before["on_hand"] - 4
    assert after["committed"] == before["committed"]
    rest = sim.http.get(f"{REST}/inventory_levels.json", params={
        "inventory_item_ids": WORLD.item(3).shopify_inventory_item_id,
        "location_ids": L1}).json()["inventory_levels"][0]
    assert rest["available"] == after["available"]
    [update] = sim.level_updates()
    assert set(update) == {"inventory_item_id", "location_id", "available", "updated_at",
                           "admin_graphql_api_id"}
    assert update["inventory_item_id"] == WORLD.item(3).shopify_inventory_item_id
    assert update["location_id"] == L1
    assert update["available"] == after["available"]
    assert sim.writes()["byKey"] == {"key-1": 1}

    # The same key again: the original result, no second effect, no second webhook.
    sim.http.post("/_sim/shop/admin-edit", json={"sku": WORLD.item(3).sku, "location_id": L1,
                                                 "available": 77})
    again = sim.set("key-1", [q(3, before["available"] - 4, before["available"])])
    assert again["data"] == body["data"]
    assert sim.quantities(3)["available"] == 77
    assert sim.writes()["byKey"] == {"key-1": 1}
    assert [u["available"] for u in sim.level_updates()] == [after["available"], 77]


def test_a_stale_change_from_quantity_changes_nothing(sim: Sim) -> None:
    before = sim.quantities(5)
    batch = [q(6, 9, sim.quantities(6)["available"]), q(5, 1, before["available"] + 2)]
    result = sim.set("stale-1", batch)["data"]["inventorySetQuantities"]
    assert result["inventoryAdjustmentGroup"] is None
    assert result["userErrors"] == [{
        "code": "CHANGE_FROM_QUANTITY_STALE",
        "field": ["input", "quantities", "1", "changeFromQuantity"],
        "message": f"The changeFromQuantity value does not match persisted value "
                   f"({before['available']})."}]
    assert sim.quantities(5) == before
    assert sim.quantities(6)["available"] != 9  # the batch is all or nothing
    assert sim.level_updates() == []
    assert sim.writes()["byKey"] == {}
    # The failed key cannot be reused; a new key with the re-read value goes through.
    retry = sim.set("stale-1", batch)["data"]["inventorySetQuantities"]
    assert retry["userErrors"][0]["code"] == "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"
    fixed = sim.set("stale-2", [q(5, 1, before["available"])])["data"]
    assert fixed["inventorySetQuantities"]["userErrors"] == []
    assert sim.quantities(5)["available"] == 1


def test_the_same_key_with_other_input_is_refused(sim: Sim) -> None:
    current = sim.quantities(7)["available"]
    assert sim.set("k", [q(7, current + 1, current)])["data"]["inventorySetQuantities"][
        "userErrors"] == []
    other = sim.set("k", [q(7, current + 5, current + 1)])["data"]["inventorySetQuantities"]
    assert other["userErrors"][0]["code"] == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
    assert sim.quantities(7)["available"] == current + 1


def test_change_from_null_opts_out_but_omitting_it_is_an_error(sim: Sim) -> None:
    ok = sim.set("null-1", [q(8, 5, None)])["data"]["inventorySetQuantities"]
    assert ok["userErrors"] == []
    assert sim.quantities(8)["available"] == 5
    body = sim.set("omit-1", [q(8, 6, "omit")])
    assert body["data"]["inventorySetQuantities"] is None
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "changeFromQuantity" in body["errors"][0]["message"]
    assert sim.quantities(8)["available"] == 5


def test_the_idempotent_directive_is_required(sim: Sim) -> None:
    body = sim.gql("""mutation($input: InventorySetQuantitiesInput!) {
        inventorySetQuantities(input: $input) { userErrors { code } } }""", {"input": {
        "name": "available", "reason": "correction", "quantities": [q(9, 3, None)]}})
    assert body["data"]["inventorySetQuantities"] is None
    assert "@idempotent" in body["errors"][0]["message"]
    assert sim.quantities(9)["available"] != 3
    # The key may come from a variable, as clients that generate it per request send it.
    by_variable = sim.gql("""mutation($input: InventorySetQuantitiesInput!, $key: String!) {
        inventorySetQuantities(input: $input) @idempotent(key: $key) { userErrors { code } } }
        """, {"key": "from-variable", "input": {"name": "available", "reason": "correction",
                                                "quantities": [q(9, 3, None)]}})
    assert by_variable["data"]["inventorySetQuantities"]["userErrors"] == []
    assert sim.writes()["byKey"] == {"from-variable": 1}


def test_on_hand_is_settable_and_invalid_input_gets_user_errors(sim: Sim) -> None:
    before = sim.quantities(10)
    ok = sim.set("on-hand", [q(10, before["on_hand"] + 3, before["on_hand"])], name="on_hand")
    assert ok["data"]["inventorySetQuantities"]["userErrors"] == []
    after = sim.quantities(10)
    assert after["on_hand"] == before["on_hand"] + 3
    assert after["available"] == before["available"] + 3
    cases = [
        ({"name": "committed"}, [q(10, 1, None)], "INVALID_NAME"),
        ({"reason": "because"}, [q(10, 1, None)], "INVALID_REASON"),
        ({}, [q(10, -1, None)], "INVALID_QUANTITY_NEGATIVE"),
        ({}, [q(10, 2_000_000_000, None)], "INVALID_QUANTITY_TOO_HIGH"),
        ({}, [{**q(10, 1, None), "inventoryItemId": "gid://shopify/InventoryItem/5"}],
         "INVALID_INVENTORY_ITEM"),
        ({}, [q(10, 1, None, loc="gid://shopify/Location/1")], "INVALID_LOCATION"),
        ({}, [q(10, 1, None), q(10, 2, None)], "NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR"),
    ]
    for n, (extra, quantities, code) in enumerate(cases):
        variables = {"input": {"name": "available", "reason": "correction",
                               "quantities": quantities, **extra}}
        body = sim.gql(SET % f"bad-{n}", variables)
        errors = body["data"]["inventorySetQuantities"]["userErrors"]
        assert [e["code"] for e in errors] == [code], (code, errors)
    assert sim.quantities(10) == after
    assert sim.writes()["byKey"] == {"on-hand": 1}


def test_rest_and_admin_writes_fire_the_same_webhook_and_are_not_api_writes(sim: Sim) -> None:
    item = WORLD.item(11)
    sim.http.post(f"{REST}/inventory_levels/set.json", json={
        "location_id": L2, "inventory_item_id": item.shopify_inventory_item_id,
        "available": 12})
    sim.http.post("/_sim/shop/admin-edit", json={"inventory_item_id":
                                                 item.shopify_inventory_item_id,
                                                 "location_id": L2, "delta": 5})
    assert sim.quantities(11, LOC2)["available"] == 17
    current = sim.quantities(11, LOC2)["available"]
    sim.set("gql", [q(11, 20, current, loc=LOC2)])
    updates = sim.level_updates()
    assert [u["available"] for u in updates] == [12, 17, 20]
    assert all(set(u) == set(updates[0]) for u in updates)
    assert sim.writes()["byKey"] == {"gql": 1}
    bad = sim.http.post("/_sim/shop/admin-edit", json={"sku": "NOPE", "available": 1})
    assert bad.status_code == 404


# -- product and variant writes ------------------------------------------------------------------

def test_product_update_and_variant_price_reach_rest_graphql_and_webhooks(sim: Sim) -> None:
    item = WORLD.item(12)
    product = f"gid://shopify/Product/{item.shopify_product_id}"
    variant = f"gid://shopify/ProductVariant/{item.shopify_variant_id}"
    title = sim.gql("""mutation($p: ProductUpdateInput!) { productUpdate(product: $p) {
        product { id title } userErrors { field message } } }""",
                    {"p": {"id": product, "title": "Renamed Mug"}})
    assert title["data"]["productUpdate"] == {"product": {"id": product,
                                                          "title": "Renamed Mug"},
                                              "userErrors": []}
    price = sim.gql("""mutation($id: ID!, $v: [ProductVariantsBulkInput!]!) {
        productVariantsBulkUpdate(productId: $id, variants: $v) {
          productVariants { id price compareAtPrice } userErrors { code field message } } }""",
                    {"id": product, "v": [{"id": variant, "price": "123.45",
                                           "compareAtPrice": None}]})
    assert price["data"]["productVariantsBulkUpdate"] == {
        "productVariants": [{"id": variant, "price": "123.45", "compareAtPrice": None}],
        "userErrors": []}
    rest = sim.http.get(f"{REST}/products.json", params={"limit": 250}).json()["products"]
    found = next(p for p in rest if p["id"] == item.shopify_product_id)
    assert found["title"] == "Renamed Mug"
    assert found["variants"][0]["price"] == "123.45"
    assert found["variants"][0]["compare_at_price"] is None
    sim.drain()
    updates = [p for topic, p, _ in sim.receiver.accepted() if topic == "products/update"]
    assert [(u["title"], u["variants"][0]["price"]) for u in updates] == [
        ("Renamed Mug", str(item.online_price)), ("Renamed Mug", "123.45")]
    wrong = sim.gql("""mutation($id: ID!, $v: [ProductVariantsBulkInput!]!) {
        productVariantsBulkUpdate(productId: $id, variants: $v) { userErrors { code } } }""",
                    {"id": product, "v": [{"id": f"gid://shopify/ProductVariant/"
                                                 f"{WORLD.item(13).shopify_variant_id}",
                                           "price": "1.00"}, {"price": "-1"}]})
    assert [e["code"] for e in wrong["data"]["productVariantsBulkUpdate"]["userErrors"]] == [
        "MUST_BE_FOR_THIS_PRODUCT", "PRODUCT_VARIANT_ID_MISSING", "GREATER_THAN_OR_EQUAL_TO"]
    missing = sim.gql("""mutation { productUpdate(product: {id: "gid://shopify/Product/1",
        title: "x"}) { product { id } userErrors { field message } } }""")
    assert missing["data"]["productUpdate"]["userErrors"] == [
        {"field": ["id"], "message": "Product does not exist"}]


# -- the cost bucket -------------------------------------------------------------------------------

def test_over_budget_requests_are_throttled_and_not_run(sim: Sim) -> None:
    status = sim.http.post("/_sim/shop/throttle", json={
        "restoreRate": 0, "currentlyAvailable": 20}).json()
    assert status == {"maximumAvailable": 2000.0, "currentlyAvailable": 20.0,
                      "restoreRate": 0.0}
    current = sim.quantities(14)["available"]  # costs 3
    first = sim.set("t-1", [q(14, current + 1, current)])  # costs 10
    assert first["data"]["inventorySetQuantities"]["userErrors"] == []
    second = sim.set("t-2", [q(14, current + 2, current + 1)])
    assert second["errors"] == [{"message": "Throttled", "extensions": {
        "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}]
    assert "data" not in second
    cost = second["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 10
    assert cost["actualQueryCost"] is None
    assert cost["throttleStatus"]["currentlyAvailable"] == 7.0
    sim.http.post("/_sim/shop/throttle", json={"restoreRate": 1000})
    time.sleep(0.05)
    assert sim.quantities(14)["available"] == current + 1  # the throttled write did not run
    assert sim.writes()["byKey"] == {"t-1": 1}
    bad = sim.http.post("/_sim/shop/throttle", json={"restoreRate": -1})
    assert bad.status_code == 422


def test_a_query_over_the_single_query_limit_is_refused(sim: Sim) -> None:
    body = sim.gql("""{ products(first: 250) { nodes { variants(first: 250) { nodes {
        inventoryItem { inventoryLevels(first: 250) { nodes { id } } } } } } } }""")
    assert body["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED"
    assert body["errors"][0]["extensions"]["cost"] > 1000
    assert "data" not in body


# -- down, refused, hostile ----------------------------------------------------------------------

def test_an_outage_answers_503_everywhere_but_sim_controls(sim: Sim) -> None:
    control = sim.http.post("/_sim/outage", json={"seconds": 0.6, "retry_after": 1}).json()
    assert 0.5 < control["seconds_left"] <= 0.6
    down = sim.http.post(GQL, json={"query": "{ shop { name } }"})
    assert down.status_code == 503
    assert down.headers["retry-after"] == "1"
    assert sim.http.get(f"{REST}/shop.json").status_code == 503
    assert sim.http.get("/_sim/stats").status_code == 200
    time.sleep(0.7)
    assert sim.gql("{ shop { name } }")["data"]["shop"]["name"] == "RetailGraph Demo"
    assert sim.http.get("/_sim/outage").json()["refused"] == 2
    assert sim.http.post("/_sim/outage", json={"seconds": "x"}).status_code == 400


def test_a_stopped_shop_refuses_connections_and_comes_back_with_its_state(sim: Sim) -> None:
    current = sim.quantities(15)["available"]
    sim.set("before-down", [q(15, current - 1, current)])
    sim.drain()
    app = sim.server.app
    port = sim.server.port
    sim.server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{port}{GQL}", json={"query": "{ shop { name } }"})
    with serve(app, port) as again, httpx.Client(base_url=again.url, headers={
            "X-Shopify-Access-Token": TOKEN}) as http:
        body = http.post(GQL, json={"query": LEVEL, "variables": {
            "item": item_gid(15), "loc": LOC1, "names": ["available"]}}).json()
        level = body["data"]["inventoryItem"]["inventoryLevel"]
        assert level["quantities"] == [{"name": "available", "quantity": current - 1}]
        assert http.get("/_sim/shop/writes").json()["byKey"] == {"before-down": 1}
        sim.server = again  # the fixture's client is closed by then; nothing else to stop


@pytest.mark.parametrize(("content", "content_type", "status"), [
    (b"{not json", "application/json", 400),
    (b'{"variables": {}}', "application/json", 400),
    (b'{"query": "{ shop { name } }", "variables": [1]}', "application/json", 400),
    (b'{"query": "{ shop { name }"}', "application/json", 200),
    (b'{"query": "{ nope }"}', "application/json", 200),
    (b"{ shop { name } }", "application/graphql", 200),
    (b'{"query": "query A { shop { id } } query B { shop { id } }"}', "application/json", 200),
])
def test_hostile_bodies_get_a_clear_answer(sim: Sim, content: bytes, content_type: str,
                                           status: int) -> None:
    response = sim.http.post(GQL, content=content, headers={"Content-Type": content_type})
    assert response.status_code == status
    body = response.json()
    if content_type == "application/graphql":
        assert body["data"]["shop"]["name"] == "RetailGraph Demo"
    else:
        assert body["errors"][0]["message"]


def test_graphql_needs_the_access_token(sim: Sim) -> None:
    response = httpx.post(sim.server.url + GQL, json={"query": "{ shop { name } }"})
    assert response.status_code == 401
    assert "Invalid API key or access token" in response.json()["errors"]


def test_a_burst_of_distinct_keys_counts_each_effect_once(sim: Sim) -> None:
    """What an exactly-once test reads: a key per write, each counted once despite retries."""
    current = sim.quantities(16)["available"]
    keys = [str(uuid.uuid4()) for _ in range(5)]
    for n, key in enumerate(keys):
        for _ in range(3):  # every write retried twice with its key
            sim.set(key, [q(16, current + n + 1, current + n)])
    assert sim.writes()["byKey"] == dict.fromkeys(keys, 1)
    assert sim.quantities(16)["available"] == current + 5
    assert json.loads(json.dumps(sim.writes()["writes"]))[0]["changes"][0]["from"] == current
    assert sim.http.delete("/_sim/shop/writes").json() == {"byKey": {}, "writes": []}
