"""The hostile corpus (issue 11 §4): every hostile or broken input we know of, against one
running gateway with authentication on, over real HTTP and WebSocket.

Each probe asserts the documented answer (status, code, limit or close code), and the module
checks the rest around every probe (:func:`_every_probe`): while it runs, ``/healthz`` is
sampled every 50 ms from a connection of its own and must answer each time within
:data:`LIVENESS_BOUND` (the liveness probe is never held up behind a hostile request); no
5xx reached the client; no error (unhandled exception, traceback) was logged by the gateway
or uvicorn. Probes that refuse an input also assert that nothing changed
(``with hostile.unchanged():`` compares the Redis state: event log, dead letters, cache
cells, change stream, persisted queries, response cache).

One class per area; a probe is a method ``test_*(self, hostile)`` (sync or ``async``), and
leaves the gateway as it found it, apart from what an accepted input is meant to change.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import jwt
import orjson
import pytest
import redis
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from websockets.typing import Subprotocol

from tests.helpers_webhooks import Delivery, Signer, now, redis_state
from tests.support import ErrorLog, Stack, stream_entries

ADMIN = "hostile-admin-key-0123456789"
READER = "hostile-reader-key-0123456789"
JWT_SECRET = "hostile-hs256-secret-0123456789-abcdefghij"
SKU = "SKU-000001"
WS_PROTOCOLS = ("graphql-transport-ws", "graphql-ws")
# Every /healthz sample taken while hostile requests run must be answered within this.
LIVENESS_BOUND = 1.0
# Keys that change without any request: locks and per-source bookkeeping (reject counters).
VOLATILE = ("rg:{sync}:", "rg:{disc}:lock", "rg:rl:")


Collected = ErrorLog  # error records of the gateway's and uvicorn's loggers


@dataclass
class Hostile:
    """The gateway under attack and what the probes need to attack it."""

    stack: Stack
    redis: redis.Redis
    log: Collected
    signer: Signer
    rsa_key: rsa.RSAPrivateKey

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphql"

    # -- HTTP ------------------------------------------------------------------------------

    def graphql(self, query: str, variables: Any = None, *, credential: str | None = ADMIN,
                **extra: Any) -> httpx.Response:
        payload: dict[str, Any] = {"query": query, **extra}
        if variables is not None:
            payload["variables"] = variables
        return self.post("/graphql", orjson.dumps(payload), credential=credential)

    def post(self, path: str, content: bytes, *, credential: str | None = ADMIN,
             headers: dict[str, str] | None = None, timeout: float = 60) -> httpx.Response:
        sent = {"content-type": "application/json", **(headers or {})}
        if credential is not None:
            sent["authorization"] = f"Bearer {credential}"
        response = httpx.post(self.url + path, content=content, headers=sent, timeout=timeout)
        assert response.status_code < 500, response.text
        return response

    def webhook(self, delivery: Delivery) -> httpx.Response:
        return self.post(f"/webhooks/{delivery.backend}", delivery.body, credential=None,
                         headers=delivery.headers)

    @property
    def square_url(self) -> str:
        return f"{self.url}/webhooks/pos"

    # -- checks ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {k: v for k, v in redis_state(str(self.stack.settings.redis_url)).items()
                if not k.startswith(VOLATILE)}

    def settle(self) -> dict[str, Any]:
        """The state once what an accepted input set off in the background is done."""
        state = self.state()
        for _ in range(50):
            time.sleep(0.1)
            again = self.state()
            if again == state:
                return state
            state = again
        raise AssertionError("the state keeps changing without any request")

    @contextmanager
    def unchanged(self, ignoring: tuple[str, ...] = ()) -> Iterator[None]:
        """The block changes no state the gateway keeps in Redis (keys containing one of
        ``ignoring`` excepted)."""
        before = self.state()
        yield
        after = self.state()
        changed = {k for k in before.keys() | after.keys()
                   if before.get(k) != after.get(k) and not any(i in k for i in ignoring)}
        assert not changed, f"state changed: {sorted(changed)}"

    def live(self, within: float = 5.0) -> None:
        response = httpx.get(f"{self.url}/healthz", timeout=within)
        assert response.status_code == 200, response.text

    @contextmanager
    def probing_liveness(self, bound: float = LIVENESS_BOUND) -> Iterator[list[float]]:
        """While the block runs, ``GET /healthz`` every 50 ms from a connection of its own;
        afterwards every sample must have been answered within ``bound`` seconds (a bound
        for "not blocked behind a hostile request", not a speed target). Yields the
        latencies, filled in as they are measured."""
        latencies: list[float] = []
        failures: list[str] = []
        stop = threading.Event()

        def sample() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    began = time.perf_counter()
                    try:
                        status = client.get(f"{self.url}/healthz").status_code
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        status = 200
                    latencies.append(time.perf_counter() - began)
                    if status != 200:
                        failures.append(f"status {status}")
                    stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            time.sleep(0.2)  # a few samples before the block starts
            yield latencies
        finally:
            stop.set()
            sampler.join(60)
        assert not failures, failures
        assert latencies, "no /healthz sample was taken"
        assert max(latencies) < bound, (
            f"/healthz waited {max(latencies):.2f}s (samples: {len(latencies)})")

    def clean(self) -> None:
        """Nothing was logged as an error since the last check."""
        messages = self.log.messages()
        self.log.records.clear()
        assert not messages, messages

    # -- WebSocket -------------------------------------------------------------------------

    async def connect(self, protocol: str, *, init: bool = True,
                      credential: str = ADMIN) -> websockets.ClientConnection:
        ws = await websockets.connect(self.ws_url, subprotocols=[Subprotocol(protocol)],
                                      open_timeout=10, max_size=None)
        if init:
            await ws.send(orjson.dumps({"type": "connection_init", "payload": {
                "Authorization": f"Bearer {credential}"}}).decode())
            assert (await self.recv(ws))["type"] == "connection_ack"
        return ws

    @staticmethod
    async def recv(ws: websockets.ClientConnection, wait: float = 10) -> dict[str, Any]:
        """The next message that is not a keep-alive."""
        while True:
            message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), wait))
            if message.get("type") not in ("ka", "ping", "pong"):
                return message

    async def closed_with(self, ws: websockets.ClientConnection, wait: float = 10
                          ) -> int | None:
        """The close code the server sends next (keep-alives skipped); None if it answers."""
        try:
            await self.recv(ws, wait)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        return None

    async def query_ws(self, protocol: str, query: str, variables: Any = None,
                       ws: websockets.ClientConnection | None = None) -> dict[str, Any]:
        """One operation over a WebSocket; its first ``next``/``data``/``error`` message."""
        own = ws is None
        ws = ws or await self.connect(protocol)
        try:
            payload: dict[str, Any] = {"query": query}
            if variables is not None:
                payload["variables"] = variables
            kind = "subscribe" if protocol == "graphql-transport-ws" else "start"
            await ws.send(orjson.dumps({"id": "q1", "type": kind, "payload": payload}).decode())
            return await self.recv(ws, 30)
        finally:
            if own:
                await ws.close()


@pytest.fixture(scope="module")
def hostile(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Hostile]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    stack = Stack(redis_server_url)
    stack.settings.api_keys = {"admin": {"key": ADMIN, "scopes": ["admin"]},
                               "reader": {"key": READER, "scopes": ["stock:read"]}}
    stack.settings.jwt_secret = JWT_SECRET
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwks = tmp_path_factory.mktemp("hostile") / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "rsa-1", "use": "sig",
                                          "alg": "RS256"}]}))
    stack.settings.jwks_file = str(jwks)
    # Many probes in a row from one client: the rate limit has tests of its own.
    stack.settings.rate_limit_per_minute = 0
    collected = Collected()
    # uvicorn's loggers do not propagate to the root: unhandled exceptions land there.
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"),
               logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(collected)
    try:
        with stack:
            yield Hostile(stack, client, collected, Signer(stack.settings, stack.world),
                          rsa_key)
    finally:
        for logger in loggers:
            logger.removeHandler(collected)
        client.close()


@pytest.fixture(autouse=True)
def _every_probe(hostile: Hostile) -> Iterator[None]:
    hostile.log.records.clear()
    with hostile.probing_liveness():
        yield
    hostile.clean()
    hostile.live()


def graphql_errors(response: httpx.Response) -> list[tuple[str, str]]:
    """(code, limit) of each error of a GraphQL answer."""
    body = response.json()
    assert "Traceback" not in response.text
    return [((e.get("extensions") or {}).get("code", ""),
             (e.get("extensions") or {}).get("limit", "")) for e in body.get("errors", [])]


DEEP = "\u0000deep"  # stands for the deep value in a payload until it is encoded


def ws_errors(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The GraphQL errors of a WebSocket message: an ``error`` message's payload (a list on
    graphql-transport-ws, one error on graphql-ws) or a result's ``errors``."""
    payload = message.get("payload")
    if message.get("type") == "error":
        if isinstance(payload, list):
            return payload
        assert isinstance(payload, dict), message
        return [payload]
    errors: list[dict[str, Any]] = (payload or {}).get("errors") or []
    return errors


def nested(depth: int) -> bytes:
    """JSON arrays nested ``depth`` levels deep, a SKU inside (orjson encodes only 255)."""
    return b"[" * (depth - 1) + b'{"x": "SKU-000001"}' + b"]" * (depth - 1)


def deep(payload: Any, depth: int) -> bytes:
    """``payload`` encoded, with its :data:`DEEP` string replaced by :func:`nested`."""
    return orjson.dumps(payload).replace(orjson.dumps(DEEP), nested(depth), 1)


def fan_out(on: str, leaf: str, levels: int = 20) -> str:
    """``{ ...F0 }`` where each fragment spreads the next one twice: 2^levels selections."""
    root = "subscription" if on == "Subscription" else "query"
    fragments = " ".join(f"fragment F{n} on {on} {{ ...F{n + 1} ...F{n + 1} }}"
                         for n in range(levels))
    return f"{root} {{ ...F0 }} {fragments} fragment F{levels} on {on} {{ {leaf} }}"


def jws(header: dict[str, Any] | bytes, claims: dict[str, Any] | bytes, key: bytes) -> str:
    """An HS256-signed token from raw JSON (so claims PyJWT would refuse to encode can be
    sent: huge numbers, NaN)."""
    def part(value: dict[str, Any] | bytes) -> bytes:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = part(header) + b"." + part(claims)
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


# -- GraphQL documents ----------------------------------------------------------------------

class TestQueries:
    """Documents built to be expensive: each is refused by the limit it is over, naming it."""

    def test_alias_bomb(self, hostile: Hostile) -> None:
        aliases = " ".join(f"a{i}: __typename" for i in range(200))
        with hostile.unchanged():
            response = hostile.graphql(f"{{ {aliases} }}")
        assert response.status_code == 200
        assert ("LIMIT_EXCEEDED", "max_aliases") in graphql_errors(response)
        assert response.json()["data"] is None

    def test_depth_bomb(self, hostile: Hostile) -> None:
        deep = "{ " + "products { nodes { " * 10 + "sku" + " } }" * 10 + " }"
        with hostile.unchanged():
            response = hostile.graphql(deep)
        assert ("LIMIT_EXCEEDED", "max_depth") in graphql_errors(response)
        assert response.json()["data"] is None

    def test_token_bomb(self, hostile: Hostile) -> None:
        with hostile.unchanged():
            response = hostile.graphql("{ " + "__typename " * 5000 + "}")
        assert graphql_errors(response) == [("LIMIT_EXCEEDED", "max_tokens")]

    def test_cost_bomb(self, hostile: Hostile) -> None:
        page = ("products(first: 100) { nodes { stock { onHand } "
                "store: availability(channel: STORE) { byLocation { onHand } } "
                "purchaseOrders { poNumber } } }")
        query = "{ " + " ".join(f"p{i}: {page}" for i in range(10)) + " }"
        with hostile.unchanged():
            response = hostile.graphql(query)
        assert graphql_errors(response) == [("LIMIT_EXCEEDED", "max_cost")]

    def test_fragment_fan_out(self, hostile: Hostile) -> None:
        """F0 spreads F1 twice, F1 spreads F2 twice, ... twenty levels: about 170 tokens that
        expand to a million selections. Validation is linear in the document (each fragment
        measured once), so it is answered at once and /healthz never waits behind it."""
        leaves = {"__typename": None, "locations { id }": "max_cost",
                  "a: __typename": "max_aliases"}
        for leaf, limit in leaves.items():
            with hostile.unchanged():
                response = hostile.graphql(fan_out("Query", leaf))
            if limit is None:  # nothing to refuse: execution merges the repeated fields
                assert response.json()["data"] == {"__typename": "Query"}, response.text
            else:
                assert graphql_errors(response) == [("LIMIT_EXCEEDED", limit)], leaf
                assert response.json()["data"] is None

    def test_fragment_fan_out_over_websocket(self, hostile: Hostile) -> None:
        document = fan_out("Subscription", "stockChanged { a: sku }")
        for protocol in WS_PROTOCOLS:
            message = asyncio.run(hostile.query_ws(protocol, document))
            assert message["type"] == "error", message
            payload = message["payload"]
            errors = payload if isinstance(payload, list) else payload.get("errors", [payload])
            assert [e["extensions"]["limit"] for e in errors] == ["max_aliases"], message

    def test_fragment_cycles(self, hostile: Hostile) -> None:
        for document in ("{ ...A } fragment A on Query { ...A }",
                         "{ ...A } fragment A on Query { ...B ...B } "
                         "fragment B on Query { ...A ...A }",
                         "{ ...A } fragment A on Query { locations { ...L } } "
                         "fragment L on Location { id ...L }"):
            with hostile.unchanged():
                response = hostile.graphql(document)
            assert response.json()["data"] is None
            assert "GRAPHQL_VALIDATION_FAILED" in {c for c, _ in graphql_errors(response)}

    def test_document_nested_past_the_parser_limit(self, hostile: Hostile) -> None:
        with hostile.unchanged():
            response = hostile.graphql("{" + "a {" * 300 + "b" + "}" * 301)
        assert graphql_errors(response) == [("GRAPHQL_PARSE_FAILED", "")]

    def test_introspection_bomb(self, hostile: Hostile) -> None:
        inner = "name"
        for _ in range(8):
            inner = f"fields {{ type {{ {inner} }} }}"
        with hostile.unchanged():
            response = hostile.graphql(f"{{ __schema {{ types {{ {inner} }} }} }}")
        assert response.json()["data"] is None
        assert [code for code, _ in graphql_errors(response)] == ["GRAPHQL_VALIDATION_FAILED"]

    def test_garbage_documents(self, hostile: Hostile) -> None:
        for query in ("", "{", "}}}}", "query { ...Missing }", "\x00\x01", "{ product }",
                      "subscription { nope }", "mutation { x }"):
            with hostile.unchanged():
                response = hostile.graphql(query)
            if response.status_code == 400:  # no query at all
                continue
            assert response.status_code == 200, (query, response.text)
            assert response.json()["data"] is None, query
            assert graphql_errors(response), query

    def test_refused_over_websocket_too(self, hostile: Hostile) -> None:
        aliases = " ".join(f"a{i}: sku" for i in range(200))
        page = ("products(first: 100) { nodes { stock { onHand } "
                "store: availability(channel: STORE) { byLocation { onHand } } } }")
        documents = {f"subscription {{ stockChanged {{ {aliases} }} }}": "max_aliases",
                     "{ " + " ".join(f"p{i}: {page}" for i in range(10)) + " }": "max_cost",
                     "{ " + "products { nodes { " * 10 + "sku" + " } }" * 10 + " }":
                         "max_depth"}
        for protocol in WS_PROTOCOLS:
            for document, limit in documents.items():
                if limit == "max_depth" and protocol == "graphql-ws":
                    continue  # its error message carries one error: that of the bad field
                with hostile.unchanged():
                    message = asyncio.run(hostile.query_ws(protocol, document))
                payload = message["payload"]
                errors = (payload if isinstance(payload, list)
                          else payload.get("errors", [payload]))
                assert limit in [e["extensions"].get("limit") for e in errors], message


# -- arguments ------------------------------------------------------------------------------

EVENTS = "query($a: String, $s: [ID!]) { stockEvents(after: $a, skus: $s, first: 5) { hasMore } }"


class TestArguments:
    """Argument values no client of ours sends: refused as BAD_USER_INPUT naming the
    argument, before they reach Redis or a backend."""

    def _refused(self, hostile: Hostile, query: str, variables: dict[str, Any],
                 says: str) -> None:
        with hostile.unchanged():
            response = hostile.graphql(query, variables)
        body = response.json()
        assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"], body
        assert says in body["errors"][0]["message"], body

    def test_cursors_out_of_range(self, hostile: Hostile) -> None:
        """Stream ids are two 64-bit numbers; anything past that was a Redis error (an
        INTERNAL error and a traceback in the log)."""
        for cursor in ("99999999999999999999999-0", "18446744073709551615-18446744073709551615",
                       "0-" + "9" * 30, "1" * 5000 + "-0", "-", "1-", "01-1x"):
            for skus in (None, [SKU]):
                self._refused(hostile, EVENTS, {"a": cursor, "s": skus}, "cursor")

    def test_identifiers_too_long(self, hostile: Hostile) -> None:
        """An id longer than any system's (255 characters) never reaches a backend: 500,000
        characters built a URL httpx refuses (INTERNAL), shorter ones a 414 from the
        backend, which then counted as down for everyone."""
        for size in (256, 10_000, 500_000):
            long = "X" * size
            for query, variables, says in (
                    ("query($s: ID!) { product(sku: $s) { name } }", {"s": long}, "sku"),
                    ('query($s: ID!) { stockLevel(sku: $s, locationId: "ST001") { onHand } }',
                     {"s": long}, "sku"),
                    ("query($l: ID!) { location(id: $l) { name } }", {"l": long}, "id"),
                    (EVENTS, {"s": [long]}, "skus"),
                    ("query($r: [_Any!]!) { _entities(representations: $r) "
                     "{ ... on Product { name } } }",
                     {"r": [{"__typename": "Product", "sku": long}]}, "representations")):
                self._refused(hostile, query, variables, says)
            message = asyncio.run(hostile.query_ws(
                "graphql-transport-ws",
                "subscription($s: [ID!]) { stockChanged(skus: $s) { sku } }", {"s": [long]}))
            assert [e["extensions"]["code"] for e in ws_errors(message)] == [
                "BAD_USER_INPUT"], message
        ready = httpx.get(f"{hostile.url}/readyz", timeout=10).json()
        assert ready["checks"]["backends"] == {"ok": True, "down": {}}, ready

    def test_filters_too_long(self, hostile: Hostile) -> None:
        many = [f"SKU-{n:06d}" for n in range(1001)]
        self._refused(hostile, EVENTS, {"s": many}, "skus")
        message = asyncio.run(hostile.query_ws(
            "graphql-transport-ws", "subscription($s: [ID!]) { stockChanged(skus: $s) { sku } }",
            {"s": many}))
        assert message["type"] == "error", message
        assert message["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT", message


# -- request bodies -------------------------------------------------------------------------

class TestBodies:
    """What arrives at /graphql is not a GraphQL request."""

    def test_ten_megabyte_bodies(self, hostile: Hostile) -> None:
        big = b'{"query": "{ __typename }", "pad": "' + b"x" * 10_000_000 + b'"}'
        with hostile.unchanged():
            assert hostile.post("/graphql", big).status_code == 413
            assert hostile.post("/webhooks/wms", big, credential=None).status_code == 413

    def test_deep_json(self, hostile: Hostile) -> None:
        """Variables nested past the limit (64) are a 400 before anything walks them: the
        persisted-query path re-encoded them (orjson stops at 255 levels) and graphql-core
        and the caches recurse into them."""
        query = "query($v: [ID!]) { locations { id } }"
        apq = {"persistedQuery": {"version": 1,
                                  "sha256Hash": hashlib.sha256(query.encode()).hexdigest()}}
        for depth in (65, 300, 1000, 5000):
            for payload in ({"query": query, "variables": {"v": DEEP}},
                            {"query": query, "variables": {"v": DEEP}, "extensions": apq},
                            {"query": query, "variables": {"v": [1]}, "pad": DEEP}):
                with hostile.unchanged():
                    response = hostile.post("/graphql", deep(payload, depth))
                assert response.status_code == 400, (depth, response.text)
                assert "nested deeper than 64 levels" in response.text, response.text
        within = hostile.post("/graphql", deep({"query": query, "variables": {"v": DEEP}}, 60))
        assert within.status_code == 200  # within the limit: GraphQL's own answer
        assert graphql_errors(within)

    def test_deep_json_over_websocket(self, hostile: Hostile) -> None:
        async def probe(protocol: str) -> int | None:
            ws = await hostile.connect(protocol)
            kind = "subscribe" if protocol == "graphql-transport-ws" else "start"
            await ws.send(deep({"id": "d", "type": kind, "payload": {
                "query": "subscription($s: [ID!]) { stockChanged(skus: $s) { sku } }",
                "variables": {"s": DEEP}}}, 200).decode())
            try:
                return await hostile.closed_with(ws, 5)
            except TimeoutError:
                return None
            finally:
                await ws.close()

        assert asyncio.run(probe("graphql-transport-ws")) == 4400
        asyncio.run(probe("graphql-ws"))  # no close codes: ignored or an error, no exception

    def test_not_json(self, hostile: Hostile) -> None:
        for body in (b"", b"{", b"\xff\xfe", b"[1, 2", b'"a string"', b"42", b"null",
                     b'{"query": 5}', b'{"query": "{ __typename }", "variables": 7}'):
            with hostile.unchanged():
                response = hostile.post("/graphql", body)
            assert response.status_code == 400, (body, response.text)


# -- webhooks -------------------------------------------------------------------------------

class TestWebhooks:
    """Deliveries that are forged, replayed, or malformed: refused, nothing recorded."""

    def _deliveries(self, hostile: Hostile, on_hand: int) -> dict[str, Delivery]:
        s = hostile.signer
        return {
            "pos": s.square(hostile.square_url, [s.square_count(3, 0, on_hand,
                                                                 now())]),
            "commerce": s.shopify(s.shopify_level(3, 0, on_hand, now())),
            "wms": s.epcis([s.epcis_event(3, 0, on_hand, int(time.time() * 1000))]),
            "erp": s.erp(s.erp_stock(3, hostile.stack.world.warehouses[0].code, on_hand,
                                     int(time.time() * 1000))),
        }

    def test_forged_signatures(self, hostile: Hostile) -> None:
        for backend, delivery in self._deliveries(hostile, 41).items():
            forged = replace(delivery, body=delivery.body.replace(b"41", b"42", 1))
            with hostile.unchanged():
                response = hostile.webhook(forged)
            assert (response.status_code, response.json()["reason"]) == (401, "bad_signature"),\
                backend

    def test_unsigned(self, hostile: Hostile) -> None:
        for backend, delivery in self._deliveries(hostile, 43).items():
            with hostile.unchanged():
                response = hostile.webhook(replace(delivery, headers={}))
            assert response.status_code == 401, backend

    def test_replayed_outside_the_tolerance(self, hostile: Hostile) -> None:
        s = hostile.signer
        old = int(time.time()) - 3600
        for delivery in (s.epcis([s.epcis_event(4, 0, 7, 1)], timestamp=old),
                         s.erp(s.erp_stock(4, "WH01", 7, 1), timestamp=old)):
            with hostile.unchanged():
                response = hostile.webhook(delivery)
            assert (response.status_code, response.json()["reason"]) == (401, "replay")

    def test_replayed_within_the_tolerance_is_a_duplicate(self, hostile: Hostile) -> None:
        for backend, delivery in self._deliveries(hostile, 44).items():
            first = hostile.webhook(delivery)
            assert first.status_code == 200, (backend, first.text)
            hostile.settle()
            # A duplicate is applied again (idempotently) before it is acknowledged, which
            # invalidates cached responses of the SKU and may record the cell's movement
            # history once the cache holds the whole cell: nothing else may change.
            with hostile.unchanged(ignoring=("rg:{rc}:", ":hist:")):
                again = hostile.webhook(delivery)
            assert (again.status_code, again.json()["status"]) == (200, "duplicate"), backend

    def test_unknown_backend(self, hostile: Hostile) -> None:
        for path in ("nobody", "pos%00", "..%2Fgraphql"):
            with hostile.unchanged():
                response = hostile.post(f"/webhooks/{path}", b"{}", credential=None)
            assert response.status_code == 404, (path, response.text)

    def test_decimals_that_are_not_plain_decimal_strings(self, hostile: Hostile) -> None:
        """Square quantities and ERP prices are decimal strings: an exponent ("1e30" was
        a 500, the sender retrying forever; "1e100000" took seconds of CPU on the event
        loop), NaN, Infinity, whitespace, non-ASCII digits... are a 400 naming the field,
        checked before anything converts them."""
        s = hostile.signer
        item = hostile.stack.world.items[5]
        not_decimals = ["1e30", "1e100000", "1E5", "NaN", "-Infinity", "sNaN", " 5", "5\n",
                        "+5", "1_000", "0x10", "\u0663", "1.5e3", "", "9" * 25, "-", "."]
        cases: list[tuple[str, Delivery]] = []
        for bad in [*not_decimals, "1.000001", "2.5"]:  # Square: up to 5 decimals, whole
            count = s.square_count(5, 0, 1, now()) | {"quantity": bad}
            cases.append(("quantity", s.square(hostile.square_url, [count])))
        for bad in not_decimals:
            data = {"itemNumber": item.item_number, "sku": item.sku, "gtin": item.gtin13,
                    "description": "Renamed", "category": item.category, "listPrice": bad,
                    "cost": "4.50", "currency": "NOK", "safetyStock": 1, "status": "ACTIVE",
                    "updatedAt": now().isoformat()}
            cases.append(("listPrice", s.erp(s.erp_event("item.updated", 3000, data))))
        for field, delivery in cases:
            with hostile.unchanged():
                response = hostile.webhook(delivery)
            assert response.status_code == 400, (delivery.body[:300], response.text)
            assert response.json()["reason"] == "malformed"
            assert field in response.json()["error"], response.text
            assert len(response.text) < 500  # the value is not echoed whole
        # Plain decimals are still taken: whole numbers with zero decimals, and prices.
        fine = s.square(hostile.square_url, [s.square_count(5, 0, 1, now())
                                            | {"quantity": "7.00000"}])
        assert hostile.webhook(fine).status_code == 200

    def test_deep_json(self, hostile: Hostile) -> None:
        """A signed body nested past the limit (64) is a 400 before anything walks it (a
        1000-deep array in an ERP payload was a RecursionError, a 500)."""
        s = hostile.signer
        warehouse = hostile.stack.world.warehouses[0].code
        for depth in (65, 300, 1000):
            adjusted = s.erp_stock(6, warehouse, 9, 4000)
            adjusted["data"]["reason"] = DEEP
            event = s.epcis_event(6, 0, 9, 4000) | {"wms:extra": DEEP}
            square = orjson.loads(s.square(hostile.square_url, [
                s.square_count(6, 0, 9, now()) | {"extra": DEEP}]).body)
            level = s.shopify_level(6, 0, 9, now()) | {"extra": DEEP}
            for delivery in (s.erp(deep(adjusted, depth)), s.standard("wms", deep(event, depth)),
                             s.square(hostile.square_url, [], payload=deep(square, depth)),
                             s.shopify(deep(level, depth))):
                with hostile.unchanged():
                    response = hostile.webhook(delivery)
                assert response.status_code == 400, (delivery.backend, depth, response.text)
                assert response.json()["reason"] == "malformed"
                assert "nested deeper than 64 levels" in response.json()["error"], response.text

    def test_signed_garbage(self, hostile: Hostile) -> None:
        s = hostile.signer
        for body in (b"not json", b"[]", b"null", b'{"type": 5}', b"\xff" * 64):
            for delivery in (s.standard("wms", body), s.standard("erp", body),
                             s.shopify(body), s.square(hostile.square_url, [], payload=body)):
                with hostile.unchanged():
                    response = hostile.webhook(delivery)
                assert response.status_code == 400, (delivery.backend, body, response.text)
                assert response.json()["reason"] == "malformed"


# -- credentials ----------------------------------------------------------------------------

class TestAuth:
    """Tokens built to get in without the key: 401 ``UNAUTHENTICATED``, never a 500."""

    def _refused(self, hostile: Hostile, token: str) -> None:
        with hostile.unchanged():
            response = hostile.graphql("{ locations { id } }", credential=token)
        assert response.status_code == 401, (token, response.text)
        assert graphql_errors(response) == [("UNAUTHENTICATED", "")]

    def test_alg_none(self, hostile: Hostile) -> None:
        claims = {"sub": "x", "scope": "admin", "exp": int(time.time()) + 600}
        for alg in ("none", "None", "NONE", ""):
            header = base64.urlsafe_b64encode(orjson.dumps({"alg": alg, "typ": "JWT"}))
            body = base64.urlsafe_b64encode(orjson.dumps(claims))
            self._refused(hostile, f"{header.rstrip(b'=').decode()}."
                                   f"{body.rstrip(b'=').decode()}.")

    def test_key_confusion(self, hostile: Hostile) -> None:
        """HS256 "signed" with the RSA public key (the classic algorithm confusion)."""
        public = hostile.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        claims = {"sub": "x", "scope": "admin", "exp": int(time.time()) + 600}
        for header in ({"alg": "HS256", "kid": "rsa-1"}, {"alg": "RS256", "kid": "rsa-1"}):
            self._refused(hostile, jws(header, claims, public))

    def test_numeric_dates_out_of_range(self, hostile: Hostile) -> None:
        """exp, nbf and iat that are no date: huge (``exp: 1`` followed by 400 zeros passed
        PyJWT and then overflowed float(): a 500), infinite, NaN, far beyond year 9999,
        negative, not numbers. Correctly signed, and still refused."""
        soon = str(int(time.time()) + 600).encode()
        values = [b"1" + b"0" * 400, b"1e400", b"-1e400", b"NaN", b"Infinity", b"1e30",
                  b"253402300800", b"-1", b'"soon"', b"true", b"null", b"[]", b"{}"]
        for claim in (b"exp", b"nbf", b"iat"):
            for value in values:
                if claim != b"exp" and value == b"null":
                    continue  # an absent nbf or iat is fine
                claims = b'{"sub": "x", "scope": "admin", "exp": ' + (
                    value if claim == b"exp" else soon + b', "' + claim + b'": ' + value) + b"}"
                self._refused(hostile, jws({"alg": "HS256", "typ": "JWT"}, claims,
                                           JWT_SECRET.encode()))
        fine = jws({"alg": "HS256"}, b'{"sub": "x", "scope": "admin", "exp": ' + soon
                   + b', "iat": ' + str(int(time.time())).encode() + b"}", JWT_SECRET.encode())
        assert hostile.graphql("{ locations { id } }", credential=fine).status_code == 200

    def test_forged_and_malformed_tokens(self, hostile: Hostile) -> None:
        good = jwt.encode({"sub": "x", "scope": "admin", "exp": int(time.time()) + 600},
                          JWT_SECRET, algorithm="HS256")
        head, body, _ = good.split(".")
        for token in ("a.b.c", "..", f"{head}.{body}.AAAA", f"{head}.{body}",
                      jwt.encode({"sub": "x", "scope": "admin",
                                  "exp": int(time.time()) + 600}, "x" * 40,
                                 algorithm="HS256"),
                      f"{head}.{'A' * 5000}.{'B' * 100}"):
            self._refused(hostile, token)


# -- WebSocket ------------------------------------------------------------------------------

class TestWebSocket:
    """Frames that are not the protocol: the protocol's answer, and the server carries on."""

    async def test_garbage_frames_on_graphql_transport_ws(self, hostile: Hostile) -> None:
        for frame, code in (("not json", 4400), ('{"type": "nope"}', 4400),
                            (b"\x00\x01binary", 4400), ("[]", 4400), ("{}", 4400),
                            ("7", 4400), ('"x"', 4400), ("null", 4400),
                            ('{"type": "subscribe", "id": "1"}', 4400),
                            ('{"type": "subscribe", "id": "1", "payload": 5}', 4400)):
            ws = await hostile.connect("graphql-transport-ws")
            await ws.send(frame)
            assert await hostile.closed_with(ws) == code, frame

    async def test_garbage_frames_on_graphql_ws(self, hostile: Hostile) -> None:
        """Legacy graphql-ws has no close codes for bad messages: text it cannot use is
        ignored or answered with an ``error``; a binary frame closes the socket."""
        for frame in ("not json", '{"type": "nope"}', "[]", "{}", "7", '"x"', "null",
                      '{"type": "start", "id": "1"}', '{"type": "start", "payload": []}'):
            ws = await hostile.connect("graphql-ws")
            await ws.send(frame)
            try:
                message = await hostile.recv(ws, 2)
            except TimeoutError:
                message = {"type": "ignored"}
            assert message["type"] in ("ignored", "error", "connection_error"), frame
            # The socket stays usable.
            answer = await hostile.query_ws("graphql-ws", "{ __typename }", ws=ws)
            assert answer["payload"]["data"] == {"__typename": "Query"}, frame
            await ws.close()
        ws = await hostile.connect("graphql-ws")
        await ws.send(b"\x00\x01binary")
        assert await hostile.closed_with(ws) == 1002

    async def test_operations_before_connection_init(self, hostile: Hostile) -> None:
        ws = await hostile.connect("graphql-transport-ws", init=False)
        await ws.send(orjson.dumps({"id": "1", "type": "subscribe",
                                    "payload": {"query": "{ __typename }"}}).decode())
        assert await hostile.closed_with(ws) == 4401

    async def test_documents_that_do_not_parse(self, hostile: Hostile) -> None:
        """A syntax error, or a document over max_tokens, in a subscribe/start (it was an
        unhandled exception, and a bare complete or no answer at all): graphql-transport-ws
        closes the socket with 4400 and the parser's message, as Strawberry does for syntax
        errors; legacy graphql-ws answers an ``error`` with the code HTTP answers."""
        documents = {"{": ("GRAPHQL_PARSE_FAILED", "", "Syntax Error"),
                     "subscription { " + "stockChanged { sku } " * 700 + "}":
                         ("LIMIT_EXCEEDED", "max_tokens", "tokens"),
                     "{" + "a {" * 300 + "b" + "}" * 301:
                         ("GRAPHQL_PARSE_FAILED", "", "nested too deeply")}
        for document, (code, limit, says) in documents.items():
            ws = await hostile.connect("graphql-transport-ws")
            await ws.send(orjson.dumps({"id": "p", "type": "subscribe",
                                        "payload": {"query": document}}).decode())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await hostile.recv(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4400, document[:20]
            assert says in closed.value.rcvd.reason, closed.value.rcvd.reason
            message = await hostile.query_ws("graphql-ws", document)
            assert message["type"] == "error", (document[:20], message)
            error = message["payload"]
            assert (error["extensions"]["code"], error["extensions"].get("limit", "")) == (
                code, limit), message
            assert says in error["message"], message

    async def test_twenty_megabyte_frames(self, hostile: Hostile) -> None:
        for protocol in WS_PROTOCOLS:
            ws = await hostile.connect(protocol)
            with hostile.unchanged():
                await ws.send("x" * 20_000_000)
                assert await hostile.closed_with(ws, 30) == 1009, protocol

    async def test_bad_credentials_at_connection_init(self, hostile: Hostile) -> None:
        for payload in ({"Authorization": "Bearer a.b.c"}, {"Authorization": 42},
                        {"token": "x" * 100_000}):
            ws = await hostile.connect("graphql-transport-ws", init=False)
            await ws.send(orjson.dumps({"type": "connection_init",
                                        "payload": payload}).decode())
            assert await hostile.closed_with(ws) == 4403, payload


# -- HTTP streams and batches (issue 10, helper transports) -----------------------------------

class TestStreamsAndBatches:
    """Broken batches, streams asked for in odd ways, resume cursors that are no cursors."""

    def test_broken_batches(self, hostile: Hostile) -> None:
        op = {"query": "{ __typename }"}
        for body, code in ((b"[]", "BAD_REQUEST"), (b"[1, 2]", "BAD_REQUEST"),
                           (b"[null]", "BAD_REQUEST"), (b'[[{"query": "{ __typename }"}]]',
                                                        "BAD_REQUEST"),
                           (b'["{ __typename }"]', "BAD_REQUEST"),
                           (orjson.dumps([op] * 11), "LIMIT_EXCEEDED"),
                           (orjson.dumps([op] * 20_000), "LIMIT_EXCEEDED"),
                           (b"[" * 5000 + b"]" * 5000, None),
                           # variables nested past the JSON depth limit (orjson encodes 255)
                           (b'[{"query": "{ __typename }", "variables": {"v": ' + b"[" * 300
                            + b"]" * 300 + b"}}]", None)):
            with hostile.unchanged():
                response = hostile.post("/graphql", body)
            assert response.status_code == 400, (body[:40], response.text)
            if code is not None:
                assert [c for c, _ in graphql_errors(response)] == [code], response.text

    def test_broken_operations_inside_a_batch(self, hostile: Hostile) -> None:
        body = orjson.dumps([{"query": 5}, {"query": "{"}, {}, {"variables": 7, "query": "{ x }"},
                             {"query": "{ __typename }", "extensions": "x"},
                             {"query": "{ __typename }"}])
        with hostile.unchanged():
            response = hostile.post("/graphql", body)
        assert response.status_code == 200
        results = response.json()
        assert len(results) == 6
        assert all(r.get("errors") for r in results[:5]), results
        assert results[5]["data"] == {"__typename": "Query"}

    def test_resume_cursors_that_are_no_cursors(self, hostile: Hostile) -> None:
        query = orjson.dumps({"query": "subscription { stockChanged { sku } }"})
        for cursor in ("x", "-1", "1-2-3", "9" * 40 + "-0", "18446744073709551616-0",
                       "1-" + "9" * 25, "1" * 10_000):
            with hostile.unchanged():
                response = hostile.post("/graphql", query, headers={
                    "accept": "text/event-stream", "last-event-id": cursor}, timeout=30)
            assert response.status_code == 200, cursor
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line for line in response.text.splitlines() if line.startswith("data: {")]
            assert len(events) == 1, response.text[:300]
            result = orjson.loads(events[0].removeprefix("data: "))
            assert [e["extensions"]["code"] for e in result["errors"]] == ["BAD_USER_INPUT"]
            assert "event: complete" in response.text

    async def test_resume_cursors_that_are_no_cursors_over_websocket(self, hostile: Hostile,
                                                                    ) -> None:
        query = "subscription($after: String) { stockChanged(after: $after) { sku } }"
        for protocol in WS_PROTOCOLS:
            for cursor in ("9" * 40 + "-0", "18446744073709551616-0", "1-" + "9" * 25,
                           "\u0661-0"):
                with hostile.unchanged():
                    message = await hostile.query_ws(protocol, query, {"after": cursor})
                payload: Any = message["payload"]  # legacy graphql-ws: one error object
                errors = payload if isinstance(payload, list) else payload.get("errors",
                                                                               [payload])
                assert [e["extensions"]["code"] for e in errors] == ["BAD_USER_INPUT"], (
                    protocol, cursor, message)

    def test_odd_accept_headers(self, hostile: Hostile) -> None:
        query = orjson.dumps({"query": "subscription { stockChanged { sku } }"})
        for accept in ("multipart/mixed", "multipart/mixed;subscriptionSpec=0.9",
                       "text/event-stream-ish", "*/*", ";;;,,,", "x" * 5000):
            with hostile.unchanged():
                response = hostile.post("/graphql", query, headers={"accept": accept})
            assert response.status_code == 400, (accept, response.text)

    async def test_stream_clients_that_leave_at_once(self, hostile: Hostile) -> None:
        app: Any = hostile.stack.gateways[0].server.config.app
        feed = app.state.runtime.feed
        before = set(feed.subscribers)
        query = {"query": "subscription { stockChanged { sku } }"}
        for accept in ("text/event-stream", "multipart/mixed;subscriptionSpec=1.0"):
            for _ in range(5):
                async with httpx.AsyncClient(timeout=10) as client, client.stream(
                        "POST", f"{hostile.url}/graphql", json=query, headers={
                            "accept": accept, "authorization": f"Bearer {ADMIN}"}) as resp:
                    assert resp.status_code == 200
        for _ in range(500):
            if not set(feed.subscribers) - before:
                break
            await asyncio.sleep(0.01)
        assert not set(feed.subscribers) - before


# -- values that are accepted and must still be servable (issue 11 §2, helper hostile2) -----

class TestValues:
    """Correctly signed deliveries whose values cannot be served or would pin a cell.

    A quantity past GraphQL's 32-bit ``Int`` (or a sequence past 2^53 - 1) and a timestamp
    more than ``max_clock_skew_seconds`` ahead are dead-lettered: 202 with the reason naming
    field and value, the delivery kept whole in the DLQ, nothing else changed, and a later
    genuine event still applies. Sums the gateway computes from accepted values saturate at
    2147483647. The multi-step scenarios (a backend API reporting 2^40, reconciliation of
    cells already pinned, cached responses while a backend is down) are in
    tests/e2e/test_hostile_values.py. This class works on SKU indexes 40-49 only.
    """

    INT_MAX, INT_MIN = 2**31 - 1, -(2**31)
    FAR = "9999-12-31T23:59:59.000000Z"
    CELL = """query($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) {
      onHand available committed incoming qualityControl damaged safetyStock sellable
      views { role onHand available committed incoming qualityControl damaged } } }"""
    PRODUCT = """query($sku: ID!) { product(sku: $sku) {
      stock { location { id } onHand available committed sellable }
      online: availability(channel: ONLINE) { available byLocation { available } }
      store: availability(channel: STORE) { available } } }"""

    # -- deliveries -------------------------------------------------------------------------

    @staticmethod
    def _erp_sequence(h: Hostile) -> int:
        """The ERP's next event number as the gap detector expects it (a jump is a gap,
        healed by reconciling the ERP in the background)."""
        hwm = h.redis.hget("rg:{sync}:seq:erp", "hwm")
        return int(hwm) + 1 if hwm is not None else 1

    @staticmethod
    def _wms_sequence() -> int:
        return time.time_ns() // 1000  # grows from run to run of the corpus

    def _square(self, h: Hostile, i: int, quantity: Any, store: int = 0,
                state: str = "IN_STOCK", **count: Any) -> Delivery:
        c = h.signer.square_count(i, store, 0, now(), state) | {"quantity": quantity} | count
        return h.signer.square(h.square_url, [c])

    def _shopify_level(self, h: Hostile, i: int, available: Any, **level: Any) -> Delivery:
        body = h.signer.shopify_level(i, 0, 0, now()) | {"available": available} | level
        return h.signer.shopify({k: v for k, v in body.items() if v is not None})

    def _shopify_order(self, h: Hostile, i: int, quantity: Any) -> Delivery:
        item = h.stack.world.items[i]
        return h.signer.shopify({"id": 450789469 + i, "line_items": [
            {"id": 1, "variant_id": item.shopify_variant_id, "sku": item.sku,
             "quantity": quantity, "price": "1.00"}]}, topic="orders/create")

    def _epcis(self, h: Hostile, i: int, on_hand: int = 5, warehouse: int = 0,
               balance: dict[str, Any] | None = None, **event: Any) -> Delivery:
        e = h.signer.epcis_event(i, warehouse, on_hand, self._wms_sequence())
        e["wms:balance"].update(balance or {})
        return h.signer.epcis([e | event])

    def _erp_stock(self, h: Hostile, i: int, on_hand: Any, loc: str = "WH01",
                   data: dict[str, Any] | None = None, **event: Any) -> Delivery:
        payload = h.signer.erp_stock(i, loc, 0, self._erp_sequence(h)) | event
        payload["data"] = {k: v for k, v in (payload["data"] | {"onHand": on_hand}
                                             | (data or {})).items() if v is not None}
        return h.signer.erp(payload)

    def _erp_item(self, h: Hostile, i: int, **changes: Any) -> Delivery:
        item = h.stack.world.items[i]
        data = {"itemNumber": item.item_number, "sku": item.sku, "gtin": item.gtin13,
                "description": item.name, "category": item.category,
                "listPrice": str(item.list_price), "cost": str(item.cost),
                "currency": "NOK", "safetyStock": item.safety_stock, "status": "ACTIVE",
                "updatedAt": now().isoformat()} | changes
        return h.signer.erp(h.signer.erp_event("item.updated", self._erp_sequence(h), data))

    # -- checks -----------------------------------------------------------------------------

    def _data(self, h: Hostile, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """An executed answer (a unique comment defeats the response cache), no error."""
        response = h.graphql(f"{query}\n# {time.time_ns()}", variables)
        body = response.json()
        assert response.status_code == 200, body
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    def _cell(self, h: Hostile, i: int, loc: str) -> dict[str, Any]:
        sku = h.stack.world.items[i].sku
        level: dict[str, Any] = self._data(h, self.CELL, {"sku": sku, "loc": loc})["stockLevel"]
        return level

    def _view(self, h: Hostile, i: int, loc: str, role: str) -> dict[str, Any]:
        views: list[dict[str, Any]] = self._cell(h, i, loc)["views"]
        [view] = [v for v in views if v["role"] == role]
        return view

    def _accepted(self, h: Hostile, delivery: Delivery) -> None:
        response = h.webhook(delivery)
        assert (response.status_code, response.json()["status"]) == (200, "accepted"), \
            response.text

    def _dead_lettered(self, h: Hostile, delivery: Delivery, *words: str) -> None:
        """202 dead-lettered naming ``words``; only the DLQ (and its dedupe key) changed."""
        h.settle()
        letters = h.redis.xlen("rg:{ev}:dlq")
        with h.unchanged(ignoring=("rg:{ev}:dlq",)):
            response = h.webhook(delivery)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "dead-lettered", body
        for word in words:
            assert word in body["reason"], (word, body["reason"])
        assert h.redis.xlen("rg:{ev}:dlq") == letters + 1
        [(_, fields)] = stream_entries(h.redis.xrevrange("rg:{ev}:dlq", count=1))
        letter = orjson.loads(fields[b"e"])
        assert (letter["reason"], letter["body"].encode()) == (body["reason"], delivery.body)

    # -- probes -----------------------------------------------------------------------------

    def test_quantities_past_32_bits_are_dead_lettered(self, hostile: Hostile) -> None:
        h, big = hostile, str(2**31)
        far_sequence: dict[str, Any] = {"wms:sequence": 2**53}
        cases: list[tuple[Callable[[int], Delivery], str, tuple[str, ...]]] = [
            (lambda i: self._epcis(h, i, 2**31), "WH01", (big,)),
            (lambda i: self._epcis(h, i, 5, balance={"available": 2**31}), "WH01",
             ("available", big)),
            (lambda i: self._epcis(h, i, 5, balance={"incoming": 2**40}), "WH01",
             ("incoming", str(2**40))),
            (lambda i: self._epcis(h, i, 5, **far_sequence), "WH01",
             ("wms:sequence", str(2**53))),
            (lambda i: self._square(h, i, big), "ST001", ("count quantity", big)),
            (lambda i: self._square(h, i, str(-2**31 - 1)), "ST001", ("-2147483649",)),
            (lambda i: self._square(h, i, "9223372036854775808.00000"), "ST001",
             ("9223372036854775808",)),
            (lambda i: self._shopify_level(h, i, 2**31), "WH01", ("available", big)),
            (lambda i: self._shopify_level(h, i, -2**31 - 1), "WH01", ("-2147483649",)),
            (lambda i: self._shopify_order(h, i, 2**31), "WH01", ("quantity", big)),
            (lambda i: self._erp_stock(h, i, 2**31), "WH01", ("onHand", big)),
            (lambda i: self._erp_item(h, i, safetyStock=2**31), "WH01", ("safetyStock", big)),
            (lambda i: self._erp_stock(h, i, 5, sequence=2**53), "WH01",
             ("sequence", str(2**53))),
        ]
        i = 40
        for build, loc, words in cases:
            before = self._cell(h, i, loc)  # primes the cell in the cache
            product = self._data(h, self.PRODUCT, {"sku": h.stack.world.items[i].sku})
            self._dead_lettered(h, build(i), *words)
            assert self._cell(h, i, loc) == before
            assert self._data(h, self.PRODUCT, {"sku": h.stack.world.items[i].sku}) == product

    def test_the_largest_int_is_accepted_and_served_exactly(self, hostile: Hostile) -> None:
        h, i = hostile, 41
        self._accepted(h, self._epcis(h, i, self.INT_MAX))
        level = self._cell(h, i, "WH01")
        assert (level["onHand"], level["available"]) == (self.INT_MAX, self.INT_MAX)
        self._accepted(h, self._square(h, i, f"{self.INT_MAX}.00000"))
        assert self._cell(h, i, "ST001")["available"] == self.INT_MAX
        self._accepted(h, self._shopify_level(h, i, self.INT_MIN))
        assert self._view(h, i, "WH01", "ONLINE")["available"] == self.INT_MIN
        self._accepted(h, self._erp_stock(h, i, self.INT_MAX))
        assert self._view(h, i, "WH01", "ERP_SNAPSHOT")["onHand"] == self.INT_MAX
        h.settle()

    def test_sums_past_32_bits_saturate(self, hostile: Hostile) -> None:
        """Availability over two warehouses at 2^31 - 1 each, and a store's on-hand made of
        two states at 2^31 - 1 each: 2147483647 ("at least"), not an error."""
        h, i, top = hostile, 42, self.INT_MAX
        for warehouse in (0, 1):
            self._accepted(h, self._epcis(h, i, top, warehouse=warehouse))
        for state in ("IN_STOCK", "RESERVED_FOR_SALE"):
            self._accepted(h, self._square(h, i, str(top), state=state))
        self._accepted(h, self._square(h, i, str(top), store=1))
        product = self._data(h, self.PRODUCT, {"sku": h.stack.world.items[i].sku})["product"]
        assert product["online"]["available"] == top
        assert [x["available"] for x in product["online"]["byLocation"]] == [top, top]
        assert product["store"]["available"] == top
        [store] = [s for s in product["stock"] if s["location"]["id"] == "ST001"]
        assert (store["available"], store["committed"], store["onHand"]) == (top, top, top)
        assert self._view(h, i, "ST001", "SYSTEM_OF_RECORD")["onHand"] == top
        h.settle()

    def test_deltas_and_inferred_movements_saturate(self, hostile: Hostile) -> None:
        """A store count from -2^31 (an oversold POS) to 2^31 - 1 is a movement of 2^32 - 1
        units, and an ERP count of 2^31 - 1 against -2^31 a drift as large: the change history
        and the discrepancy listing serve them saturated, the true numbers in the message."""
        h, i = hostile, 43
        sku = h.stack.world.items[i].sku
        self._cell(h, i, "ST001")
        self._accepted(h, self._square(h, i, str(self.INT_MIN)))
        self._accepted(h, self._erp_stock(h, i, self.INT_MAX, loc="ST001"))
        listing = """query($skus: [ID!]) { discrepancies(skus: $skus, minDelta: 0) {
            nodes { kind delta explainedByMovements message views { value } } } }"""
        drift: list[dict[str, Any]] = []
        for _ in range(100):  # re-judged in the background, seconds after the events
            drift = [n for n in self._data(h, listing, {"skus": [sku]})["discrepancies"]
                     ["nodes"] if n["kind"] == "POS_ERP_STORE_COUNT"]
            if drift and drift[0]["delta"] == self.INT_MAX:
                break
            time.sleep(0.1)
        assert drift, "no POS_ERP_STORE_COUNT discrepancy"
        assert drift[0]["delta"] == self.INT_MAX, drift
        assert str(self.INT_MAX) in drift[0]["message"]
        assert max(v["value"] for v in drift[0]["views"]) == self.INT_MAX
        self._accepted(h, self._square(h, i, str(self.INT_MAX)))
        changes = self._data(h, """query($skus: [ID!]) { stockEvents(skus: $skus, first: 100) {
            changes { locationId movement { type quantity } stockLevel { available } } } }""",
                             {"skus": [sku]})["stockEvents"]["changes"]
        last = [c for c in changes if c["locationId"] == "ST001"][-1]
        assert last["stockLevel"]["available"] == self.INT_MAX
        assert last["movement"] == {"type": "RETURN", "quantity": self.INT_MAX}
        h.settle()

    def test_far_future_timestamps_are_dead_lettered(self, hostile: Hostile) -> None:
        """Each would have outranked every later event of its cell: a later genuine event
        is still shown."""
        h, far = hostile, self.FAR
        soon = (now() + timedelta(minutes=10)).isoformat()
        genuine: dict[str, tuple[str, str, str, Callable[[int, int], Delivery]]] = {
                   "erp": ("WH01", "ERP_SNAPSHOT", "onHand",
                           lambda i, v: self._erp_stock(h, i, v)),
                   "commerce": ("WH01", "ONLINE", "available",
                                lambda i, v: self._shopify_level(h, i, v)),
                   "pos": ("ST001", "SYSTEM_OF_RECORD", "available",
                           lambda i, v: self._square(h, i, str(v))),
                   "wms": ("WH01", "SYSTEM_OF_RECORD", "onHand",
                           lambda i, v: self._epcis(h, i, v))}
        cases: list[tuple[Callable[[int], Delivery], tuple[str, ...]]] = [
            (lambda i: self._erp_stock(h, i, 7, data={"adjustedAt": None}, occurredAt=far),
             ("occurredAt", "9999-12-31", "max_clock_skew_seconds")),
            (lambda i: self._erp_stock(h, i, 7, data={"adjustedAt": far}), ("adjustedAt",)),
            (lambda i: self._erp_stock(h, i, 7, data={"adjustedAt": None}, occurredAt=soon),
             ("occurredAt", "in the future")),
            (lambda i: self._erp_item(h, i, updatedAt=far), ("updatedAt",)),
            (lambda i: self._shopify_level(h, i, 7, updated_at=far), ("updated_at",)),
            (lambda i: self._square(h, i, "7", calculated_at=far), ("calculated_at",)),
            (lambda i: self._epcis(h, i, 7, eventTime=far), ("eventTime",)),
            (lambda i: self._epcis(h, i, 7, recordTime=far), ("recordTime",)),
        ]
        i = 44
        for build, words in cases:
            delivery = build(i)
            loc, role, field, fresh = genuine[delivery.backend]
            before = self._cell(h, i, loc)
            self._dead_lettered(h, delivery, *words)
            assert self._cell(h, i, loc) == before
            value = 4000 + time.time_ns() % 1000
            self._accepted(h, fresh(i, value))
            assert self._view(h, i, loc, role)[field] == value
        h.settle()

    def test_timestamp_within_the_clock_skew_is_accepted(self, hostile: Hostile) -> None:
        h, i = hostile, 45
        soon = (now() + timedelta(seconds=120)).isoformat()
        value = 300 + time.time_ns() % 100
        self._accepted(h, self._erp_stock(h, i, value, data={"adjustedAt": soon}))
        assert self._view(h, i, "WH01", "ERP_SNAPSHOT")["onHand"] == value
        h.settle()

    def test_the_unsigned_shopify_header_never_orders_a_level(self, hostile: Hostile) -> None:
        """``X-Shopify-Triggered-At`` is not covered by the HMAC: a level without
        ``updated_at`` is ordered by its receipt, and a year-9999 header pins nothing."""
        h, i = hostile, 46
        value = 500 + time.time_ns() % 100
        undated = self._shopify_level(h, i, value, updated_at=None).with_headers(
            **{"X-Shopify-Triggered-At": self.FAR})
        self._accepted(h, undated)
        assert self._view(h, i, "WH01", "ONLINE")["available"] == value
        self._accepted(h, self._shopify_level(h, i, value + 1))
        assert self._view(h, i, "WH01", "ONLINE")["available"] == value + 1
        h.settle()

