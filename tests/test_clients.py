"""retailgraph driven by the GraphQL clients people use, against a running gateway.

Each scenario is one script of ``tests/clients`` (npm ``graphql-ws``, ``@apollo/client`` 4,
``graphql-sse``; pinned by its ``package-lock.json``) run by :mod:`tests.nodejs`; every value
it reports is compared with the same thing asked directly over HTTP or the simulators' truth.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.nodejs import needs_node, run_client
from tests.support import Stack, fresh_stack

READER_KEY = "clients-reader-key-000001"
KEYS = {"reader": {"key": READER_KEY, "scopes": ["stock:read"]}}

PRODUCT = """query($sku: ID!) {
  product(sku: $sku) { sku name price { amount currencyCode }
    stock(locationIds: ["ST001", "WH001"]) { location { id name } onHand available } } }"""


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[Stack]:
    with fresh_stack(redis_server_url, KEYS, skus=30) as running:
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
    assert run.result["data"]["product"]["stock"][0]["location"]["id"] == "ST001"
    assert run.console == []
