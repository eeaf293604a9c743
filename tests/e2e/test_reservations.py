"""Reservations over real HTTP against a running stack (simulators, gateway, the test Redis):
the checkout flow, user errors, idempotent retries, the held units in stock levels and
availability, commit ending both ways, a restricted caller, subscriptions, the response
cache, batches and the WebSocket."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.typing import Subprotocol

from tests.support import Stack, fresh_stack

ADMIN_KEY = "admin-key-0123456789abcdef"
STORE_KEY = "store-key-0123456789abcdef"
READER_KEY = "reader-key-0123456789abcdef"
TRANSPORT_WS = Subprotocol("graphql-transport-ws")
RESERVE = """
mutation R($input: ReserveStockInput!) {
  reserveStock(input: $input) {
    reservation { id sku location { id } quantity status expiresAt reference createdAt }
    userErrors { code message field }
  }
}"""
RELEASE = """
mutation L($id: ID!) { releaseReservation(id: $id) {
  reservation { id status quantity } userErrors { code message field } } }"""
COMMIT = """
mutation C($id: ID!, $ref: String) { commitReservation(id: $id, orderReference: $ref) {
  reservation { id status expiresAt } userErrors { code message field } } }"""
LEVEL = """
query S($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) {
  available committed reserved availableToSell safetyStock } }"""
ONLINE = """
query A($sku: ID!) { product(sku: $sku) { availability(channel: ONLINE) {
  available byLocation { location { id } availableToSell reserved } } } }"""


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[Stack]:
    keys = {"admin": {"key": ADMIN_KEY, "scopes": ["admin"]},
            "store": {"key": STORE_KEY, "scopes": ["stock:read", "stock:reserve"],
                      "locations": ["ST001"]},
            "reader": {"key": READER_KEY, "scopes": ["stock:read"]}}
    with fresh_stack(redis_server_url, api_keys=keys) as running:
        yield running


def gql(stack: Stack, query: str, variables: dict[str, Any] | None = None,
        key: str = ADMIN_KEY, replica: int = 0) -> dict[str, Any]:
    return stack.graphql(query, variables, replica=replica,
                         headers={"authorization": f"Bearer {key}"})


def reserve(stack: Stack, key: str = ADMIN_KEY, **given: Any) -> dict[str, Any]:
    given.setdefault("idempotencyKey", str(uuid.uuid4()))
    body = gql(stack, RESERVE, {"input": given}, key)
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["reserveStock"]
    return payload


def level(stack: Stack, sku: str, loc: str) -> dict[str, Any]:
    body = gql(stack, LEVEL, {"sku": sku, "loc": loc})
    assert "errors" not in body, body
    found: dict[str, Any] = body["data"]["stockLevel"]
    return found


def set_store_stock(stack: Stack, i: int, store: int, quantity: int,
                    state: str = "IN_STOCK") -> None:
    """A physical count in the POS simulator; waits until the gateway serves it."""
    item, location = stack.world.items[i], stack.world.stores[store]
    with stack.sim("pos") as pos:
        response = pos.post("/v2/inventory/changes/batch-create", json={
            "idempotency_key": str(uuid.uuid4()), "changes": [{
                "type": "PHYSICAL_COUNT", "physical_count": {
                    "catalog_object_id": item.square_variation_id,
                    "location_id": location.square_id, "state": state,
                    "quantity": str(quantity)}}]})
    assert response.status_code == 200, response.text
    field = "available" if state == "IN_STOCK" else "committed"
    wait_for(lambda: level(stack, item.sku, location.code)[field] == quantity)


def move_to_reserved_for_sale(stack: Stack, i: int, store: int, quantity: int) -> None:
    """The POS records the order: units go from IN_STOCK to RESERVED_FOR_SALE."""
    item, location = stack.world.items[i], stack.world.stores[store]
    with stack.sim("pos") as pos:
        response = pos.post("/v2/inventory/changes/batch-create", json={
            "idempotency_key": str(uuid.uuid4()), "changes": [{
                "type": "ADJUSTMENT", "adjustment": {
                    "catalog_object_id": item.square_variation_id,
                    "location_id": location.square_id, "from_state": "IN_STOCK",
                    "to_state": "RESERVED_FOR_SALE", "quantity": str(quantity)}}]})
    assert response.status_code == 200, response.text


def wait_for(check: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def cell(stack: Stack, i: int, store: int) -> tuple[str, str]:
    return stack.world.items[i].sku, stack.world.stores[store].code


def test_checkout_flow(stack: Stack) -> None:
    sku, loc = cell(stack, 1, 0)
    set_store_stock(stack, 1, 0, 10)
    made = reserve(stack, sku=sku, locationId=loc, quantity=3, reference="cart-1")
    assert made["userErrors"] == []
    r = made["reservation"]
    assert (r["sku"], r["location"]["id"], r["quantity"], r["status"], r["reference"]) == (
        sku, loc, 3, "ACTIVE", "cart-1")
    after = level(stack, sku, loc)
    assert (after["available"], after["reserved"], after["availableToSell"]) == (10, 3, 7)
    was_committed = after["committed"]
    committed = gql(stack, COMMIT, {"id": r["id"], "ref": "ORDER-1"})["data"]
    assert committed["commitReservation"]["userErrors"] == []
    assert committed["commitReservation"]["reservation"]["status"] == "COMMITTED"
    assert level(stack, sku, loc)["reserved"] == 3  # held until the POS shows the order
    # The POS records the order (3 units IN_STOCK -> RESERVED_FOR_SALE): the hold ends, the
    # units are counted once, by the POS.
    move_to_reserved_for_sale(stack, 1, 0, 3)
    wait_for(lambda: level(stack, sku, loc)["reserved"] == 0)
    final = level(stack, sku, loc)
    assert (final["available"], final["committed"], final["availableToSell"]) == (
        7, was_committed + 3, 7)


def test_user_errors_change_nothing(stack: Stack) -> None:
    sku, loc = cell(stack, 2, 0)
    set_store_stock(stack, 2, 0, 4)
    cases: list[tuple[dict[str, Any], str, list[str]]] = [
             ({"quantity": 0}, "INVALID_QUANTITY", ["input", "quantity"]),
             ({"quantity": -3}, "INVALID_QUANTITY", ["input", "quantity"]),
             ({"quantity": 5}, "INSUFFICIENT_STOCK", ["input", "quantity"]),
             ({"quantity": 1, "sku": "NO-SUCH-SKU"}, "UNKNOWN_SKU", ["input", "sku"]),
             ({"quantity": 1, "locationId": "NOPE"}, "UNKNOWN_LOCATION",
              ["input", "locationId"]),
             ({"quantity": 1, "ttlSeconds": 0}, "INVALID_TTL", ["input", "ttlSeconds"]),
             ({"quantity": 1, "channel": "ONLINE"}, "INVALID_INPUT", ["input", "locationId"]),
             ({"quantity": 1, "locationId": None, "channel": "STORE"}, "INVALID_INPUT",
              ["input", "channel"]),
             ({"quantity": 1, "idempotencyKey": "k" * 300}, "INVALID_IDEMPOTENCY_KEY",
              ["input", "idempotencyKey"]),
             ({"quantity": 1, "reference": "r" * 300}, "INVALID_REFERENCE",
              ["input", "reference"])]
    for change, code, field in cases:
        given: dict[str, Any] = {"sku": sku, "locationId": loc, **change}
        payload = reserve(stack, **given)
        assert payload["reservation"] is None, change
        assert [(e["code"], e["field"]) for e in payload["userErrors"]] == [(code, field)]
    # A quantity past GraphQL's Int: the request's error, before any resolver runs.
    body = gql(stack, RESERVE, {"input": {"sku": sku, "locationId": loc, "quantity": 2**31,
                                          "idempotencyKey": "big"}})
    assert body["errors"][0]["extensions"]["code"] in ("BAD_USER_INPUT",
                                                       "GRAPHQL_VALIDATION_FAILED"), body
    refused = reserve(stack, sku=sku, locationId=loc, quantity=5)
    assert "only 4 available to sell" in refused["userErrors"][0]["message"]
    assert level(stack, sku, loc)["reserved"] == 0
    for query, name in ((RELEASE, "releaseReservation"), (COMMIT, "commitReservation")):
        for bad in ("nope", ""):
            body = gql(stack, query, {"id": bad})
            assert body["data"][name]["userErrors"][0]["code"] == "NOT_FOUND"
        # An id no client sends (the ID argument guard): refused before it reaches Redis.
        body = gql(stack, query, {"id": "x" * 5000})
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body


def test_idempotent_retries_on_both_paths(stack: Stack) -> None:
    sku, loc = cell(stack, 3, 0)
    set_store_stock(stack, 3, 0, 6)
    key = str(uuid.uuid4())
    given: dict[str, Any] = {"sku": sku, "locationId": loc, "quantity": 2, "idempotencyKey": key}
    first = reserve(stack, **given)
    again = [reserve(stack, **given) for _ in range(5)]
    assert {a["reservation"]["id"] for a in again} == {first["reservation"]["id"]}
    assert level(stack, sku, loc)["reserved"] == 2
    reused = reserve(stack, **{**given, "quantity": 3})
    assert reused["reservation"] is None
    assert reused["userErrors"][0]["code"] == "IDEMPOTENCY_KEY_REUSED"
    # Another caller's same key is another reservation.
    other = reserve(stack, key=STORE_KEY, **given)
    assert other["reservation"]["id"] != first["reservation"]["id"]
    assert level(stack, sku, loc)["reserved"] == 4
    rid = first["reservation"]["id"]
    released = gql(stack, RELEASE, {"id": rid})["data"]["releaseReservation"]
    assert released["reservation"]["status"] == "RELEASED"
    assert gql(stack, RELEASE, {"id": rid})["data"]["releaseReservation"]["userErrors"] == []
    final = gql(stack, COMMIT, {"id": rid})["data"]["commitReservation"]
    assert final["userErrors"][0]["code"] == "ALREADY_FINAL"
    assert level(stack, sku, loc)["reserved"] == 2


def test_online_picks_the_warehouse_with_most_available_to_sell(stack: Stack) -> None:
    sku = stack.world.items[4].sku
    before = gql(stack, ONLINE, {"sku": sku})["data"]["product"]["availability"]
    by = {x["location"]["id"]: x["availableToSell"] for x in before["byLocation"]}
    best = min(by, key=lambda loc: (-by[loc], loc))
    made = reserve(stack, sku=sku, channel="ONLINE", quantity=2)
    assert made["reservation"]["location"]["id"] == best
    after = gql(stack, ONLINE, {"sku": sku})["data"]["product"]["availability"]
    assert after["available"] == before["available"] - 2
    held = {x["location"]["id"]: x["reserved"] for x in after["byLocation"]}
    assert held[best] == 2
    too_many = reserve(stack, sku=sku, channel="ONLINE", quantity=max(by.values()) - 1)
    assert too_many["userErrors"][0]["code"] == "INSUFFICIENT_STOCK"
    assert "in one warehouse" in too_many["userErrors"][0]["message"]


def test_a_restricted_caller_reserves_only_where_it_may_see(stack: Stack) -> None:
    sku, own = cell(stack, 5, 0)
    _, other = cell(stack, 5, 1)
    made = reserve(stack, key=STORE_KEY, sku=sku, locationId=own, quantity=1)
    assert made["userErrors"] == []
    body = gql(stack, RESERVE, {"input": {"sku": sku, "locationId": other, "quantity": 1,
                                          "idempotencyKey": "k-other"}}, STORE_KEY)
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # ONLINE picks among its warehouses: it has none.
    online = reserve(stack, key=STORE_KEY, sku=sku, channel="ONLINE", quantity=1)
    assert online["userErrors"][0]["code"] == "INSUFFICIENT_STOCK"
    # Another location's reservation: FORBIDDEN to change; the listing shows only its own.
    foreign = reserve(stack, sku=sku, locationId=other, quantity=1)["reservation"]["id"]
    body = gql(stack, RELEASE, {"id": foreign}, STORE_KEY)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    listed = gql(stack, "{ reservations(first: 100) { nodes { location { id } } } }",
                 key=STORE_KEY)["data"]["reservations"]["nodes"]
    assert listed
    assert {x["location"]["id"] for x in listed} == {own}
    body = gql(stack, "query Q($l: ID) { reservations(locationId: $l) { nodes { id } } }",
               {"l": other}, key=STORE_KEY)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    # Without the stock:reserve scope: FORBIDDEN.
    body = gql(stack, RESERVE, {"input": {"sku": sku, "locationId": own, "quantity": 1,
                                          "idempotencyKey": "k-reader"}}, READER_KEY)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert level(stack, sku, other)["reserved"] == 1


def test_listing_filters_and_pages(stack: Stack) -> None:
    sku, loc = cell(stack, 6, 2)
    set_store_stock(stack, 6, 2, 20)
    ids = [reserve(stack, sku=sku, locationId=loc, quantity=1,
                   reference=f"cart-{n % 2}")["reservation"]["id"] for n in range(5)]
    gql(stack, RELEASE, {"id": ids[0]})
    query = """query Q($sku: ID, $status: ReservationStatus, $ref: String, $after: String) {
      reservations(sku: $sku, status: $status, reference: $ref, first: 2, after: $after) {
        edges { cursor node { id status reference } } pageInfo { hasNextPage endCursor } } }"""
    seen: list[str] = []
    after = None
    while True:
        page = gql(stack, query, {"sku": sku, "after": after})["data"]["reservations"]
        seen += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == ids
    active = gql(stack, query, {"sku": sku, "status": "ACTIVE"})["data"]["reservations"]
    assert ids[0] not in [e["node"]["id"] for e in active["edges"]]
    carts = gql(stack, query, {"sku": sku, "ref": "cart-1"})["data"]["reservations"]
    assert [e["node"]["id"] for e in carts["edges"]] == [ids[1], ids[3]]
    bad = gql(stack, query, {"sku": sku, "after": "garbage"})
    assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_never_from_the_response_cache(stack: Stack) -> None:
    sku, loc = cell(stack, 7, 0)
    set_store_stock(stack, 7, 0, 5)
    body = {"query": RESERVE, "variables": {"input": {
        "sku": sku, "locationId": loc, "quantity": 1, "idempotencyKey": "cache-1"}}}
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    for _ in range(2):
        response = httpx.post(f"{stack.url}/graphql", json=body, headers=headers, timeout=30)
        assert response.headers.get("x-retailgraph-cache") != "hit"
    listing = {"query": "{ reservations(first: 5) { nodes { id } } }"}
    for _ in range(2):
        response = httpx.post(f"{stack.url}/graphql", json=listing, headers=headers,
                              timeout=30)
        assert response.headers.get("x-retailgraph-cache") != "hit"
    # A cached stock level is invalidated by a hold change.
    level(stack, sku, loc)
    cached = httpx.post(f"{stack.url}/graphql", json={"query": LEVEL, "variables": {
        "sku": sku, "loc": loc}}, headers=headers, timeout=30)
    assert cached.headers.get("x-retailgraph-cache") == "hit"
    reserve(stack, sku=sku, locationId=loc, quantity=1)
    assert level(stack, sku, loc)["reserved"] == 2


def test_batched_and_websocket_mutations(stack: Stack) -> None:
    sku, loc = cell(stack, 8, 0)
    set_store_stock(stack, 8, 0, 3)
    # Never over GET (a link, a prefetch, a crawler must not hold stock).
    refused = httpx.get(f"{stack.url}/graphql", timeout=30, params={
        "query": RESERVE, "variables": json.dumps({"input": {
            "sku": sku, "locationId": loc, "quantity": 1, "idempotencyKey": "get-1"}})},
        headers={"authorization": f"Bearer {ADMIN_KEY}", "accept": "application/json"})
    assert refused.status_code in (400, 405), refused.text
    assert level(stack, sku, loc)["reserved"] == 0
    batch = [{"query": RESERVE, "variables": {"input": {
        "sku": sku, "locationId": loc, "quantity": 1, "idempotencyKey": f"b{n}"}}}
        for n in range(5)]
    response = httpx.post(f"{stack.url}/graphql", json=batch,
                          headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    results = response.json()
    made = [r for r in results if r["data"]["reserveStock"]["reservation"]]
    turned_down = [r for r in results if r["data"]["reserveStock"]["userErrors"]]
    assert (len(made), len(turned_down)) == (3, 2)

    async def over_websocket() -> dict[str, Any]:
        url = stack.url.replace("http", "ws") + "/graphql"
        async with websockets.connect(url, subprotocols=[TRANSPORT_WS]) as ws:
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"Authorization": f"Bearer {ADMIN_KEY}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            rid = made[0]["data"]["reserveStock"]["reservation"]["id"]
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
                "query": RELEASE, "variables": {"id": rid}}}))
            message: dict[str, Any] = json.loads(await ws.recv())
            return message

    message = asyncio.run(over_websocket())
    assert message["type"] == "next"
    assert message["payload"]["data"]["releaseReservation"]["reservation"]["status"] == \
        "RELEASED"
    assert level(stack, sku, loc)["reserved"] == 2


def test_subscribers_see_holds(stack: Stack) -> None:
    sku, loc = cell(stack, 9, 0)
    set_store_stock(stack, 9, 0, 2)
    query = """subscription S($skus: [ID!], $locs: [ID!]) {
      stockChanged(skus: $skus, locationIds: $locs) {
        source movement { type quantity } stockLevel { available reserved availableToSell } }
      }"""
    status = """subscription T($skus: [ID!]) {
      stockStatusChanged(skus: $skus, lowStockThreshold: 0) { status previousStatus } }"""

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        url = stack.url.replace("http", "ws") + "/graphql"
        async with websockets.connect(url, subprotocols=[TRANSPORT_WS]) as ws:
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"Authorization": f"Bearer {ADMIN_KEY}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "s", "type": "subscribe", "payload": {
                "query": query, "variables": {"skus": [sku], "locs": [loc]}}}))
            await ws.send(json.dumps({"id": "t", "type": "subscribe", "payload": {
                "query": status, "variables": {"skus": [sku]}}}))
            await asyncio.sleep(0.5)
            made = await asyncio.to_thread(reserve, stack, sku=sku, locationId=loc,
                                           quantity=2, ttlSeconds=1)
            assert made["userErrors"] == []
            changes: list[dict[str, Any]] = []
            statuses: list[dict[str, Any]] = []
            async with asyncio.timeout(20):
                while len(changes) < 2 or len(statuses) < 2:
                    message = json.loads(await ws.recv())
                    if message["id"] == "s":
                        changes.append(message["payload"]["data"]["stockChanged"])
                    else:
                        statuses.append(message["payload"]["data"]["stockStatusChanged"])
            return changes, statuses

    changes, statuses = asyncio.run(run())
    assert [(c["source"], c["movement"]["type"], c["stockLevel"]["reserved"],
             c["stockLevel"]["availableToSell"]) for c in changes] == [
        ("retailgraph", "RESERVE", 2, 0), ("retailgraph", "EXPIRE", 0, 2)]
    assert [(s["previousStatus"], s["status"]) for s in statuses] == [
        ("IN_STOCK", "OUT_OF_STOCK"), ("OUT_OF_STOCK", "IN_STOCK")]



def test_allow_list_and_rate_limit_apply_to_mutations(redis_server_url: str,
                                                      tmp_path: Path) -> None:
    manifest = tmp_path / "operations.json"
    manifest.write_text(json.dumps({
        "format": "apollo-persisted-query-manifest", "version": 1,
        "operations": [{"id": "reserve-v1", "name": "R", "type": "mutation",
                        "body": RESERVE}]}))
    running = Stack(redis_server_url)
    running.settings.allow_list_file = str(manifest)
    running.settings.apq = False
    running.settings.rate_limit_per_minute = 3
    running.settings.api_keys = {"store": {"key": STORE_KEY, "scopes": ["stock:reserve"],
                                           "locations": ["ST001"]}}
    sku, loc = running.world.items[20].sku, running.world.stores[0].code
    headers = {"authorization": f"Bearer {STORE_KEY}"}
    with running:
        unlisted = httpx.post(f"{running.url}/graphql", headers=headers, timeout=30,
                              json={"query": RELEASE, "variables": {"id": "x"}})
        assert unlisted.status_code == 403
        assert unlisted.json()["errors"][0]["extensions"]["code"] == \
            "PERSISTED_QUERY_NOT_ALLOWED"
        answers = [httpx.post(f"{running.url}/graphql", headers=headers, timeout=30, json={
            "query": RESERVE, "variables": {"input": {
                "sku": sku, "locationId": loc, "quantity": 1, "idempotencyKey": f"rl-{n}"}}})
            for n in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[0].json()["data"]["reserveStock"]["userErrors"] == []
        assert answers[2].json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
