"""Hostile queries against a gateway with tight limits: each limit is configurable, refuses
with ``LIMIT_EXCEEDED`` naming itself (never masked), and the validation rules are built once
so Strawberry's validation cache keeps hitting. Introspection and GraphiQL can be switched off.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
import websockets
from strawberry.extensions.validation_cache import _get_validate_cache
from websockets.typing import Subprotocol

from tests.support import Stack

LIMITS = {"max_depth": 5, "max_aliases": 3, "max_tokens": 300, "max_cost": 800,
          "max_page_size": 20}
# One product with stock everywhere and store availability: about 100 cost units per product
# with 5 locations, so a page of 2 is fine and a page of 20 is over max_cost.
NODE = ("sku stock { onHand location { name externalIds { value } } } "
        "store: availability(channel: STORE) { available byLocation { onHand location { name } } }")
PAGE = f"query Page($n: Int!) {{ products(first: $n) {{ nodes {{ {NODE} }} }} }}"


@pytest.fixture(scope="module")
def tight(redis_server_url: str) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    stack = Stack(redis_server_url)
    for name, value in LIMITS.items():
        setattr(stack.settings, name, value)
    stack.settings.introspection = False
    stack.settings.graphiql = False
    with stack:
        yield stack


def ask(stack: Stack, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{stack.url}/graphql",
                          json={"query": query, "variables": variables or {}}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "Traceback" not in response.text
    for error in body.get("errors", []):
        assert error["message"] not in ("Unexpected error.", "Internal error"), error
    return body


def refused_by(body: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(e["extensions"]["code"], e["extensions"].get("limit", ""),
             e["extensions"].get("max", 0)) for e in body.get("errors", [])]


def test_depth_limit(tight: Stack) -> None:
    ok = ask(tight, '{ product(sku: "SKU-000001") { stock { location { externalIds '
                    '{ value } } } } }')
    assert "errors" not in ok, ok
    deep = "{ products(first: 1) { edges { node { stock { location { externalIds { value } } } } "
    deep += "} } }"
    body = ask(tight, deep)
    assert body["data"] is None
    assert refused_by(body) == [("LIMIT_EXCEEDED", "max_depth", 5)]
    assert "max_depth" in body["errors"][0]["message"]
    assert "depth" in body["errors"][0]["message"]


def test_alias_limit(tight: Stack) -> None:
    three = ask(tight, "{ a: locations { id } b: locations { id } c: locations { id } }")
    assert "errors" not in three
    body = ask(tight, "{ a: locations { id } b: locations { id } c: locations { id } "
                      "d: locations { id } }")
    assert refused_by(body) == [("LIMIT_EXCEEDED", "max_aliases", 3)]
    assert "aliases" in body["errors"][0]["message"]


def test_token_limit(tight: Stack) -> None:
    body = ask(tight, "{ locations { " + "id " * 400 + "} }")
    assert body["data"] is None
    assert refused_by(body) == [("LIMIT_EXCEEDED", "max_tokens", 300)]
    assert "max_tokens" in body["errors"][0]["message"]


def test_cost_limit_weighs_pages_locations_and_backends(tight: Stack) -> None:
    small = ask(tight, PAGE, {"n": 2})
    assert "errors" not in small, small
    assert len(small["data"]["products"]["nodes"]) == 2
    # The same document with a variable asking for more: the cost follows the variables.
    body = ask(tight, PAGE, {"n": 20})
    assert body["data"] is None
    ((code, limit, maximum),) = refused_by(body)
    assert (code, limit, maximum) == ("LIMIT_EXCEEDED", "max_cost", 800)
    assert body["errors"][0]["extensions"]["cost"] > 800
    assert "max_cost" in body["errors"][0]["message"]
    # Cheap fields in the same page size are fine: only what reads backends weighs.
    names = ask(tight, "{ products(first: 20) { nodes { sku name category } } }")
    assert "errors" not in names, names


def test_page_size_limit(tight: Stack) -> None:
    body = ask(tight, "{ products(first: 21) { nodes { sku } } }")
    (error,) = body["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "limit": "max_page_size", "max": 20}
    events = ask(tight, "{ stockEvents(first: 50) { hasMore } }")
    assert [e["extensions"].get("limit") for e in events["errors"]] == ["max_page_size"]


def test_validation_cache_keeps_hitting(tight: Stack) -> None:
    cache = _get_validate_cache(256)
    assert isinstance(cache, functools._lru_cache_wrapper), cache  # typed Callable[..., Any]
    query = "query CacheProbe { locations(type: STORE) { id name gln } }"
    ask(tight, query)
    before = cache.cache_info()
    for _ in range(3):
        assert "errors" not in ask(tight, query)
    after = cache.cache_info()
    assert after.hits - before.hits >= 3
    assert after.misses == before.misses


def test_introspection_and_graphiql_can_be_switched_off(tight: Stack) -> None:
    body = ask(tight, "{ __schema { types { name } } }")
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "introspection" in body["errors"][0]["message"]
    assert ask(tight, "{ __typename }")["data"] == {"__typename": "Query"}
    # No "Did you mean ...?": suggestions would reveal the schema introspection hides.
    typo = ask(tight, '{ product(sku: "SKU-000001") { nam } }')
    assert "Cannot query field 'nam'" in typo["errors"][0]["message"]
    assert "Did you mean" not in orjson.dumps(typo).decode()
    page = httpx.get(f"{tight.url}/graphql", headers={"accept": "text/html"}, timeout=10)
    assert "graphiql" not in page.text.lower()
    assert page.status_code != 200


async def test_limits_apply_to_subscriptions_too(tight: Stack) -> None:
    url = tight.url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(url, subprotocols=[Subprotocol("graphql-transport-ws")],
                                  open_timeout=10) as ws:
        await ws.send(orjson.dumps({"type": "connection_init"}).decode())
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
        aliases = " ".join(f"a{i}: sku" for i in range(4))
        await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": f"subscription {{ stockChanged {{ {aliases} }} }}"}}).decode())
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    assert [e["extensions"].get("limit") for e in errors] == ["max_aliases"], message
