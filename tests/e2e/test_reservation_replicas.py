"""Reservations across two gateway processes sharing one Redis: exactly what is there is
held under concurrency, retries reach the same reservation on either replica, expiry needs no
process to survive, and a replica killed with SIGKILL in a burst loses no answered
reservation and duplicates none."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from resolvers.connectors.http import auth_headers
from tests.e2e.test_replicas import Replicas

RESERVE = """
mutation R($input: ReserveStockInput!) {
  reserveStock(input: $input) {
    reservation { id status quantity } userErrors { code message }
  }
}"""
LEVEL = """query S($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) {
  available reserved availableToSell } }"""


@pytest.fixture(scope="module")
def replicas(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Replicas]:
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    with Replicas(redis_server_url, tmp_path_factory.mktemp("reserve")) as running:
        yield running


def post(r: Replicas, k: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{r.url(k)}/graphql", json={"query": query, "variables": variables},
                          timeout=30)
    body: dict[str, Any] = response.json()
    return body


def level(r: Replicas, k: int, sku: str, loc: str) -> dict[str, Any]:
    body = post(r, k, LEVEL, {"sku": sku, "loc": loc})
    assert "errors" not in body, body
    found: dict[str, Any] = body["data"]["stockLevel"]
    return found


def wait_for(check: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def set_stock(r: Replicas, i: int, store: int, quantity: int) -> tuple[str, str]:
    """A physical count at a store in the POS simulator, seen by both replicas."""
    item, location = r.world.items[i], r.world.stores[store]
    backend = r.settings.backends["pos"]
    response = httpx.post(f"{backend.base_url}/v2/inventory/changes/batch-create",
                          headers=auth_headers(backend), timeout=30, json={
        "idempotency_key": str(uuid.uuid4()), "changes": [{
            "type": "PHYSICAL_COUNT", "physical_count": {
                "catalog_object_id": item.square_variation_id,
                "location_id": location.square_id, "state": "IN_STOCK",
                "quantity": str(quantity)}}]})
    assert response.status_code == 200, response.text
    for k in range(len(r.ports)):
        wait_for(lambda k=k: level(r, k, item.sku, location.code)["available"] == quantity)
    return item.sku, location.code


async def reserve_many(r: Replicas, requests: list[tuple[int, dict[str, Any]]],
                       ) -> list[dict[str, Any] | BaseException]:
    limits = httpx.Limits(max_connections=400)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def one(k: int, given: dict[str, Any]) -> dict[str, Any]:
            for _ in range(20):  # as a client does: 503 with Retry-After (too many bodies
                # waited for at once, gateway/http/asgi.py BodyGuard) and SERVICE_UNAVAILABLE
                # (Redis late on a loaded machine) are tried again, with the same key
                response = await client.post(f"{r.url(k)}/graphql", json={
                    "query": RESERVE, "variables": {"input": given}})
                if response.status_code != 503 and "SERVICE_UNAVAILABLE" not in response.text:
                    break
                await asyncio.sleep(0.1)
            body = response.json()
            if "data" not in body or body.get("errors"):
                raise AssertionError(f"{response.status_code} {body}")
            payload: dict[str, Any] = body["data"]["reserveStock"]
            return payload

        return list(await asyncio.gather(*(one(k, g) for k, g in requests),
                                         return_exceptions=True))


def test_200_requests_for_50_units_over_two_replicas(replicas: Replicas) -> None:
    sku, loc = set_stock(replicas, 1, 0, 50)
    requests = [(n % 2, {"sku": sku, "locationId": loc, "quantity": 1,
                         "idempotencyKey": f"burst-{n}"}) for n in range(200)]
    results = asyncio.run(reserve_many(replicas, requests))
    assert not [x for x in results if isinstance(x, BaseException)]
    made = [x for x in results if not isinstance(x, BaseException) and x["reservation"]]
    refused = [x for x in results if not isinstance(x, BaseException) and x["userErrors"]]
    assert len(made) == 50
    assert len(refused) == 150
    assert {e["code"] for x in refused for e in x["userErrors"]} == {"INSUFFICIENT_STOCK"}
    for k in (0, 1):
        assert level(replicas, k, sku, loc)["reserved"] == 50
        assert level(replicas, k, sku, loc)["availableToSell"] == 0


def test_retries_on_either_replica_are_one_reservation(replicas: Replicas) -> None:
    sku, loc = set_stock(replicas, 2, 0, 10)
    given = {"sku": sku, "locationId": loc, "quantity": 3, "idempotencyKey": "retry-me"}
    results = asyncio.run(reserve_many(replicas, [(n % 2, given) for n in range(40)]))
    ids = {x["reservation"]["id"] for x in results if not isinstance(x, BaseException)}
    assert len(ids) == 1
    assert level(replicas, 1, sku, loc)["reserved"] == 3


def test_expiry_needs_no_process_to_survive(replicas: Replicas) -> None:
    sku, loc = set_stock(replicas, 3, 0, 5)
    made = post(replicas, 0, RESERVE, {"input": {"sku": sku, "locationId": loc,
                                                 "quantity": 5, "ttlSeconds": 2,
                                                 "idempotencyKey": "short"}})
    assert made["data"]["reserveStock"]["reservation"]["status"] == "ACTIVE"
    history = post(replicas, 1, """query H($sku: ID!) { stockEvents(skus: [$sku]) {
        endCursor } }""", {"sku": sku})
    cursor = history["data"]["stockEvents"]["endCursor"]
    # Both replicas go down before the hold expires; one comes back after.
    replicas.kill(0)
    replicas.kill(1)
    time.sleep(3)
    replicas.start(1)
    replicas.wait_ready(1)
    wait_for(lambda: level(replicas, 1, sku, loc)["reserved"] == 0)
    after = post(replicas, 1, """query H($sku: ID!, $after: String) {
        stockEvents(skus: [$sku], after: $after) { changes { source movement { type }
        stockLevel { reserved availableToSell } } } }""", {"sku": sku, "after": cursor})
    changes = after["data"]["stockEvents"]["changes"]
    assert [(c["source"], c["movement"]["type"], c["stockLevel"]["reserved"])
            for c in changes] == [("retailgraph", "EXPIRE", 0)]
    replicas.start(0)
    replicas.wait_ready(0)


def test_kill_9_in_a_burst_loses_no_answered_reservation(replicas: Replicas,
                                                         tmp_path: Path) -> None:
    sku, loc = set_stock(replicas, 4, 0, 1000)
    keys = [f"kill-{n}" for n in range(300)]

    async def burst() -> list[dict[str, Any] | BaseException]:
        proc = replicas.procs[0]
        assert proc is not None
        answered = 0
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            async def one(key: str) -> dict[str, Any]:
                nonlocal answered
                response = await client.post(f"{replicas.url(0)}/graphql", json={
                    "query": RESERVE, "variables": {"input": {
                        "sku": sku, "locationId": loc, "quantity": 1,
                        "idempotencyKey": key}}})
                payload: dict[str, Any] = response.json()["data"]["reserveStock"]
                answered += 1
                if answered == 40:  # in the middle of the burst
                    os.kill(proc.pid, signal.SIGKILL)
                return payload

            return list(await asyncio.gather(*(one(key) for key in keys),
                                             return_exceptions=True))

    results = asyncio.run(burst())
    replicas.kill(0)  # reaped (it is dead already)
    answered = {key: x["reservation"]["id"] for key, x in zip(keys, results, strict=True)
                if not isinstance(x, BaseException) and x["reservation"]}
    assert answered, "the replica died before answering anything"
    assert len(answered) < len(keys), "the replica answered everything before it died"
    # The clients retry everything on the other replica: each answered reservation is found
    # again (the same id), the rest are made once.
    retried = asyncio.run(reserve_many(
        replicas, [(1, {"sku": sku, "locationId": loc, "quantity": 1,
                        "idempotencyKey": key}) for key in keys]))
    assert not [x for x in retried if isinstance(x, BaseException)], retried[:3]
    again = {key: x["reservation"]["id"] for key, x in zip(keys, retried, strict=True)
             if not isinstance(x, BaseException) and x["reservation"]}
    assert len(again) == len(keys)
    assert all(again[key] == rid for key, rid in answered.items())
    assert level(replicas, 1, sku, loc)["reserved"] == len(keys)
    replicas.start(0)
    replicas.wait_ready(0)
