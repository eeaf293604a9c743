"""The WebSocket path gets every protection the HTTP path has, on both protocols.

Against a running gateway (four simulators, real loopback sockets), with the plain
``websockets`` client of tests/e2e/test_subscriptions.py speaking ``graphql-transport-ws`` and the
legacy ``graphql-ws``, so close codes and error messages are seen as sent. Each protection is
checked over HTTP too, and the WebSocket answer carries the same ``extensions.code``.

Tokens are HS256 JWTs with a fresh subject per test: each test has its own rate-limit bucket
and subscription quota. The gateway's log (root and uvicorn loggers) is captured and must hold
no traceback and no error.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
import redis
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from resolvers.store.keys import PERSISTED_QUERY_PREFIX as APQ_PREFIX
from tests.e2e.test_subscriptions import (
    LEGACY_WS,
    PROTOCOLS,
    TRANSPORT_WS,
    GraphQLWs,
    Live,
    ws_url,
)
from tests.nodejs import needs_node, run_client
from tests.support import ErrorLog, Stack, errors_logged

SECRET = "wsguard-hs256-secret-for-the-tests-0123456789"
RATE = 10  # tokens a minute per caller
LEEWAY = 3  # seconds: a loaded machine may take one to answer a request
QUOTA = 3  # live subscriptions per caller
INIT_TIMEOUT = 1.0
LOCATIONS = "{ locations { id } }"
STOCK_LEVEL = """query($sku: ID!, $loc: ID!) {
  stockLevel(sku: $sku, locationId: $loc) { available } }"""
STOCK_CHANGED = """subscription($skus: [ID!], $locs: [ID!]) {
  stockChanged(skus: $skus, locationIds: $locs) { sku locationId stockLevel { available } } }"""


@pytest.fixture(scope="module")
def guarded(redis_server_url: str) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    stack = Stack(redis_server_url, skus=40)
    s = stack.settings
    s.jwt_secret = SECRET
    s.jwt_leeway_seconds = LEEWAY
    s.rate_limit_per_minute = RATE
    s.max_subscriptions_per_principal = QUOTA
    s.ws_init_timeout_seconds = INIT_TIMEOUT
    s.introspection = False
    with stack:
        yield stack


def token(scope: str = "stock:read", *, ttl: float = 600, locations: list[str] | None = None,
          subject: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": subject or f"test-{uuid.uuid4().hex[:12]}",
                              "scope": scope, "exp": int(time.time() + ttl)}
    if locations is not None:
        claims["locations"] = locations
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def http(stack: Stack, query: str, credential: str,
         variables: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{stack.url}/graphql", headers=bearer(credential), timeout=30,
                      json={"query": query, "variables": variables or {}})


def codes(errors: list[dict[str, Any]]) -> list[str]:
    return [str((e.get("extensions") or {}).get("code")) for e in errors]


async def connect(stack: Stack, protocol: str, credential: str) -> GraphQLWs:
    return await GraphQLWs.connect(stack.url, protocol, bearer(credential))


async def outcome(client: GraphQLWs, op_id: str, within: float = 10) -> tuple[str, Any]:
    """``("next", payload)`` (data and errors), ``("error", [errors])`` or
    ``("complete", None)``: the operation's first answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not client.pending[op_id]:
        await client.message(max(0.01, deadline - loop.time()))
    kind, payload = client.pending[op_id].popleft()
    if kind == "data":
        kind = "next"
    if kind == "error":
        payload = payload if isinstance(payload, list) else [payload]
    return kind, payload


async def ask(client: GraphQLWs, query: str | None, variables: dict[str, Any] | None = None,
              extensions: dict[str, Any] | None = None) -> tuple[str, Any]:
    return await outcome(client, await client.subscribe(query, variables, extensions))


async def closed_with(ws: ClientConnection, seen: list[dict[str, Any]] | None = None,
                      within: float = 10) -> tuple[int | None, str]:
    """Read until the server closes the socket (what it sent goes to ``seen``, keep-alives
    aside): its close code and reason."""
    try:
        while True:
            message = orjson.loads(await asyncio.wait_for(ws.recv(), within))
            if seen is not None and message.get("type") != "ka":
                seen.append(message)
    except websockets.ConnectionClosed as closed:
        return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "")


@pytest.fixture
def gateway_log() -> Iterator[ErrorLog]:
    """Error records (tracebacks included) of the gateway's and uvicorn's loggers."""
    with errors_logged() as collected:
        yield collected


@pytest.fixture
def stock(guarded: Stack) -> Iterator[Live]:
    """Ways to change stock through the simulators (tests/e2e/test_subscriptions.py)."""
    client = redis.Redis.from_url(str(guarded.settings.redis_url))
    try:
        yield Live(guarded, client, iter(()))
    finally:
        client.close()


class Items:
    """Item indexes no other test of the module uses, with stock at store 0."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def take(self, stack: Stack) -> int:
        world = stack.world
        found = next(i for i in range(len(world.items))
                     if i not in self.used and world.store_counts(i, 0)[0] >= 5)
        self.used.add(found)
        return found


ITEMS = Items()


# -- rate limit ------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_each_operation_and_connection_takes_a_token(
        guarded: Stack, protocol: str, gateway_log: ErrorLog) -> None:
    credential = token()
    client = await connect(guarded, protocol, credential)  # 1 token
    try:
        for _ in range(RATE - 1):  # the rest of the bucket
            kind, payload = await ask(client, LOCATIONS)
            assert kind == "next", payload
            assert payload["data"]["locations"], payload
        kind, errors = await ask(client, LOCATIONS)
        assert kind == "error", errors
        assert codes(errors) == ["RATE_LIMITED"]
        assert 1 <= errors[0]["extensions"]["retryAfter"] <= 60 // RATE
    finally:
        await client.close()
    # HTTP and WebSocket share the caller's bucket.
    refused = http(guarded, LOCATIONS, credential)
    assert refused.status_code == 429
    assert codes(refused.json()["errors"]) == ["RATE_LIMITED"]
    # A new connection is an attempt too: refused with 1013 (try again later).
    ws = await websockets.connect(ws_url(guarded.url), subprotocols=[Subprotocol(protocol)],
                                  open_timeout=10)
    await ws.send(orjson.dumps({"type": "connection_init", "payload": bearer(credential)}
                               ).decode())
    seen: list[dict[str, Any]] = []
    code, reason = await closed_with(ws, seen)
    assert code == 1013
    assert "rate limit" in reason
    if protocol == LEGACY_WS:  # the legacy protocol says why in a connection_error first
        assert [m["type"] for m in seen] == ["connection_error"]
        assert seen[0]["payload"]["extensions"]["code"] == "RATE_LIMITED"
    else:
        assert seen == []
    # Another caller is not affected.
    other = await connect(guarded, protocol, token())
    try:
        assert (await ask(other, LOCATIONS))[0] == "next"
    finally:
        await other.close()
    assert gateway_log.messages() == []


# -- scopes, locations, introspection --------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_forbidden_is_reported_as_over_http(guarded: Stack, protocol: str) -> None:
    sku, store, other = guarded.world.items[0].sku, guarded.world.stores[0].code, \
        guarded.world.stores[1].code
    catalog, local = token(""), token("stock:read", locations=[store])
    # A subscription refused at its start: the protocol's error message.
    for credential, cells in ((catalog, {"skus": [sku]}),
                              (local, {"skus": [sku], "locs": [other]})):
        client = await connect(guarded, protocol, credential)
        try:
            kind, errors = await ask(client, STOCK_CHANGED, cells)
        finally:
            await client.close()
        assert (kind, codes(errors)) == ("error", ["FORBIDDEN"]), errors
    # A query: the same partial result as over HTTP.
    query = """query($sku: ID!, $loc: ID!) { product(sku: $sku) { sku stock { onHand } }
               stockLevel(sku: $sku, locationId: $loc) { available } }"""
    variables: dict[str, Any] = {"sku": sku, "loc": other}
    over_http = http(guarded, query, local, variables).json()
    client = await connect(guarded, protocol, local)
    try:
        kind, payload = await ask(client, query, variables)
    finally:
        await client.close()
    assert kind == "next"
    assert payload["data"] == over_http["data"]
    assert sorted(codes(payload["errors"])) == sorted(codes(over_http["errors"])) == [
        "FORBIDDEN"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_introspection_off_hides_the_schema_and_suggestions(
        guarded: Stack, protocol: str) -> None:
    client = await connect(guarded, protocol, token())
    try:
        kind, errors = await ask(client, "{ __schema { types { name } } }")
        assert kind == "error"
        assert codes(errors)[0] == "GRAPHQL_VALIDATION_FAILED"
        assert "introspection" in errors[0]["message"]
        for typo in ('{ product(sku: "SKU-000001") { nam } }',
                     "subscription { stockChanged { skuu } }"):
            kind, errors = await ask(client, typo)
            assert kind == "error", errors
            assert codes(errors) == ["GRAPHQL_VALIDATION_FAILED"], errors
            assert "Cannot query field" in errors[0]["message"]
            assert "Did you mean" not in orjson.dumps(errors).decode()
    finally:
        await client.close()


# -- persisted queries -----------------------------------------------------------------------------

def persisted(query: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1,
                               "sha256Hash": hashlib.sha256(query.encode()).hexdigest()}}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_automatic_persisted_queries(guarded: Stack, protocol: str) -> None:
    query = f"{{ locations {{ id }} __typename }} # {protocol} {uuid.uuid4()}"
    digest = persisted(query)["persistedQuery"]["sha256Hash"]
    stored = redis.Redis.from_url(guarded.settings.redis_url)
    client = await connect(guarded, protocol, token())
    try:
        kind, errors = await ask(client, None, extensions=persisted(query))
        assert (kind, codes(errors)) == ("error", ["PERSISTED_QUERY_NOT_FOUND"])
        assert errors[0]["message"] == "PersistedQueryNotFound"  # what Apollo's link checks
        kind, errors = await ask(client, "{ __typename }", extensions=persisted(query))
        assert (kind, codes(errors)) == ("error", ["BAD_USER_INPUT"])  # hash of another text
        assert stored.get(APQ_PREFIX + digest) is None
        kind, payload = await ask(client, query, extensions=persisted(query))
        assert kind == "next"
        assert payload["data"]["__typename"] == "Query"
        assert await _eventually(lambda: stored.get(APQ_PREFIX + digest) == query.encode())
        kind, payload = await ask(client, None, extensions=persisted(query))
        assert kind == "next"
        assert payload["data"]["locations"]
        # A text that does not validate is not registered.
        bad = f"{{ nope }} # {uuid.uuid4()}"
        kind, errors = await ask(client, bad, extensions=persisted(bad))
        assert kind == "error"
        await asyncio.sleep(0.2)
        assert stored.get(APQ_PREFIX + persisted(bad)["persistedQuery"]["sha256Hash"]) is None
    finally:
        await client.close()
        stored.close()


async def _eventually(check: Any, within: float = 5) -> bool:
    for _ in range(int(within / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


@pytest.fixture(scope="module")
def listed(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    path = tmp_path_factory.mktemp("allow") / "allow.json"
    path.write_text(orjson.dumps({"operations": [
        {"id": "locations-v1", "body": LOCATIONS}]}).decode())
    stack = Stack(redis_server_url, skus=10)
    stack.settings.allow_list_file = str(path)
    with stack:
        yield stack


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_allow_list_applies_to_each_operation(listed: Stack, protocol: str) -> None:
    client = await GraphQLWs.connect(listed.url, protocol)
    try:
        kind, payload = await ask(client, LOCATIONS)
        assert kind == "next"
        assert payload["data"]["locations"]
        kind, payload = await ask(client, None, extensions=persisted(LOCATIONS))
        assert kind == "next"
        assert payload["data"]["locations"]
        for unlisted in ("{ products(first: 1) { edges { node { sku } } } }",
                         "subscription { stockChanged { sku } }"):
            kind, errors = await ask(client, unlisted)
            assert (kind, codes(errors)) == ("error", ["PERSISTED_QUERY_NOT_ALLOWED"])
    finally:
        await client.close()
    async with httpx.AsyncClient(timeout=10) as http_client:
        over_http = await http_client.post(f"{listed.url}/graphql", json={
            "query": "{ products(first: 1) { edges { node { sku } } } }"})
    assert over_http.status_code == 403
    assert codes(over_http.json()["errors"]) == ["PERSISTED_QUERY_NOT_ALLOWED"]


# -- credentials that expire -----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_socket_is_closed_when_its_token_expires(
        guarded: Stack, stock: Live, protocol: str, gateway_log: ErrorLog) -> None:
    item = ITEMS.take(guarded)
    sku, store = guarded.world.items[item].sku, guarded.world.stores[0].code
    credential = token(ttl=2)
    deadline = jwt.decode(credential, options={"verify_signature": False})["exp"] + LEEWAY
    client = await connect(guarded, protocol, credential)
    op = await client.subscribe(STOCK_CHANGED, {"skus": [sku], "locs": [store]})
    await asyncio.sleep(0.3)
    received: list[float] = []
    sales = 0

    async def sell_until_after_the_deadline() -> None:
        nonlocal sales
        while time.time() < deadline + 1.5:
            sales += 1
            await stock.count(item, 0, 100 + sales)
            await asyncio.sleep(0.25)

    async def receive_until_closed() -> tuple[int | None, str]:
        try:
            while True:
                await client.next(op, within=10)
                received.append(time.time())
        except websockets.ConnectionClosed as closed:
            return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "")

    seller = asyncio.create_task(sell_until_after_the_deadline())
    try:
        close = await receive_until_closed()
        closed_at = time.time()
    finally:
        await seller
    assert close == (4403, "Forbidden: credentials expired")
    assert deadline - 0.1 <= closed_at <= deadline + 1.0
    assert received, "changes before the expiry are delivered"
    assert max(received) <= deadline + 0.1, "nothing is delivered after the expiry"
    assert sales > len(received)
    # Over HTTP the same leeway: a token that expired 5 s ago is refused (the default 30 s
    # leeway would have let it in), one that expired a second ago is not.
    stale = jwt.encode({"sub": "late", "scope": "stock:read", "exp": int(time.time()) - 5},
                       SECRET, algorithm="HS256")
    assert http(guarded, LOCATIONS, stale).status_code == 401
    fresh = jwt.encode({"sub": "on-time", "scope": "stock:read", "exp": int(time.time()) - 1},
                       SECRET, algorithm="HS256")
    assert http(guarded, LOCATIONS, fresh).status_code == 200
    assert gateway_log.messages() == []


# -- sockets that never initialise -----------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_socket_without_connection_init_is_closed(guarded: Stack, protocol: str) -> None:
    started = time.monotonic()
    ws = await websockets.connect(ws_url(guarded.url), subprotocols=[Subprotocol(protocol)],
                                  open_timeout=10)
    code, reason = await closed_with(ws)
    assert (code, reason) == (4408, "Connection initialisation timeout")
    assert INIT_TIMEOUT <= time.monotonic() - started < INIT_TIMEOUT + 5


# -- broken messages -------------------------------------------------------------------------------

BROKEN: list[Any] = [
    "[1, 2]", "5", '"hello"', "null", "{}", '{"type": 7}',
    {"type": "subscribe", "id": "b1"}, {"type": "start", "id": "b1"},
    {"type": "subscribe", "id": "b2", "payload": [1]},
    {"type": "start", "id": "b2", "payload": [1]},
    {"type": "subscribe", "id": "b3", "payload": {"query": 42}},
    {"type": "start", "id": "b3", "payload": {"query": "{ __typename }", "variables": [1]}},
    {"type": "subscribe", "id": 4, "payload": {"query": "{ __typename }"}},
    {"type": "start", "payload": {"query": "{ __typename }"}},
    {"type": "bogus", "id": "b5"},
    {"type": "stop"},
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_broken_messages_get_the_protocols_answer(
        guarded: Stack, protocol: str, gateway_log: ErrorLog) -> None:
    for message in BROKEN:
        client = await connect(guarded, protocol, token())
        try:
            await client.ws.send(message if isinstance(message, str)
                                 else orjson.dumps(message).decode())
            if protocol == TRANSPORT_WS:
                # The protocol: "a message of a type or format not specified here: close
                # 4400" (and every message must be an object with a type).
                code, reason = await closed_with(client.ws)
                assert code == 4400, (message, reason)
                continue
            # graphql-ws: an error (for an operation) or connection_error, socket usable.
            answer = orjson.loads(await asyncio.wait_for(client.ws.recv(), 10))
            while answer["type"] == "ka":
                answer = orjson.loads(await asyncio.wait_for(client.ws.recv(), 10))
            assert answer["type"] in ("error", "connection_error"), (message, answer)
            assert answer["payload"]["message"], answer
            kind, payload = await ask(client, "{ __typename }")
            assert kind == "next"
            assert payload["data"] == {"__typename": "Query"}
        finally:
            await client.close()
    # Binary frames: each protocol's close code.
    client = await connect(guarded, protocol, token())
    await client.ws.send(b"\x00\x01binary")
    code, _ = await closed_with(client.ws)
    assert code == (4400 if protocol == TRANSPORT_WS else 1002)
    assert gateway_log.messages() == []
    async with httpx.AsyncClient(timeout=5) as http_client:
        assert (await http_client.get(f"{guarded.url}/healthz")).status_code == 200


# -- subscriptions per caller ----------------------------------------------------------------------

DISCREPANCIES = "subscription { discrepancyDetected { cursor } }"


def subscribers(stack: Stack) -> int:
    app: Any = stack.gateways[0].server.config.app
    return len(app.state.runtime.feed.subscribers)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_one_caller_cannot_hold_unlimited_subscriptions(
        guarded: Stack, protocol: str) -> None:
    credential = token("stock:read discrepancies:read")
    first = await connect(guarded, protocol, credential)
    second = await connect(guarded, protocol, credential)
    someone_else = await connect(guarded, protocol, token())
    try:
        held = [await first.subscribe(STOCK_CHANGED, {"skus": ["SKU-000001"]}),
                await first.subscribe(DISCREPANCIES)]
        await second.subscribe(STOCK_CHANGED, {"skus": ["SKU-000002"]})
        await asyncio.sleep(0.3)
        kind, errors = await ask(second, STOCK_CHANGED, {"skus": ["SKU-000003"]})
        assert (kind, codes(errors)) == ("error", ["LIMIT_EXCEEDED"]), errors
        assert errors[0]["extensions"]["limit"] == "max_subscriptions_per_principal"
        assert errors[0]["extensions"]["max"] == QUOTA
        # The quota is the caller's, not the gateway's.
        other = await someone_else.subscribe(STOCK_CHANGED, {"skus": ["SKU-000003"]})
        with pytest.raises(TimeoutError):
            await someone_else.next(other, within=0.5)
        # Completing one gives its place back.
        before = subscribers(guarded)
        await first.stop(held[0])
        assert await _eventually(lambda: subscribers(guarded) < before)
        again = await second.subscribe(STOCK_CHANGED, {"skus": ["SKU-000004"]})
        with pytest.raises(TimeoutError):  # accepted: no error, waiting for changes
            await second.next(again, within=0.5)
    finally:
        for client in (first, second, someone_else):
            await client.close()
    # Leaving gives them all back.
    app: Any = guarded.gateways[0].server.config.app
    assert await _eventually(lambda: not app.state.runtime.feed.quota.held)


# -- always current on a long-lived socket ---------------------------------------------------------

VIEWS_CHANGED = """subscription($skus: [ID!], $locs: [ID!]) {
  stockChanged(skus: $skus, locationIds: $locs) {
    stockLevel { available views { role available } } } }"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_each_operation_and_event_reads_what_is_current(
        guarded: Stack, stock: Live, protocol: str) -> None:
    item = ITEMS.take(guarded)
    sku, store = guarded.world.items[item].sku, guarded.world.stores[0].code
    variables = {"sku": sku, "loc": store}
    client = await connect(guarded, protocol, token("stock:read discrepancies:read"))
    watcher = await connect(guarded, protocol, token("stock:read discrepancies:read"))
    try:
        kind, payload = await ask(client, STOCK_LEVEL, variables)
        assert kind == "next", payload
        before = payload["data"]["stockLevel"]["available"]
        op = await watcher.subscribe(VIEWS_CHANGED, {"skus": [sku], "locs": [store]})
        await asyncio.sleep(0.3)
        for sold in (1, 2):
            await stock.sale(item, 0, 1)
            change = (await watcher.next(op))["stockChanged"]["stockLevel"]
            # The event's nested fields are read afresh, not from the first event's loaders.
            record = [v for v in change["views"] if v["role"] == "SYSTEM_OF_RECORD"]
            assert change["available"] == record[0]["available"] == before - sold, change
            # A query on the same socket as before answers the new level.
            kind, payload = await ask(client, STOCK_LEVEL, variables)
            assert payload["data"]["stockLevel"]["available"] == before - sold, payload
    finally:
        await client.close()
        await watcher.close()


# -- the same, seen by a real client ---------------------------------------------------------------

@needs_node
def test_graphql_ws_client_sees_the_refusals_and_the_expiry(guarded: Stack) -> None:
    """npm graphql-ws: the rate limit's refusal reaches the app as GraphQL errors with the
    HTTP code, and a socket whose token expires is closed with 4403."""
    credential = token()
    # Long enough for a slow node start and the RATE queries before it on a loaded machine:
    # expired before its connection_init, the socket is refused ("Forbidden"), not expired.
    expiring = token(ttl=8)
    run = run_client("graphql-ws-guard.mjs", {
        "ws": ws_url(guarded.url), "key": credential, "query": LOCATIONS,
        "count": RATE, "expiringKey": expiring, "subscription": STOCK_CHANGED}, timeout=120)
    outcomes = run.result["outcomes"]
    # connection_init took one token, RATE - 1 queries ran, the last was refused.
    assert outcomes[:-1] == [{"data": True, "codes": []}] * (RATE - 1), outcomes
    (refused,) = outcomes[-1]["refused"]
    assert refused["code"] == "RATE_LIMITED"
    assert 1 <= refused["retryAfter"] <= 60 // RATE
    assert run.result["close"] == {"code": 4403, "reason": "Forbidden: credentials expired"}
