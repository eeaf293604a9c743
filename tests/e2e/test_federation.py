"""retailgraph as an Apollo Federation v2 subgraph, proven with the ecosystem's own tools.

retailgraph serves ``{ _service { sdl } }`` (Federation v2: ``@link``, ``@key``) and
``_entities``: Product keyed by ``sku``, Location by ``id``, StockLevel by
``sku location { id }``. The Python tests check those directly on a running gateway,
including that ``_entities`` applies the same permissions as the root fields.

The end-to-end test uses no code of ours on the federation side: ``tests/federation`` is a
small Node project with a second subgraph (``reviews.mjs``, on ``@apollo/subgraph``) that
extends Product, Location and StockLevel; ``compose.mjs`` composes the supergraph with the
official composition library (``@apollo/composition``) from both subgraphs' SDL fetched
live; ``gateway.mjs`` runs ``@apollo/gateway`` (on ``@apollo/server``) in front of both. A
query through it mixes fields of both subgraphs, in both directions (retailgraph entities
extended by reviews, and reviews' root fields returning retailgraph entities), and every
value is checked against retailgraph queried directly and the reviews data.

Node packages are installed by the test (``npm ci``, pinned by ``package-lock.json``) into
``tests/federation/node_modules`` (git-ignored), only when the lock file changed
(:func:`tests.nodejs.npm_install`). The
end-to-end test is skipped, with the reason, only where ``node``/``npm`` are not installed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import parse
from graphql.language import ObjectTypeDefinitionNode, SchemaDefinitionNode, StringValueNode

from gateway import cli
from schema import federation_sdl, sdl
from tests.e2e.test_deployment import Proc, wait_for
from tests.nodejs import NODE, needs_node, node_env, npm_install
from tests.support import Stack, free_port, fresh_stack

FEDERATION = Path(__file__).resolve().parents[1] / "federation"
READER_KEY = "federation-reader-key-0001"
MASTER_ONLY_KEY = "federation-master-data-key"
ST001_KEY = "federation-store-st001-key"
KEYS = {
    "reader": {"key": READER_KEY, "scopes": ["stock:read"]},
    "catalog-only": {"key": MASTER_ONLY_KEY, "scopes": []},
    "store-1": {"key": ST001_KEY, "scopes": ["stock:read"], "locations": ["ST001"]},
}
ENTITIES = """query($representations: [_Any!]!) {
  _entities(representations: $representations) {
    __typename
    ... on Product { sku name price { amount } stock(locationIds: ["ST001"]) { available } }
    ... on Location { id name type }
    ... on StockLevel { sku location { id } available onHand source }
  } }"""


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[Stack]:
    with fresh_stack(redis_server_url, KEYS, skus=40) as running:
        yield running


def post(url: str, query: str, variables: dict[str, Any] | None = None,
         key: str | None = READER_KEY) -> dict[str, Any]:
    response = httpx.post(url, json={"query": query, "variables": variables or {}},
                          headers={"X-API-Key": key} if key else {}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def data_of(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


def keys_of(document: str) -> dict[str, list[str]]:
    """``@key(fields: ...)`` of each object type in an SDL document."""
    out: dict[str, list[str]] = {}
    for definition in parse(document).definitions:
        if isinstance(definition, ObjectTypeDefinitionNode):
            for directive in definition.directives or ():
                if directive.name.value == "key":
                    assert directive.arguments, directive
                    value = directive.arguments[0].value
                    assert isinstance(value, StringValueNode)
                    out.setdefault(definition.name.value, []).append(value.value)
    return out


# -- the subgraph contract, on a running gateway ----------------------------------------------

def test_service_sdl_is_a_federation_2_subgraph_with_the_entity_keys(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    served = data_of(post(f"{stack.url}/graphql", "{ _service { sdl } }"))["_service"]["sdl"]
    assert served.strip() == federation_sdl().strip()
    assert cli.main(["schema", "--federation"]) == 0  # for `rover subgraph publish --schema`
    assert capsys.readouterr().out.strip() == served.strip()
    assert keys_of(served) == {"Location": ["id"], "Product": ["sku"],
                               "StockLevel": ["sku location { id }"]}
    schema_def = next(d for d in parse(served).definitions
                      if isinstance(d, SchemaDefinitionNode))
    link = next(d for d in schema_def.directives or () if d.name.value == "link")
    url = next(a.value for a in link.arguments or () if a.name.value == "url")
    assert isinstance(url, StringValueNode)
    assert url.value.startswith("https://specs.apollo.dev/federation/v2.")
    # The client-facing contract (schema.graphql) stays free of the federation plumbing.
    client = sdl()
    for plumbing in ("_service", "_entities", "_Any", "@key", "@link"):
        assert plumbing not in client, plumbing
        assert plumbing in served, plumbing


def test_entities_resolve_each_key_like_the_root_fields(stack: Stack) -> None:
    world = stack.world
    item, store, warehouse = world.items[3], world.stores[0], world.warehouses[0]
    url = f"{stack.url}/graphql"
    entities = data_of(post(url, ENTITIES, {"representations": [
        {"__typename": "Product", "sku": item.sku},
        {"__typename": "Location", "id": warehouse.code},
        {"__typename": "StockLevel", "sku": item.sku, "location": {"id": store.code}},
        {"__typename": "Product", "sku": "NO-SUCH-SKU"},
        {"__typename": "Location", "id": "NOWHERE"},
    ]}))["_entities"]
    direct = data_of(post(url, """query($sku: ID!, $store: ID!, $wh: ID!) {
      product(sku: $sku) { sku name price { amount } stock(locationIds: ["ST001"]) { available } }
      location(id: $wh) { id name type }
      stockLevel(sku: $sku, locationId: $store) { sku location { id } available onHand source }
    }""", {"sku": item.sku, "store": store.code, "wh": warehouse.code}))
    assert entities[0] == {"__typename": "Product", **direct["product"]}
    assert entities[1] == {"__typename": "Location", **direct["location"]}
    assert entities[2] == {"__typename": "StockLevel", **direct["stockLevel"]}
    assert entities[3:] == [None, None]


def test_entities_apply_the_same_permissions(stack: Stack) -> None:
    item = stack.world.items[5]
    url = f"{stack.url}/graphql"
    level = {"__typename": "StockLevel", "sku": item.sku, "location": {"id": "ST002"}}
    # Without stock:read: master data yes, stock levels no.
    body = post(url, ENTITIES.replace(' stock(locationIds: ["ST001"]) { available }', ""),
                {"representations": [{"__typename": "Product", "sku": item.sku}, level]},
                key=MASTER_ONLY_KEY)
    assert body["data"]["_entities"][0]["name"] == item.name
    assert body["data"]["_entities"][1] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    # A key for store ST001 only: not another store's level, by any path.
    body = post(url, ENTITIES, {"representations": [level]}, key=ST001_KEY)
    assert body["data"]["_entities"] == [None]
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    # No credentials at all: nothing.
    response = httpx.post(url, json={"query": ENTITIES, "variables": {
        "representations": [level]}}, timeout=30)
    assert response.status_code == 401


def test_entities_are_cost_limited_like_root_fields(stack: Stack) -> None:
    """``_entities`` must not be a way around ``max_cost``: each representation counts."""
    url = f"{stack.url}/graphql"
    one = [{"__typename": "Product", "sku": item.sku} for item in stack.world.items]
    assert len(data_of(post(url, ENTITIES, {"representations": one}))["_entities"]) == len(one)
    response = httpx.post(url, json={"query": ENTITIES, "variables": {
        "representations": one * 100}}, headers={"X-API-Key": READER_KEY}, timeout=30)
    body = response.json()
    assert body.get("data") is None, "an over-cost _entities query was executed"
    assert [(e["extensions"]["code"], e["extensions"]["limit"]) for e in body["errors"]] == \
        [("LIMIT_EXCEEDED", "max_cost")]


# -- a real supergraph ---------------------------------------------------------------------------

# The reviews subgraph's data, as the README's recipe runs it (`--data reviews.json`).
REVIEWS = FEDERATION / "reviews.json"

SUPERGRAPH_QUERY = """query($sku: ID!) {
  product(sku: $sku) {
    sku name price { amount }
    stock(locationIds: ["ST001", "ST002"]) {
      available onHand lastShelfCheck location { id name footfall } }
    rating reviewCount reviews { stars body product { sku name } }
  }
  topRated(first: 2) { sku name rating availability(channel: STORE) { available } }
  shelfChecks { id note stockLevel { sku available source location { id name footfall } } }
}"""


@needs_node
def test_a_real_federation_gateway_serves_both_subgraphs(stack: Stack,
                                                         tmp_path: Path) -> None:
    assert NODE is not None
    npm_install(FEDERATION)
    world = stack.world
    a, b, c = world.items[1], world.items[2], world.items[7]
    data = json.loads(REVIEWS.read_text(encoding="utf-8"))
    # The file names SKU ids; every world numbers its items from SKU-000001.
    assert list(data["reviews"]) == [a.sku, b.sku, c.sku]
    assert [(x["sku"], x["location"]) for x in data["shelfChecks"]] == [
        (a.sku, "ST002"), (b.sku, "ST001")]
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**node_env(), "NODE_ENV": "production"}
    port = free_port()
    reviews = Proc("reviews", [NODE, str(FEDERATION / "reviews.mjs"), "--port", str(port),
                               "--data", str(REVIEWS)], env, logs, port)
    gateway = Proc("gateway", [], env, logs, free_port())
    try:
        reviews.start()
        wait_for("reviews subgraph", lambda: "ready at" in reviews.log(), timeout=30)
        supergraph = tmp_path / "supergraph.graphql"
        composed = subprocess.run(
            [NODE, str(FEDERATION / "compose.mjs"), "--out", str(supergraph),
             "--subgraph", f"retailgraph={stack.url}/graphql",
             "--subgraph", f"reviews={reviews.url}/graphql",
             "--header", f"X-API-Key: {READER_KEY}"],
            env=env, capture_output=True, text=True, timeout=60, check=False)
        assert composed.returncode == 0, composed.stdout + composed.stderr
        assert "composed retailgraph + reviews" in composed.stdout
        text = supergraph.read_text(encoding="utf-8")
        assert "join__graph(name: \"retailgraph\"" in text
        assert "join__type(graph: RETAILGRAPH, key: \"sku location { id }\")" in text
        gateway.argv = [NODE, str(FEDERATION / "gateway.mjs"), "--supergraph",
                        str(supergraph), "--port", str(gateway.port)]
        gateway.start()
        wait_for("federation gateway", lambda: "ready at" in gateway.log(), timeout=30)
        through = data_of(post(f"{gateway.url}/", SUPERGRAPH_QUERY, {"sku": a.sku}))
        direct = data_of(post(f"{stack.url}/graphql", """query($sku: ID!, $b: ID!, $c: ID!) {
          product(sku: $sku) { sku name price { amount }
            stock(locationIds: ["ST001", "ST002"]) { available onHand location { id name } } }
          b: product(sku: $b) { sku name availability(channel: STORE) { available } }
          c: product(sku: $c) { sku name availability(channel: STORE) { available } }
          s1: stockLevel(sku: $sku, locationId: "ST002") {
            sku available source location { id name } }
          s2: stockLevel(sku: $b, locationId: "ST001") {
            sku available source location { id name } }
        }""", {"sku": a.sku, "b": b.sku, "c": c.sku}))
        product = through["product"]
        # retailgraph's fields, resolved by retailgraph, extended by reviews' fields.
        assert {k: product[k] for k in ("sku", "name", "price")} == \
            {k: direct["product"][k] for k in ("sku", "name", "price")}
        assert product["rating"] == 4.5
        assert product["reviewCount"] == 2
        assert [r["body"] for r in product["reviews"]] == ["Sturdy.", "Good value."]
        assert all(r["product"] == {"sku": a.sku, "name": a.name} for r in product["reviews"])
        for got, want in zip(product["stock"], direct["product"]["stock"], strict=True):
            assert got["available"] == want["available"]
            assert got["onHand"] == want["onHand"]
            assert got["location"]["name"] == want["location"]["name"]
            assert got["location"]["footfall"] == data["footfall"][got["location"]["id"]]
            assert got["lastShelfCheck"] == ("2025-06-01T09:00:00Z"
                                             if got["location"]["id"] == "ST002" else None)
        # reviews' root fields returning retailgraph entities (Product and StockLevel).
        top = through["topRated"]
        assert [t["sku"] for t in top] == [c.sku, a.sku]
        assert top[0] == {"sku": c.sku, "name": c.name, "rating": 5.0,
                          "availability": direct["c"]["availability"]}
        checks = through["shelfChecks"]
        assert [x["note"] for x in checks] == ["front facing", "gap on shelf"]
        for check, level in zip(checks, (direct["s1"], direct["s2"]), strict=True):
            got = check["stockLevel"]
            assert {k: got[k] for k in ("sku", "available", "source")} == \
                {k: level[k] for k in ("sku", "available", "source")}
            assert got["location"]["name"] == level["location"]["name"]
            assert got["location"]["footfall"] == data["footfall"][level["location"]["id"]]
        # The caller's credentials reach retailgraph: without them its fields fail, while
        # the reviews subgraph's still answer.
        anonymous = post(f"{gateway.url}/", "{ topRated(first: 1) { rating name } }",
                         key=None)
        assert anonymous["errors"]
        assert anonymous["data"] is None or anonymous["data"]["topRated"] in (None, [])
    finally:
        gateway.stop()
        reviews.stop()
