"""Sync health over live simulators and two gateway replicas sharing one Redis: the numbers
are the same on every replica, and gaps (a lost ERP event, a lost WMS event of a cell, a silent
POS) are found and healed from the backends' own APIs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from tests.helpers_webhooks import Signer, post
from tests.support import Stack, stream_entries

STATUS = """{ syncStatus { source system lastEventReceivedAt lastEventOccurredAt eventsReceived
  eventsPerMinute lagOccurredToReceived { p50Ms p95Ms samples }
  lagReceivedToApplied { p50Ms p95Ms samples } rejects { reason count } deadLetters
  gapsDetected gapsHealed openSequenceGap heartbeatSeconds silentSeconds
  recentGaps { reason fromSequence toSequence sku locationId healedAt applied detail } } }"""
VIEWS = """query($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) {
  views { role onHand } } }"""
EVENTS = """query($sku: ID!, $loc: ID!) { stockEvents(skus: [$sku], locationIds: [$loc]) {
  changes { movement { type quantity } } } }"""
LEVEL = """query($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) {
  onHand available committed } }"""


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    with Stack(redis_url, skus=12, stores=2, warehouses=2, replicas=2) as running:
        yield running


def status(stack: Stack, replica: int = 0) -> dict[str, dict[str, Any]]:
    body = stack.graphql(STATUS, replica=replica)
    assert "errors" not in body, body
    return {s["source"]: s for s in body["data"]["syncStatus"]}


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def faults(stack: Stack, name: str, **options: Any) -> None:
    with stack.sim(name) as sim:
        assert sim.post("/_sim/faults", json=options).status_code == 200


def pos_sale(stack: Stack, i: int, store_code: str, quantity: int = 1) -> None:
    store = next(s for s in stack.world.stores if s.code == store_code)
    with stack.sim("pos") as pos:
        response = pos.post("/v2/inventory/changes/batch-create", json={
            "idempotency_key": str(uuid.uuid4()), "changes": [{"type": "ADJUSTMENT",
                "adjustment": {"catalog_object_id": stack.world.item(i).square_variation_id,
                               "location_id": store.square_id, "from_state": "IN_STOCK",
                               "to_state": "SOLD", "quantity": str(quantity)}}]})
        assert response.status_code == 200, response.text


def wms_event(stack: Stack, i: int, code: str, step: str, quantity: int) -> None:
    from gateway.simulators.activity import epc_class, now_iso

    site = next(w for w in stack.world.warehouses if w.code == code)
    with stack.sim("wms") as wms:
        response = wms.post("/api/v1/events", json={
            "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": now_iso(),
            "epcisBody": {"eventList": [{
                "type": "ObjectEvent", "eventID": f"urn:uuid:{uuid.uuid4()}",
                "eventTime": now_iso(), "eventTimeZoneOffset": "+00:00",
                "action": "OBSERVE" if step == "cycle_counting" else "ADD", "bizStep": step,
                "bizLocation": {"id": site.sgln},
                "quantityList": [{"epcClass": epc_class(stack.world.item(i).gtin14),
                                  "quantity": quantity, "uom": "EA"}]}]}})
        assert response.status_code == 202, response.text


def erp_override(stack: Stack, i: int, code: str, on_hand: int) -> None:
    with stack.sim("erp") as erp:
        response = erp.post("/api/v1/stock-adjustments", json={
            "sku": stack.world.item(i).sku, "locationCode": code, "onHand": on_hand,
            "reason": "count"})
        assert response.status_code == 201, response.text


def level(stack: Stack, i: int, code: str) -> dict[str, Any]:
    body = stack.graphql(LEVEL, {"sku": stack.world.item(i).sku, "loc": code})
    assert "errors" not in body, body
    found: dict[str, Any] = body["data"]["stockLevel"]
    return found


def test_every_replica_reports_the_same_counts_lags_and_rejects(stack: Stack) -> None:
    store = stack.world.stores[0].code
    for n in range(3):
        pos_sale(stack, n, store)
    wms_event(stack, 1, stack.world.warehouses[0].code, "cycle_counting", 50)
    stack.drain_webhooks()
    # A forged delivery (wrong signature) and an unmappable one (the shop's gift card).
    forged = httpx.post(f"{stack.url}/webhooks/erp", content=b'{"id": "x"}', headers={
        "webhook-id": "msg_1", "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,AAAA"})
    assert forged.status_code == 401
    with stack.sim("commerce") as shop:
        gift = stack.world.n_skus  # one past the last item: the gift card
        response = shop.post("/admin/api/2025-01/inventory_levels/set.json", json={
            "location_id": stack.world.warehouses[0].shopify_id,
            "inventory_item_id": 47_000_000_000_000 + gift, "available": 3})
        assert response.status_code == 200, response.text
    stack.drain_webhooks()
    first, second = status(stack, 0), status(stack, 1)
    for row in (first, second):
        for source in ("pos", "wms", "erp", "commerce"):
            row[source].pop("silentSeconds")  # measured at the moment of each query
    assert first == second
    pos = first["pos"]
    assert pos["system"] == "square"
    assert pos["eventsReceived"] == 3
    assert pos["eventsPerMinute"] == 3
    assert pos["lastEventReceivedAt"] >= pos["lastEventOccurredAt"][:19]
    assert pos["lagOccurredToReceived"]["samples"] == 3
    assert pos["lagReceivedToApplied"]["samples"] == 3
    assert 0 <= pos["lagReceivedToApplied"]["p50Ms"] <= pos["lagReceivedToApplied"]["p95Ms"]
    assert first["wms"]["eventsReceived"] == 1
    assert first["erp"]["rejects"] == [{"reason": "bad_signature", "count": 1}]
    assert first["commerce"]["deadLetters"] == 1
    assert first["commerce"]["eventsReceived"] == 0
    assert all(s["gapsDetected"] == 0 for s in first.values())


def test_a_lost_erp_event_is_a_sequence_gap_healed_by_reconciling_the_erp(
        stack: Stack) -> None:
    code = stack.world.warehouses[0].code
    erp_override(stack, 0, code, 100)  # numbering starts: sequence 1
    stack.drain_webhooks()
    level(stack, 1, code)  # cached now, so a lost override leaves the cache behind
    views = stack.graphql(VIEWS, {"sku": "SKU-000002", "loc": code})
    erp_before = {v["role"]: v["onHand"] for v in views["data"]["stockLevel"]["views"]}
    faults(stack, "erp", drop_rate=1.0)
    erp_override(stack, 1, code, 777)  # sequence 2: lost
    faults(stack, "erp", drop_rate=0.0)
    erp_override(stack, 2, code, 55)  # sequence 3 arrives: 2 is missing
    stack.drain_webhooks()
    wait_for(lambda: status(stack)["erp"]["gapsHealed"] == 1)
    erp = status(stack, 1)["erp"]
    assert erp["gapsDetected"] == 1
    (gap,) = erp["recentGaps"]
    assert (gap["reason"], gap["fromSequence"], gap["toSequence"]) == ("sequence", 2, 2)
    assert gap["healedAt"] is not None
    assert gap["applied"] == 1  # the one cached ERP cell the lost event changed
    assert not erp["openSequenceGap"]
    views = stack.graphql(VIEWS, {"sku": "SKU-000002", "loc": code})
    erp_after = {v["role"]: v["onHand"] for v in views["data"]["stockLevel"]["views"]}
    assert erp_before["ERP_SNAPSHOT"] != 777
    assert erp_after["ERP_SNAPSHOT"] == 777


def test_an_erp_number_far_from_the_others_does_not_hide_later_losses(stack: Stack) -> None:
    """A signed ERP event numbered 2^53 - 1 (in range, but no number the ERP's counter
    reached) is no hole of billions: the numbering starts again there, and again at the next
    genuine number, so a delivery lost after it is still a gap of exactly that number."""
    code = stack.world.warehouses[0].code
    erp_override(stack, 3, code, 40)  # sequence 1
    stack.drain_webhooks()
    signer = Signer(stack.settings, stack.world)
    response = post(stack.url, signer.erp(signer.erp_stock(4, code, 12, 2**53 - 1)))
    assert response.status_code == 200, response.text
    time.sleep(3.5)  # longer than the grace a hole gets before it is a gap
    erp_override(stack, 3, code, 41)  # sequence 2
    faults(stack, "erp", drop_rate=1.0)
    erp_override(stack, 3, code, 42)  # sequence 3: lost
    faults(stack, "erp", drop_rate=0.0)
    erp_override(stack, 3, code, 43)  # sequence 4
    stack.drain_webhooks()
    wait_for(lambda: status(stack)["erp"]["gapsHealed"] >= 1)
    time.sleep(1.5)  # a tick more: nothing else is found
    erp = status(stack)["erp"]
    assert [(g["reason"], g["fromSequence"], g["toSequence"]) for g in erp["recentGaps"]] == [
        ("sequence", 3, 3)]
    assert not erp["openSequenceGap"]


def test_reordered_erp_deliveries_are_no_gap(stack: Stack) -> None:
    code = stack.world.warehouses[1].code
    faults(stack, "erp", reorder_rate=0.5, concurrency=2)
    for n in range(6):
        erp_override(stack, n, code, 10 + n)
    stack.drain_webhooks()
    time.sleep(3.5)  # longer than the grace a hole gets before it is a gap
    erp = status(stack)["erp"]
    assert erp["eventsReceived"] == 6
    assert erp["gapsDetected"] == 0
    assert not erp["openSequenceGap"]


def test_a_lost_wms_event_of_a_cell_is_fetched_and_applied(stack: Stack) -> None:
    code = stack.world.warehouses[1].code
    i = 4
    level(stack, i, code)  # the cell's sequence (0) is known to the cache
    faults(stack, "wms", drop_rate=1.0)
    wms_event(stack, i, code, "cycle_counting", 70)  # sequence 1: lost
    faults(stack, "wms", drop_rate=0.0)
    wms_event(stack, i, code, "picking", 5)  # sequence 2 arrives
    stack.drain_webhooks()
    wait_for(lambda: status(stack)["wms"]["gapsHealed"] == 1)
    wms = status(stack, 1)["wms"]
    (gap,) = wms["recentGaps"]
    assert (gap["reason"], gap["fromSequence"], gap["toSequence"]) == ("cell-sequence", 1, 1)
    assert (gap["sku"], gap["locationId"], gap["applied"]) == (
        stack.world.item(i).sku, code, 1)
    assert level(stack, i, code)["onHand"] == 70
    assert level(stack, i, code)["committed"] == stack.world.warehouse_balance(
        i, stack.world.warehouses[1].index).allocated + 5
    # The missed count is in the stock history now, before the picking that revealed it.
    events = stack.graphql(EVENTS, {"sku": stack.world.item(i).sku, "loc": code})
    moves = [c["movement"]["type"] for c in events["data"]["stockEvents"]["changes"]]
    assert "COUNT" in moves
    assert "ALLOCATION" in moves


def test_a_silent_pos_is_healed_from_its_events_api(redis_url: str) -> None:
    s = Stack(redis_url, skus=8, stores=2, warehouses=1)
    s.settings.backends["pos"].heartbeat_seconds = 1.0
    with s:
        store = s.world.stores[1].code
        before = level(s, 3, store)["available"]
        faults(s, "pos", drop_rate=1.0)
        pos_sale(s, 3, store, 2)  # the webhook is lost
        # The gateway has not heard, unless the heartbeat already polled the change: the
        # level is read first, so a change seen in it was a healed gap by the status read.
        heard = level(s, 3, store)["available"]
        assert heard == before or status(s)["pos"]["gapsHealed"] >= 1, heard
        wait_for(lambda: status(s)["pos"]["gapsHealed"] >= 1)
        pos = status(s)["pos"]
        gap = pos["recentGaps"][0]
        assert gap["reason"] == "silent"
        assert gap["applied"] >= 1
        assert "Events API" in gap["detail"]
        assert pos["heartbeatSeconds"] == 1.0
        assert level(s, 3, store)["available"] == before - 2
        # The lost webhook's own event (not a re-read), through the webhooks' normaliser.
        with s.sim("pos") as sim:
            requests = sim.get("/_sim/stats").json()["requests"]
        assert requests.get("POST /v2/events", 0) >= 1
        assert requests.get("POST /v2/inventory/changes/batch-retrieve", 0) == 0


def test_an_events_api_event_that_cannot_be_applied_is_dead_lettered(redis_url: str) -> None:
    import copy

    import orjson
    from starlette.applications import Starlette

    from gateway.simulators.pos import PosState, record_event
    from resolvers.store.keys import DLQ_KEY

    s = Stack(redis_url, skus=8, stores=2, warehouses=1)
    s.settings.backends["pos"].heartbeat_seconds = 1.0
    with s:
        store = s.world.stores[1].code
        before = level(s, 3, store)["available"]
        faults(s, "pos", drop_rate=1.0)
        client = redis.Redis.from_url(redis_url)
        # Just checked: the heartbeat finds both events below in one search.
        client.hset("rg:{sync}:src:pos", "beat", datetime.now(UTC).isoformat())
        pos_sale(s, 3, store, 2)  # its webhook is lost
        pos_app = s.sims["pos"].app
        assert isinstance(pos_app, Starlette), pos_app
        state: PosState = pos_app.state.sim
        # A count of a catalog object the gateway does not know, as the Events API keeps it.
        stranger = copy.deepcopy(state.events[-1])
        stranger["event_id"] = str(uuid.uuid4())
        for count in stranger["data"]["object"]["inventory_counts"]:
            count["catalog_object_id"] = "NOT-IN-THE-CATALOG"
        record_event(state, stranger)
        wait_for(lambda: status(s)["pos"]["gapsHealed"] >= 1)
        assert level(s, 3, store)["available"] == before - 2  # the good one applied
        letters = [orjson.loads(fields[b"e"]) for _, fields in stream_entries(
            client.xrange(DLQ_KEY))]
        client.close()
        (letter,) = [x for x in letters if x["source"] == "pos"]
        assert letter["reason"].startswith("from the Events API: ")
        assert "unmapped" in letter["reason"]
        assert orjson.loads(letter["body"]) == stranger  # the event itself, to replay
        assert letter["topic"] == "inventory.count.updated"


def test_a_pos_silent_longer_than_its_events_are_kept_is_polled_for_changes(
        redis_url: str) -> None:
    s = Stack(redis_url, skus=8, stores=2, warehouses=1)
    s.settings.backends["pos"].heartbeat_seconds = 3.0
    with s:
        store = s.world.stores[1].code
        before = level(s, 3, store)["available"]
        faults(s, "pos", drop_rate=1.0)
        client = redis.Redis.from_url(redis_url)
        # Just checked: no heartbeat heals the sale before the clock is set back below.
        client.hset("rg:{sync}:src:pos", "beat", datetime.now(UTC).isoformat())
        pos_sale(s, 3, store, 2)
        # Last heard of 30 days ago: past the Events API's 28 days.
        long_ago = (datetime.now(UTC) - timedelta(days=30)).isoformat()
        client.hset("rg:{sync}:src:pos", mapping={"last_received": long_ago,
                                                  "beat": long_ago})
        client.close()
        wait_for(lambda: status(s)["pos"]["gapsHealed"] >= 1)
        gap = status(s)["pos"]["recentGaps"][0]
        assert gap["reason"] == "silent"
        assert "cell(s) applied" in gap["detail"]
        assert level(s, 3, store)["available"] == before - 2
        with s.sim("pos") as sim:
            requests = sim.get("/_sim/stats").json()["requests"]
        assert requests.get("POST /v2/events", 0) == 0
        assert requests.get("POST /v2/inventory/changes/batch-retrieve", 0) >= 1
