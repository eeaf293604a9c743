"""retailgraph driven by the GraphQL clients people use, against a running gateway.

Each scenario is one script of ``tests/clients`` (npm ``graphql-ws``, ``@apollo/client`` 4, urql,
``graphql-sse``; pinned by its ``package-lock.json``) run by :mod:`tests.nodejs`; every value
it reports is compared with the same thing asked directly over HTTP or the simulators' truth.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from tests.e2e.test_subscriptions import Live, cursor_key
from tests.nodejs import ClientScript, needs_node, run_client
from tests.support import Stack, fresh_stack

READER_KEY = "clients-reader-key-000001"
KEYS = {"reader": {"key": READER_KEY, "scopes": ["stock:read"]}}

PRODUCT = """query($sku: ID!) {
  product(sku: $sku) { sku name price { amount currencyCode }
    stock(locationIds: ["ST001", "WH01"]) { location { id name } onHand available } } }"""


CHANGE = """cursor sku locationId source conflated movement { type quantity }
  stockLevel { id sku location { id } onHand available committed }"""
STOCK_CHANGED = f"""subscription($skus: [ID!], $locs: [ID!], $after: String) {{
  stockChanged(skus: $skus, locationIds: $locs, after: $after) {{ {CHANGE} }} }}"""
HISTORY = f"""query($skus: [ID!], $locs: [ID!], $after: String) {{
  stockEvents(skus: $skus, locationIds: $locs, after: $after, first: 100) {{
    changes {{ {CHANGE} }} endCursor hasMore }} }}"""


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[Stack]:
    with fresh_stack(redis_server_url, KEYS, skus=30) as running:
        yield running


@contextmanager
def changing(stack: Stack, redis_url: str) -> Iterator[Live]:
    """Changes stock through the simulators' own APIs (their signed webhooks follow); each
    test takes its own SKUs with ``live.sku()``."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield Live(stack, client, iter(range(10, 30)))
    finally:
        client.close()


@pytest.fixture(scope="module")
def live(stack: Stack, redis_server_url: str) -> Iterator[Live]:
    with changing(stack, redis_server_url) as running:
        yield running


def endpoints(stack: Stack) -> dict[str, Any]:
    return {"http": f"{stack.url}/graphql", "ws": f"{stack.url.replace('http', 'ws')}/graphql",
            "key": READER_KEY}


def direct(stack: Stack, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = stack.graphql(query, variables, headers={"X-API-Key": READER_KEY})
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


@needs_node
def test_graphql_ws_query_matches_http(stack: Stack) -> None:
    sku = stack.world.items[2].sku
    run = run_client("graphql-ws-query.mjs", {**endpoints(stack), "query": PRODUCT,
                                              "variables": {"sku": sku}})
    assert run.result["data"] == direct(stack, PRODUCT, {"sku": sku})
    assert run.result["data"]["product"]["sku"] == sku
    assert [x["location"]["id"] for x in run.result["data"]["product"]["stock"]] == \
        ["ST001", "WH01"]
    assert run.console == []


def history(stack: Stack, cell: dict[str, Any], after: str | None = None) -> dict[str, Any]:
    page: dict[str, Any] = direct(stack, HISTORY, {**cell, "after": after})["stockEvents"]
    assert page["hasMore"] is False
    return page


@needs_node
async def test_graphql_ws_subscription_resumes_by_cursor_without_gap_or_duplicate(
        stack: Stack, live: Live) -> None:
    """npm graphql-ws: changes arrive live; the app goes offline, changes go on, and it
    subscribes again with ``after:`` the last cursor it got: it receives exactly the log."""
    i = live.sku()
    cell = {"skus": [live.world.items[i].sku], "locs": [live.world.warehouses[0].code]}
    start = history(stack, cell)["endCursor"]
    on_hand = (await live.wms_balance(i, 0))["onHand"]
    arrive = [live.epcis_event(i, 0, "arriving", 1)]
    config = {**endpoints(stack), "query": STOCK_CHANGED, "field": "stockChanged",
              "variables": {**cell, "after": start}, "before": 3, "total": 7}
    async with ClientScript("graphql-ws-resume.mjs", config) as script:
        for _ in range(3):
            await live.capture(arrive)
        last = await script.message("offline")
        for _ in range(2):  # while the app is offline
            await live.capture(arrive)
        await script.send({"resume": True})
        for _ in range(2):  # the missed ones, replayed after `last`
            await script.message("next")
        for _ in range(2):  # and live ones again
            await live.capture(arrive)
        run = await script.finish()
    changes = run.result
    cursors = [c["cursor"] for c in changes]
    assert cursors[2] == last
    assert sorted(set(cursors), key=cursor_key) == cursors  # ordered, nothing twice
    # No gap: each arrival of one unit, in order, ending at the WMS simulator's balance...
    assert [c["stockLevel"]["onHand"] for c in changes] == list(range(on_hand + 1,
                                                                      on_hand + 8))
    assert changes[-1]["stockLevel"]["onHand"] == (await live.wms_balance(i, 0))["onHand"]
    assert {(c["sku"], c["locationId"], c["source"]) for c in changes} == \
        {(cell["skus"][0], cell["locs"][0], "wms")}
    # ...and exactly the change log, cursor for cursor.
    assert history(stack, cell, after=start)["changes"] == changes
    assert run.console == []


APOLLO_OPERATIONS = [
    # A product page: the product with its stock...
    """query($sku: ID!) { product(sku: $sku) { id sku name
        stock(locationIds: ["ST001", "WH01"]) { id onHand location { id name } } } }""",
    # ...other fields of the same product, from another component...
    """query($sku: ID!) { product(sku: $sku) { id gtin category } }""",
    # ...the same stock level, reached by another root field...
    """query($sku: ID!) { stockLevel(sku: $sku, locationId: "WH01") {
        id available committed } }""",
    # ...the product refetched by its id, and a list page.
    """query($id: ID!) { node(id: $id) { id ... on Product { safetyStock } } }""",
    """{ products(first: 5) { nodes { id sku name } } }""",
]
TRUTH = """query($sku: ID!) { product(sku: $sku) { id sku name gtin category safetyStock
  stock(locationIds: ["ST001", "WH01"]) { id onHand available committed
    location { id name type } } } }"""


def possible_types() -> dict[str, list[str]]:
    """What Apollo's ``possibleTypes`` option wants, from the schema (as codegen makes it)."""
    from graphql import GraphQLInterfaceType

    from schema import schema

    served = schema._schema
    return {name: sorted(t.name for t in served.get_possible_types(kind))
            for name, kind in served.type_map.items()
            if isinstance(kind, GraphQLInterfaceType) and not name.startswith("_")}


@needs_node
def test_apollo_client_normalises_every_entity_without_type_policies(stack: Stack) -> None:
    """@apollo/client 4, HttpLink + InMemoryCache() with no options: five overlapping queries
    leave one cache entry per object, merged, and Apollo prints no warning."""
    sku = stack.world.items[2].sku
    truth = direct(stack, TRUTH, {"sku": sku})["product"]
    store, warehouse = truth["stock"]
    variables: list[dict[str, Any]] = [{"sku": sku}] * 3 + [{"id": truth["id"]}, {}]
    run = run_client("apollo-http-cache.mjs", {**endpoints(stack), "operations": [
        {"query": q, "variables": v} for q, v in zip(APOLLO_OPERATIONS, variables,
                                                     strict=True)]})
    assert run.console == []
    results, cache = run.result["results"], run.result["cache"]
    assert all(r["error"] is None for r in results), results
    assert results[0]["data"]["product"]["name"] == truth["name"]
    # One entry per object, keyed by __typename and id; root fields hold references.
    product = cache[f"Product:{truth['id']}"]
    root = cache["ROOT_QUERY"]
    assert root[f'product({{"sku":"{sku}"}})'] == {"__ref": f"Product:{truth['id']}"}
    assert root[f'node({{"id":"{truth["id"]}"}})'] == {"__ref": f"Product:{truth['id']}"}
    assert root[f'stockLevel({{"locationId":"WH01","sku":"{sku}"}})'] == \
        {"__ref": f"StockLevel:{warehouse['id']}"}
    # The product's fields from queries 1, 2 and 4 are merged in that one entry.
    assert {k: product[k] for k in ("sku", "name", "gtin", "category", "safetyStock")} == \
        {k: truth[k] for k in ("sku", "name", "gtin", "category", "safetyStock")}
    assert product['stock({"locationIds":["ST001","WH01"]})'] == [
        {"__ref": f"StockLevel:{store['id']}"}, {"__ref": f"StockLevel:{warehouse['id']}"}]
    # The warehouse level has onHand from query 1 and available/committed from query 3.
    level = cache[f"StockLevel:{warehouse['id']}"]
    assert {k: level[k] for k in ("onHand", "available", "committed")} == \
        {k: warehouse[k] for k in ("onHand", "available", "committed")}
    assert level["location"] == {"__ref": "Location:WH01"}
    assert cache["Location:ST001"] == {"__typename": "Location", "id": "ST001",
                                       "name": store["location"]["name"]}
    # The list page's products are entries of their own too.
    listed = results[4]["data"]["products"]["nodes"]
    assert [cache[f"Product:{p['id']}"]["sku"] for p in listed] == [p["sku"] for p in listed]


NODES_OF_SEVERAL_TYPES = """query($ids: [ID!]!) { nodes(ids: $ids) { id
  ... on Product { name } ... on Location { type } ... on StockLevel { available } } }"""


@needs_node
def test_apollo_client_stores_nodes_of_several_types_given_possible_types(stack: Stack) -> None:
    """``nodes`` with a fragment per type: Apollo matches fragments on an interface only with
    its ``possibleTypes`` (the README's map, from the schema); without it, it says so."""
    sku = stack.world.items[3].sku
    truth = direct(stack, TRUTH, {"sku": sku})["product"]
    ids = [truth["id"], "ST001", truth["stock"][1]["id"]]
    operations = [{"query": NODES_OF_SEVERAL_TYPES, "variables": {"ids": ids}}]
    assert possible_types() == {"Node": ["Location", "Product", "StockLevel"]}
    run = run_client("apollo-http-cache.mjs", {**endpoints(stack), "operations": operations,
                                               "possibleTypes": possible_types()})
    assert run.console == []
    cache = run.result["cache"]
    assert cache[f"Product:{truth['id']}"]["name"] == truth["name"]
    assert cache["Location:ST001"]["type"] == "STORE"
    assert cache[f"StockLevel:{ids[2]}"]["available"] == truth["stock"][1]["available"]
    assert cache["ROOT_QUERY"][f'nodes({{"ids":{json.dumps(ids, separators=(",", ":"))}}})'] \
        == [{"__ref": f"Product:{ids[0]}"}, {"__ref": "Location:ST001"},
            {"__ref": f"StockLevel:{ids[2]}"}]
    without = run_client("apollo-http-cache.mjs", {**endpoints(stack), "operations": operations})
    assert without.console
    assert all("missing `possibleTypes` entry" in line for line in without.console)


URQL_PRODUCT = """query($sku: ID!, $locs: [ID!]!) { product(sku: $sku) { id sku name
  stock(locationIds: $locs) { id onHand available location { id name } } } }"""
URQL_LEVEL = """query($sku: ID!, $loc: ID!) {
  stockLevel(sku: $sku, locationId: $loc) { id onHand available } }"""


async def _until_level(stack: Stack, sku: str, loc: str, on_hand: int) -> dict[str, Any]:
    """The level as the gateway serves it, once its onHand is ``on_hand`` (the webhook
    arrived)."""
    for _ in range(200):
        level = direct(stack, URQL_LEVEL, {"sku": sku, "loc": loc})["stockLevel"]
        if level["onHand"] == on_hand:
            return dict(level)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sku} at {loc} never showed onHand {on_hand}: {level}")


@needs_node
async def test_urql_graphcache_normalises_entities_without_keys_config(
        stack: Stack, live: Live) -> None:
    """urql with @urql/exchange-graphcache and no `keys`: a product query and a stockLevel
    query store their StockLevel as one entity, so after a change the product query read from
    the cache alone shows the new level, and graphcache printed no warning."""
    i = live.sku()
    sku, warehouse = live.world.items[i].sku, live.world.warehouses[1].code
    on_hand = (await live.wms_balance(i, 1))["onHand"]
    config = {**endpoints(stack), "query": URQL_PRODUCT,
              "variables": {"sku": sku, "locs": [warehouse]},
              "levelQuery": URQL_LEVEL, "levelVariables": {"sku": sku, "loc": warehouse}}
    async with ClientScript("urql-graphcache.mjs", config) as script:
        ready = await script.message("ready")
        [first] = ready["product"]["stock"]
        assert first["onHand"] == on_hand
        await live.capture([live.epcis_event(i, 1, "cycle_counting", on_hand + 7)])
        truth = await _until_level(stack, sku, warehouse, on_hand + 7)
        await script.send({"go": True})
        run = await script.finish()
    assert run.console == [], run.console
    level = run.result["level"]["stockLevel"]
    assert {k: v for k, v in level.items() if k != "__typename"} == truth
    assert level["id"] == first["id"]
    [cached] = run.result["cached"]["product"]["stock"]
    # Only the shared entity can carry the new value into the earlier query's result.
    assert cached["onHand"] == on_hand + 7 != first["onHand"]
    assert cached["available"] == truth["available"]
    assert {k: cached["location"][k] for k in ("id", "name")} == \
        {"id": warehouse, "name": first["location"]["name"]}


@needs_node
async def test_the_urql_warning_check_catches_an_object_without_an_id(
        stack: Stack, live: Live) -> None:
    """The check above can fail: Money has no id (a value stored inside its product), and
    graphcache without a `keys` entry for it warns on stderr."""
    i = live.sku()
    sku = live.world.items[i].sku
    query = "query($sku: ID!) { product(sku: $sku) { id price { amount currencyCode } } }"
    config = {**endpoints(stack), "query": query, "variables": {"sku": sku},
              "levelQuery": query, "levelVariables": {"sku": sku}}
    async with ClientScript("urql-graphcache.mjs", config) as script:
        await script.message("ready")
        await script.send({"go": True})
        run = await script.finish()
    assert run.console
    assert all(line.startswith("[console.warn] Invalid key") and ".price`" in line
               for line in run.console), run.console


@needs_node
def test_the_apollo_warning_check_catches_an_object_it_cannot_normalise(stack: Stack) -> None:
    """The check above can fail: Money has no identity (a value, stored inside its product),
    and two queries asking it with different fields make Apollo warn, on stderr."""
    sku = stack.world.items[2].sku
    run = run_client("apollo-http-cache.mjs", {**endpoints(stack), "operations": [
        {"query": "query($sku: ID!) { product(sku: $sku) { id price { amount currencyCode } } }",
         "variables": {"sku": sku}},
        {"query": "query($sku: ID!) { product(sku: $sku) { id price { amount } } }",
         "variables": {"sku": sku}}]})
    assert run.result["results"][1]["error"] is None
    [warning] = run.console
    assert warning.startswith("[console.warn] Cache data may be lost when replacing the price "
                              "field of a Product object"), warning


@needs_node
async def test_apollo_graphql_ws_link_subscription_updates_the_cached_query(
        stack: Stack, live: Live) -> None:
    """@apollo/client 4 with GraphQLWsLink for subscriptions and HttpLink for queries: each
    change that arrives updates the product query already in the cache (same StockLevel id)."""
    i = live.sku()
    sku, warehouse = live.world.items[i].sku, live.world.warehouses[1].code
    cell = {"skus": [sku], "locs": [warehouse]}
    start = history(stack, cell)["endCursor"]
    on_hand = (await live.wms_balance(i, 1))["onHand"]
    config = {**endpoints(stack), "field": "stockChanged", "count": 2,
              "query": f"""query($sku: ID!) {{ product(sku: $sku) {{ id sku
                  stock(locationIds: ["{warehouse}"]) {{ id onHand available }} }} }}""",
              "variables": {"sku": sku},
              "subscription": STOCK_CHANGED, "subscriptionVariables": {**cell, "after": start}}
    async with ClientScript("apollo-ws-subscription.mjs", config) as script:
        ready = await script.message("ready")
        assert ready["product"]["stock"][0]["onHand"] == on_hand
        await live.capture([live.epcis_event(i, 1, "arriving", 5)])
        await live.capture([live.epcis_event(i, 1, "cycle_counting", on_hand + 40)])
        run = await script.finish()
    result = run.result
    assert [c["stockLevel"]["onHand"] for c in result["changes"]] == [on_hand + 5, on_hand + 40]
    assert [c["movement"]["type"] for c in result["changes"]] == ["TRANSFER_IN", "COUNT"]
    truth = await live.wms_balance(i, 1)
    assert truth["onHand"] == on_hand + 40
    level_id = ready["product"]["stock"][0]["id"]
    assert all(c["stockLevel"]["id"] == level_id for c in result["changes"])
    # The query, read back from the cache alone, shows the last change: normalised by id.
    cached = result["cached"]["product"]["stock"][0]
    assert cached == {"__typename": "StockLevel", "id": level_id, "onHand": truth["onHand"],
                      "available": truth["available"]}
    assert run.console == []
