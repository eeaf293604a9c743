"""Relay Global Object Identification: ``interface Node``, ``Query.node``, ``Query.nodes``.

Client caches (Apollo InMemoryCache, urql graphcache, Relay) normalise objects by ``id``
without configuration. A Location's id is its location code (also its federation key and what
``locationIds`` take); every other Node's id is opaque (base64 of ``Type:key``), and the ERP
connector refuses a location code of that form (tests/integration/test_erp.py), so the two
never collide.
``node``/``nodes`` read through the same loaders and checks as the root fields: the same scopes,
location visibility, cost limit and response cache, on HTTP and WebSocket alike.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers_webhooks import Signer, post
from tests.nodejs import needs_node, run_client
from tests.support import Stack, fresh_stack

READER = "node-reader-key-0000001"
CATALOG_ONLY = "node-catalog-only-key-01"
STORE_1 = "node-store-st001-key-001"
KEYS = {"reader": {"key": READER, "scopes": ["stock:read"]},
        "catalog": {"key": CATALOG_ONLY, "scopes": []},
        "store-1": {"key": STORE_1, "scopes": ["stock:read"], "locations": ["ST001"]}}

LEVEL_FIELDS = "id sku location { id name } onHand available committed source"
PRODUCT_FIELDS = "id sku name price { amount currencyCode }"
LOCATION_FIELDS = "id name type gln"
NODE_FIELDS = f"""__typename id
  ... on Product {{ {PRODUCT_FIELDS} }}
  ... on Location {{ {LOCATION_FIELDS} }}
  ... on StockLevel {{ {LEVEL_FIELDS} }}"""
ROOTS = f"""query($sku: ID!, $store: ID!, $wh: ID!) {{
  product(sku: $sku) {{ {PRODUCT_FIELDS} stock(locationIds: [$store, $wh]) {{ {LEVEL_FIELDS} }} }}
  store: location(id: $store) {{ {LOCATION_FIELDS} }}
  warehouse: location(id: $wh) {{ {LOCATION_FIELDS} }}
}}"""
NODE = f"query($id: ID!) {{ node(id: $id) {{ {NODE_FIELDS} }} }}"
NODES = f"query($ids: [ID!]!) {{ nodes(ids: $ids) {{ {NODE_FIELDS} }} }}"


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[Stack]:
    with fresh_stack(redis_server_url, KEYS, skus=30) as running:
        yield running


def ask(stack: Stack, query: str, variables: dict[str, Any], key: str = READER
        ) -> dict[str, Any]:
    return stack.graphql(query, variables, headers={"X-API-Key": key})


def data_of(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


def codes(body: dict[str, Any]) -> list[tuple[list[Any], str]]:
    return [(e["path"], e["extensions"]["code"]) for e in body.get("errors", [])]


def roots(stack: Stack, index: int) -> dict[str, Any]:
    world = stack.world
    return data_of(ask(stack, ROOTS, {"sku": world.items[index].sku, "store": "ST001",
                                      "wh": world.warehouses[0].code}))


def with_typename(typename: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"__typename": typename, **value}


def test_each_entity_has_a_stable_global_id_that_node_resolves(stack: Stack) -> None:
    world = stack.world
    first = roots(stack, 3)
    product, store, warehouse = first["product"], first["store"], first["warehouse"]
    levels = product.pop("stock")
    # Locations keep their code as id; the others' ids are opaque, typed and distinct.
    assert store["id"] == "ST001"
    assert warehouse["id"] == world.warehouses[0].code
    assert base64.b64decode(product["id"]).decode() == f"Product:{world.items[3].sku}"
    assert [base64.b64decode(x["id"]).decode() for x in levels] == [
        f'StockLevel:["{world.items[3].sku}","ST001"]',
        f'StockLevel:["{world.items[3].sku}","{world.warehouses[0].code}"]']
    ids = [product["id"], store["id"], warehouse["id"], *(x["id"] for x in levels)]
    assert len(set(ids)) == len(ids)
    # Stable: the same ids on the next request, and on another SKU's page ids differ.
    again = roots(stack, 3)
    assert again["product"]["id"] == product["id"]
    assert [x["id"] for x in again["product"]["stock"]] == [x["id"] for x in levels]
    assert roots(stack, 4)["product"]["id"] != product["id"]
    # node(id) answers exactly what the root field answers.
    for typename, value in (("Product", product), ("Location", store),
                            ("Location", warehouse), ("StockLevel", levels[0]),
                            ("StockLevel", levels[1])):
        got = data_of(ask(stack, NODE, {"id": value["id"]}))["node"]
        assert got == with_typename(typename, value)
    # A level reached through Availability.byLocation is the same object, by id.
    by_location = data_of(ask(stack, """query($sku: ID!) { product(sku: $sku) {
      availability(channel: STORE) { byLocation { id location { id } } } } }""",
                              {"sku": world.items[3].sku}))
    same = [x["id"] for x in by_location["product"]["availability"]["byLocation"]
            if x["location"]["id"] == "ST001"]
    assert same == [levels[0]["id"]]


def test_nodes_answers_in_order_and_null_for_ids_of_nothing(stack: Stack) -> None:
    first = roots(stack, 5)
    product, store = first["product"], first["store"]
    level = product.pop("stock")[1]
    missing = [
        base64.b64encode(b"Product:NO-SUCH-SKU").decode(),          # well formed, no product
        base64.b64encode(b'StockLevel:["NO-SUCH-SKU","ST001"]').decode(),
        base64.b64encode(b"StockLevel:not json").decode(),          # malformed key
        base64.b64encode(b"Discount:1").decode(),                   # a type that is no Node
        base64.b64encode(b"Location:ST001").decode(),               # locations use the code
        "NOWHERE",                                                  # no such location code
    ]
    body = ask(stack, NODES, {"ids": [level["id"], *missing, store["id"], product["id"]]})
    assert data_of(body)["nodes"] == [with_typename("StockLevel", level), *[None] * len(missing),
                                      with_typename("Location", store),
                                      with_typename("Product", product)]
    assert data_of(ask(stack, NODES, {"ids": []}))["nodes"] == []


def test_node_and_nodes_apply_the_root_fields_permissions(stack: Stack) -> None:
    world = stack.world
    first = roots(stack, 6)
    product = first["product"]
    own, other = product.pop("stock")  # ST001 and the first warehouse
    st002 = data_of(ask(stack, NODE, {"id": "ST002"}))["node"]
    assert st002["id"] == "ST002"

    # Without stock:read: master data yes, stock levels no (as Query.stockLevel).
    body = ask(stack, NODES, {"ids": [product["id"], own["id"], "ST002"]}, CATALOG_ONLY)
    assert body["data"]["nodes"] == [with_typename("Product", product), None, st002]
    assert codes(body) == [(["nodes", 1], "FORBIDDEN")]
    direct = ask(stack, "query($sku: ID!) { stockLevel(sku: $sku, locationId: \"ST001\") "
                        "{ available } }", {"sku": world.items[6].sku}, CATALOG_ONLY)
    assert codes(direct) == [(["stockLevel"], "FORBIDDEN")]

    # A key for store ST001: its own location and levels, nothing of another location.
    body = ask(stack, NODES, {"ids": [own["id"], other["id"], "ST001", "ST002",
                                      product["id"]]}, STORE_1)
    nodes = body["data"]["nodes"]
    assert nodes[0] == with_typename("StockLevel", own)
    assert nodes[1:4] == [None, data_of(ask(stack, NODE, {"id": "ST001"}))["node"], None]
    assert nodes[4] == with_typename("Product", product)
    assert codes(body) == [(["nodes", 1], "FORBIDDEN"), (["nodes", 3], "FORBIDDEN")]
    for forbidden in (other["id"], "ST002"):
        single = ask(stack, NODE, {"id": forbidden}, STORE_1)
        assert single["data"] == {"node": None}
        assert codes(single) == [(["node"], "FORBIDDEN")]
    # The location root field agrees.
    assert codes(ask(stack, "{ location(id: \"ST002\") { id } }", {}, STORE_1)) == \
        [(["location"], "FORBIDDEN")]

    # No credentials: nothing at all.
    response = httpx.post(f"{stack.url}/graphql", timeout=30,
                          json={"query": NODE, "variables": {"id": product["id"]}})
    assert response.status_code == 401


def test_nodes_is_cost_limited_per_id(stack: Stack) -> None:
    """``nodes`` must not be a way around ``max_cost``: each id counts like one root field
    (here: a product with its stock at every location the caller sees)."""
    heavy = """query($ids: [ID!]!) { nodes(ids: $ids) {
      id ... on Product { sku stock { id onHand available } } } }"""
    ids = [roots(stack, 7)["product"]["id"]] * 20
    assert len(data_of(ask(stack, heavy, {"ids": ids}))["nodes"]) == 20
    body = ask(stack, heavy, {"ids": ids * 100})
    assert body.get("data") is None, "an over-cost nodes query was executed"
    assert [(e["extensions"]["code"], e["extensions"]["limit"]) for e in body["errors"]] == \
        [("LIMIT_EXCEEDED", "max_cost")]


def _until_hit(stack: Stack, variables: dict[str, Any]) -> httpx.Response:
    for _ in range(200):
        response = httpx.post(f"{stack.url}/graphql", json={"query": NODE,
                                                            "variables": variables},
                              headers={"X-API-Key": READER}, timeout=30)
        if response.headers.get("x-retailgraph-cache") == "hit":
            return response
        time.sleep(0.01)
    raise AssertionError("node(id) was never served from the response cache")


def test_node_is_always_current_through_the_response_cache(stack: Stack) -> None:
    """A cached ``node(id)`` of a stock level is invalidated by the cell's next event."""
    signer = Signer(stack.settings, stack.world)
    level = roots(stack, 8)["product"]["stock"][1]  # the first warehouse (WMS)
    variables = {"id": level["id"]}
    cached = _until_hit(stack, variables).json()["data"]["node"]
    assert cached["onHand"] == level["onHand"]
    delivery = signer.epcis([signer.epcis_event(8, 0, level["onHand"] + 17, 9)])
    assert post(stack.url, delivery).status_code == 200
    fresh = data_of(ask(stack, NODE, variables))["node"]
    assert fresh["onHand"] == level["onHand"] + 17
    assert _until_hit(stack, variables).json()["data"]["node"]["onHand"] == level["onHand"] + 17


@needs_node
def test_node_over_a_websocket_with_the_same_permissions(stack: Stack) -> None:
    """npm graphql-ws: the same answers and the same FORBIDDEN as over HTTP."""
    first = roots(stack, 9)
    product = first["product"]
    own, other = product.pop("stock")
    ws = f"{stack.url.replace('http', 'ws')}/graphql"
    ids = [product["id"], own["id"], other["id"], "ST002"]
    run = run_client("graphql-ws-query.mjs", {"ws": ws, "key": STORE_1, "query": NODES,
                                              "variables": {"ids": ids}})
    http = ask(stack, NODES, {"ids": ids}, STORE_1)
    assert run.result["data"] == http["data"]
    assert run.result["data"]["nodes"][:2] == [with_typename("Product", product),
                                              with_typename("StockLevel", own)]
    assert run.result["data"]["nodes"][2:] == [None, None]
    assert [(e["path"], e["extensions"]["code"]) for e in run.result["errors"]] == \
        [(["nodes", 2], "FORBIDDEN"), (["nodes", 3], "FORBIDDEN")]
    assert run.console == []
