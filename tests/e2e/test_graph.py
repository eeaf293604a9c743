"""The unified retail graph over four live backends (issue 2), end to end.

Every test runs the four simulators and a gateway on loopback ports over a fresh Redis (the
``stack`` fixture). Expected values are read from the simulators' own vendor APIs, never from
the gateway's code.
"""

from __future__ import annotations

import base64
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.support import Stack

SKU = "SKU-000003"
PRODUCT_STOCK = """
  stock { location { id type } onHand available committed incoming qualityControl damaged
          safetyStock source asOf }
"""
LEVEL = "{ sku location { id type } onHand available committed incoming source asOf }"


# -- helpers -------------------------------------------------------------------------------------

def post(stack: Stack, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST a query; the gateway must answer 200 with a GraphQL response, whatever it is."""
    response = httpx.post(f"{stack.url}/graphql", timeout=30,
                          json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "data" in body or "errors" in body
    return body


def data(stack: Stack, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = post(stack, query, variables)
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]
    return result


def errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = body.get("errors") or []
    assert found, f"expected GraphQL errors, got {body}"
    return found


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def cursor(sku: str) -> str:
    """The cursor the API documents: opaque to clients, but stable per SKU."""
    return base64.urlsafe_b64encode(f"sku:{sku}".encode()).decode()


class Truth:
    """What each simulator says, through its own vendor API."""

    def __init__(self, stack: Stack) -> None:
        with stack.sim("erp") as erp:
            self.items = {i["sku"]: i for i in erp.get("/api/v1/items",
                                                       params={"limit": 1000}).json()["items"]}
            self.locations: dict[str, dict[str, Any]] = {loc["code"]: loc
                              for loc in erp.get("/api/v1/locations").json()["locations"]}
            self.purchase_orders = erp.get("/api/v1/purchase-orders",
                                           params={"limit": 1000}).json()["purchaseOrders"]
        with stack.sim("pos") as pos:
            self.square_locations = pos.get("/v2/locations").json()["locations"]
            self.variations = pos.get("/v2/catalog/list",
                                      params={"types": "ITEM_VARIATION"}).json()["objects"]
            ids = [v["id"] for v in self.variations]
            self.counts = pos.post("/v2/inventory/counts/batch-retrieve",
                                   json={"catalog_object_ids": ids, "limit": 1000}).json()
        assert "cursor" not in self.counts  # one page holds the whole test world
        with stack.sim("wms") as wms:
            self.sites = wms.get("/api/v1/sites").json()["sites"]
            body = wms.post("/api/v1/balances/query", json={"limit": 1000}).json()
            assert body["nextCursor"] is None
            self.balances = body["balances"]
        with stack.sim("commerce") as shop:
            self.shop_locations = shop.get("/admin/api/2025-01/locations.json").json()["locations"]
            self.products = shop.get("/admin/api/2025-01/products.json",
                                     params={"limit": 250}).json()["products"]

    # -- views of that truth in unified terms ------------------------------------------------

    def gtin14(self, sku: str) -> str:
        return str(self.items[sku]["gtin"]).zfill(14)

    def store_code(self, square_id: str) -> str:
        return next(code for code, loc in self.locations.items()
                    if loc["externalIds"]["squareLocationId"] == square_id)

    def variation(self, sku: str) -> dict[str, Any]:
        return next(v for v in self.variations if v["item_variation_data"].get("sku") == sku)

    def store_states(self, sku: str) -> dict[str, dict[str, tuple[int, datetime]]]:
        """store code -> Square state -> (quantity, calculated_at)."""
        vid = self.variation(sku)["id"]
        out: dict[str, dict[str, tuple[int, datetime]]] = {}
        for count in self.counts["counts"]:
            if count["catalog_object_id"] == vid:
                out.setdefault(self.store_code(count["location_id"]), {})[count["state"]] = (
                    int(Decimal(count["quantity"])), when(count["calculated_at"]))
        return out

    def warehouse_rows(self, sku: str) -> dict[str, dict[str, Any]]:
        """warehouse code -> the WMS balance row."""
        by_gln = {loc["gln"]: code for code, loc in self.locations.items()}
        return {by_gln[row["gln"]]: row for row in self.balances
                if row["gtin"] == self.gtin14(sku)}

    def variant(self, sku: str) -> dict[str, Any]:
        return next(v for p in self.products for v in p["variants"] if v["sku"] == sku)


@pytest.fixture
def truth(stack: Stack) -> Truth:
    return Truth(stack)


def check_level(level: dict[str, Any], truth: Truth, sku: str) -> None:
    """One merged level against its system of record: POS for stores, WMS for warehouses."""
    code = level["location"]["id"]
    assert level["location"]["type"] == truth.locations[code]["type"]
    on_hand_parts = (level["available"] + level["committed"] + level["qualityControl"]
                     + level["damaged"])
    assert level["onHand"] == on_hand_parts
    if level["location"]["type"] == "STORE":
        states = truth.store_states(sku)[code]
        assert level["source"] == "pos"
        assert level["available"] == states["IN_STOCK"][0]
        assert level["committed"] == states.get("RESERVED_FOR_SALE", (0, None))[0]
        assert level["safetyStock"] == 0
        assert when(level["asOf"]) == max(at for _, at in states.values())
    else:
        row = truth.warehouse_rows(sku)[code]
        assert level["source"] == "wms"
        assert (level["onHand"], level["available"], level["committed"]) == (
            row["onHand"], row["available"], row["allocated"])
        assert (level["qualityControl"], level["damaged"], level["incoming"]) == (
            row["qualityControl"], row["damaged"], row["incoming"])
        assert level["safetyStock"] == truth.items[sku]["safetyStock"]
        assert when(level["asOf"]) == when(row["updatedAt"])


# -- the example queries -----------------------------------------------------------------

EXAMPLE = """
query Example($sku: ID!) {
  product(sku: $sku) {
    sku gtin name category price { amount currencyCode } source asOf
    prices { channel price { amount currencyCode } source asOf }
    PRODUCT_STOCK
    onlineAvailability: availability(channel: ONLINE) { channel available sources asOf
                                                        byLocation { location { id } } }
    storeAvailability: availability(channel: STORE) { channel available sources }
    purchaseOrders { poNumber locationId quantityOrdered quantityReceived status }
  }
  products(first: 3) { edges { cursor node { sku name } }
                       pageInfo { hasNextPage hasPreviousPage startCursor endCursor } }
  warehouse: location(id: "WH01") { id name type gln }
  nowhere: location(id: "XX99") { id }
  stores: locations(type: STORE) { id name type }
  warehouses: locations(type: WAREHOUSE) { id name type }
  all: locations { id }
  storeLevel: stockLevel(sku: $sku, locationId: "ST002") LEVEL
  warehouseLevel: stockLevel(sku: $sku, locationId: "WH02") LEVEL
}
""".replace("PRODUCT_STOCK", PRODUCT_STOCK).replace("LEVEL", LEVEL)


def test_example_queries_merge_all_four_backends(stack: Stack, truth: Truth) -> None:
    got = data(stack, EXAMPLE, {"sku": SKU})
    item = truth.items[SKU]

    # Master data: the ERP.
    product = got["product"]
    assert product["sku"] == SKU
    assert product["gtin"] == truth.gtin14(SKU)
    assert (product["name"], product["category"]) == (item["description"], item["category"])
    assert product["price"] == {"amount": item["listPrice"], "currencyCode": item["currency"]}
    assert product["source"] == "erp"
    assert when(product["asOf"]) == when(item["updatedAt"])

    # Prices per channel: ERP list price, web shop (ONLINE), POS (STORE).
    prices = {p["channel"]: p for p in product["prices"]}
    assert set(prices) == {None, "ONLINE", "STORE"}
    assert (prices[None]["source"], Decimal(prices[None]["price"]["amount"])) == (
        "erp", Decimal(item["listPrice"]))
    assert (prices["ONLINE"]["source"], Decimal(prices["ONLINE"]["price"]["amount"])) == (
        "commerce", Decimal(truth.variant(SKU)["price"]))
    money = truth.variation(SKU)["item_variation_data"]["price_money"]
    assert (prices["STORE"]["source"], prices["STORE"]["price"]["currencyCode"]) == (
        "pos", money["currency"])
    assert Decimal(prices["STORE"]["price"]["amount"]) == Decimal(money["amount"]) / 100

    # Stock everywhere, each location from its system of record.
    stock = product["stock"]
    assert [lv["location"]["id"] for lv in stock] == sorted(truth.locations)
    assert {lv["source"] for lv in stock} == {"pos", "wms"}
    for level in stock:
        check_level(level, truth, SKU)

    # Availability per channel.
    safety = item["safetyStock"]
    rows = truth.warehouse_rows(SKU)
    online = product["onlineAvailability"]
    assert online["channel"] == "ONLINE"
    assert online["available"] == sum(max(0, r["available"] - safety) for r in rows.values())
    assert online["sources"] == ["wms"]
    assert sorted(x["location"]["id"] for x in online["byLocation"]) == sorted(rows)
    assert when(online["asOf"]) == max(when(r["updatedAt"]) for r in rows.values())
    stores = product["storeAvailability"]
    assert (stores["channel"], stores["sources"]) == ("STORE", ["pos"])
    assert stores["available"] == sum(s["IN_STOCK"][0]
                                      for s in truth.store_states(SKU).values())

    # Purchase orders: the ERP's open ones for this SKU.
    expected_pos = sorted(
        (po["poNumber"], po["locationCode"], po["lines"][0]["quantityOrdered"])
        for po in truth.purchase_orders
        if po["lines"][0]["sku"] == SKU and po["status"] != "RECEIVED")
    assert sorted((po["poNumber"], po["locationId"], po["quantityOrdered"])
                  for po in product["purchaseOrders"]) == expected_pos

    # Listing, locations, single levels.
    skus = sorted(truth.items)
    assert [e["node"]["sku"] for e in got["products"]["edges"]] == skus[:3]
    assert [e["node"]["name"] for e in got["products"]["edges"]] == [
        truth.items[s]["description"] for s in skus[:3]]
    page = got["products"]["pageInfo"]
    assert (page["hasNextPage"], page["hasPreviousPage"]) == (True, False)
    assert page["endCursor"] == got["products"]["edges"][-1]["cursor"]
    wh01 = truth.locations["WH01"]
    assert got["warehouse"] == {"id": "WH01", "name": wh01["name"], "type": "WAREHOUSE",
                                "gln": wh01["gln"]}
    assert got["nowhere"] is None
    assert [loc["id"] for loc in got["all"]] == sorted(truth.locations)
    for key, kind in (("stores", "STORE"), ("warehouses", "WAREHOUSE")):
        assert [(x["id"], x["name"]) for x in got[key]] == sorted(
            (code, loc["name"]) for code, loc in truth.locations.items() if loc["type"] == kind)
        assert {x["type"] for x in got[key]} == {kind}
    for key, code in (("storeLevel", "ST002"), ("warehouseLevel", "WH02")):
        level = got[key]
        assert (level["sku"], level["location"]["id"]) == (SKU, code)
        same = next(lv for lv in stock if lv["location"]["id"] == code)
        assert {k: v for k, v in level.items() if k != "sku"} == {k: same[k] for k in level
                                                                   if k != "sku"}


def test_unknown_sku_and_location_are_null_not_errors(stack: Stack) -> None:
    got = data(stack, 'query($sku: ID!) { product(sku: "NOPE") { sku } '
                      'a: stockLevel(sku: "NOPE", locationId: "WH01") { onHand } '
                      'b: stockLevel(sku: $sku, locationId: "XX99") { onHand } }', {"sku": SKU})
    assert got == {"product": None, "a": None, "b": None}


# -- merge rules over a whole page -------------------------------------------------------------

MERGE = """
{ products(first: 20) { edges { node {
    sku safetyStock
    PRODUCT_STOCK
    online: availability(channel: ONLINE) { available }
    store: availability(channel: STORE) { available }
    prices { channel price { amount } source }
} } } }
""".replace("PRODUCT_STOCK", PRODUCT_STOCK)


def test_merge_rules_hold_for_every_product_and_location(stack: Stack, truth: Truth) -> None:
    nodes = [e["node"] for e in data(stack, MERGE)["products"]["edges"]]
    assert len(nodes) == 20
    online_differs = False
    for node in nodes:
        sku = node["sku"]
        safety = truth.items[sku]["safetyStock"]
        assert node["safetyStock"] == safety
        for level in node["stock"]:
            check_level(level, truth, sku)
        assert len(node["stock"]) == len(truth.locations)
        rows = truth.warehouse_rows(sku).values()
        assert node["online"]["available"] == sum(max(0, r["available"] - safety)
                                                  for r in rows)
        assert node["store"]["available"] == sum(
            s["IN_STOCK"][0] for s in truth.store_states(sku).values())
        prices = {p["channel"]: (p["source"], Decimal(p["price"]["amount"]))
                  for p in node["prices"]}
        money = truth.variation(sku)["item_variation_data"]["price_money"]
        assert prices == {None: ("erp", Decimal(truth.items[sku]["listPrice"])),
                          "ONLINE": ("commerce", Decimal(truth.variant(sku)["price"])),
                          "STORE": ("pos", Decimal(money["amount"]) / 100)}
        online_differs |= prices["ONLINE"][1] != prices[None][1]
    # The seeded shop discounts some products, so the ONLINE price is really the shop's.
    assert online_differs


# -- batching: no N+1 ----------------------------------------------------------------------------

BATCH = """
query Page($first: Int!, $after: String) {
  products(first: $first, after: $after) { edges { node {
    sku stock { available } availability(channel: ONLINE) { available }
    purchaseOrders { poNumber }
  } } }
}
"""


def test_backend_calls_do_not_grow_with_the_page(stack: Stack) -> None:
    """The same calls per backend for 5 products as for 50 (disjoint SKUs, so both pages miss
    every cache and really go to the backends)."""
    calls: dict[int, dict[str, dict[str, int]]] = {}
    for first, after in ((50, None), (5, cursor("SKU-000050"))):
        stack.reset_requests()
        edges = data(stack, BATCH, {"first": first, "after": after})["products"]["edges"]
        assert len(edges) == first
        assert all(e["node"]["stock"] and e["node"]["availability"] for e in edges)
        calls[first] = {name: stack.requests(name) for name in stack.sims}
    assert calls[50] == calls[5]
    fed = calls[50]
    # Each backend answered in batches: one call per kind of data.
    assert fed["pos"] == {"POST /v2/inventory/counts/batch-retrieve": 1}
    assert fed["wms"] == {"POST /api/v1/balances/query": 1}
    assert fed["erp"] == {"GET /api/v1/items": 1, "GET /api/v1/purchase-orders": 1}
    assert fed["commerce"] == {}


# -- pagination ----------------------------------------------------------------------------------

PAGE = """
query Walk($first: Int!, $after: String) {
  products(first: $first, after: $after) {
    edges { cursor node { sku } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


def test_walking_all_pages_visits_every_sku_once_in_order(stack: Stack, truth: Truth) -> None:
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        connection = data(stack, PAGE, {"first": 17, "after": after})["products"]
        pages += 1
        edges, info = connection["edges"], connection["pageInfo"]
        assert 1 <= len(edges) <= 17
        assert info["startCursor"] == edges[0]["cursor"]
        assert info["endCursor"] == edges[-1]["cursor"]
        assert info["hasPreviousPage"] is (after is not None)
        seen += [e["node"]["sku"] for e in edges]
        if not info["hasNextPage"]:
            break
        assert len(edges) == 17
        after = info["endCursor"]
        assert pages < 10, "pagination does not end"
    assert seen == sorted(truth.items)
    assert pages == -(-len(truth.items) // 17)
    # Past the end: an empty page, not an error.
    last = data(stack, PAGE, {"first": 17, "after": cursor(seen[-1])})["products"]
    assert last["edges"] == []
    assert last["pageInfo"]["hasNextPage"] is False


BAD_PAGES: list[tuple[int, str | None]] = [
    (0, None), (-1, None), (1000, None), (101, None),
    (5, "not-a-cursor"), (5, base64.urlsafe_b64encode(b"product:SKU-000001").decode()),
    (5, "%%%"),
]
# A page over the maximum may be refused by the resolver or by the query limits beforehand.
TOO_LARGE = {"BAD_USER_INPUT", "LIMIT_EXCEEDED"}


def test_bad_page_arguments_are_user_errors(stack: Stack) -> None:
    for first, after in BAD_PAGES:
        body = post(stack, PAGE, {"first": first, "after": after})
        assert body["data"] is None, (first, after)
        (error,) = errors(body)
        code = error["extensions"]["code"]
        if after is not None:
            assert code == "BAD_USER_INPUT", error
            assert "cursor" in error["message"], error
        else:
            assert code in (TOO_LARGE if first > 0 else {"BAD_USER_INPUT"}), error
            assert "first" in error["message"], error


# -- identity ------------------------------------------------------------------------------------

def test_unmapped_identifiers_are_reported(stack: Stack, truth: Truth) -> None:
    got = data(stack, "{ unmappedIdentifiers { namespace kind value reason seenIn } }")
    gift_card = next(v for p in truth.products for v in p["variants"]
                     if v["sku"] not in truth.items)
    gift_wrap = next(v for v in truth.variations if not v["item_variation_data"].get("sku"))
    reported = {(u["namespace"], u["kind"], u["value"]): u for u in got["unmappedIdentifiers"]}
    # Exactly the one unmapped item of each system: every other identifier resolves.
    assert set(reported) == {("shopify", "variant_id", str(gift_card["id"])),
                             ("square", "catalog_object_id", gift_wrap["id"])}
    assert gift_card["sku"] in reported["shopify", "variant_id", str(gift_card["id"])]["reason"]
    assert reported["square", "catalog_object_id", gift_wrap["id"]]["seenIn"] == "pos"


def test_locations_carry_every_systems_identifiers(stack: Stack, truth: Truth) -> None:
    got = data(stack, "{ locations { id type gln externalIds { namespace kind value } } }")
    square_ids = {loc["id"] for loc in truth.square_locations}
    shop_ids = {str(loc["id"]) for loc in truth.shop_locations}
    site_glns = {site["gln"] for site in truth.sites}
    for location in got["locations"]:
        erp = truth.locations[location["id"]]
        refs = [(x["namespace"], x["kind"], x["value"]) for x in location["externalIds"]]
        assert len(refs) == len(set(refs)), f"duplicate external ids: {refs}"
        assert location["gln"] == erp["gln"]
        assert ("gs1", "gln", erp["gln"]) in refs
        if location["type"] == "STORE":
            square = erp["externalIds"]["squareLocationId"]
            assert ("square", "location_id", square) in refs
            assert square in square_ids
        else:
            shopify = erp["externalIds"]["shopifyLocationId"]
            assert ("shopify", "location_id", shopify) in refs
            assert shopify in shop_ids
            assert erp["gln"] in site_glns  # the WMS knows the warehouse by that GLN


# -- partial failure -----------------------------------------------------------------------------

PARTIAL = """
query Partial($sku: ID!) {
  warehouseLevel: stockLevel(sku: $sku, locationId: "WH01") { available source }
  storeLevel: stockLevel(sku: $sku, locationId: "ST001") { available source }
  product(sku: $sku) {
    sku name price { amount }
    stock { source }
    online: availability(channel: ONLINE) { available sources }
    store: availability(channel: STORE) { available sources }
  }
  products(first: 3) { edges { node { sku name stock { source } } } }
  locations { id }
}
"""


@pytest.mark.parametrize(("down", "feeds"), [
    ("pos", {("storeLevel",), ("product", "stock"), ("product", "store")}),
    ("wms", {("warehouseLevel",), ("product", "stock"), ("product", "online")}),
])
def test_a_down_backend_fails_only_the_fields_it_feeds(stack: Stack, down: str,
                                                       feeds: set[tuple[str, ...]]) -> None:
    stack.sims[down].stop()
    body = post(stack, PARTIAL, {"sku": SKU})
    got = body["data"]
    failed = set()
    for error in errors(body):
        assert error["extensions"]["code"] == "BACKEND_UNAVAILABLE", error
        assert error["extensions"]["backend"] == down, error
        assert down in error["message"]
        path = tuple(p for p in error["path"] if not isinstance(p, int))
        failed.add(path)
    expected = feeds | {("products", "edges", "node", "stock")}
    assert failed == expected
    # The failing fields are null ...
    for path in feeds:
        value: Any = got
        for key in path:
            value = value[key]
        assert value is None, path
    assert all(e["node"]["stock"] is None for e in got["products"]["edges"])
    # ... and everything else is intact, from the backends that are up.
    alive = {"pos": "warehouseLevel", "wms": "storeLevel"}[down]
    assert got[alive]["source"] == {"pos": "wms", "wms": "pos"}[down]
    product = got["product"]
    assert (product["sku"], product["name"]) == (SKU, got["products"]["edges"][2]["node"]["name"])
    other = {"pos": "online", "wms": "store"}[down]
    assert product[other]["sources"] == [{"pos": "wms", "wms": "pos"}[down]]
    assert [e["node"]["sku"] for e in got["products"]["edges"]] == [
        "SKU-000001", "SKU-000002", "SKU-000003"]
    assert len(got["locations"]) == 5


def test_erp_down_fails_the_listing_but_not_the_locations(stack: Stack) -> None:
    stack.sims["erp"].stop()
    body = post(stack, '{ p: products(first: 2) { edges { node { sku } } } }')
    (error,) = errors(body)
    assert error["path"] == ["p"]
    assert error["extensions"] == {"code": "BACKEND_UNAVAILABLE", "backend": "erp"}
    got = data(stack, '{ locations { id } location(id: "ST001") { name } }')
    assert len(got["locations"]) == 5
    assert got["location"]["name"]


# -- malformed and over-large queries ------------------------------------------------------------

def deep_query(levels: int) -> str:
    return "{ product(sku: \"x\") " + "{ stock " * levels + "{ sku }" + " }" * levels + " }"


VALIDATION = {"GRAPHQL_VALIDATION_FAILED"}
LIMIT = {"GRAPHQL_VALIDATION_FAILED", "LIMIT_EXCEEDED"}
PARSE = {"GRAPHQL_PARSE_FAILED"}
# (query, what the message must say, the codes that error may carry)
BAD_QUERIES: list[tuple[str, str, set[str]]] = [
    ('{ product(sku: "x") { sku ', "Syntax Error", PARSE),
    ("query { products(first: ) }", "Syntax Error", PARSE),
    ('{ product(sku: "x") { sku nope } }', "Cannot query field 'nope' on type 'Product'",
     VALIDATION),
    ('{ products(first: "ten") { edges { cursor } } }', "Int cannot represent", VALIDATION),
    ("{ product { sku } }", "product(sku:)", VALIDATION),
    (deep_query(20), "maximum operation depth", LIMIT),
    ("{ " + " ".join(f"a{i}: locations {{ id }}" for i in range(60)) + " }", "aliases", LIMIT),
    ("{ locations { " + "id " * 20_000 + "} }", "tokens", PARSE | {"LIMIT_EXCEEDED"}),
    ("mutation { nothing }", "Cannot query field 'nothing' on type 'Mutation'", VALIDATION),
]


def test_bad_queries_get_graphql_errors_not_500s(stack: Stack) -> None:
    for query, says, codes in BAD_QUERIES:
        body = post(stack, query)
        assert body.get("data") is None, query[:80]
        found = errors(body)
        naming = [e for e in found if says in e["message"]]
        assert naming, (query[:80], found)
        assert all(e["extensions"]["code"] in codes for e in naming), (query[:80], found)
        assert all(e["extensions"]["code"] for e in found), (query[:80], found)


def test_variables_of_the_wrong_type_are_reported(stack: Stack) -> None:
    body = post(stack, PAGE, {"first": "lots"})
    (error,) = errors(body)
    assert "$first" in error["message"]


# -- HTTP surface --------------------------------------------------------------------------------

def test_liveness_and_graphiql(stack: Stack) -> None:
    health = httpx.get(f"{stack.url}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ide = httpx.get(f"{stack.url}/graphql", headers={"Accept": "text/html"}, timeout=10)
    assert ide.status_code == 200
    assert ide.headers["content-type"].startswith("text/html")
    assert "graphiql" in ide.text.lower()
