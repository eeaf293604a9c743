"""Sync end to end (issue 13 §5): simulators and gateways over real HTTP, a real Redis.

Each test moves stock in a system of record through its own API (the simulator fires the
signed webhook), and checks what the web shop simulator holds afterwards, how many effective
writes it counted per idempotency key (``GET /_sim/shop/writes``), and the audit trail.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.simulators.wms import epc_class
from resolvers.store.keys import OUTBOX_ALL_KEY as ALL_KEY
from resolvers.store.keys import OUTBOX_DUE_KEY as DUE_KEY
from resolvers.store.outbox import action_key
from tests.support import Stack, text_fields, texts

SHOP_API = "/admin/api/2025-01"


@pytest.fixture
def synced(redis_url: str) -> Iterator[Stack]:
    with Stack(redis_url, sync=True) as running:
        running.settings.sync.retry_cap_seconds = 1.0
        yield running


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def count(stack: Stack, i: int, w: int, counted: int) -> None:
    """A WMS cycle count at warehouse ``w`` (EPCIS OBSERVE): its webhook reaches the gateway."""
    item, site = stack.world.items[i], stack.world.warehouses[w]
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    with stack.sim("wms") as wms:
        response = wms.post("/api/v1/events", json={
            "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
            "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": now,
            "epcisBody": {"eventList": [{
                "type": "ObjectEvent", "eventID": f"urn:uuid:{uuid.uuid4()}",
                "eventTime": now, "eventTimeZoneOffset": "+00:00", "action": "OBSERVE",
                "bizStep": "cycle_counting", "bizLocation": {"id": site.sgln},
                "readPoint": {"id": site.sgln},
                "quantityList": [{"epcClass": epc_class(item.gtin14), "quantity": counted,
                                  "uom": "EA"}]}]}})
    assert response.status_code in (200, 201, 202), response.text


def wms_available(stack: Stack, i: int, w: int) -> int:
    item, site = stack.world.items[i], stack.world.warehouses[w]
    with stack.sim("wms") as wms:
        rows = wms.post("/api/v1/balances/query", json={"gtins": [item.gtin14],
                                                        "glns": [site.gln]}).json()["balances"]
    return int(rows[0]["available"])


def shop_available(stack: Stack, i: int, w: int) -> int | None:
    """What the shop holds (None while it answers 503: an outage)."""
    item, site = stack.world.items[i], stack.world.warehouses[w]
    with stack.sim("commerce") as shop:
        response = shop.get(f"{SHOP_API}/inventory_levels.json", params={
            "inventory_item_ids": item.shopify_inventory_item_id,
            "location_ids": site.shopify_id})
    if response.status_code == 503:
        return None
    return int(response.json()["inventory_levels"][0]["available"])


def safety(stack: Stack, i: int) -> int:
    return int(stack.world.items[i].safety_stock)


def ats(stack: Stack, i: int, w: int) -> int:
    return max(0, wms_available(stack, i, w) - safety(stack, i))


def pushed(stack: Stack, i: int, w: int) -> bool:
    """The shop holds what is available to sell of item ``i`` at warehouse ``w``."""
    return shop_available(stack, i, w) == ats(stack, i, w)


def holds(stack: Stack, i: int, w: int, value: int) -> bool:
    return shop_available(stack, i, w) == value


def writes_by_key(stack: Stack) -> dict[str, int]:
    with stack.sim("commerce") as shop:
        found: dict[str, int] = shop.get("/_sim/shop/writes").json()["byKey"]
    return found


def actions(stack: Stack) -> list[dict[str, str]]:
    client = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    try:
        ids = texts(client.zrange(ALL_KEY, 0, -1))
        return [text_fields(client.hgetall(action_key(i))) for i in ids]
    finally:
        client.close()


def idle(stack: Stack) -> bool:
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        return int(client.zcard(DUE_KEY)) == 0
    finally:
        client.close()


def test_a_warehouse_change_sets_the_shop_to_available_to_sell_once(synced: Stack) -> None:
    before = wms_available(synced, 3, 0)
    count(synced, 3, 0, max(0, before - 7) + safety(synced, 3) + 20)
    expected = ats(synced, 3, 0)
    wait_for(lambda: shop_available(synced, 3, 0) == expected, what="the push")
    wait_for(lambda: any(a.get("confirmedAt") for a in actions(synced)), what="the echo")
    wait_for(lambda: idle(synced), what="the action to finish")
    done = [a for a in actions(synced) if a["status"] == "DONE"]
    assert len(done) == 1
    assert done[0]["cell"].endswith(f"|{synced.world.items[3].sku}|"
                                    f"{synced.world.warehouses[0].code}")
    # Exactly one effective write, and the echo started nothing new.
    assert list(writes_by_key(synced).values()) == [1]
    time.sleep(0.5)
    assert len(actions(synced)) == 1
    assert idle(synced)


ACTIONS = """query($targets: [String!], $skus: [ID!], $locs: [ID!], $status: [SyncActionStatus!],
                   $first: Int = 50, $after: String) {
  syncActions(targets: $targets, skus: $skus, locationIds: $locs, status: $status,
              first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    edges { cursor node { id target kind sku locationId desired previous status attempts
                          eventId source createdAt completedAt confirmedAt latencyMs
                          writtenMs error } } } }
"""
SYNC_NOW = """mutation($skus: [ID!]!, $locs: [ID!], $targets: [String!]) {
  syncNow(skus: $skus, locationIds: $locs, targets: $targets) { queued actions } }"""
PUSH = "{ syncStatus { source push { pending writes echoes drift deadLetters latencyP99Ms } } }"


def keyed(redis_url: str) -> Stack:
    stack = Stack(redis_url, sync=True)
    stack.settings.api_keys = {
        "ops": {"key": "ops-key-0123456789", "scopes": ["sync:read", "sync:write",
                                                       "discrepancies:read"]},
        "reader": {"key": "reader-key-0123456789", "scopes": ["sync:read"],
                   "locations": ["WH02"]},
        "nosync": {"key": "nosync-key-0123456789", "scopes": ["stock:read",
                                                            "discrepancies:read"]}}
    return stack


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_sync_now_the_audit_trail_and_scopes(redis_url: str) -> None:
    with keyed(redis_url) as stack:
        ops, reader, nosync = (bearer("ops-key-0123456789"), bearer("reader-key-0123456789"),
                               bearer("nosync-key-0123456789"))
        sku = stack.world.items[5].sku
        denied = stack.graphql(SYNC_NOW, {"skus": [sku]}, headers=nosync)
        assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert stack.graphql(ACTIONS, headers=nosync)["errors"][0]["extensions"]["code"] == \
            "FORBIDDEN"
        assert actions(stack) == []  # a refused mutation changed nothing
        # The shop drifted above the truth at both warehouses without anyone noticing.
        with stack.sim("commerce") as shop:
            for w in (0, 1):
                assert shop.post("/_sim/shop/admin-edit", json={
                    "sku": sku, "location_id": stack.world.warehouses[w].shopify_id,
                    "available": ats(stack, 5, w) + 30}).status_code == 200
        queued = stack.graphql(SYNC_NOW, {"skus": [sku], "targets": ["commerce"]}, headers=ops)
        assert queued["data"]["syncNow"]["queued"] >= 2, queued
        for w in (0, 1):
            wait_for(partial(pushed, stack, 5, w), what="the pushes")
        wait_for(lambda: idle(stack), what="the actions to finish")
        listed = stack.graphql(ACTIONS, {"skus": [sku], "status": ["DONE", "SUPERSEDED"]},
                               headers=ops)
        # (The admin edits' own webhooks ask for the same push: whichever of the two came
        # first may be superseded by the other, or find the shop holding the truth already.)
        nodes = [e["node"] for e in listed["data"]["syncActions"]["edges"]]
        assert {n["locationId"] for n in nodes if n["source"] == "syncNow"
                and n["kind"] == "STOCK"} == {stack.world.warehouses[0].code,
                                              stack.world.warehouses[1].code}
        assert all(n["writtenMs"] is not None for n in nodes if n["status"] == "DONE")
        # Confirmed by the echo (which may come before the answer is handled): the latency
        # runs to it.
        assert all(n["latencyMs"] is not None for n in nodes
                   if n["status"] == "DONE" and n["confirmedAt"] is not None)
        assert not stack.graphql(ACTIONS, {"status": ["PENDING", "FAILED", "DEAD"]},
                                 headers=ops)["data"]["syncActions"]["edges"]
        # A reader restricted to WH02 sees only WH02's actions; asking for WH01 is refused.
        mine = stack.graphql(ACTIONS, {"skus": [sku]}, headers=reader)
        assert {e["node"]["locationId"] for e in mine["data"]["syncActions"]["edges"]} == {
            stack.world.warehouses[1].code}
        other = stack.graphql(ACTIONS, {"locs": [stack.world.warehouses[0].code]},
                              headers=reader)
        assert other["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        # Pages follow the cursor.
        first = stack.graphql(ACTIONS, {"first": 1}, headers=ops)["data"]["syncActions"]
        assert first["pageInfo"]["hasNextPage"]
        second = stack.graphql(ACTIONS, {"first": 1, "after": first["pageInfo"]["endCursor"]},
                               headers=ops)["data"]["syncActions"]
        assert int(second["edges"][0]["cursor"]) < int(first["edges"][0]["cursor"])
        bad = stack.graphql(ACTIONS, {"after": "nope"}, headers=ops)
        assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        status = stack.graphql(PUSH, headers=ops)["data"]["syncStatus"]
        push = {s["source"]: s["push"] for s in status}
        assert push["wms"] is None
        assert push["commerce"]["writes"] >= 2
        assert push["commerce"]["latencyP99Ms"] is not None


def test_the_truth_wins_over_an_admin_edit_at_once(synced: Stack) -> None:
    expected = ats(synced, 8, 1)
    with synced.sim("commerce") as shop:
        edit = shop.post("/_sim/shop/admin-edit", json={
            "sku": synced.world.items[8].sku, "location_id": synced.world.warehouses[1].shopify_id,
            "available": expected + 25})
    assert edit.status_code == 200, edit.text
    wait_for(lambda: shop_available(synced, 8, 1) == expected, what="the truth to win")
    wait_for(lambda: idle(synced), what="the action to finish")
    (action,) = [a for a in actions(synced) if a["status"] == "DONE"]
    assert (action["source"], action["previous"], action["desired"]) == (
        "commerce", str(expected + 25), str(expected))
    # A shop level below the truth (its own order did that) is left alone.
    with synced.sim("commerce") as shop:
        shop.post("/_sim/shop/admin-edit", json={
            "sku": synced.world.items[8].sku, "location_id": synced.world.warehouses[1].shopify_id,
            "delta": -2})
    time.sleep(1.0)
    assert shop_available(synced, 8, 1) == expected - 2
    assert len(actions(synced)) == 1


def erp_item_update(stack: Stack, i: int) -> tuple[str, int]:
    """The ERP renames and reprices item ``i``: the name pushed everywhere (the shop's
    online price never changes); the till's price in minor units as it ends up."""
    item = stack.world.items[i]
    with stack.sim("commerce") as shop:
        before = shop.get(f"{SHOP_API}/products.json").json()["products"]
    online_price = next(v["price"] for p in before for v in p["variants"] if v["sku"] == item.sku)

    def till() -> dict[str, Any]:
        with stack.sim("pos") as pos:
            found: dict[str, Any] = pos.get(
                f"/v2/catalog/object/{item.square_variation_id}").json()["object"]
        return found

    shelf_before = till()["item_variation_data"]["price_money"]["amount"]
    assert shelf_before != 4150
    with stack.sim("erp") as erp:
        response = erp.patch(f"/api/v1/items/{item.sku}",
                             json={"description": "Kettle, brushed steel", "listPrice": "41.50"})
    assert response.status_code == 200, response.text

    def shop_product() -> dict[str, Any]:
        with stack.sim("commerce") as shop:
            products = shop.get(f"{SHOP_API}/products.json").json()["products"]
        return next(p for p in products if any(v["sku"] == item.sku for v in p["variants"]))

    wait_for(lambda: shop_product()["title"] == "Kettle, brushed steel", what="the rename")
    # The online price is the shop's: untouched.
    assert shop_product()["variants"][0]["price"] == online_price
    wait_for(lambda: till()["item_variation_data"]["name"] == "Kettle, brushed steel",
             what="the till's name")
    done = {a["cell"].split("|")[0] for a in actions(stack) if a["status"] == "DONE"
            and "|ITEM|" in a["cell"]}
    assert done == {"commerce", "pos"}
    return item.sku, int(till()["item_variation_data"]["price_money"]["amount"]) - shelf_before


def test_an_erp_item_update_renames_everywhere_and_leaves_the_shelf_price(
        synced: Stack) -> None:
    _, moved = erp_item_update(synced, 11)
    assert moved == 0  # the store shelf price is the POS's


def test_with_pos_price_from_erp_the_till_takes_the_list_price(redis_url: str) -> None:
    stack = Stack(redis_url, sync=True)
    stack.settings.sync.pos_price_from_erp = True
    with stack:
        sku, moved = erp_item_update(stack, 12)
        assert moved != 0
        with stack.sim("pos") as pos:
            variation = stack.world.items[12].square_variation_id
            found = pos.get(f"/v2/catalog/object/{variation}").json()["object"]
        assert found["item_variation_data"]["price_money"]["amount"] == 4150, sku


def test_a_stale_compare_and_set_is_resolved_by_recompute(synced: Stack) -> None:
    sku, loc = synced.world.items[14].sku, synced.world.warehouses[0]
    # The cache reads the shop's level...
    synced.graphql("query($s: ID!, $l: ID!) { stockLevel(sku: $s, locationId: $l) "
                   "{ views { source available } } }", {"s": sku, "l": loc.code})
    believed = shop_available(synced, 14, 0)
    assert believed is not None
    # ... then an order nobody told the gateway about: the shop holds 3 fewer.
    with synced.sim("commerce") as shop:
        shop.post("/_sim/faults", json={"drop_rate": 1})
        shop.post("/_sim/shop/admin-edit", json={"sku": sku, "location_id": loc.shopify_id,
                                                 "delta": -3})
        shop.post("/_sim/faults", json={"drop_rate": 0})
    count(synced, 14, 0, wms_available(synced, 14, 0) + 40)
    expected = ats(synced, 14, 0)
    wait_for(lambda: shop_available(synced, 14, 0) == expected, what="the recomputed push")
    wait_for(lambda: idle(synced), what="the action to finish")
    (action,) = [a for a in actions(synced) if a["status"] == "DONE"]
    assert action["previous"] == str(believed - 3)  # what the shop really held
    push = next(s["push"] for s in synced.graphql(PUSH)["data"]["syncStatus"]
                if s["source"] == "commerce")
    assert push["writes"] == 1
    assert list(writes_by_key(synced).values()) == [1]


def test_the_shop_down_for_30_seconds_gets_everything_when_back(synced: Stack) -> None:
    with synced.sim("commerce") as shop:
        assert shop.post("/_sim/outage", json={"seconds": 30}).status_code == 200
    started = time.monotonic()
    for i in range(20, 26):
        count(synced, i, 0, wms_available(synced, i, 0) + 10)
        count(synced, i, 0, wms_available(synced, i, 0) + 5)  # the newest value wins
    wait_for(lambda: any(a["status"] == "FAILED" for a in actions(synced)),
             what="a failed attempt")
    assert time.monotonic() - started < 30
    for i in range(20, 26):
        wait_for(partial(pushed, synced, i, 0), timeout=60, what="the pushes after the outage")
    assert time.monotonic() - started >= 30
    assert all(n == 1 for n in writes_by_key(synced).values())
    assert len(writes_by_key(synced)) <= 6  # at most one write per cell: bursts coalesced
    assert {a["status"] for a in actions(synced)} <= {"DONE", "SUPERSEDED"}


def test_throttling_is_waited_out(synced: Stack) -> None:
    with synced.sim("commerce") as shop:
        assert shop.post("/_sim/shop/throttle", json={
            "currentlyAvailable": 0, "restoreRate": 100}).status_code == 200
    for i in range(30, 34):
        count(synced, i, 1, wms_available(synced, i, 1) + 9)
    for i in range(30, 34):
        wait_for(partial(pushed, synced, i, 1), timeout=30, what="the throttled pushes")
    push = next(s["push"] for s in synced.graphql(PUSH)["data"]["syncStatus"]
                if s["source"] == "commerce")
    assert push["deadLetters"] == 0
    assert all(n == 1 for n in writes_by_key(synced).values())


def test_two_replicas_share_the_work(redis_url: str) -> None:
    """Events arrive at both replicas; each cell is pushed by one of them at a time, and
    both do some of the work."""
    import httpx

    from tests.helpers_webhooks import Signer

    with Stack(redis_url, sync=True, replicas=2) as stack:
        signer = Signer(stack.settings, stack.world)
        wanted: dict[tuple[int, int], int] = {}
        for n, i in enumerate(range(40, 56)):
            cell = (i, n % 2)
            on_hand = 300 + i
            delivery = signer.epcis([signer.epcis_event(i, cell[1], on_hand, 1)])
            response = httpx.post(f"{stack.gateways[n % 2].url}/webhooks/wms",
                                  content=delivery.body, headers=delivery.headers, timeout=30)
            assert response.status_code == 200, response.text
            wanted[cell] = max(0, on_hand - stack.world.items[i].safety_stock)
        for (i, w), value in wanted.items():
            wait_for(partial(holds, stack, i, w, value), what="the pushes")
        wait_for(lambda: idle(stack), what="the actions to finish")
        done = [a for a in actions(stack) if a["status"] == "DONE"]
        assert len(done) == 16
        assert len({a.get("by") for a in done if a.get("by")}) == 2  # both replicas pushed
        assert all(n == 1 for n in writes_by_key(stack).values())


def test_kill_9_of_a_replica_during_pushes(redis_url: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two gateway processes; one is killed with SIGKILL while it pushes. Every acknowledged
    event's push takes effect, each exactly once (the shop counts effective writes per
    idempotency key), and nothing is left unfinished."""
    import httpx

    from resolvers.connectors.http import auth_headers
    from tests.e2e.test_replicas import Replicas
    from tests.helpers_webhooks import Signer

    monkeypatch.setenv("RETAILGRAPH_SYNC_ENABLED", "true")
    monkeypatch.setenv("RETAILGRAPH_SYNC_RETRY_CAP_SECONDS", "1")
    monkeypatch.setenv("RETAILGRAPH_SYNC_LEASE_SECONDS", "1")
    with Replicas(redis_url, tmp_path, 2, skus=30) as replicas:
        world = replicas.world
        signer = Signer(replicas.settings, world)
        shop = replicas.settings.backends["commerce"]
        cells = [(i, w) for i in range(15) for w in (0, 1)]
        last: dict[tuple[int, int], int] = {}

        def post(replica: int, cell: tuple[int, int], sequence: int) -> None:
            on_hand = 500 + 7 * sequence + cell[0]
            delivery = signer.epcis([signer.epcis_event(cell[0], cell[1], on_hand, sequence)])
            response = httpx.post(f"{replicas.url(replica)}/webhooks/wms", content=delivery.body,
                                  headers=delivery.headers, timeout=30)
            assert response.status_code == 200, response.text
            last[cell] = on_hand

        for sequence in (1, 2):
            for n, cell in enumerate(cells):
                if sequence == 2 and n == len(cells) // 2:
                    replicas.kill(0)  # SIGKILL, mid-burst, while it pushes
                post(0 if replicas.procs[0] is not None else 1, cell, sequence)
        replicas.start(0)  # the shop's echoes go to replica 0: let them arrive
        replicas.wait_ready(0)

        def shop_holds(cell: tuple[int, int]) -> int:
            item, site = world.items[cell[0]], world.warehouses[cell[1]]
            with httpx.Client(base_url=shop.base_url, headers=auth_headers(shop),
                              timeout=30) as client:
                level = client.get(f"{SHOP_API}/inventory_levels.json", params={
                    "inventory_item_ids": item.shopify_inventory_item_id,
                    "location_ids": site.shopify_id}).json()["inventory_levels"][0]
            return int(level["available"])

        def shop_holds_wanted(cell: tuple[int, int], wanted: int) -> bool:
            return shop_holds(cell) == wanted

        for cell in cells:
            wanted = max(0, last[cell] - world.items[cell[0]].safety_stock)
            wait_for(partial(shop_holds_wanted, cell, wanted), timeout=120,
                     what=f"the push of {cell}")
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            wait_for(lambda: client.zcard(DUE_KEY) == 0, timeout=60, what="nothing due")
            statuses = [client.hget(action_key(i), "status")
                        for i in texts(client.zrange(ALL_KEY, 0, -1))]
        finally:
            client.close()
        assert set(statuses) <= {"DONE", "SUPERSEDED"}
        with httpx.Client(base_url=shop.base_url, timeout=30) as http:
            by_key = http.get("/_sim/shop/writes").json()["byKey"]
        assert by_key
        assert all(n == 1 for n in by_key.values()), by_key


def test_the_re_check_judges_a_cell_whose_views_are_not_cached(stack: Stack) -> None:
    """Sync off: a shop claim far above a warehouse nobody has read yet is listed within
    moments of its webhook (the re-check reads the missing views through), not at the next
    reconciliation run."""
    item, site = stack.world.items[17], stack.world.warehouses[0]
    with stack.sim("commerce") as shop:
        assert shop.post("/_sim/shop/admin-edit", json={
            "sku": item.sku, "location_id": site.shopify_id,
            "available": wms_available(stack, 17, 0) + 50}).status_code == 200
    query = ('query($s: [ID!]) { discrepancies(skus: $s, kinds: [ONLINE_OVERSELL_RISK]) '
             '{ edges { node { locationId delta } } } }')

    def listed() -> list[dict[str, Any]]:
        edges: list[dict[str, Any]] = stack.graphql(query, {"s": [item.sku]})[
            "data"]["discrepancies"]["edges"]
        return edges

    found = wait_for(listed, timeout=5, what="the re-check")
    assert found[0]["node"]["locationId"] == site.code
    assert found[0]["node"]["delta"] == 50


async def test_sync_action_completed_streams_finished_actions(synced: Stack) -> None:
    import asyncio

    from tests.e2e.test_http_transports import stream

    item = synced.world.items[22]
    query = ("subscription($s: [ID!]) { syncActionCompleted(skus: $s) "
             "{ id target kind sku locationId desired status latencyMs writtenMs } }")
    async with stream(synced.url, "sse", query, {"s": [item.sku]}) as live:
        await asyncio.sleep(0.5)  # subscribed on the replica
        before = await asyncio.to_thread(wms_available, synced, 22, 1)
        await asyncio.to_thread(count, synced, 23, 1, before + 3)  # another SKU: not for us
        await asyncio.to_thread(count, synced, 22, 1, before + 6)
        expected = await asyncio.to_thread(ats, synced, 22, 1)
        got = (await live.data(within=15))["syncActionCompleted"]
    assert (got["sku"], got["locationId"], got["kind"], got["target"]) == (
        item.sku, synced.world.warehouses[1].code, "STOCK", "commerce")
    assert (got["status"], got["desired"]) == ("DONE", expected)
    assert got["writtenMs"] is not None  # answered; latencyMs waits for the shop's echo


def test_units_held_by_a_reservation_are_not_offered_online(synced: Stack) -> None:
    item, site = synced.world.items[26], synced.world.warehouses[0]
    count(synced, 26, 0, wms_available(synced, 26, 0) + 12)
    wait_for(lambda: shop_available(synced, 26, 0) == ats(synced, 26, 0), what="the push")
    held = synced.graphql(
        "mutation($i: ReserveStockInput!) { reserveStock(input: $i) { reservation { id } "
        "userErrors { code message } } }",
        {"i": {"sku": item.sku, "locationId": site.code, "quantity": 4,
               "idempotencyKey": "checkout-1"}})
    assert held["data"]["reserveStock"]["reservation"], held
    wait_for(lambda: shop_available(synced, 26, 0) == ats(synced, 26, 0) - 4,
             what="the hold to reach the shop")
    released = synced.graphql(
        "mutation($id: ID!) { releaseReservation(id: $id) { reservation { status } } }",
        {"id": held["data"]["reserveStock"]["reservation"]["id"]})
    assert "errors" not in released, released
    wait_for(lambda: shop_available(synced, 26, 0) == ats(synced, 26, 0),
             what="the units back online")
