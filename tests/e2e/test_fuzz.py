"""Property-based fuzzing (hypothesis) of the running gateway over real HTTP.

Random GraphQL documents (built from the schema's own fields with random arguments, then
sometimes cut or sprinkled with junk), random variables, operation names, persisted-query
extensions and credentials; random webhook bodies to random paths, some signed correctly so
they reach the normalizers. For every one: no 5xx, no error logged by the server, no internal
error in the answer, and nothing in Redis changed by input that was refused.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.typing import Subprotocol

from gateway.intake import signatures
from tests.support import ErrorLog, Stack, errors_logged

KEY = "fuzz-admin-key-0123456789"
EXAMPLES = settings(max_examples=80, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


Collected = ErrorLog


@pytest.fixture(scope="module")
def target(redis_server_url: str) -> Iterator[tuple[Stack, redis.Redis, Collected]]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    stack = Stack(redis_server_url)
    stack.settings.api_keys = {"fuzz": {"key": KEY, "scopes": ["admin"]}}
    try:
        with errors_logged() as collected, stack:
            yield stack, client, collected
    finally:
        client.close()


# -- GraphQL documents ---------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                    | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
SCALAR = st.one_of(st.integers(-2**70, 2**70).map(str), st.text(max_size=12).map(json.dumps),
                   st.sampled_from(
    ['"SKU-000001"', '"ST001"', '"WH01"', "STORE", "ONLINE", "WAREHOUSE", "null", "true",
     "$v", "$first", "[]", '["ST001", "ST002"]', "{a: 1}", "1.5", '"c2t1OlNLVS0wMDAwMDE="']))
ARGS = {
    "product": ["sku"], "products": ["first", "after"], "location": ["id"],
    "locations": ["type"], "stockLevel": ["sku", "locationId"],
    "stockEvents": ["skus", "locationIds", "after", "first"], "unmappedIdentifiers": [],
    "stock": ["locationIds"], "availability": ["channel"], "purchaseOrders": [],
    "stockChanged": ["skus", "locationIds", "after"], "edges": [], "nodes": [],
    "node": [], "changes": [], "byLocation": [], "externalIds": [], "prices": [],
    "price": [], "online": [], "pageInfo": [], "stockLevel_": [],
}
LEAVES = ["sku", "name", "id", "onHand", "available", "committed", "gln", "type", "cursor",
          "hasNextPage", "endCursor", "amount", "currencyCode", "value", "asOf", "stale",
          "source", "__typename", "sellable", "nope", "locationId", "hasMore"]


@st.composite
def selection(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        if depth < 4 and draw(st.booleans()):
            name = draw(st.sampled_from(sorted(ARGS)))
            allowed = ARGS[name]
            args = draw(st.lists(st.sampled_from(allowed or ["x"]), max_size=2, unique=True))
            rendered = ", ".join(f"{a}: {draw(SCALAR)}" for a in args)
            alias = draw(st.sampled_from(["", "", "a: ", "b: "]))
            inner = draw(selection(depth + 1))
            call = f"{name.rstrip('_')}({rendered})" if args else name.rstrip("_")
            parts.append(f"{alias}{call} {{ {inner} }}")
        else:
            parts.append(draw(st.sampled_from(LEAVES)))
    return " ".join(parts)


@st.composite
def document(draw: st.DrawFn) -> str:
    head = draw(st.sampled_from(["", "query", "query Q", "query Q($v: ID, $first: Int)",
                                 "subscription", "mutation", "query($v: [ID!])", "{"]))
    text = f"{head} {{ {draw(selection())} }}"
    if draw(st.booleans()):
        text += " fragment F on Product { sku ...F }"
    damage = draw(st.sampled_from(["none", "none", "cut", "junk", "random"]))
    if damage == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    elif damage == "junk":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=10)) + text[at:]
    elif damage == "random":
        text = draw(st.text(max_size=200))
    return text


@st.composite
def graphql_request(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    payload: dict[str, Any] = {"query": draw(document())}
    if draw(st.booleans()):
        payload["variables"] = draw(st.dictionaries(st.sampled_from(["v", "first", "x"]),
                                                    JSON, max_size=3))
    if draw(st.booleans()):
        payload["operationName"] = draw(st.none() | st.sampled_from(["Q", "F"]) | st.text(
            max_size=8))
    if draw(st.integers(0, 4)) == 0:
        payload["extensions"] = {"persistedQuery": draw(st.fixed_dictionaries({
            "version": st.sampled_from([1, 2, "1"]),
            "sha256Hash": st.text(alphabet="0123456789abcdef", min_size=0, max_size=64)}))}
    if draw(st.integers(0, 9)) == 0:
        del payload["query"]
    body = json.dumps(payload).encode()  # big integers too
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=100))
    credential = draw(st.sampled_from([KEY, KEY, KEY, "", "wrong-key-000000000",
                                       "a.b.c", "Bearer"]))
    headers = {"content-type": "application/json"}
    if credential:
        headers["authorization"] = f"Bearer {credential}"
    return body, headers


def apq_keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter("rg:apq:*"))


@EXAMPLES
@given(request=graphql_request())
def test_random_graphql_requests(target: tuple[Stack, redis.Redis, Collected],
                                 request: tuple[bytes, dict[str, str]]) -> None:
    stack, client, collected = target
    body, headers = request
    before = apq_keys(client), client.xlen("rg:{ev}:log")
    response = httpx.post(f"{stack.url}/graphql", content=body, headers=headers, timeout=30)
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    assert not collected.records, [r.getMessage() for r in collected.records]
    answer: dict[str, Any] = {}
    if response.headers.get("content-type", "").startswith("application/json"):
        answer = response.json()
    for error in answer.get("errors") or []:
        assert (error.get("extensions") or {}).get("code") != "INTERNAL", error
    if response.status_code != 200 or answer.get("data") is None:
        assert (apq_keys(client), client.xlen("rg:{ev}:log")) == before


# -- webhooks ------------------------------------------------------------------------------------

WEBHOOK_JSON = st.one_of(
    JSON,
    st.fixed_dictionaries({
        "merchant_id": st.text(max_size=5), "type": st.sampled_from(
            ["inventory.count.updated", "x"]), "event_id": st.text(max_size=10),
        "data": st.fixed_dictionaries({"object": st.fixed_dictionaries({
            "inventory_counts": st.lists(st.fixed_dictionaries({
                "catalog_object_id": st.text(max_size=8), "location_id": st.text(max_size=8),
                "state": st.sampled_from(["IN_STOCK", "SOLD", "?"]),
                "quantity": st.text(max_size=4), "calculated_at": st.text(max_size=25)}),
                max_size=2)})})}),
    st.fixed_dictionaries({
        "type": st.sampled_from(["epcis.event", "stock.adjusted", "item.updated", "?"]),
        "timestamp": st.text(max_size=25), "sequence": st.integers(-5, 2**63),
        "data": JSON}),
    st.fixed_dictionaries({
        "inventory_item_id": st.integers(-5, 2**63) | st.text(max_size=5),
        "location_id": st.integers(-5, 2**63), "available": st.integers() | st.none(),
        "updated_at": st.text(max_size=25)}),
)


@st.composite
def webhook(draw: st.DrawFn) -> tuple[str, bytes, str]:
    backend = draw(st.sampled_from(["pos", "wms", "erp", "commerce", "nobody", "pos%20", "%00"]))
    body = (json.dumps(draw(WEBHOOK_JSON)).encode() if draw(st.integers(0, 4))
            else draw(st.binary(max_size=200)))
    signing = draw(st.sampled_from(["valid", "valid", "bad", "none", "stale"]))
    return backend, body, signing


def signed_headers(stack: Stack, backend: str, body: bytes, signing: str) -> dict[str, str]:
    config = stack.settings.backends.get(backend)
    headers = {"content-type": "application/json"}
    if signing == "none" or config is None:
        return headers
    secret = config.webhook_secret if signing != "bad" else "not-the-secret"
    if config.format == "shopify":
        headers.update({"x-shopify-hmac-sha256": signatures.shopify_sign(secret, body),
                        "x-shopify-topic": "inventory_levels/update",
                        "x-shopify-webhook-id": str(uuid.uuid4())})
    elif config.format == "square":
        url = f"{stack.url}/webhooks/{backend}"
        headers["x-square-hmacsha256-signature"] = signatures.square_sign(secret, url, body)
    else:
        stamp = int(time.time()) - (3600 if signing == "stale" else 0)
        msg_id = f"msg_{uuid.uuid4().hex}"
        headers.update({"webhook-id": msg_id, "webhook-timestamp": str(stamp),
                        "webhook-signature": signatures.standard_sign(secret, msg_id, stamp,
                                                                      body)})
    return headers


def event_state(client: redis.Redis) -> tuple[int, int, int, int]:
    return (client.xlen("rg:{ev}:log"), client.xlen("rg:{ev}:dlq"),
            client.xlen("rg:{ev}:changes"), len(list(client.scan_iter("rg:{ev}:dedupe:*"))))


@EXAMPLES
@given(delivery=webhook())
def test_random_webhook_bodies(target: tuple[Stack, redis.Redis, Collected],
                               delivery: tuple[str, bytes, str]) -> None:
    stack, client, collected = target
    backend, body, signing = delivery
    before = event_state(client)
    response = httpx.post(f"{stack.url}/webhooks/{backend}", content=body, timeout=30,
                          headers=signed_headers(stack, backend, body, signing))
    assert response.status_code < 500, response.text
    assert not collected.records, [r.getMessage() for r in collected.records]
    if response.status_code >= 400:
        assert event_state(client) == before, response.text
        if response.headers.get("content-type", "").startswith("application/json"):
            assert response.json()["reason"]
    elif signing != "valid":
        raise AssertionError(f"accepted a delivery signed {signing}: {response.text}")


# -- WebSocket messages --------------------------------------------------------------------------

WS_TYPES = ["connection_init", "subscribe", "start", "stop", "complete", "ping", "pong",
            "connection_terminate", "next", "data", "error", "ka", "", "CONNECTION_INIT"]


@st.composite
def ws_message(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=60))
    if kind == 1:
        return draw(st.text(max_size=60))
    if kind == 2:
        return json.dumps(draw(JSON))
    payload = draw(st.one_of(
        st.none(), JSON, st.fixed_dictionaries(
            {"query": st.one_of(document(), st.integers(), st.none())},
            optional={"variables": st.one_of(JSON, st.dictionaries(
                st.sampled_from(["v", "first", "skus"]), JSON, max_size=3)),
                "operationName": st.one_of(st.none(), st.text(max_size=8), st.integers()),
                "extensions": st.one_of(JSON, st.just({"persistedQuery": {
                    "version": 1, "sha256Hash": "0" * 64}}))})))
    message: dict[str, Any] = {"type": draw(st.sampled_from(WS_TYPES))}
    if draw(st.booleans()):
        message["id"] = draw(st.one_of(st.text(max_size=6), st.integers(), st.none()))
    if payload is not None or draw(st.booleans()):
        message["payload"] = payload
    return json.dumps(message)


async def _ws_session(url: str, protocol: str, init: bool, messages: list[str | bytes]
                      ) -> tuple[list[Any], int | None]:
    """Send ``messages`` (after a proper connection_init when ``init``); what came back
    within a short while, and the close code if the server closed."""
    received: list[Any] = []
    async with websockets.connect(url, subprotocols=[Subprotocol(protocol)],
                                  open_timeout=10, max_size=None) as ws:
        try:
            if init:
                await ws.send(json.dumps({"type": "connection_init",
                                          "payload": {"Authorization": f"Bearer {KEY}"}}))
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            for message in messages:
                await ws.send(message)
            while True:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
        except TimeoutError:
            return received, None
        except websockets.ConnectionClosed as closed:
            return received, closed.rcvd.code if closed.rcvd else None


@EXAMPLES
@given(protocol=st.sampled_from(["graphql-transport-ws", "graphql-ws"]), init=st.booleans(),
       messages=st.lists(ws_message(), min_size=1, max_size=4))
@example(protocol="graphql-transport-ws", init=True, messages=["[]"])
@example(protocol="graphql-ws", init=True, messages=["{}"])
@example(protocol="graphql-ws", init=True, messages=["[1]", "7", '"x"', "null"])
@example(protocol="graphql-ws", init=True, messages=['{"type": "start", "id": "1"}'])
@example(protocol="graphql-transport-ws", init=True,
         messages=['{"type": "subscribe", "id": "1", "payload": {"query": "{"}}'])
@example(protocol="graphql-ws", init=True,
         messages=['{"type": "start", "id": "1", "payload": {"query": "{"}}'])
def test_random_websocket_messages(target: tuple[Stack, redis.Redis, Collected],
                                   protocol: str, init: bool,
                                   messages: list[str | bytes]) -> None:
    """Random frames on both protocols: the server answers, ignores or closes with a
    protocol code, never with 1011 (internal error; legacy graphql-ws refuses a connection
    with connection_error and then 1011); nothing is logged as an error; no state changes
    (the messages cannot carry a webhook); /healthz stays live."""
    stack, client, collected = target
    before = event_state(client), apq_keys(client)
    url = stack.url.replace("http://", "ws://") + "/graphql"
    received, code = asyncio.run(_ws_session(url, protocol, init, messages))
    refused = any(m.get("type") == "connection_error" for m in received
                  if isinstance(m, dict))
    assert code != 1011 or (protocol == "graphql-ws" and refused), (received, code)
    assert not collected.records, [r.getMessage() for r in collected.records]
    for message in received:
        assert isinstance(message, dict), message
        errors = message.get("payload") if message.get("type") == "error" else \
            (message.get("payload") or {}).get("errors") if isinstance(
                message.get("payload"), dict) else None
        for error in errors if isinstance(errors, list) else []:
            assert (error.get("extensions") or {}).get("code") != "INTERNAL", message
    assert (event_state(client), apq_keys(client)) == before
    assert httpx.get(f"{stack.url}/healthz", timeout=5).status_code == 200


# -- numeric edge cases of every vendor format ---------------------------------------------------

EDGE_NUMBERS: list[Any] = [
    0, -0.0, 1, -1, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**53 - 1, 2**53, 2**53 + 1, 2**63,
    2**64, 10**30, 1.5, -1.5, 1e3, 1e30, 1e308, 0.1, True, None, "0", "-0", "+5", " 5", "5 ",
    "1e3", "1E+30", "1e-3", "1.5", "1.00000", "1.000001", "2147483647", "2147483648",
    "2147483647.00000", "-2147483649", "9007199254740993", "NaN", "nan", "Infinity",
    "-Infinity", "inf", "0x10", "1_000", "\u0661\u0662", "", "five", [], {}]
NUMBER = st.sampled_from(EDGE_NUMBERS) | st.integers(-2**70, 2**70) \
    | st.integers(-2**70, 2**70).map(str) | st.floats(allow_infinity=True, allow_nan=True)
# (format, field): where the number goes in an otherwise valid, correctly signed delivery.
NUMERIC_FIELDS = [("square", "quantity"), ("shopify", "available"),
                  ("shopify-order", "quantity"), ("epcis", "quantity"),
                  ("epcis", "onHand"), ("epcis", "available"), ("epcis", "allocated"),
                  ("epcis", "incoming"), ("epcis", "wms:sequence"), ("erp", "onHand"),
                  ("erp-item", "safetyStock")]
CELL_QUERY = """query($sku: ID!) { product(sku: $sku) {
  safetyStock stock { onHand available committed incoming qualityControl damaged sellable
                      views { onHand available committed incoming } }
  online: availability(channel: ONLINE) { available }
  store: availability(channel: STORE) { available } } }"""


def numeric_delivery(stack: Stack, fmt: str, field: str, value: Any, i: int,
                     erp_sequence: int) -> Any:
    """A valid delivery of ``fmt`` for item ``i`` with ``value`` at ``field``; the JSON
    encoder writes big integers, -0.0, 1e308, NaN and Infinity as Python does."""
    from gateway.simulators.erp import CURRENCY
    from tests.helpers_webhooks import Signer, now, rfc3339

    s = Signer(stack.settings, stack.world)
    item = stack.world.items[i]

    def body(payload: Any) -> bytes:
        return json.dumps(payload).encode()

    if fmt == "square":
        event_id = str(uuid.uuid4())
        return s.square(f"{stack.url}/webhooks/pos", [], event_id, payload=body({
            "merchant_id": "MLSIMULATOR01", "type": "inventory.count.updated",
            "event_id": event_id, "created_at": rfc3339(now()),
            "data": {"type": "inventory_counts", "id": str(uuid.uuid4()), "object": {
                "inventory_counts": [s.square_count(i, 0, 0, now()) | {field: value}]}}}))
    if fmt == "shopify":
        return s.shopify(body(s.shopify_level(i, 0, 0, now()) | {field: value}))
    if fmt == "shopify-order":
        return s.shopify(body({"id": 1000 + i, "created_at": rfc3339(now()), "line_items": [
            {"id": 1, "variant_id": item.shopify_variant_id, "sku": item.sku,
             field: value}]}), topic="orders/create")
    if fmt == "epcis":
        client = redis.Redis.from_url(stack.settings.redis_url)
        try:  # the next number of the cell: a jump would be a gap, healed in the background
            held = client.hget(f"rg:{{s:{item.sku}}}:views:wms", "WH01/_as_of#v")
        finally:
            client.close()
        event = s.epcis_event(i, 0, 5, int(held) + 1 if held else 1)
        if field == "quantity":
            event["quantityList"][0]["quantity"] = value
        elif field == "wms:sequence":
            event["wms:sequence"] = value
        else:
            event["wms:balance"][field] = value
        return s.standard("wms", body({
            "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": rfc3339(now()),
            "epcisBody": {"eventList": [event]}}))
    if fmt == "erp":
        payload = s.erp_stock(i, "WH01", 0, erp_sequence)
        payload["data"][field] = value
        return s.erp(body(payload), msg_id=payload["id"])
    data = {"itemNumber": item.item_number, "sku": item.sku, "gtin": item.gtin13,
            "description": item.name, "category": item.category,
            "listPrice": str(item.list_price), "cost": str(item.cost), "currency": CURRENCY,
            "safetyStock": value, "status": "ACTIVE", "updatedAt": rfc3339(now())}
    payload = s.erp_event("item.updated", erp_sequence, data)
    return s.erp(body(payload), msg_id=payload["id"])


def _ints(value: Any) -> Iterator[int]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _ints(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _ints(inner)


@EXAMPLES
@given(where=st.sampled_from(NUMERIC_FIELDS), value=NUMBER, i=st.integers(0, 59))
def test_numeric_edge_cases_of_every_vendor_format(
        target: tuple[Stack, redis.Redis, Collected], where: tuple[str, str], value: Any,
        i: int) -> None:
    """Huge, negative, exponent, fractional, NaN-like and -0 numbers in every quantity of
    every vendor format: no 5xx, no error logged; refused (4xx) changes nothing; dead-lettered
    (202) logs nothing; accepted (200) is served, every Int in range."""
    from tests.helpers_webhooks import post

    stack, client, collected = target
    fmt, field = where
    hwm = client.hget("rg:{sync}:seq:erp", "hwm")
    delivery = numeric_delivery(stack, fmt, field, value, i, int(hwm) + 1 if hwm else 1)
    before = event_state(client)
    response = post(stack.url, delivery)
    assert response.status_code < 500, response.text
    assert not collected.records, [r.getMessage() for r in collected.records]
    after = event_state(client)
    if response.status_code >= 400:
        assert after == before, response.text
        assert response.json()["reason"]
        return
    if response.status_code == 202:
        assert response.json()["status"] == "dead-lettered"
        assert after[0] == before[0]
        return
    assert response.status_code == 200, response.text
    answer = httpx.post(f"{stack.url}/graphql", timeout=30, headers={
        "authorization": f"Bearer {KEY}"}, json={
        "query": CELL_QUERY, "variables": {"sku": stack.world.items[i].sku}}).json()
    assert "errors" not in answer, (value, answer["errors"])
    assert all(-2**31 <= n < 2**31 for n in _ints(answer["data"])), answer["data"]
