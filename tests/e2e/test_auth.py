"""Who may see what: API keys and JWTs (HS256, RS256/ES256 from a JWKS file or URL), scopes,
and location-restricted principals, against a running stack over real HTTP and WebSocket.

One gateway with credentials configured serves the module. Tokens are minted here with PyJWT
and keys made here with ``cryptography``; the gateway only verifies. A store-scoped caller
tries other locations through every path: single lookups, lists, nested fields, purchase
orders, stock history, subscriptions and cached responses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import redis
import websockets
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from gateway import cli
from gateway.config import Settings
from gateway.demo import DemoOptions, banner, demo_tokens
from gateway.http.auth import Authenticator, AuthError
from resolvers.connectors.http import BackendClient
from resolvers.connectors.http import auth_headers as backend_headers
from resolvers.errors import BackendStatusError
from resolvers.settings import BackendSettings
from tests.support import Stack, serve

SECRET = "hs256-shared-secret-for-the-auth-tests-0123456789"
KEYS = {
    "admin": ("admin-key-7f3a9c2e5b", ["admin"], None),
    "reader": ("reader-key-1d4e8f0a6c", ["stock:read"], None),
    "store1": ("store1-key-9b2c7d5e3f", ["stock:read"], ["ST001"]),
    "catalog": ("catalog-key-4a6b8c0d2e", [], None),
    "metrics": ("metrics-key-5e7f9a1b3c", ["metrics:read"], None),
}
SKU = "SKU-000001"

PRODUCT = """query($sku: ID!) { product(sku: $sku) {
  sku name
  stock { location { id } onHand }
  store: availability(channel: STORE) { available byLocation { location { id } } }
  online: availability(channel: ONLINE) { available byLocation { location { id } } }
  purchaseOrders { locationId }
} }"""


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    jwks: dict[str, Any]
    path: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks = {"keys": [{**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
                     {**ec_jwk, "kid": "ec-1", "use": "sig", "alg": "ES256"}]}
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(jwks))
    return Keys(rsa_key, ec_key, jwks, path)


def hs256(scope: str, locations: list[str] | None = None, *, ttl: int = 600,
          secret: str = SECRET, **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": "user-1", "scope": scope, "exp": int(time.time()) + ttl,
                               **claims}
    if locations is not None:
        payload["locations"] = locations
    return jwt.encode(payload, secret, algorithm="HS256")


def signed(key: Any, alg: str, kid: str, scope: str, **claims: Any) -> str:
    payload = {"sub": "svc", "scope": scope, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def secured(redis_server_url: str, keys: Keys) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    stack = Stack(redis_server_url)
    stack.settings.api_keys = {name: {"key": key, "scopes": scopes,
                                      **({"locations": locs} if locs is not None else {})}
                               for name, (key, scopes, locs) in KEYS.items()}
    stack.settings.jwt_secret = SECRET
    stack.settings.jwks_file = str(keys.path)
    with stack:
        yield stack


def post(stack: Stack, query: str, variables: dict[str, Any] | None = None,
         credential: str | None = None, header: str = "authorization") -> httpx.Response:
    headers = {}
    if credential is not None:
        headers[header] = f"Bearer {credential}" if header == "authorization" else credential
    return httpx.post(f"{stack.url}/graphql", json={"query": query, "variables": variables or {}},
                      headers=headers, timeout=30)


def key(name: str) -> str:
    return KEYS[name][0]


def body_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def codes(body: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    return {tuple(e.get("path") or ()): e["extensions"]["code"] for e in body.get("errors", [])}


# -- authentication ------------------------------------------------------------------------------

def test_no_or_bad_credentials_get_401(secured: Stack, keys: Keys) -> None:
    expired = hs256("admin", ttl=-3600)
    forged = hs256("admin", secret="not-the-gateway-secret-but-long-enough-000")
    no_exp = jwt.encode({"sub": "x", "scope": "admin"}, SECRET, algorithm="HS256")
    # No key: PyJWT takes "" for None with alg "none" (its annotations do not allow None).
    unsigned = jwt.encode({"sub": "x", "scope": "admin", "exp": int(time.time()) + 60},
                          "", algorithm="none")
    bad_locations = hs256("admin", locations="ST001")  # type: ignore[arg-type]
    unknown_kid = signed(keys.rsa, "RS256", "rsa-2", "admin")
    # An RS256 token whose kid names the EC key: algorithm and key must agree.
    mismatched = signed(keys.rsa, "RS256", "ec-1", "admin")
    for credential in (None, "no-such-key-0000000000", expired, forged, no_exp, unsigned,
                       bad_locations, unknown_kid, mismatched, key("admin") + "x"):
        response = post(secured, "{ locations { id } }", credential=credential)
        assert response.status_code == 401, (credential, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        (error,) = response.json()["errors"]
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
        assert key("admin") not in response.text
        assert SECRET not in response.text
    wrong_scheme = httpx.post(f"{secured.url}/graphql", json={"query": "{ locations { id } }"},
                              headers={"authorization": f"Basic {key('admin')}"}, timeout=10)
    assert wrong_scheme.status_code == 401
    # Liveness stays open; the GraphiQL page (static, runs nothing) too, but not a GET query.
    assert httpx.get(f"{secured.url}/healthz", timeout=10).status_code == 200
    page = httpx.get(f"{secured.url}/graphql", headers={"accept": "text/html"}, timeout=10)
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()
    sneaky = httpx.get(f"{secured.url}/graphql", params={"query": "{ locations { id } }"},
                       headers={"accept": "text/html"}, timeout=10)
    assert sneaky.status_code == 401


def test_every_kind_of_credential_is_accepted(secured: Stack, keys: Keys) -> None:
    credentials = {
        "api key as bearer": (key("reader"), "authorization"),
        "api key header": (key("reader"), "x-api-key"),
        "HS256": (hs256("stock:read"), "authorization"),
        "RS256 from JWKS file": (signed(keys.rsa, "RS256", "rsa-1", "stock:read"),
                                 "authorization"),
        "ES256 from JWKS file": (signed(keys.ec, "ES256", "ec-1", "stock:read"),
                                 "authorization"),
    }
    for what, (credential, header) in credentials.items():
        body = body_of(post(secured, "{ stockLevel(sku: \"SKU-000001\", locationId: \"ST002\") "
                                     "{ onHand } locations { id } }", credential=credential,
                            header=header))
        assert "errors" not in body, (what, body)
        assert body["data"]["stockLevel"]["onHand"] >= 0
        assert len(body["data"]["locations"]) == 5, what


def test_jwks_from_a_url_with_audience_and_issuer(keys: Keys) -> None:
    fetched: list[str] = []

    async def jwks(request: Request) -> JSONResponse:
        fetched.append(request.url.path)
        return JSONResponse(keys.jwks)

    with serve(Starlette(routes=[Route("/.well-known/jwks.json", jwks)])) as idp:
        settings = Settings(jwks_url=f"{idp.url}/.well-known/jwks.json",
                            jwt_audience="retailgraph", jwt_issuer="https://idp.example")
        auth = Authenticator(settings)
        good = signed(keys.ec, "ES256", "ec-1", "stock:read admin", aud="retailgraph",
                      iss="https://idp.example", locations=["ST002"])
        principal = asyncio.run(auth.authenticate(good))
        assert principal.scopes == {"stock:read", "admin"}
        assert principal.locations == frozenset({"ST002"})
        assert principal.kind == "jwt"
        # Keys are cached: a second token does not fetch again.
        asyncio.run(auth.authenticate(signed(keys.ec, "ES256", "ec-1", "x", aud="retailgraph",
                                             iss="https://idp.example")))
        assert fetched == ["/.well-known/jwks.json"]
        for bad in (signed(keys.ec, "ES256", "ec-1", "admin", iss="https://idp.example"),
                    signed(keys.ec, "ES256", "ec-1", "admin", aud="other",
                           iss="https://idp.example"),
                    signed(keys.ec, "ES256", "ec-1", "admin", aud="retailgraph",
                           iss="https://evil.example"),
                    hs256("admin", aud="retailgraph", iss="https://idp.example")):
            with pytest.raises(AuthError):
                asyncio.run(auth.authenticate(bad))


# -- scopes --------------------------------------------------------------------------------------

def test_fields_need_their_scope_and_the_rest_stays(secured: Stack) -> None:
    query = PRODUCT.removesuffix("} }") + """}
      unmappedIdentifiers { value } stockLevel(sku: $sku, locationId: "ST001") { onHand } }"""
    body = body_of(post(secured, query, {"sku": SKU}, credential=key("catalog")))
    product = body["data"]["product"]
    assert product["sku"] == SKU
    assert product["name"]
    assert product["stock"] is None
    assert product["store"] is None
    assert product["purchaseOrders"] is None
    assert body["data"]["stockLevel"] is None
    assert body["data"]["unmappedIdentifiers"] == []
    assert codes(body) == {("product", "stock"): "FORBIDDEN",
                           ("product", "store"): "FORBIDDEN",
                           ("product", "online"): "FORBIDDEN",
                           ("product", "purchaseOrders"): "FORBIDDEN",
                           ("stockLevel",): "FORBIDDEN", ("unmappedIdentifiers",): "FORBIDDEN"}
    assert any("stock:read" in e["message"] for e in body["errors"])
    reader = body_of(post(secured, query, {"sku": SKU}, credential=key("reader")))
    assert codes(reader) == {("unmappedIdentifiers",): "FORBIDDEN"}
    assert reader["data"]["product"]["stock"]
    admin = body_of(post(secured, query, {"sku": SKU}, credential=key("admin")))
    assert "errors" not in admin
    assert admin["data"]["unmappedIdentifiers"]  # the world has unmapped identifiers


def test_metrics_need_the_metrics_scope(secured: Stack) -> None:
    url = f"{secured.url}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401
    reader = httpx.get(url, headers={"authorization": f"Bearer {key('reader')}"}, timeout=10)
    assert reader.status_code == 403
    for name in ("metrics", "admin"):
        ok = httpx.get(url, headers={"authorization": f"Bearer {key(name)}"}, timeout=10)
        assert ok.status_code == 200
        assert "retailgraph_http_requests_total" in ok.text


# -- locations -----------------------------------------------------------------------------------

STORE_TOKEN_CASES = {"api key": lambda: key("store1"),
                     "JWT locations claim": lambda: hs256("stock:read", ["ST001"])}


@pytest.mark.parametrize("how", list(STORE_TOKEN_CASES))
def test_a_store_token_sees_only_its_store(secured: Stack, how: str) -> None:
    store = STORE_TOKEN_CASES[how]()
    admin = body_of(post(secured, PRODUCT, {"sku": SKU}, credential=key("admin")))
    everywhere = {x["location"]["id"] for x in admin["data"]["product"]["stock"]}
    assert {"ST001", "ST002", "WH01"} <= everywhere  # so the filter below has work to do
    body = body_of(post(secured, PRODUCT, {"sku": SKU}, credential=store))
    assert "errors" not in body, body
    product = body["data"]["product"]
    assert [x["location"]["id"] for x in product["stock"]] == ["ST001"]
    assert [x["location"]["id"] for x in product["store"]["byLocation"]] == ["ST001"]
    assert product["online"] == {"available": 0, "byLocation": []}
    assert all(line["locationId"] == "ST001" for line in product["purchaseOrders"])

    lists = body_of(post(secured, """{ locations { id } warehouses: locations(type: WAREHOUSE)
        { id } products(first: 5) { nodes { stock { location { id } } } } }""", credential=store))
    assert lists["data"]["locations"] == [{"id": "ST001"}]
    assert lists["data"]["warehouses"] == []
    for node in lists["data"]["products"]["nodes"]:
        assert {x["location"]["id"] for x in node["stock"]} <= {"ST001"}

    asked = body_of(post(secured, """{ own: stockLevel(sku: "SKU-000001", locationId: "ST001")
        { onHand } other: stockLevel(sku: "SKU-000001", locationId: "ST002") { onHand }
        warehouse: stockLevel(sku: "SKU-000001", locationId: "WH01") { onHand }
        location(id: "ST002") { id } mine: location(id: "ST001") { id }
        product(sku: "SKU-000001") { stock(locationIds: ["ST002", "WH01"]) { onHand } } }""",
                         credential=store))
    assert asked["data"]["own"]["onHand"] >= 0
    assert asked["data"]["mine"] == {"id": "ST001"}
    assert asked["data"]["other"] is None
    assert asked["data"]["warehouse"] is None
    assert asked["data"]["location"] is None
    assert asked["data"]["product"]["stock"] == []  # a narrowing list is filtered silently
    assert codes(asked) == {("other",): "FORBIDDEN", ("warehouse",): "FORBIDDEN",
                            ("location",): "FORBIDDEN"}


def test_purchase_orders_of_other_locations_are_hidden(secured: Stack) -> None:
    query = "{ products(first: 60) { nodes { sku purchaseOrders { locationId } } } }"
    admin = body_of(post(secured, query, credential=key("admin")))
    seen = {line["locationId"] for node in admin["data"]["products"]["nodes"]
            for line in node["purchaseOrders"]}
    assert seen - {"ST001"}, seen  # there are lines elsewhere to hide
    store = body_of(post(secured, query, credential=key("store1")))
    assert {line["locationId"] for node in store["data"]["products"]["nodes"]
            for line in node["purchaseOrders"]} <= {"ST001"}


def test_cached_responses_are_kept_per_scope(secured: Stack) -> None:
    query = 'query Cached { product(sku: "SKU-000002") { stock { location { id } onHand } } }'

    def ask(credential: str) -> tuple[bool, set[str]]:
        response = post(secured, query, credential=credential)
        body = body_of(response)
        hit = response.headers.get("x-retailgraph-cache") == "hit"
        return hit, {x["location"]["id"] for x in body["data"]["product"]["stock"]}

    def until_hit(credential: str) -> set[str]:
        """A miss stores its response just after answering: ask until it is served."""
        for _ in range(200):
            hit, locations = ask(credential)
            if hit:
                return locations
            time.sleep(0.01)
        raise AssertionError("never served from the response cache")

    hit, everywhere = ask(key("admin"))
    assert not hit
    assert len(everywhere) > 1
    assert until_hit(key("admin")) == everywhere  # cached for the admin's scope
    store_hit, store_locations = ask(key("store1"))
    assert not store_hit  # not the admin's entry
    assert store_locations == {"ST001"}
    assert until_hit(key("store1")) == {"ST001"}
    # Same scopes and locations share an entry; a token with other locations does not.
    assert ask(hs256("stock:read", ["ST001"])) == (True, {"ST001"})
    assert ask(hs256("stock:read", ["ST002"])) == (False, {"ST002"})


# -- WebSocket -----------------------------------------------------------------------------------

def ws_url(stack: Stack) -> str:
    return stack.url.replace("http://", "ws://") + "/graphql"


async def init(stack: Stack, payload: dict[str, Any] | None,
               headers: dict[str, str] | None = None) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await websockets.connect(ws_url(stack), subprotocols=[Subprotocol("graphql-transport-ws")],
                                  additional_headers=headers, open_timeout=10)
    message: dict[str, Any] = {"type": "connection_init"}
    if payload is not None:
        message["payload"] = payload
    await ws.send(orjson.dumps(message).decode())
    try:
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    except websockets.ConnectionClosed as closed:
        return ws, {"closed": closed.rcvd.code if closed.rcvd else None}
    return ws, reply


async def test_websocket_connection_init_is_authenticated(secured: Stack) -> None:
    refused = [None, {}, {"Authorization": "Bearer wrong-key-000000000"},
               {"Authorization": f"Bearer {hs256('admin', ttl=-3600)}"},
               {"token": "wrong"}, {"Authorization": 42}]
    for payload in refused:
        ws, reply = await init(secured, payload)
        assert reply == {"closed": 4403}, payload
        await ws.close()
    accepted: list[tuple[dict[str, Any], dict[str, str] | None]] = [
        ({"Authorization": f"Bearer {key('reader')}"}, None),
        ({"authorization": f"Bearer {hs256('stock:read')}"}, None),
        ({"token": key("reader")}, None),
        ({"apiKey": key("reader")}, None),
        ({}, {"Authorization": f"Bearer {key('reader')}"}),  # from the handshake's headers
    ]
    for payload, headers in accepted:
        ws, reply = await init(secured, payload, headers)
        assert reply["type"] == "connection_ack", payload
        await ws.close()


@asynccontextmanager
async def subscription(stack: Stack, credential: str, query: str,
                       variables: dict[str, Any]) -> AsyncIterator[ClientConnection]:
    ws, reply = await init(stack, {"Authorization": f"Bearer {credential}"})
    assert reply["type"] == "connection_ack"
    app: Any = stack.gateways[0].server.config.app
    feed = app.state.runtime.feed
    before = set(feed.subscribers)
    await ws.send(orjson.dumps({"id": "1", "type": "subscribe",
                                "payload": {"query": query, "variables": variables}}).decode())
    try:
        for _ in range(500):
            if set(feed.subscribers) - before:
                break
            await asyncio.sleep(0.01)
        yield ws
    finally:
        await ws.close()


async def sale(stack: Stack, item: int, store: int) -> None:
    world = stack.world
    backend: BackendSettings = stack.settings.backends["pos"]
    async with httpx.AsyncClient(base_url=backend.base_url, headers=backend_headers(backend),
                                 timeout=30) as pos:
        response = await pos.post("/v2/inventory/changes/batch-create", json={
            "idempotency_key": str(uuid.uuid4()), "changes": [{
                "type": "ADJUSTMENT", "adjustment": {
                    "catalog_object_id": world.items[item].square_variation_id,
                    "location_id": world.stores[store].square_id, "from_state": "IN_STOCK",
                    "to_state": "SOLD", "quantity": "1"}}]})
    assert response.status_code == 200, response.text


def stocked(stack: Stack, start: int, *stores: int) -> int:
    """An item index from ``start`` on with units in stock at each of ``stores``."""
    world = stack.world
    return next(i for i in range(start, len(world.items))
                if all(world.store_counts(i, s)[0] >= 2 for s in stores))


STOCK_CHANGED = """subscription($skus: [ID!], $locs: [ID!]) {
  stockChanged(skus: $skus, locationIds: $locs) { sku locationId stockLevel { location { id } } }
}"""


async def test_subscriptions_see_only_the_tokens_locations(secured: Stack) -> None:
    item = stocked(secured, 10, 0, 1)
    sku = secured.world.items[item].sku
    store = hs256("stock:read", ["ST001"])
    async with subscription(secured, store, STOCK_CHANGED, {"skus": [sku]}) as ws:
        await sale(secured, item, 1)  # ST002: must not arrive
        await sale(secured, item, 0)  # ST001
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
        assert message["type"] == "next", message
        change = message["payload"]["data"]["stockChanged"]
        assert change["locationId"] == "ST001"
        assert change["stockLevel"]["location"]["id"] == "ST001"
    async with subscription(secured, store, STOCK_CHANGED,
                            {"skus": [sku], "locs": ["ST002"]}) as ws:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        errors = message["payload"] if message["type"] == "error" else (
            message["payload"]["errors"])
        assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"], message
    async with subscription(secured, key("catalog"), STOCK_CHANGED, {"skus": [sku]}) as ws:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        errors = message["payload"] if message["type"] == "error" else (
            message["payload"]["errors"])
        assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"], message
    # The change history has the same filter.
    history = body_of(post(secured, """query($sku: ID!) { mine: stockEvents(skus: [$sku]) {
        changes { locationId } } other: stockEvents(skus: [$sku], locationIds: ["ST002"])
        { changes { locationId } } }""", {"sku": sku}, credential=store))
    assert {c["locationId"] for c in history["data"]["mine"]["changes"]} == {"ST001"}
    assert history["data"]["other"] is None
    assert codes(history) == {("other",): "FORBIDDEN"}
    everyone = body_of(post(secured, "query($sku: ID!) { stockEvents(skus: [$sku]) "
                                     "{ changes { locationId } } }", {"sku": sku},
                            credential=key("admin")))
    assert {c["locationId"] for c in everyone["data"]["stockEvents"]["changes"]} == {
        "ST001", "ST002"}


async def test_availability_subscription_counts_only_the_tokens_locations(
        secured: Stack) -> None:
    item = stocked(secured, 30, 0, 2)
    sku = secured.world.items[item].sku
    query = """subscription($skus: [ID!]) { availabilityChanged(channel: STORE, skus: $skus)
      { available byLocation { location { id } } } }"""
    async with subscription(secured, key("store1"), query, {"skus": [sku]}) as ws:
        await sale(secured, item, 2)  # ST003: no change to what this caller can see
        await sale(secured, item, 0)
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
        availability = message["payload"]["data"]["availabilityChanged"]
        assert [x["location"]["id"] for x in availability["byLocation"]] == ["ST001"]


# -- no leaks ------------------------------------------------------------------------------------

def test_backend_errors_never_carry_the_backend_credential() -> None:
    """A backend that echoes the request in its error body: the token is scrubbed."""

    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"denied: {dict(request.headers)}", status_code=500)

    with serve(Starlette(routes=[Route("/x", echo)])) as backend:
        token = "super-secret-backend-token-123"
        client = BackendClient(BackendSettings(name="erp", format="erp", base_url=backend.url,
                                               token=token, retries=0))

        async def call() -> BackendStatusError:
            try:
                with pytest.raises(BackendStatusError) as raised:
                    await client.json("GET", "/x")
                return raised.value
            finally:
                await client.aclose()

        error = asyncio.run(call())
    assert "denied" in str(error)
    assert token not in str(error)
    assert "Bearer [REDACT" in str(error)  # (cut at 200 characters)


# -- CLI and demo --------------------------------------------------------------------------------

def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    backends = "".join(f'[backends.{name}]\nformat = "{fmt}"\nbase_url = "http://127.0.0.1:9"\n'
                       for name, fmt in (("pos", "square"), ("wms", "epcis"), ("erp", "erp"),
                                         ("commerce", "shopify")))
    path.write_text(f"[gateway]\nport = 9\n{extra}\n{backends}")
    return path


def test_serve_refuses_to_run_without_auth(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RETAILGRAPH_JWT_SECRET", "RETAILGRAPH_API_KEYS", "RETAILGRAPH_JWKS_URL",
                "RETAILGRAPH_JWKS_FILE"):
        monkeypatch.delenv(var, raising=False)
    open_config = config_file(tmp_path)
    assert cli.main(["serve", "--config", str(open_config)]) == 2
    assert "--insecure-no-auth" in capsys.readouterr().err
    assert cli.main(["serve", "--config", str(open_config), "--check"]) == 0
    assert "auth: none (open)" in capsys.readouterr().out
    keyed = config_file(tmp_path, '[gateway.api_keys.app]\nkey = "0123456789abcdef0123"\n'
                                  'scopes = ["stock:read"]\n')
    assert cli.main(["serve", "--config", str(keyed), "--check"]) == 0
    out = capsys.readouterr().out
    assert "auth: 1 API key(s)" in out
    assert "0123456789abcdef0123" not in out
    monkeypatch.setenv("RETAILGRAPH_JWT_SECRET", SECRET)
    assert cli.main(["serve", "--config", str(open_config), "--check"]) == 0
    assert "JWT HS256" in capsys.readouterr().out
    monkeypatch.setenv("RETAILGRAPH_JWT_SECRET", "short")
    assert cli.main(["serve", "--config", str(open_config), "--check"]) == 2
    assert "jwt_secret" in capsys.readouterr().err


def test_demo_banner_says_whether_auth_is_on_and_its_tokens_work() -> None:
    settings = Settings()
    options = DemoOptions()
    assert "OPEN" in banner(settings, options, "redis://x")
    settings.jwt_secret = SECRET
    tokens = demo_tokens(settings, "ST001")
    text = banner(settings, options, "redis://x", tokens)
    assert "ON: JWT HS256" in text
    assert all(token in text for token in tokens.values())
    auth = Authenticator(settings)
    principals = {role: asyncio.run(auth.authenticate(token)) for role, token in tokens.items()}
    assert principals["admin"].scopes == {"admin"}
    assert principals["admin"].locations is None
    assert principals["stock reader"].scopes == {"stock:read"}
    assert principals["store ST001"].locations == frozenset({"ST001"})


def test_access_settings_from_the_environment_and_their_checks() -> None:
    from gateway.config import ConfigError, apply_env, demo_settings

    keys = {"pos-app": {"key": "0123456789abcdef-pos", "scopes": ["stock:read"],
                        "locations": ["ST001"]}}
    settings = demo_settings(environ={"RETAILGRAPH_API_KEYS": json.dumps(keys),
                                      "RETAILGRAPH_INTROSPECTION": "false",
                                      "RETAILGRAPH_MAX_COST": "900",
                                      "RETAILGRAPH_RATE_LIMIT_PER_MINUTE": "60"})
    assert settings.api_keys == keys
    assert settings.introspection is False
    assert (settings.max_cost, settings.rate_limit_per_minute) == (900, 60)
    principal = asyncio.run(Authenticator(settings).authenticate("0123456789abcdef-pos"))
    assert (principal.subject, principal.locations) == ("pos-app", frozenset({"ST001"}))
    with pytest.raises(ConfigError, match="RETAILGRAPH_API_KEYS"):
        apply_env(Settings(), {"RETAILGRAPH_API_KEYS": "pos-app=secret"})
    for bad, says in (({"app": {"scopes": ["admin"]}}, "key"),
                      ({"app": {"key": "short", "scopes": []}}, "16 characters"),
                      ({"app": {"key": "0123456789abcdef0", "scopes": "admin"}}, "scopes"),
                      ({"app": {"key": "0123456789abcdef0", "role": "x"}}, "role")):
        checked = demo_settings(environ={})
        checked.api_keys = bad
        with pytest.raises(ConfigError, match=says):
            checked.validate()
    for setting, value in (("max_depth", 0), ("jwt_secret", "short"),
                           ("rate_limit_per_minute", -1)):
        checked = demo_settings(environ={})
        setattr(checked, setting, value)
        with pytest.raises(ConfigError, match=setting):
            checked.validate()
    hashed = hashlib.sha256(b"a-key-stored-only-as-its-hash").hexdigest()
    only_hash = Settings(api_keys={"h": {"key_sha256": hashed, "scopes": ["admin"]}})
    assert asyncio.run(Authenticator(only_hash).authenticate(
        "a-key-stored-only-as-its-hash")).subject == "h"
