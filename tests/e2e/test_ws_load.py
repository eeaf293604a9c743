"""One caller with many subscriptions across sockets: it may hold
``max_subscriptions_per_principal`` (default 200) and no more, and webhooks are still
acknowledged and delivered to every one of them while they fan out. (How long the
acknowledgement takes under that load is measured in tests/benchmarks/bench_webhook_ack.py,
not asserted here.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from gateway.config import Settings
from tests.e2e.test_subscriptions import PROTOCOLS, GraphQLWs
from tests.e2e.test_ws_guard import ask, codes
from tests.helpers_webhooks import Signer, apost, now
from tests.support import Stack

APP_KEY = "load-app-key-0123456789"
OTHER_KEY = "load-other-key-0123456789"
SOCKETS, PER_SOCKET = 10, 20  # 200: the default limit
AVAILABLE = """subscription($skus: [ID!], $locs: [ID!]) {
  stockChanged(skus: $skus, locationIds: $locs) { stockLevel { available } } }"""
CHANGED = """subscription($skus: [ID!], $locs: [ID!]) {
  stockChanged(skus: $skus, locationIds: $locs) { sku locationId stockLevel { onHand } } }"""


@pytest.fixture(scope="module")
def loaded(redis_server_url: str) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    stack = Stack(redis_server_url, skus=12, stores=2, warehouses=2)
    stack.settings.api_keys = {"app": {"key": APP_KEY, "scopes": ["stock:read"]},
                               "other": {"key": OTHER_KEY, "scopes": ["stock:read"]}}
    stack.settings.rate_limit_per_minute = 0
    limit = stack.settings.max_subscriptions_per_principal
    assert limit == Settings().max_subscriptions_per_principal == SOCKETS * PER_SOCKET
    with stack:
        yield stack


async def test_one_key_holds_200_subscriptions_and_webhooks_still_reach_them_all(
        loaded: Stack) -> None:
    world = loaded.world
    item, warehouse = 5, 0
    cell = {"skus": [world.items[item].sku], "locs": [world.warehouses[warehouse].code]}
    app: dict[str, object] = {"Authorization": f"Bearer {APP_KEY}"}
    async with contextlib.AsyncExitStack() as stack:
        sockets = []
        for n in range(SOCKETS):
            client = await GraphQLWs.connect(loaded.url, PROTOCOLS[n % 2], app)
            stack.push_async_callback(client.close)
            sockets.append(client)
        ops = [(client, await client.subscribe(CHANGED, cell))
               for client in sockets for _ in range(PER_SOCKET)]
        gateway: Any = loaded.gateways[0].server.config.app
        feed = gateway.state.runtime.feed
        for _ in range(500):
            if sum(feed.quota.held.values()) >= SOCKETS * PER_SOCKET:
                break
            await asyncio.sleep(0.02)
        assert feed.quota.held == {"api_key:app": SOCKETS * PER_SOCKET}
        # The 201st, on a socket of its own, is refused with the limit named.
        extra = await GraphQLWs.connect(loaded.url, PROTOCOLS[0], app)
        stack.push_async_callback(extra.close)
        kind, errors = await ask(extra, CHANGED, cell)
        assert (kind, codes(errors)) == ("error", ["LIMIT_EXCEEDED"])
        assert errors[0]["extensions"] == {"code": "LIMIT_EXCEEDED",
                                           "limit": "max_subscriptions_per_principal",
                                           "max": 200}
        assert "max_subscriptions_per_principal" in errors[0]["message"]
        # Another caller is not affected.
        other = await GraphQLWs.connect(loaded.url, PROTOCOLS[1],
                                        {"Authorization": f"Bearer {OTHER_KEY}"})
        stack.push_async_callback(other.close)
        theirs = await other.subscribe(CHANGED, cell)
        # Webhooks for the cell: each acknowledged while 201 subscriptions fan it out.
        signer = Signer(loaded.settings, world)
        on_hands = [7_000 + n for n in range(1, 11)]
        async with httpx.AsyncClient(timeout=60) as http:
            for sequence, on_hand in enumerate(on_hands, start=1):
                delivery = signer.epcis([signer.epcis_event(item, warehouse, on_hand,
                                                            sequence)])
                response = await apost(http, loaded.url, delivery)
                assert response.status_code == 200, response.text
        for client, op in [*ops, (other, theirs)]:
            got = await client.take(op, len(on_hands), within=60)
            assert [c["stockLevel"]["onHand"] for c in got] == on_hands


async def test_a_result_being_sent_holds_no_delivery_slot(loaded: Stack) -> None:
    """More subscriptions whose results are stuck in sending (their consumer takes one and
    asks for no more, like a socket that does not drain) than there are delivery slots
    (gateway.events.changes.DELIVERY_SLOTS): another subscription still gets every change, in
    order, because a slot is given back as soon as a result is computed, before any transport
    sends it. Driven on the gateway's own loop through the schema it serves."""
    from gateway.events.changes import DELIVERY_SLOTS
    from resolvers.loaders import RequestContext

    world = loaded.world
    item, store = 7, 0
    cell = {"skus": [world.items[item].sku], "locs": [world.stores[store].code]}
    server = loaded.gateways[0]
    gateway: Any = server.server.config.app
    view = next(r.endpoint for r in gateway.routes if getattr(r, "path", "") == "/graphql")
    graph = gateway.state.graph
    received: list[int] = []
    stuck_got: list[int] = []
    started = asyncio.Event()  # on the test's loop

    async def scenario(count: int, test_loop: asyncio.AbstractEventLoop) -> None:
        async def stream() -> Any:
            context = RequestContext(graph=graph, loaders=graph.loaders(), feed=view.feed,
                                     reconciliation=view.reconciliation)
            return await view.schema.subscribe(AVAILABLE, variable_values=cell,
                                               context_value=context)

        async def stuck() -> None:  # takes one result, then never asks for the next
            results = await stream()
            first = await anext(results)
            stuck_got.append(first.data["stockChanged"]["stockLevel"]["available"])
            await asyncio.Event().wait()

        async def reader() -> None:
            results = await stream()
            while len(received) < count:
                result = await anext(results)
                received.append(result.data["stockChanged"]["stockLevel"]["available"])

        stuck_tasks = [asyncio.create_task(stuck()) for _ in range(DELIVERY_SLOTS + 2)]
        read = asyncio.create_task(reader())
        await asyncio.sleep(0.3)  # every stream registered with the feed
        test_loop.call_soon_threadsafe(started.set)
        try:
            await asyncio.wait_for(read, 60)
        finally:
            for task in stuck_tasks:
                task.cancel()
            await asyncio.gather(*stuck_tasks, return_exceptions=True)

    assert server.loop is not None
    signer = Signer(loaded.settings, world)
    hook = f"{loaded.url}/webhooks/pos"
    sent = [8000 - n for n in range(3 * DELIVERY_SLOTS)]
    done = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
        scenario(len(sent), asyncio.get_running_loop()), server.loop))
    await asyncio.wait_for(started.wait(), 30)
    async with httpx.AsyncClient(timeout=30) as http:
        for quantity in sent:
            delivery = signer.square(hook, [signer.square_count(item, store, quantity,
                                                                now())])
            assert (await apost(http, loaded.url, delivery)).status_code == 200
    await done
    assert received == sent
    assert stuck_got == [sent[0]] * (DELIVERY_SLOTS + 2)
