"""retailgraph driven by Python ``gql`` 4 (its own transports, none of ours), on a running gateway.

HTTP with ``AIOHTTPTransport`` and ``HTTPXAsyncTransport``, the schema fetched by introspection
so that gql validates every request locally as an app would; ``WebsocketsTransport`` on both
subprotocols (``graphql-transport-ws`` and the legacy ``graphql-ws``), a query and a
subscription each. Every value is compared with the same query over plain HTTP, and the
subscription's changes with the change log and the WMS simulator's balance.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from gql import Client, GraphQLRequest
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

from tests.e2e.test_clients import HISTORY, STOCK_CHANGED, TRUTH, changing
from tests.e2e.test_subscriptions import Live
from tests.support import Stack, fresh_stack

READER = "gql-reader-key-000000001"
CATALOG_ONLY = "gql-catalog-only-key-0001"
KEYS = {"reader": {"key": READER, "scopes": ["stock:read"]},
        "catalog": {"key": CATALOG_ONLY, "scopes": []}}
PROTOCOLS = [WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL,  # "graphql-transport-ws"
             WebsocketsTransport.APOLLO_SUBPROTOCOL]     # legacy "graphql-ws"


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[Stack]:
    with fresh_stack(redis_server_url, KEYS, skus=30) as running:
        yield running


@pytest.fixture(scope="module")
def live(stack: Stack, redis_server_url: str) -> Iterator[Live]:
    with changing(stack, redis_server_url) as running:
        yield running


def direct(stack: Stack, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = stack.graphql(query, variables, headers={"X-API-Key": READER})
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def ws_url(stack: Stack) -> str:
    return f"{stack.url.replace('http', 'ws')}/graphql"


@pytest.mark.parametrize("transport", [AIOHTTPTransport, HTTPXAsyncTransport])
async def test_gql_over_http_validates_against_the_schema_and_queries(
        stack: Stack, transport: type[AIOHTTPTransport | HTTPXAsyncTransport]) -> None:
    sku = stack.world.items[4].sku
    http = transport(url=f"{stack.url}/graphql", headers={"Authorization": f"Bearer {READER}"})
    async with Client(transport=http, fetch_schema_from_transport=True) as session:
        data = await session.execute(GraphQLRequest(TRUTH, variable_values={"sku": sku}))
        assert session.client.schema is not None
        assert session.client.schema.get_type("Node") is not None
    assert data == direct(stack, TRUTH, {"sku": sku})
    assert [x["location"]["id"] for x in data["product"]["stock"]] == ["ST001", "WH01"]


async def test_gql_over_http_reports_forbidden_fields_as_graphql_errors(stack: Stack) -> None:
    sku = stack.world.items[4].sku
    http = AIOHTTPTransport(url=f"{stack.url}/graphql",
                            headers={"Authorization": f"Bearer {CATALOG_ONLY}"})
    async with Client(transport=http) as session:
        with pytest.raises(TransportQueryError) as raised:
            await session.execute(GraphQLRequest(TRUTH, variable_values={"sku": sku}))
    assert raised.value.errors is not None
    assert [e["extensions"]["code"] for e in raised.value.errors] == ["FORBIDDEN"]
    assert raised.value.data is not None
    assert raised.value.data["product"]["name"] == direct(stack, TRUTH, {"sku": sku})[
        "product"]["name"]
    assert raised.value.data["product"]["stock"] is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_gql_websockets_transport_queries_and_subscribes(stack: Stack, live: Live,
                                                               protocol: str) -> None:
    i = live.sku()
    sku, warehouse = live.world.items[i].sku, live.world.warehouses[0].code
    cell = {"skus": [sku], "locs": [warehouse]}
    start = direct(stack, HISTORY, {**cell, "after": None})["stockEvents"]["endCursor"]
    on_hand = (await live.wms_balance(i, 0))["onHand"]
    socket = WebsocketsTransport(url=ws_url(stack), subprotocols=[protocol],
                                 init_payload={"Authorization": f"Bearer {READER}"})
    async with Client(transport=socket) as session:
        assert socket.subprotocol == protocol
        data = await session.execute(GraphQLRequest(TRUTH, variable_values={"sku": sku}))
        assert data == direct(stack, TRUTH, {"sku": sku})
        # Changes made before the subscription starts arrive too: it resumes after `start`.
        await live.capture([live.epcis_event(i, 0, "arriving", 3)])
        changes: list[dict[str, Any]] = []
        request = GraphQLRequest(STOCK_CHANGED, variable_values={**cell, "after": start})
        async with asyncio.timeout(30), contextlib.aclosing(session.subscribe(request)) as feed:
            async for change in feed:
                changes.append(change["stockChanged"])
                if len(changes) == 1:
                    await live.capture([live.epcis_event(i, 0, "arriving", 4)])
                if len(changes) == 2:
                    break
    assert [c["stockLevel"]["onHand"] for c in changes] == [on_hand + 3, on_hand + 7]
    assert changes[-1]["stockLevel"]["onHand"] == (await live.wms_balance(i, 0))["onHand"]
    assert direct(stack, HISTORY, {**cell, "after": start})["stockEvents"]["changes"] == changes
