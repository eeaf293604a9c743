"""Slow senders: request bodies that trickle in, over raw sockets.

Before issue 11, 300 webhook bodies sent a byte at a time stayed open for as long as their
senders liked (40 s in the probe). Now a body of ``POST /graphql`` or ``POST /webhooks/*``
must arrive within ``body_timeout_seconds`` (else 408, connection closed), and at most
``max_concurrent_bodies`` are read at once: beyond that a request whose body would have to be
waited for gets 503 with ``Retry-After`` at once, while requests whose bodies came whole
(as small ones do) are still served. Nothing refused changes any state or logs an error.

The clients here are plain asyncio streams writing HTTP/1.1 by hand, so a body can be sent
one byte at a time, which no HTTP client library does on purpose.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from gateway.config import Settings, apply_env, demo_settings
from tests.helpers_webhooks import DLQ, STOCK_LEVEL, Signer, apost, stream
from tests.support import ErrorLog, Stack, errors_logged

TIMEOUT = 2.0  # body_timeout_seconds of the gateway under test (default 10)
SLOTS = 40  # max_concurrent_bodies (default 64)
QUERY = orjson.dumps({"query": "{ locations { id } }"})


@dataclass
class Answer:
    status: int | None  # None: the connection ended without an answer
    headers: dict[str, str]
    body: bytes
    answered_after: float  # seconds from the headers being sent
    closed_after: float | None  # when the server closed the connection (None: it did not)


async def slow_request(port: int, path: str, body: bytes, every: float,
                       headers: dict[str, str] | None = None, give_up: float = 30,
                       ) -> Answer:
    """POST ``body`` to ``path``, one byte every ``every`` seconds (all of it at once when 0),
    and read the answer, then wait for the server to close the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body if not every else b""))
    await writer.drain()
    started = time.monotonic()

    async def trickle() -> None:
        # Byte i goes at started + (i + 1) * every: on schedule, never early, and a late
        # wake-up on a busy machine does not push every later byte back (sleeping ``every``
        # per byte added each oversleep up, and a body meant to take half the deadline
        # could take all of it).
        for i in range(len(body)):
            await asyncio.sleep(max(0.0, started + (i + 1) * every - time.monotonic()))
            writer.write(body[i:i + 1])
            await writer.drain()

    sender = asyncio.create_task(trickle()) if every else None
    status, found, content = None, {}, b""
    try:
        async with asyncio.timeout(give_up):
            raw = await reader.readuntil(b"\r\n\r\n")
            answered = time.monotonic() - started
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            found = {k.lower(): v.strip() for k, _, v in
                     (line.partition(":") for line in lines[1:] if line)}
            content = await reader.readexactly(int(found.get("content-length", "0")))
            closed: float | None = None
            if await reader.read(1) == b"":  # the server closes: nothing more will be read
                closed = time.monotonic() - started
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        answered = closed = time.monotonic() - started
    finally:
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
    return Answer(status, found, content, answered, closed)


@pytest.fixture(scope="module")
def slow(redis_server_url: str) -> Iterator[tuple[Stack, ErrorLog]]:
    stack = Stack(redis_server_url)
    stack.settings.body_timeout_seconds = TIMEOUT
    stack.settings.max_concurrent_bodies = SLOTS
    with errors_logged() as errors, stack:
        yield stack, errors


def port_of(stack: Stack) -> int:
    return stack.gateways[0].port


def test_three_hundred_trickling_webhooks_are_answered_in_time_and_others_get_through(
        slow: tuple[Stack, ErrorLog]) -> None:
    stack, errors = slow
    signer = Signer(stack.settings, stack.world)
    logged_before = len(stream(stack.settings.redis_url))
    dead_before = len(stream(stack.settings.redis_url, DLQ))
    body = orjson.dumps({"type": "EPCISDocument", "epcisBody": {"eventList": []}}) * 4

    async def attack_and_serve() -> tuple[list[Answer], list[int], list[float]]:
        attack = [asyncio.create_task(slow_request(port_of(stack), "/webhooks/wms", body, 1.0))
                  for _ in range(300)]
        await asyncio.sleep(0.5)  # all of them are in
        served, health = [], []
        async with httpx.AsyncClient(timeout=30) as client:
            for n in range(6):  # genuine deliveries and queries meanwhile, bodies complete
                delivery = signer.epcis([signer.epcis_event(5, 0, 700 + n, 900 + n)])
                served.append((await apost(client, stack.url, delivery)).status_code)
                served.append((await client.post(f"{stack.url}/graphql", json={
                    "query": STOCK_LEVEL, "variables": {
                        "sku": stack.world.items[5].sku, "loc": "WH01"}})).status_code)
                started = time.monotonic()
                assert (await client.get(f"{stack.url}/healthz")).status_code == 200
                health.append(time.monotonic() - started)
                await asyncio.sleep(0.2)
        return list(await asyncio.gather(*attack)), served, health

    answers, served, health = asyncio.run(attack_and_serve())
    statuses = Counter(a.status for a in answers)
    assert set(statuses) == {408, 503}, statuses
    assert statuses[408] == SLOTS, statuses  # exactly the ones being read
    for a in answers:
        assert a.closed_after is not None, a  # the server hung up: nothing stays open
        assert a.closed_after <= TIMEOUT + 3, a
        reply = orjson.loads(a.body)
        if a.status == 408:
            assert a.answered_after >= TIMEOUT - 0.1
            assert reply["reason"] == "body_timeout"
            assert "did not arrive within 2s" in reply["error"]
        else:
            assert a.answered_after <= 1.5, a  # refused at once, not after waiting
            assert a.headers["retry-after"] == "1"
            assert reply["reason"] == "busy"
    assert served == [200] * len(served)
    assert max(health) < 1.0
    # The refused bodies left nothing behind; the genuine deliveries were logged.
    assert len(stream(stack.settings.redis_url)) == logged_before + 6
    assert len(stream(stack.settings.redis_url, DLQ)) == dead_before
    assert not errors.records, errors.messages()


SUBSCRIPTION = orjson.dumps({"query": "subscription { stockChanged { sku } }"})


@pytest.mark.parametrize(("body", "accept"), [
    (QUERY, "application/json"),
    (b"[" + QUERY + b"," + QUERY + b"]", "application/json"),
    (SUBSCRIPTION, "multipart/mixed;subscriptionSpec=1.0, application/json"),
], ids=["query", "batch", "multipart"])
def test_a_graphql_body_that_trickles_gets_408_naming_the_setting(
        slow: tuple[Stack, ErrorLog], body: bytes, accept: str) -> None:
    stack, errors = slow
    answer = asyncio.run(slow_request(port_of(stack), "/graphql", body, 0.5,
                                      {"Accept": accept}))
    assert answer.status == 408, answer
    assert TIMEOUT - 0.1 <= answer.answered_after <= TIMEOUT + 2
    assert answer.closed_after is not None
    (error,) = orjson.loads(answer.body)["errors"]
    assert error["extensions"] == {"code": "LIMIT_EXCEEDED", "limit": "body_timeout_seconds",
                                   "max": TIMEOUT}
    assert not errors.records, errors.messages()


def test_a_graphql_sse_body_that_trickles_is_refused_the_way_that_protocol_wants(
        slow: tuple[Stack, ErrorLog]) -> None:
    """graphql-sse clients get an accepted stream that reports the error and completes (a
    failed status would make the client retry or report nothing useful)."""
    stack, errors = slow
    answer = asyncio.run(slow_request(port_of(stack), "/graphql", SUBSCRIPTION, 0.5,
                                      {"Accept": "text/event-stream"}))
    assert answer.status == 200, answer
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert TIMEOUT - 0.1 <= answer.answered_after <= TIMEOUT + 2
    events = answer.body.decode().split("\r\n\r\n")
    assert events[0].startswith("event: next\r\ndata: ")
    (error,) = orjson.loads(events[0].split("data: ", 1)[1])["errors"]
    assert error["extensions"]["limit"] == "body_timeout_seconds"
    assert events[1].startswith("event: complete")
    assert not errors.records, errors.messages()


def test_a_slow_body_that_arrives_in_time_is_served(slow: tuple[Stack, ErrorLog]) -> None:
    stack, errors = slow
    signer = Signer(stack.settings, stack.world)
    delivery = signer.epcis([signer.epcis_event(6, 1, 321, 77)])
    every = (TIMEOUT / 2) / len(delivery.body)  # the whole body in half the time allowed

    async def both() -> tuple[Answer, Answer]:
        return await asyncio.gather(
            slow_request(port_of(stack), "/webhooks/wms", delivery.body, every,
                         delivery.headers),
            slow_request(port_of(stack), "/graphql", QUERY, (TIMEOUT / 2) / len(QUERY)))

    hook, query = asyncio.run(both())
    assert hook.status == 200, hook
    assert orjson.loads(hook.body)["status"] == "accepted"
    assert query.status == 200, query
    assert orjson.loads(query.body)["data"]["locations"]
    assert not errors.records, errors.messages()


def test_a_sender_that_leaves_mid_body_leaves_nothing_behind(
        slow: tuple[Stack, ErrorLog]) -> None:
    stack, errors = slow
    before = len(stream(stack.settings.redis_url))

    async def leave() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(stack))
        writer.write(b"POST /webhooks/pos HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        await writer.wait_closed()

    asyncio.run(leave())
    time.sleep(0.3)
    assert httpx.get(f"{stack.url}/healthz", timeout=5).status_code == 200
    assert len(stream(stack.settings.redis_url)) == before
    assert not errors.records, errors.messages()


def test_the_body_limits_are_settings() -> None:
    assert (Settings().body_timeout_seconds, Settings().max_concurrent_bodies) == (10.0, 64)
    settings = apply_env(demo_settings(environ={}), {
        "RETAILGRAPH_BODY_TIMEOUT_SECONDS": "2.5", "RETAILGRAPH_MAX_CONCURRENT_BODIES": "8"})
    assert (settings.body_timeout_seconds, settings.max_concurrent_bodies) == (2.5, 8)
    settings.max_concurrent_bodies = 0
    with pytest.raises(ValueError, match="max_concurrent_bodies"):
        settings.validate()
