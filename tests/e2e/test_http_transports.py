"""GraphQL over HTTP beyond one JSON request: subscriptions streamed over graphql-sse and
Apollo's multipart protocol, and batches of operations, through the whole middleware stack
of a running gateway (telemetry, auth, batching, rate limit, persisted queries, response
cache, Strawberry) over real HTTP.

The Python side reads the streams with httpx (``httpx-sse`` parses the event stream; the
multipart reader below follows Apollo's spec); tests/e2e/test_clients_http.py drives the same
paths with the real JavaScript clients (graphql-sse, @apollo/client). Stock changes are
signed Square webhooks posted to the gateway, as a POS would send them.

Two stacks serve the module: ``open_stack``, with API keys of every kind (admin, reader,
a store-restricted key, a key without scopes) and in-memory telemetry; ``guarded``, with a
small rate limit and an allow-list, for the protections that refuse whole operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis
import websockets
from httpx_sse import EventSource, ServerSentEvent
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.typing import Subprotocol

from gateway import telemetry
from tests.helpers_webhooks import Signer, apost, now
from tests.support import Stack

MULTIPART_ACCEPT = "multipart/mixed;subscriptionSpec=1.0,application/json"
KEYS = {
    "admin": ("admin-key-0a1b2c3d4e", ["admin"], None),
    "reader": ("reader-key-5f6a7b8c9d", ["stock:read"], None),
    "store": ("store-key-1e2f3a4b5c", ["stock:read"], ["ST001"]),
    "catalog": ("catalog-key-6d7e8f9a0b", [], None),
}
CHANGED = """subscription Changed($skus: [ID!], $locs: [ID!], $after: String) {
  stockChanged(skus: $skus, locationIds: $locs, after: $after) {
    cursor sku locationId stockLevel { available } } }"""
STOCK_LEVEL = """query Level($sku: ID!, $loc: ID!) {
  stockLevel(sku: $sku, locationId: $loc) { available } }"""
LOCATIONS = "query Locations { locations { id } }"
# What the gateway's backend prober asks every few seconds, whatever the clients do.
PROBES = re.compile(r"^GET \S*/(locations|sites)(\.json)?$")


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name][0]}"}


def flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


@dataclass
class Gateway:
    """A running stack and ways to change stock at it."""

    stack: Stack
    skus: Iterator[int]
    spans: InMemorySpanExporter | None = None
    metrics: InMemoryMetricReader | None = None

    @property
    def url(self) -> str:
        return self.stack.url

    def sku(self) -> tuple[int, str]:
        """A SKU no other test of the module uses: its index and id."""
        i = next(self.skus)
        return i, self.stack.world.items[i].sku

    def store(self, index: int) -> str:
        return self.stack.world.stores[index].code

    async def count(self, i: int, store: int, quantity: int) -> None:
        """A Square physical count (available := quantity) as a signed webhook."""
        signer = Signer(self.stack.settings, self.stack.world)
        hook = f"{self.url}/webhooks/pos"
        delivery = signer.square(hook, [signer.square_count(i, store, quantity, now())])
        async with httpx.AsyncClient(timeout=30) as client:
            response = await apost(client, self.url, delivery)
        assert response.status_code == 200, response.text

    def quota(self) -> Any:
        app: Any = self.stack.gateways[0].server.config.app
        return app.state.runtime.feed.quota

    def subscribers(self) -> set[Any]:
        app: Any = self.stack.gateways[0].server.config.app
        return set(app.state.runtime.feed.subscribers)

    async def registered(self, before: set[Any]) -> None:
        for _ in range(1000):
            if self.subscribers() - before:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("subscription was not registered")

    async def gone(self, before: set[Any]) -> None:
        for _ in range(1000):
            if not self.subscribers() - before:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"subscriptions left behind: {self.subscribers() - before}")


@pytest.fixture(scope="module")
def open_stack(redis_server_url: str) -> Iterator[Gateway]:
    flush(redis_server_url)
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    previous = telemetry.configure(telemetry.Telemetry(provider, [metrics]))
    stack = Stack(redis_server_url, skus=40)
    stack.settings.stream_keepalive_seconds = 0.2
    stack.settings.max_batch_size = 4
    stack.settings.api_keys = {
        name: {"key": key, "scopes": scopes, **({"locations": locs} if locs else {})}
        for name, (key, scopes, locs) in KEYS.items()}
    try:
        with stack:
            yield Gateway(stack, iter(range(40)), spans, metrics)
    finally:
        telemetry.configure(previous)


LISTED_SUBSCRIPTION = "subscription Listed { stockChanged { cursor sku } }"
LISTED_QUERY = "query ListedLocations { locations { id } }"
PER_MINUTE = 4


@pytest.fixture(scope="module")
def guarded(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Gateway]:
    """A gateway with a rate limit of 4 a minute, 2 subscriptions per caller and an
    allow-list (open_stack is done)."""
    manifest = tmp_path_factory.mktemp("allow") / "operations.json"
    manifest.write_text(json.dumps([LISTED_SUBSCRIPTION, LISTED_QUERY]))
    stack = Stack(redis_server_url, skus=10)
    stack.settings.rate_limit_per_minute = PER_MINUTE
    stack.settings.max_subscriptions_per_principal = 2
    stack.settings.allow_list_file = str(manifest)
    stack.settings.stream_keepalive_seconds = 0.2
    stack.settings.api_keys = {f"client{n}": {"key": f"client-{n}-key-0123456789",
                                              "scopes": ["stock:read"]} for n in range(12)}
    with stack:
        yield Gateway(stack, iter(range(10)))


KEY6 = "api_key:client6"  # how the quota names the caller of client_key(6)


def client_key(n: int) -> dict[str, str]:
    return {"authorization": f"Bearer client-{n}-key-0123456789"}


# -- the readers -------------------------------------------------------------------------------

class Stream:
    """One streamed subscription, SSE or multipart, read with httpx: its results in order."""

    def __init__(self, response: httpx.Response, kind: str) -> None:
        self.response = response
        self.kind = kind
        self.events: list[ServerSentEvent] = []  # SSE: every event, with its id
        self.heartbeats = 0
        self._results: deque[dict[str, Any]] = deque()
        self._chunks = response.aiter_text()
        self._sse = EventSource(response).aiter_sse() if kind == "sse" else None
        self._buffer = ""
        self._preamble = True
        self.completed = False

    async def _read(self) -> None:
        if self._sse is not None:
            event = await anext(self._sse)
            self.events.append(event)
            if event.event == "next":
                self._results.append(orjson.loads(event.data))
            elif event.event == "complete":
                self.completed = True
            return
        self._buffer += await anext(self._chunks)
        *parts, self._buffer = self._buffer.split("\r\n--graphql")
        for part in parts:
            if self._preamble:  # what precedes the first delimiter is no part (RFC 2046)
                self._preamble = False
                continue
            self._part(part)
        if self._buffer.startswith("--"):
            self.completed = True

    def _part(self, part: str) -> None:
        if part.startswith("--"):
            self.completed = True
            return
        head, _, body = part.partition("\r\n\r\n")
        assert "content-type: application/json" in head.lower(), part
        value = orjson.loads(body)
        if value == {}:
            self.heartbeats += 1
        elif "payload" in value:
            self._results.append(value["payload"])
        else:
            raise AssertionError(f"unexpected multipart part {value}")

    async def result(self, within: float = 10) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while not self._results:
                if self.completed:
                    raise AssertionError("the stream completed")
                await self._read()
            return self._results.popleft()
        return await asyncio.wait_for(wait(), within)

    async def data(self, within: float = 10) -> dict[str, Any]:
        result = await self.result(within)
        assert "errors" not in result, result
        data: dict[str, Any] = result["data"]
        return data

    async def until_complete(self, within: float = 10) -> None:
        async def wait() -> None:
            while not self.completed:
                await self._read()
        await asyncio.wait_for(wait(), within)

    async def idle(self, seconds: float) -> None:
        """Read whatever comes for ``seconds`` (keep-alives)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), seconds)

    async def _drain(self) -> None:
        while True:
            await self._read()


@contextlib.asynccontextmanager
async def stream(url: str, kind: str, query: str, variables: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, method: str = "POST",
                 ) -> AsyncIterator[Stream]:
    accept = "text/event-stream" if kind == "sse" else MULTIPART_ACCEPT
    payload = {"query": query, "variables": variables or {}}
    request: dict[str, Any] = {"json": payload} if method == "POST" else {"params": {
        "query": query, "variables": orjson.dumps(variables or {}).decode()}}
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as client, \
            client.stream(method, f"{url}/graphql", headers={"accept": accept,
                                                             **(headers or {})},
                          **request) as response:
        yield Stream(response, kind)


async def apost_json(url: str, payload: Any, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{url}/graphql", json=payload, headers=headers)


def codes(result: dict[str, Any]) -> list[str]:
    return [str((e.get("extensions") or {}).get("code")) for e in result.get("errors", [])]


async def refusal(url: str, kind: str, query: str, variables: dict[str, Any] | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """A stream request the gateway refuses: its status and GraphQL errors (in the first
    result of the stream, or as the JSON body of a non-streamed refusal)."""
    async with stream(url, kind, query, variables, headers) as s:
        if s.response.headers["content-type"].startswith("application/json"):
            await s.response.aread()
            return s.response.status_code, s.response.json()
        return s.response.status_code, await s.result()


STREAMS = ("sse", "multipart")


# -- streamed subscriptions -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", STREAMS)
async def test_subscription_streams_each_change_with_its_cursor(open_stack: Gateway,
                                                                kind: str) -> None:
    i, sku = open_stack.sku()
    store = open_stack.store(0)
    before = open_stack.subscribers()
    async with stream(open_stack.url, kind, CHANGED, {"skus": [sku], "locs": [store]},
                      bearer("reader")) as s:
        assert s.response.status_code == 200
        expected = "text/event-stream" if kind == "sse" else "multipart/mixed"
        assert s.response.headers["content-type"].startswith(expected)
        assert "x-retailgraph-cache" not in s.response.headers
        await open_stack.registered(before)
        results = []
        for quantity in (31, 30):
            await open_stack.count(i, 0, quantity)
            results.append(await s.result())
        changes = [r["data"]["stockChanged"] for r in results]
        assert [c["stockLevel"]["available"] for c in changes] == [31, 30]
        assert {(c["sku"], c["locationId"]) for c in changes} == {(sku, store)}
        # Every result carries its change's cursor; SSE also as the event id.
        assert [r["extensions"]["cursor"] for r in results] == [c["cursor"] for c in changes]
        if kind == "sse":
            ids = [e.id for e in s.events if e.event == "next"]
            assert ids == [c["cursor"] for c in changes]
    await open_stack.gone(before)


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_websocket_results_carry_the_cursor_too(open_stack: Gateway,
                                                      protocol: str) -> None:
    i, sku = open_stack.sku()
    before = open_stack.subscribers()
    url = open_stack.url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(url, subprotocols=[Subprotocol(protocol)]) as ws:
        await ws.send(orjson.dumps({"type": "connection_init", "payload": {
            "Authorization": f"Bearer {KEYS['reader'][0]}"}}).decode())
        assert orjson.loads(await ws.recv())["type"] == "connection_ack"
        kind = "subscribe" if protocol == "graphql-transport-ws" else "start"
        await ws.send(orjson.dumps({"id": "1", "type": kind, "payload": {
            "query": CHANGED, "variables": {"skus": [sku]}}}).decode())
        await open_stack.registered(before)
        await open_stack.count(i, 0, 14)
        while (message := orjson.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] == "ka":
            pass
    payload = message["payload"]
    assert payload["extensions"] == {"cursor": payload["data"]["stockChanged"]["cursor"]}


@pytest.mark.parametrize("kind", STREAMS)
async def test_idle_stream_gets_keepalives(open_stack: Gateway, kind: str) -> None:
    _, sku = open_stack.sku()
    async with stream(open_stack.url, kind, CHANGED, {"skus": [sku]}, bearer("reader")) as s:
        if kind == "sse":
            lines: list[str] = []

            async def read() -> None:
                async for line in s.response.aiter_lines():
                    lines.append(line)
                    if sum(x.startswith(":") for x in lines) >= 3:
                        return
            await asyncio.wait_for(read(), 10)  # every 0.2 s here
            assert all(x.startswith(":") or not x for x in lines), lines
        else:
            await s.idle(1.0)
            assert s.heartbeats >= 3


async def test_sse_reconnect_with_last_event_id_resumes_exactly(open_stack: Gateway) -> None:
    i, sku = open_stack.sku()
    variables = {"skus": [sku], "locs": [open_stack.store(0)]}
    before = open_stack.subscribers()
    async with stream(open_stack.url, "sse", CHANGED, variables, bearer("reader")) as s:
        await open_stack.registered(before)
        await open_stack.count(i, 0, 50)
        first = (await s.data())["stockChanged"]
        last_id = [e for e in s.events if e.event == "next"][-1].id
    assert last_id == first["cursor"]
    await open_stack.gone(before)
    # While nobody listens: three changes.
    for quantity in (49, 48, 47):
        await open_stack.count(i, 0, quantity)
    # EventSource reconnects with the same request and Last-Event-ID (here as a GET, as
    # EventSource sends it): the missed changes, in order, then live ones.
    async with stream(open_stack.url, "sse", CHANGED, variables,
                      {**bearer("reader"), "last-event-id": last_id}, method="GET") as s:
        assert s.response.status_code == 200
        missed = [(await s.data())["stockChanged"] for _ in range(3)]
        assert [c["stockLevel"]["available"] for c in missed] == [49, 48, 47]
        await open_stack.count(i, 0, 46)
        live = (await s.data())["stockChanged"]
        assert live["stockLevel"]["available"] == 46
        ids = [e.id for e in s.events if e.event == "next"]
        assert ids == [c["cursor"] for c in [*missed, live]]
        assert len(set(ids) | {last_id}) == 5  # no duplicate
        await s.idle(0.5)  # and nothing more
        assert len([e for e in s.events if e.event == "next"]) == 4


async def test_sse_bad_last_event_id_is_an_error_in_the_stream(open_stack: Gateway) -> None:
    _, sku = open_stack.sku()
    async with stream(open_stack.url, "sse", CHANGED, {"skus": [sku]},
                      {**bearer("reader"), "last-event-id": "not-a-cursor"}) as s:
        assert s.response.status_code == 200
        assert codes(await s.result()) == ["BAD_USER_INPUT"]
        await s.until_complete()


async def test_query_over_sse_streams_one_result_and_is_never_cached(open_stack: Gateway,
                                                                     ) -> None:
    _, sku = open_stack.sku()
    variables = {"sku": sku, "loc": open_stack.store(0)}
    plain = await apost_json(open_stack.url, {"query": STOCK_LEVEL, "variables": variables},
                             bearer("reader"))
    assert plain.status_code == 200
    for _ in range(2):
        async with stream(open_stack.url, "sse", STOCK_LEVEL, variables, bearer("reader")) as s:
            assert s.response.headers["content-type"].startswith("text/event-stream")
            assert (await s.data())["stockLevel"] == plain.json()["data"]["stockLevel"]
            await s.until_complete()
    # The JSON answer is cached and served as JSON, never as the stream's bytes.
    for _ in range(2):
        again = await apost_json(open_stack.url, {"query": STOCK_LEVEL, "variables": variables},
                                 bearer("reader"))
        assert again.headers["content-type"] == "application/json"
        assert again.json()["data"] == plain.json()["data"]
    assert again.headers.get("x-retailgraph-cache") == "hit"


URQL_ACCEPT = ("application/graphql-response+json, application/graphql+json, application/json, "
               "text/event-stream, multipart/mixed")


@pytest.mark.parametrize(("accept", "streams"), [
    (URQL_ACCEPT, False),  # urql's Accept on every query: JSON is listed first
    ("application/json;q=0.5, text/event-stream", True),
    ("text/event-stream;q=0, application/json", False),
    ("text/event-stream", True),
    ("*/*", False),
])
async def test_a_query_streams_only_when_the_accept_prefers_a_stream(
        open_stack: Gateway, accept: str, streams: bool) -> None:
    """Content negotiation by preference (q, then order), not by a stream type being listed
    at all: urql answered as an event stream failed with "No Content"."""
    _, sku = open_stack.sku()
    body = {"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": open_stack.store(0)}}
    for _ in range(2):  # the second may come from the response cache: the same choice
        response = await apost_json(open_stack.url, body, {**bearer("reader"),
                                                           "accept": accept})
        assert response.status_code == 200, response.text
        kind = response.headers["content-type"]
        if streams:
            assert kind.startswith("text/event-stream")
            assert response.text.startswith("event: next")
        else:
            assert kind == "application/json"
            assert response.json()["data"]["stockLevel"] is not None
    if not streams:
        assert response.headers.get("x-retailgraph-cache") == "hit"


async def test_subscription_without_a_streaming_accept_is_a_400(open_stack: Gateway) -> None:
    response = await apost_json(open_stack.url, {"query": CHANGED}, bearer("reader"))
    assert response.status_code == 400
    assert "text/event-stream" in response.text
    assert "multipart/mixed;subscriptionSpec=1.0" in response.text


@pytest.mark.parametrize("kind", STREAMS)
async def test_a_closed_stream_ends_its_subscription_span_and_metrics(open_stack: Gateway,
                                                                      kind: str) -> None:
    assert open_stack.spans is not None
    assert open_stack.metrics is not None
    i, sku = open_stack.sku()
    name = f"Watch{kind.capitalize()}"
    query = f"subscription {name}($skus: [ID!]) {{ stockChanged(skus: $skus) {{ sku }} }}"
    before = open_stack.subscribers()
    async with stream(open_stack.url, kind, query, {"skus": [sku]}, bearer("reader")) as s:
        await open_stack.registered(before)
        await open_stack.count(i, 0, 20)
        assert (await s.data())["stockChanged"]["sku"] == sku
        assert not [x for x in open_stack.spans.get_finished_spans() if name in x.name]
    # The client went away: the subscription is released, its span ended, its metrics kept.
    await open_stack.gone(before)
    for _ in range(500):
        ended = [x for x in open_stack.spans.get_finished_spans() if name in x.name]
        if ended:
            break
        await asyncio.sleep(0.01)
    assert [x.name for x in ended] == [f"subscription {name}"]
    data = open_stack.metrics.get_metrics_data()
    assert data is not None
    points = [(dict(p.attributes or {}), p) for rm in data.resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "retailgraph.http.requests" for p in m.data.data_points]
    assert any(a["route"] == "graphql_stream" and a["status"] == "200" for a, _ in points)


# -- protections on every path: streams ------------------------------------------------------------

@pytest.mark.parametrize("kind", STREAMS)
async def test_streams_need_credentials_and_scopes(open_stack: Gateway, kind: str) -> None:
    status, body = await refusal(open_stack.url, kind, CHANGED)
    assert status == 401
    assert codes(body) == ["UNAUTHENTICATED"]
    status, result = await refusal(open_stack.url, kind, CHANGED, {}, bearer("catalog"))
    assert status == 200
    assert codes(result) == ["FORBIDDEN"]


@pytest.mark.parametrize("kind", STREAMS)
async def test_location_restricted_key_streams_only_its_locations(open_stack: Gateway,
                                                                   kind: str) -> None:
    i, sku = open_stack.sku()
    mine, other = open_stack.store(0), open_stack.store(1)
    assert KEYS["store"][2] == [mine]
    status, result = await refusal(open_stack.url, kind, CHANGED,
                                   {"skus": [sku], "locs": [other]}, bearer("store"))
    assert (status, codes(result)) == (200, ["FORBIDDEN"])
    before = open_stack.subscribers()
    async with stream(open_stack.url, kind, CHANGED, {"skus": [sku]}, bearer("store")) as s:
        await open_stack.registered(before)
        await open_stack.count(i, 1, 12)  # another store: not for this key
        await open_stack.count(i, 0, 11)
        change = (await s.data())["stockChanged"]
        assert (change["locationId"], change["stockLevel"]["available"]) == (mine, 11)


@pytest.mark.parametrize("kind", STREAMS)
async def test_query_limits_apply_to_streams(open_stack: Gateway, kind: str) -> None:
    aliases = " ".join(f"a{n}: sku" for n in range(31))
    status, result = await refusal(open_stack.url, kind,
                                   f"subscription {{ stockChanged {{ {aliases} }} }}",
                                   {}, bearer("reader"))
    assert status == 200
    assert codes(result) == ["LIMIT_EXCEEDED"]
    assert result["errors"][0]["extensions"]["limit"] == "max_aliases"


@pytest.mark.parametrize(("kind", "client"), [("sse", 0), ("multipart", 1)])
async def test_each_stream_takes_a_rate_limit_token(guarded: Gateway, kind: str,
                                                    client: int) -> None:
    for n in range(PER_MINUTE):
        async with stream(guarded.url, kind, LISTED_SUBSCRIPTION, {},
                          client_key(client)) as s:
            assert s.response.status_code == 200
            assert s.response.headers["ratelimit-remaining"] == str(PER_MINUTE - 1 - n)
    status, body = await refusal(guarded.url, kind, LISTED_SUBSCRIPTION, {},
                                 client_key(client))
    assert status == 429
    assert codes(body) == ["RATE_LIMITED"]


@pytest.mark.parametrize(("kind", "client"), [("sse", 2), ("multipart", 3)])
async def test_allow_list_applies_to_streams(guarded: Gateway, kind: str,
                                             client: int) -> None:
    unlisted = "subscription Unlisted { stockChanged { sku } }"
    status, result = await refusal(guarded.url, kind, unlisted, {}, client_key(client))
    # graphql-sse reports refusals in the accepted stream (its protocol); multipart is JSON.
    assert (status, codes(result)) == (200 if kind == "sse" else 403,
                                       ["PERSISTED_QUERY_NOT_ALLOWED"])
    async with stream(guarded.url, kind, LISTED_SUBSCRIPTION, {}, client_key(client)) as s:
        assert s.response.status_code == 200
        assert s.response.headers["content-type"] != "application/json"


@pytest.mark.parametrize("kind", STREAMS)
async def test_persisted_subscriptions_stream_and_register(open_stack: Gateway,
                                                           kind: str) -> None:
    i, sku = open_stack.sku()
    query = f'subscription Hashed{kind} {{ stockChanged(skus: ["{sku}"]) {{ sku }} }}'
    ext = {"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(
        query.encode()).hexdigest()}}
    accept = "text/event-stream" if kind == "sse" else MULTIPART_ACCEPT

    @contextlib.asynccontextmanager
    async def persisted(payload: dict[str, Any]) -> AsyncIterator[Stream]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as client, \
                client.stream("POST", f"{open_stack.url}/graphql", json=payload, headers={
                    "accept": accept, **bearer("reader")}) as response:
            yield Stream(response, kind)

    async with persisted({"extensions": ext}) as s:  # unknown hash: the client sends the text
        if kind == "sse":  # graphql-sse: in the accepted stream
            assert codes(await s.result()) == ["PERSISTED_QUERY_NOT_FOUND"]
            await s.until_complete()
        else:  # Apollo reads a JSON answer to a multipart request
            await s.response.aread()
            assert codes(s.response.json()) == ["PERSISTED_QUERY_NOT_FOUND"]
    before = open_stack.subscribers()
    async with persisted({"query": query, "extensions": ext}) as s:
        await open_stack.registered(before)
        await open_stack.count(i, 0, 9)
        assert (await s.data())["stockChanged"] == {"sku": sku}
    await open_stack.gone(before)
    async with persisted({"extensions": ext}) as s:  # registered by its first result
        await open_stack.registered(before)
        await open_stack.count(i, 0, 8)
        assert (await s.data())["stockChanged"] == {"sku": sku}


async def test_streams_count_against_the_subscriptions_per_caller(guarded: Gateway) -> None:
    async with stream(guarded.url, "sse", LISTED_SUBSCRIPTION, {}, client_key(6)) as one, \
            stream(guarded.url, "multipart", LISTED_SUBSCRIPTION, {}, client_key(6)) as two:
        assert one.response.status_code == two.response.status_code == 200
        for _ in range(500):  # both held
            if guarded.quota().held.get(KEY6) == 2:
                break
            await asyncio.sleep(0.01)
        assert guarded.quota().held.get(KEY6) == 2
        for kind in STREAMS:
            async with stream(guarded.url, kind, LISTED_SUBSCRIPTION, {}, client_key(6)) as s:
                result = await s.result()
                assert codes(result) == ["LIMIT_EXCEEDED"]
                assert result["errors"][0]["extensions"]["limit"] == \
                    "max_subscriptions_per_principal"


# -- batches ------------------------------------------------------------------------------------

def batch(url: str, operations: Any, headers: dict[str, str] | None = None,
          **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/graphql", json=operations, headers=headers, timeout=30, **kwargs)


def test_batch_answers_each_operation_in_order(open_stack: Gateway) -> None:
    _, sku = open_stack.sku()
    levels = [{"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": open_stack.store(n)}}
              for n in range(3)]
    alone = [batch(open_stack.url, op, bearer("reader")).json() for op in levels]
    response = batch(open_stack.url, [*levels, {"query": LOCATIONS}], bearer("reader"))
    assert response.status_code == 200
    results = response.json()
    assert [r["data"] for r in results[:3]] == [r["data"] for r in alone]
    assert {x["id"] for x in results[3]["data"]["locations"]} >= {open_stack.store(0)}
    assert response.headers["x-retailgraph-cache"].split(", ")[3] == "miss"


def test_batch_operations_share_the_response_cache(open_stack: Gateway) -> None:
    _, sku = open_stack.sku()
    ops = [{"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": open_stack.store(n)}}
           for n in range(2)]
    first = batch(open_stack.url, ops, bearer("reader"))
    assert first.headers["x-retailgraph-cache"] == "miss, miss"
    # Sent alone with the same bytes, each operation is a hit of what the batch stored ...
    alone = httpx.post(f"{open_stack.url}/graphql", content=orjson.dumps(ops[0]),
                       headers={**bearer("reader"), "content-type": "application/json"},
                       timeout=30)
    assert alone.headers.get("x-retailgraph-cache") == "hit"
    # ... and a batch of hits runs no GraphQL execution: the backends see no request.
    open_stack.stack.reset_requests()
    again = batch(open_stack.url, [ops[1], ops[0]], bearer("reader"))
    assert again.headers["x-retailgraph-cache"] == "hit, hit"
    assert [r["data"] for r in again.json()] == [r["data"] for r in first.json()[::-1]]
    assert [r["extensions"]["freshness"]["responseCache"] for r in again.json()] == \
        ["hit", "hit"]
    assert not [call for sim in open_stack.stack.sims
                for call in open_stack.stack.requests(sim) if not PROBES.search(call)]


@pytest.mark.parametrize(("operations", "message"), [
    ([], "empty batch"),
    ([{"query": LOCATIONS}, 7], "element 1 is not a JSON object"),
    ([{"query": LOCATIONS}, [{"query": LOCATIONS}]], "element 1 is not a JSON object"),
])
def test_malformed_batches_are_a_clear_400(open_stack: Gateway, operations: Any,
                                           message: str) -> None:
    response = batch(open_stack.url, operations, bearer("reader"))
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert message in error["message"]
    assert error["extensions"]["code"] == "BAD_REQUEST"


def test_batch_over_max_batch_size_is_a_400_naming_it(open_stack: Gateway) -> None:
    response = batch(open_stack.url, [{"query": LOCATIONS}] * 5, bearer("reader"))
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert "max_batch_size" in error["message"]
    assert error["extensions"] == {"code": "LIMIT_EXCEEDED", "limit": "max_batch_size",
                                   "max": 4}
    assert batch(open_stack.url, [{"query": LOCATIONS}] * 4, bearer("reader")).status_code \
        == 200


def test_batch_cannot_stream_and_batched_subscriptions_are_refused(open_stack: Gateway,
                                                                   ) -> None:
    refused = batch(open_stack.url, [{"query": LOCATIONS}],
                    {**bearer("reader"), "accept": "text/event-stream"})
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    mixed = batch(open_stack.url, [{"query": CHANGED}, {"query": LOCATIONS}], bearer("reader"))
    assert mixed.status_code == 200
    first, second = mixed.json()
    assert codes(first) == ["BAD_REQUEST"]
    assert "text/event-stream" in first["errors"][0]["message"]
    assert second["data"]["locations"]


# -- protections on every path: batches ------------------------------------------------------------

def test_batch_needs_credentials_and_each_operation_its_scopes(open_stack: Gateway) -> None:
    _, sku = open_stack.sku()
    level = {"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": open_stack.store(0)}}
    assert batch(open_stack.url, [level]).status_code == 401
    response = batch(open_stack.url, [level, {"query": LOCATIONS}], bearer("catalog"))
    assert response.status_code == 200
    denied, allowed = response.json()
    assert codes(denied) == ["FORBIDDEN"]
    assert allowed["data"]["locations"]


def test_batch_operations_see_only_the_keys_locations(open_stack: Gateway) -> None:
    _, sku = open_stack.sku()
    mine, other = open_stack.store(0), open_stack.store(1)
    response = batch(open_stack.url, [
        {"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": other}},
        {"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": mine}},
        {"query": LOCATIONS}], bearer("store"))
    other_level, my_level, locations = response.json()
    assert codes(other_level) == ["FORBIDDEN"]
    assert my_level["data"]["stockLevel"] is not None
    assert [x["id"] for x in locations["data"]["locations"]] == [mine]


def test_query_limits_apply_to_each_batched_operation(open_stack: Gateway) -> None:
    aliases = " ".join(f"a{n}: locations {{ id }}" for n in range(31))
    response = batch(open_stack.url, [{"query": LOCATIONS}, {"query": f"{{ {aliases} }}"}],
                     bearer("reader"))
    ok, over = response.json()
    assert ok["data"]["locations"]
    assert codes(over) == ["LIMIT_EXCEEDED"]
    assert over["errors"][0]["extensions"]["limit"] == "max_aliases"


def test_each_batched_operation_takes_a_rate_limit_token(guarded: Gateway) -> None:
    response = batch(guarded.url, [{"query": LISTED_QUERY}] * (PER_MINUTE + 1),
                     client_key(4))
    assert response.status_code == 200  # the operations that had a token were answered
    results = response.json()
    # The operations run concurrently: which one found the bucket empty is not defined.
    assert sorted(codes(r) for r in results) == [[]] * PER_MINUTE + [["RATE_LIMITED"]]
    assert sum(bool(r.get("data")) for r in results) == PER_MINUTE
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["retry-after"]) >= 1
    # Nothing left: the whole batch is refused as each operation would be.
    refused = batch(guarded.url, [{"query": LISTED_QUERY}] * 2, client_key(4))
    assert refused.status_code == 429
    assert [codes(r) for r in refused.json()] == [["RATE_LIMITED"]] * 2


def test_allow_list_applies_to_each_batched_operation(guarded: Gateway) -> None:
    response = batch(guarded.url, [{"query": LISTED_QUERY}, {"query": "{ locations { name } }"}],
                     client_key(5))
    listed, unlisted = response.json()
    assert listed["data"]["locations"]
    assert codes(unlisted) == ["PERSISTED_QUERY_NOT_ALLOWED"]


def test_batched_operations_register_and_use_persisted_hashes(open_stack: Gateway) -> None:
    query = "query Hashed { locations { id name } }"
    digest = hashlib.sha256(query.encode()).hexdigest()
    ext = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    unknown = batch(open_stack.url, [{"extensions": ext}, {"query": LOCATIONS}],
                    bearer("reader")).json()
    assert codes(unknown[0]) == ["PERSISTED_QUERY_NOT_FOUND"]
    registered = batch(open_stack.url, [{"query": query, "extensions": ext}],
                       bearer("reader")).json()
    assert registered[0]["data"]["locations"]
    by_hash = batch(open_stack.url, [{"extensions": ext}], bearer("reader")).json()
    assert by_hash[0]["data"] == registered[0]["data"]
