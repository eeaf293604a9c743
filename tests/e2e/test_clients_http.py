"""The HTTP transports driven by the JavaScript clients people use, against a running gateway:
npm ``graphql-sse`` (a subscription over Server-Sent Events that resumes with
``Last-Event-ID`` after its connection is cut), npm ``eventsource`` (the WHATWG EventSource,
which reconnects by itself with ``Last-Event-ID``), ``@apollo/client`` 4 (a multipart
subscription through ``HttpLink``, with and without ``PersistedQueryLink``; queries through
``BatchHttpLink``, with and without ``PersistedQueryLink``).

Each scenario is one script of ``tests/clients`` (pinned by its ``package-lock.json``), run by
:mod:`tests.nodejs`; what it reports is compared with the same thing asked directly over HTTP,
and every script must leave the console silent (no client warnings).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.helpers_webhooks import Signer, apost, now
from tests.nodejs import ClientScript, needs_node, run_client
from tests.support import Stack, free_port

pytestmark = needs_node

KEY = "http-clients-reader-key-01"
CHANGED = """subscription Changed($skus: [ID!], $locs: [ID!]) {
  stockChanged(skus: $skus, locationIds: $locs) {
    cursor sku locationId stockLevel { available } } }"""
LEVEL = """query Level($sku: ID!, $loc: ID!) {
  stockLevel(sku: $sku, locationId: $loc) { sku available location { id } } }"""
LOCATIONS = "query Locations { locations { id name } }"


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[Stack]:
    flusher = redis.Redis.from_url(redis_server_url)
    flusher.flushdb()
    flusher.close()
    running = Stack(redis_server_url, skus=20)
    running.settings.api_keys = {"reader": {"key": KEY, "scopes": ["stock:read"]}}
    running.settings.stream_keepalive_seconds = 0.5
    with running:
        yield running


def config(url: str, **extra: Any) -> dict[str, Any]:
    return {"http": f"{url}/graphql", "key": KEY, **extra}


def direct(stack: Stack, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = stack.graphql(query, variables, headers={"authorization": f"Bearer {KEY}"})
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def untyped(value: Any) -> Any:
    """``value`` without the ``__typename`` fields Apollo adds to every selection."""
    if isinstance(value, dict):
        return {k: untyped(v) for k, v in value.items() if k != "__typename"}
    if isinstance(value, list):
        return [untyped(v) for v in value]
    return value


async def count(stack: Stack, i: int, store: int, quantity: int) -> None:
    """A Square physical count at a store (available := quantity), as a signed webhook."""
    signer = Signer(stack.settings, stack.world)
    delivery = signer.square(f"{stack.url}/webhooks/pos",
                             [signer.square_count(i, store, quantity, now())])
    async with httpx.AsyncClient(timeout=30) as client:
        response = await apost(client, stack.url, delivery)
    assert response.status_code == 200, response.text


def subscribers(stack: Stack) -> set[Any]:
    app: Any = stack.gateways[0].server.config.app
    return set(app.state.runtime.feed.subscribers)


async def until(check: Any, what: str) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


class CuttableLink:
    """A TCP proxy in front of the gateway whose connections the test can cut, like a mobile
    client losing its network."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.refusing = False  # True: new connections are dropped at once (no network)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_w.transport.abort()
            return
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [client_w, upstream_w]
        await asyncio.gather(self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w))

    async def cut(self) -> None:
        """Drop every open connection, both ways, without a goodbye."""
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CuttableLink]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        try:
            yield self
        finally:
            await self.cut()
            self.server.close()
            await self.server.wait_closed()


async def test_graphql_sse_resumes_with_last_event_id_after_a_cut(stack: Stack) -> None:
    i = 1
    sku, store = stack.world.items[i].sku, stack.world.stores[0].code
    link = CuttableLink(stack.gateway_ports[0])
    async with link.running(), ClientScript("graphql-sse-resume.mjs", config(
            link.url, query=CHANGED, variables={"skus": [sku], "locs": [store]},
            total=5)) as script:
        before = subscribers(stack)
        assert (await script.message("connected")) == {"lastEventId": None}
        await until(lambda: subscribers(stack) - before, "not subscribed")
        await count(stack, i, 0, 40)
        first = await script.message("next")
        await link.cut()
        assert "terminated" in str(await script.message("dropped")).lower()
        await until(lambda: not subscribers(stack) - before, "subscription left behind")
        for quantity in (39, 38, 37):  # while the client is cut off
            await count(stack, i, 0, quantity)
        await script.send({"reconnect": True})
        assert (await script.message("connected")) == {"lastEventId": first["extensions"][
            "cursor"]}
        await until(lambda: subscribers(stack) - before, "not subscribed again")
        missed = [await script.message("next") for _ in range(3)]
        await count(stack, i, 0, 36)
        run = await script.finish()
    results = run.result
    changes = [r["data"]["stockChanged"] for r in results]
    assert [c["stockLevel"]["available"] for c in changes] == [40, 39, 38, 37, 36]
    assert results[1:4] == missed
    cursors = [c["cursor"] for c in changes]
    assert [r["extensions"]["cursor"] for r in results] == cursors
    assert len(set(cursors)) == 5  # no duplicate
    assert sorted(cursors, key=lambda c: tuple(map(int, c.split("-")))) == cursors
    assert run.console == []


@pytest.mark.parametrize("persisted", [False, True])
async def test_apollo_multipart_subscription_over_http_link(stack: Stack,
                                                            persisted: bool) -> None:
    i = 2 + persisted
    sku, store = stack.world.items[i].sku, stack.world.stores[1].code
    before = subscribers(stack)
    async with ClientScript("apollo-multipart-subscription.mjs", config(
            stack.url, query=CHANGED, variables={"skus": [sku], "locs": [store]}, count=2,
            persisted=persisted)) as script:
        await script.message("subscribed")
        await until(lambda: subscribers(stack) - before, "not subscribed")
        await count(stack, i, 1, 25)
        await script.message("next")
        await count(stack, i, 1, 24)
        run = await script.finish()
    results = run.result["results"]
    assert [r["codes"] for r in results] == [[], []]
    changes = [r["data"]["stockChanged"] for r in results]
    assert [(c["sku"], c["locationId"], c["stockLevel"]["available"]) for c in changes] == [
        (sku, store, 25), (sku, store, 24)]
    level = direct(stack, LEVEL, {"sku": sku, "loc": store})["stockLevel"]
    assert level["available"] == 24
    requests = run.result["requests"]
    if persisted:  # the hash alone first; the server does not know it; then with the text
        assert requests == [{"hashOnly": True, "hasHash": True},
                            {"hashOnly": False, "hasHash": True}]
    else:
        assert requests == [{"hashOnly": False, "hasHash": False}]
    assert run.console == []
    await until(lambda: not subscribers(stack) - before, "subscription left behind")


def test_apollo_batch_http_link_sends_one_batch_and_gets_each_result(stack: Stack) -> None:
    sku = stack.world.items[5].sku
    operations: list[dict[str, Any]] = [
        {"query": LEVEL, "variables": {"sku": sku, "loc": stack.world.stores[n].code}}
        for n in range(3)]
    operations.append({"query": LOCATIONS})
    run = run_client("apollo-batch.mjs", config(stack.url, operations=operations, rounds=2))
    first, second = run.result["results"]
    expected = [direct(stack, op["query"], op.get("variables", {})) for op in operations]
    assert [untyped(r["data"]) for r in first] == expected
    assert second == first
    # One POST per round, each a JSON array of the four operations; in the second round the
    # stock levels were response-cache hits (the location list reads no cached entity, so it
    # is not stored: it runs again, from the catalog).
    assert [len(body) for body in run.result["requests"]] == [4, 4]
    assert [r["status"] for r in run.result["responses"]] == [200, 200]
    assert run.result["responses"][1]["cache"] == "hit, hit, hit, miss"
    assert run.console == []


def test_apollo_batch_with_persisted_queries(stack: Stack) -> None:
    sku = stack.world.items[6].sku
    operations: list[dict[str, Any]] = [
        {"query": LEVEL, "variables": {"sku": sku, "loc": stack.world.stores[n].code}}
        for n in range(2)]
    run = run_client("apollo-batch.mjs", config(stack.url, operations=operations, rounds=2,
                                                persisted=True))
    expected = [direct(stack, op["query"], op["variables"]) for op in operations]
    assert untyped(run.result["results"]) == [[{"data": d, "codes": []} for d in expected]] * 2
    bodies = run.result["requests"]
    # Round 1: hashes only (unknown), then the texts; round 2: hashes only, now known.
    assert [[("query" in op) for op in body] for body in bodies] == [
        [False, False], [True, True], [False, False]]
    assert all(op["extensions"]["persistedQuery"]["version"] == 1 for b in bodies for op in b)
    assert run.console == []


async def test_eventsource_reconnects_by_itself_with_last_event_id(stack: Stack) -> None:
    """The WHATWG EventSource (npm ``eventsource``): after a cut it reconnects on its own and
    sends the id of the last event it saw as ``Last-Event-ID``; nothing is missed or
    repeated."""
    i = 8
    sku, store = stack.world.items[i].sku, stack.world.stores[2].code
    link = CuttableLink(stack.gateway_ports[0])
    async with link.running(), ClientScript("eventsource-resume.mjs", config(
            link.url, query=CHANGED, variables={"skus": [sku], "locs": [store]},
            total=5)) as script:
        before = subscribers(stack)
        await script.message("open")
        await until(lambda: subscribers(stack) - before, "not subscribed")
        await count(stack, i, 2, 60)
        first = await script.message("next")
        link.refusing = True  # the network is gone: reconnect attempts fail too
        await link.cut()
        await script.message("error")
        await until(lambda: not subscribers(stack) - before, "subscription left behind")
        for quantity in (59, 58, 57):
            await count(stack, i, 2, quantity)
        link.refusing = False
        await script.message("open", seconds=60)  # EventSource retried by itself
        await until(lambda: subscribers(stack) - before, "not subscribed again")
        missed = [await script.message("next") for _ in range(3)]
        await count(stack, i, 2, 56)
        run = await script.finish()
    received = run.result
    changes = [r["result"]["data"]["stockChanged"] for r in received]
    assert [c["stockLevel"]["available"] for c in changes] == [60, 59, 58, 57, 56]
    assert received[0] == first
    assert received[1:4] == missed
    assert [r["id"] for r in received] == [c["cursor"] for c in changes]
    assert len({r["id"] for r in received}) == 5
    assert run.console == []
