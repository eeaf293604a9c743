"""Discrepancies and reconciliation, end to end: four simulators and the gateway over real HTTP
and a real Redis-protocol server; faults are injected through the simulators' own APIs
(a Shopify level set above the warehouse, an ERP stock override, a dropped webhook)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from gateway.cli import main as cli_main
from resolvers.discrepancies import Kind
from tests.support import Stack, stream_entries

SHOPIFY = "/admin/api/2025-01"

VIEWS = """query($sku: ID!, $loc: ID!) { stockLevel(sku: $sku, locationId: $loc) {
  onHand available views { source system role onHand available asOf ageSeconds } } }"""
LIST = """query($locs: [ID!], $skus: [ID!], $min: Int!, $first: Int!, $after: String,
               $kinds: [DiscrepancyKind!], $status: DiscrepancyStatus) {
  discrepancies(locationIds: $locs, skus: $skus, minDelta: $min, first: $first, after: $after,
                kinds: $kinds, status: $status) {
    total pageInfo { hasNextPage endCursor }
    edges { cursor node { id sku locationId kind status severity delta explainedByMovements
                          source message views { source role quantity value origin } } } } }"""


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    with Stack(redis_url, skus=24, stores=2, warehouses=2) as running:
        yield running


def in_gateway(stack: Stack, make: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``make(runtime)`` on the gateway's own event loop (its Redis client lives there)."""
    server = stack.gateways[0]
    runtime = _runtime(stack)
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(make(runtime), server.loop).result(timeout=60)


def _runtime(stack: Stack) -> Any:
    app: Any = stack.gateways[0].app  # the gateway, maybe inside middleware: walked to its state
    while not hasattr(app, "state") or not hasattr(app.state, "runtime"):
        app = app.app
    return app.state.runtime


def reconcile(stack: Stack, **scope: Any) -> Any:
    from gateway.reconcile.runner import Scope

    async def run(runtime: Any) -> Any:
        return await runtime.reconciliation.run(Scope(**scope))
    return in_gateway(stack, run)


def settle(stack: Stack) -> None:
    """Webhooks delivered and the re-checks they queued done."""
    stack.drain_webhooks()

    async def idle(runtime: Any) -> None:
        await runtime.reconciliation.rechecker.idle()
    in_gateway(stack, idle)


def listing(stack: Stack, **variables: Any) -> dict[str, Any]:
    body = stack.graphql(LIST, {"min": 0, "first": 50, **variables})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["discrepancies"]
    return result


def found(stack: Stack, sku: str, loc: str) -> dict[str, dict[str, Any]]:
    """The current discrepancies of one cell by kind."""
    edges = listing(stack, skus=[sku], locs=[loc])["edges"]
    return {e["node"]["kind"]: e["node"] for e in edges}


def clean_cell(stack: Stack, warehouse: bool = True) -> tuple[int, str]:
    """(item index, location) of a cell whose ERP snapshot matches its system of record."""
    world = stack.world
    locations = world.warehouses if warehouse else world.stores
    for i in range(world.n_skus):
        for loc in locations:
            if warehouse:
                record = world.warehouse_balance(i, loc.index).on_hand
            else:
                record = sum(world.store_counts(i, loc.index))
            if world.erp_snapshot_on_hand(i, loc.index) == record and record > 5:
                return i, loc.code
    raise AssertionError("no clean cell")


def wms_event(stack: Stack, i: int, code: str, step: str, quantity: int,
              **extra: Any) -> None:
    from gateway.simulators.activity import epc_class, now_iso

    site = next(w for w in stack.world.warehouses if w.code == code)
    event = {"type": "ObjectEvent", "eventID": f"urn:uuid:{uuid.uuid4()}",
             "eventTime": now_iso(), "eventTimeZoneOffset": "+00:00",
             "action": "OBSERVE" if step == "cycle_counting" else "ADD",
             "bizStep": step, "bizLocation": {"id": site.sgln},
             "quantityList": [{"epcClass": epc_class(stack.world.item(i).gtin14),
                               "quantity": quantity, "uom": "EA"}], **extra}
    with stack.sim("wms") as wms:
        response = wms.post("/api/v1/events", json={
            "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": now_iso(), "epcisBody": {"eventList": [event]}})
        assert response.status_code == 202, response.text


def wms_balance(stack: Stack, i: int, code: str) -> dict[str, Any]:
    site = next(w for w in stack.world.warehouses if w.code == code)
    with stack.sim("wms") as wms:
        rows = wms.post("/api/v1/balances/query", json={
            "gtins": [stack.world.item(i).gtin14], "glns": [site.gln]}).json()["balances"]
    row: dict[str, Any] = rows[0]
    return row


def erp_override(stack: Stack, i: int, code: str, on_hand: int) -> None:
    with stack.sim("erp") as erp:
        response = erp.post("/api/v1/stock-adjustments", json={
            "sku": stack.world.item(i).sku, "locationCode": code, "onHand": on_hand,
            "reason": "manual override"})
        assert response.status_code == 201, response.text


def shop_set(stack: Stack, i: int, code: str, available: int) -> None:
    site = next(w for w in stack.world.warehouses if w.code == code)
    with stack.sim("commerce") as shop:
        response = shop.post(f"{SHOPIFY}/inventory_levels/set.json", json={
            "location_id": site.shopify_id,
            "inventory_item_id": stack.world.item(i).shopify_inventory_item_id,
            "available": available})
        assert response.status_code == 200, response.text


def views_of(stack: Stack, i: int, code: str) -> dict[str, dict[str, Any]]:
    body = stack.graphql(VIEWS, {"sku": stack.world.item(i).sku, "loc": code})
    assert "errors" not in body, body
    return {v["role"]: v for v in body["data"]["stockLevel"]["views"]}


# -- every system's view ---------------------------------------------------------------------

def test_views_show_each_system_next_to_the_system_of_record(stack: Stack) -> None:
    world = stack.world
    i, wh = 3, world.warehouses[0]
    views = views_of(stack, i, wh.code)
    balance = world.warehouse_balance(i, wh.index)
    assert set(views) == {"SYSTEM_OF_RECORD", "ONLINE", "ERP_SNAPSHOT"}
    assert views["SYSTEM_OF_RECORD"]["source"] == "wms"
    assert views["SYSTEM_OF_RECORD"]["onHand"] == balance.on_hand
    assert views["SYSTEM_OF_RECORD"]["available"] == balance.available
    assert views["ONLINE"]["source"] == "commerce"
    assert views["ONLINE"]["system"] == "shopify"
    assert views["ONLINE"]["available"] == max(
        0, balance.available - world.online_committed(i, wh.index))
    # GraphQL quantities by name: the shop's on-hand is its available plus what it committed
    assert views["ONLINE"]["onHand"] == views["ONLINE"]["available"] + \
        world.online_committed(i, wh.index)
    assert views["ERP_SNAPSHOT"]["onHand"] == world.erp_snapshot_on_hand(i, wh.index)
    assert views["ERP_SNAPSHOT"]["asOf"].startswith(world.snapshot_as_of.date().isoformat())
    assert all(v["ageSeconds"] >= 0 for v in views.values())
    store = world.stores[0]
    at_store = views_of(stack, i, store.code)
    assert set(at_store) == {"SYSTEM_OF_RECORD", "ERP_SNAPSHOT"}  # the shop ships from WHs
    assert at_store["SYSTEM_OF_RECORD"]["source"] == "pos"
    assert at_store["SYSTEM_OF_RECORD"]["onHand"] == sum(world.store_counts(i, store.index))


# -- each kind, from a fault injected in a simulator ---------------------------------------------

def test_opening_drift_is_found_and_listed_by_location_and_page(stack: Stack) -> None:
    """The seeded world's ERP snapshot is off in a few cells: a run finds exactly those."""
    world = stack.world
    report = reconcile(stack)
    expected = {(world.item(i).sku, loc.code) for i in range(world.n_skus)
                for loc in world.locations
                if world.erp_snapshot_on_hand(i, loc.index) != (
                    sum(world.store_counts(i, loc.index)) if loc.type == "STORE"
                    else world.warehouse_balance(i, loc.index).on_hand)}
    assert expected, "the seed has drifted cells"
    assert report.cells == world.n_skus * len(world.locations)
    assert sum(report.by_kind.values()) == len(expected)
    listed: set[tuple[str, str]] = set()
    after = None
    while True:  # page through, three at a time
        page = listing(stack, first=3, after=after)
        listed |= {(e["node"]["sku"], e["node"]["locationId"]) for e in page["edges"]}
        for e in page["edges"]:
            node = e["node"]
            store = node["locationId"].startswith("ST")
            assert node["kind"] == ("POS_ERP_STORE_COUNT" if store else "ERP_SNAPSHOT_DRIFT")
            assert node["status"] == "WRONG"  # nothing moved since the snapshot
            assert {v["role"] for v in node["views"]} == {"ERP_SNAPSHOT", "SYSTEM_OF_RECORD"}
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert listed == expected
    only = world.warehouses[1].code
    at_one = listing(stack, locs=[only])["edges"]
    assert {e["node"]["locationId"] for e in at_one} <= {only}
    assert len(at_one) == len([x for x in expected if x[1] == only])
    assert all(abs(e["node"]["delta"]) >= 3 for e in listing(stack, min=3)["edges"])


def test_online_oversell_is_wrong_then_lagging_after_a_warehouse_movement(stack: Stack) -> None:
    world = stack.world
    i, code = 5, world.warehouses[0].code
    sku = world.item(i).sku
    views_of(stack, i, code)  # the cell is in the cache: the re-check needs no backend
    available = wms_balance(stack, i, code)["available"]
    shop_set(stack, i, code, available + 7)
    settle(stack)
    oversell = found(stack, sku, code)["ONLINE_OVERSELL_RISK"]
    assert oversell["status"] == "WRONG"  # the shop changed after the warehouse's last move
    assert oversell["delta"] == 7
    assert oversell["severity"] == "HIGH"
    assert oversell["source"] == "commerce"
    assert {(v["role"], v["value"]) for v in oversell["views"]} == {
        ("ONLINE", available + 7), ("SYSTEM_OF_RECORD", available)}
    # The warehouse allocates 2 more: the shop has not seen that movement yet -> LAGGING.
    wms_event(stack, i, code, "picking", 2)
    settle(stack)
    lagging = found(stack, sku, code)["ONLINE_OVERSELL_RISK"]
    assert lagging["status"] == "LAGGING"
    assert lagging["delta"] == 9
    assert lagging["severity"] == "MEDIUM"  # HIGH for 9 units, one level down while lagging
    # The shop catches up: resolved.
    shop_set(stack, i, code, available - 2)
    settle(stack)
    assert "ONLINE_OVERSELL_RISK" not in found(stack, sku, code)
    # A full run agrees with the event-driven judgement.
    shop_set(stack, i, code, available + 1)
    settle(stack)
    report = reconcile(stack, skus=(sku,))
    assert report.by_kind[Kind.ONLINE_OVERSELL_RISK.value] == 1


def test_erp_override_is_snapshot_drift_at_a_warehouse_and_store_count_at_a_store(
        stack: Stack) -> None:
    i, wh = clean_cell(stack, warehouse=True)
    j, store = clean_cell(stack, warehouse=False)
    sku_w, sku_s = stack.world.item(i).sku, stack.world.item(j).sku
    on_hand = wms_balance(stack, i, wh)["onHand"]
    views_of(stack, i, wh)
    views_of(stack, j, store)
    erp_override(stack, i, wh, on_hand + 30)
    store_views = views_of(stack, j, store)
    erp_override(stack, j, store, store_views["SYSTEM_OF_RECORD"]["onHand"] - 4)
    settle(stack)
    drift = found(stack, sku_w, wh)["ERP_SNAPSHOT_DRIFT"]
    assert (drift["status"], drift["delta"], drift["source"]) == ("WRONG", 30, "erp")
    assert drift["severity"] == "HIGH"
    count = found(stack, sku_s, store)["POS_ERP_STORE_COUNT"]
    assert (count["status"], count["delta"]) == ("WRONG", -4)
    # The ERP is corrected back: both resolve.
    erp_override(stack, i, wh, on_hand)
    erp_override(stack, j, store, store_views["SYSTEM_OF_RECORD"]["onHand"])
    settle(stack)
    assert found(stack, sku_w, wh) == {}
    assert found(stack, sku_s, store) == {}


def test_snapshot_behind_movements_is_lagging_and_unexplained_units_are_wrong(
        stack: Stack) -> None:
    """Units shipped since the snapshot explain the difference (LAGGING); an override on
    top is the part no movement explains (WRONG, delta = the override only)."""
    i, wh = clean_cell(stack, warehouse=True)
    sku = stack.world.item(i).sku
    views_of(stack, i, wh)
    on_hand = wms_balance(stack, i, wh)["onHand"]
    wms_event(stack, i, wh, "shipping", 3)
    settle(stack)
    lagging = found(stack, sku, wh)["ERP_SNAPSHOT_DRIFT"]
    assert lagging["status"] == "LAGGING"
    assert lagging["delta"] == 3  # snapshot minus the WMS now
    assert lagging["explainedByMovements"] == 3
    assert lagging["severity"] == "LOW"
    report = reconcile(stack, skus=(sku,), locations=(wh,))
    assert report.by_status == {"LAGGING": 1}
    # Someone overrides the ERP cell 5 above what the WMS had at the snapshot, and the
    # warehouse ships 2 more afterwards.
    erp_override(stack, i, wh, on_hand + 5)
    settle(stack)
    wms_event(stack, i, wh, "shipping", 2)
    settle(stack)
    # At the override the WMS held on_hand - 3: 8 units are unexplained; the 2 shipped after
    # it are explained.
    wrong = found(stack, sku, wh)["ERP_SNAPSHOT_DRIFT"]
    assert (wrong["status"], wrong["delta"], wrong["explainedByMovements"]) == ("WRONG", 8, 2)


def log_entries(stack: Stack) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        return [orjson.loads(fields[b"e"]) for _, fields in stream_entries(
            client.xrange("rg:{ev}:log"))]
    finally:
        client.close()


def test_a_change_whose_webhook_is_on_its_way_is_in_flight_and_not_repaired(
        stack: Stack) -> None:
    """The WMS has counted the cell and its webhook is still on the way when the run reads
    it: the run waits for the webhook instead of repairing (it used to log and publish a
    REPAIR of the very change the webhook then brought)."""
    i, code = 5, stack.world.warehouses[0].code
    sku = stack.world.item(i).sku
    before = views_of(stack, i, code)["SYSTEM_OF_RECORD"]["onHand"]  # cached
    counted = before + 7
    with stack.sim("wms") as wms:
        assert wms.post("/_sim/faults", json={"delay_seconds": 1.5}).status_code == 200
    try:
        wms_event(stack, i, code, "cycle_counting", counted)
        report = reconcile(stack)
    finally:
        with stack.sim("wms") as wms:
            wms.post("/_sim/faults", json={"delay_seconds": 0})
    assert (report.repaired, report.repairs) == (0, [])
    assert Kind.CACHE_DRIFT.value not in report.by_kind
    # The cell holds what the webhook brought; nothing but the webhook touched it.
    assert views_of(stack, i, code)["SYSTEM_OF_RECORD"]["onHand"] == counted
    touched = [e for e in log_entries(stack) if e.get("sku") == sku
               and e.get("location_id") == code]
    assert [e["movement"]["type"] for e in touched] == ["COUNT"], touched
    assert "CACHE_DRIFT" not in found(stack, sku, code)
    assert (report.in_flight, report.caught_up, report.overdue) == (1, 1, 0)
    assert report.as_dict()["inFlight"]["caughtUp"] == 1


def test_dropped_webhook_is_cache_drift_repaired_as_a_logged_event(stack: Stack) -> None:
    i, code = 7, stack.world.warehouses[1].code
    sku = stack.world.item(i).sku
    views_of(stack, i, code)  # cached
    # The run waits this long for the webhook of a change it finds in flight, then judges.
    stack.settings.sync_grace_seconds = 1.0
    with stack.sim("wms") as wms:
        assert wms.post("/_sim/faults", json={"drop_rate": 1.0}).status_code == 200
    wms_event(stack, i, code, "cycle_counting", 11)
    with stack.sim("wms") as wms:
        wms.post("/_sim/faults", json={"drop_rate": 0.0})
    stale = views_of(stack, i, code)["SYSTEM_OF_RECORD"]["onHand"]
    assert stale != 11  # the gateway never heard of the count
    report = reconcile(stack)
    assert (report.in_flight, report.caught_up, report.overdue) == (1, 0, 1)
    assert report.by_kind[Kind.CACHE_DRIFT.value] == 1
    assert report.repaired == 1
    (repair,) = report.repairs
    assert (repair["sku"], repair["locationId"], repair["source"]) == (sku, code, "wms")
    assert (repair["backend"], repair["cacheBefore"], repair["status"]) == (11, stale, "WRONG")
    assert repair["outcome"] == "repaired"
    assert views_of(stack, i, code)["SYSTEM_OF_RECORD"]["onHand"] == 11
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        last = orjson.loads(stream_entries(client.xrevrange("rg:{ev}:log", count=1))[0][1][b"e"])
    finally:
        client.close()
    assert (last["kind"], last["movement"]["type"], last["sku"]) == ("LEVEL_SNAPSHOT", "REPAIR",
                                                                    sku)
    # Repaired: not listed any more, and a second run finds nothing to repair.
    assert "CACHE_DRIFT" not in found(stack, sku, code)
    assert reconcile(stack).repaired == 0


def test_cache_corrupted_at_the_same_version_is_wrong_and_repaired(stack: Stack) -> None:
    i, code = 2, stack.world.stores[0].code
    views_of(stack, i, code)
    client = redis.Redis.from_url(stack.settings.redis_url)
    key = f"rg:{{s:{stack.world.item(i).sku}}}:views:pos"
    try:
        right = int(client.hget(key, f"{code}/available") or 0)
        client.hset(key, f"{code}/available", right + 40)
    finally:
        client.close()
    report = reconcile(stack, repair=False)
    (drift,) = [f for f in report.top if f.kind is Kind.CACHE_DRIFT]
    assert (drift.status.value, drift.severity.value, drift.delta) == ("WRONG", "HIGH", 40)
    assert report.repaired == 0
    assert "CACHE_DRIFT" in found(stack, stack.world.item(i).sku, code)
    assert reconcile(stack).repaired == 1
    assert views_of(stack, i, code)["SYSTEM_OF_RECORD"]["available"] == right


# -- the report, from the command line -------------------------------------------------------

def _config(stack: Stack, path: Path) -> Path:
    lines = ["[gateway]", f'redis_url = "{stack.settings.redis_url}"']
    for name, b in stack.settings.backends.items():
        lines += [f"[backends.{name}]", f'format = "{b.format}"', f'base_url = "{b.base_url}"',
                  f'token = "{b.token}"', f'webhook_secret = "{b.webhook_secret}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_as_json_and_csv_from_the_cli(stack: Stack, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    i, wh = clean_cell(stack, warehouse=True)
    erp_override(stack, i, wh, 999)
    available = wms_balance(stack, 4, wh)["available"]
    shop_set(stack, 4, wh, available + 12)
    stack.drain_webhooks()
    config = _config(stack, tmp_path / "gw.toml")
    out_json, out_csv = tmp_path / "report.json", tmp_path / "report.csv"
    assert cli_main(["reconcile", "--config", str(config), "--output", str(out_json)]) == 0
    assert "reconciled" in capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert report["scope"]["cells"] == stack.world.n_skus * len(stack.world.locations)
    assert report["byKind"]["ONLINE_OVERSELL_RISK"] == 1
    assert report["byKind"]["ERP_SNAPSHOT_DRIFT"] >= 1
    assert sum(report["byKind"].values()) == report["discrepancies"]
    assert sum(sum(c.values()) for c in report["byLocation"].values()) == report["discrepancies"]
    worst = report["topOffenders"][0]
    assert (worst["kind"], worst["severity"], worst["sku"]) == (
        "ONLINE_OVERSELL_RISK", "CRITICAL", stack.world.item(4).sku)
    assert {v["role"] for v in worst["views"]} == {"ONLINE", "SYSTEM_OF_RECORD"}
    assert cli_main(["reconcile", "--config", str(config), "--locations", wh,
                     "--output", str(out_csv)]) == 0
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    counts = {(r["kind"], r["location_id"]): int(r["count"]) for r in rows
              if r["section"] == "count" and r["location_id"]}
    assert counts[("ONLINE_OVERSELL_RISK", wh)] == 1
    assert all(loc == wh for _, loc in counts)
    offenders = [r for r in rows if r["section"] == "offender"]
    assert offenders[0]["kind"] == "ONLINE_OVERSELL_RISK"
    assert int(offenders[0]["delta"]) == 12
    summary = {r["detail"].split("=")[0] for r in rows if r["section"] == "summary"}
    assert {"run_id", "cells", "repaired"} <= summary


# -- live: the subscription ------------------------------------------------------------------

def _subscribe(ws: Any, query: str) -> None:
    ws.send(json.dumps({"type": "connection_init", "payload": {}}))
    assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
    ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))


def _next(ws: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message["type"] == "next":
            assert "errors" not in message["payload"], message
            event: dict[str, Any] = message["payload"]["data"]["discrepancyDetected"]
            return event


def test_subscription_fires_when_a_discrepancy_appears_and_resolves(stack: Stack) -> None:
    i, wh = clean_cell(stack, warehouse=True)
    sku = stack.world.item(i).sku
    views_of(stack, i, wh)
    on_hand = wms_balance(stack, i, wh)["onHand"]
    other = stack.world.warehouses[1].code if wh == stack.world.warehouses[0].code \
        else stack.world.warehouses[0].code
    query = f"""subscription {{ discrepancyDetected(locationIds: ["{wh}"], minSeverity: MEDIUM)
      {{ change at cursor discrepancy {{ id sku locationId kind status severity delta }} }} }}"""
    with connect(stack.url.replace("http", "ws") + "/graphql", open_timeout=10,
                 subprotocols=[Subprotocol("graphql-transport-ws")]) as ws:
        _subscribe(ws, query)
        time.sleep(0.3)  # the subscription is registered before the fault
        # Below MEDIUM and at another location: filtered out on the server.
        views_of(stack, i, other)
        erp_override(stack, i, other, 10_000)
        erp_override(stack, i, wh, on_hand + 1)  # 1 unit: LOW
        erp_override(stack, i, wh, on_hand + 50)  # HIGH
        appeared = _next(ws)
        assert appeared["change"] in ("APPEARED", "UPDATED")
        assert appeared["discrepancy"]["id"] == f"{wh}|{sku}|ERP_SNAPSHOT_DRIFT"
        assert (appeared["discrepancy"]["severity"], appeared["discrepancy"]["delta"]) == (
            "HIGH", 50)
        erp_override(stack, i, wh, on_hand)
        resolved = _next(ws)
        assert resolved["change"] == "RESOLVED"
        assert resolved["discrepancy"]["sku"] == sku
        assert resolved["discrepancy"]["locationId"] == wh


def test_discrepancies_need_the_discrepancies_scope(redis_url: str) -> None:
    s = Stack(redis_url, skus=6, stores=1, warehouses=1)
    s.settings.api_keys = {
        "clerk": {"key": "clerk-key-0123456789", "scopes": ["stock:read"]},
        "auditor": {"key": "auditor-key-0123456789",
                    "scopes": ["stock:read", "discrepancies:read"]}}
    query = ('{ discrepancies(first: 5) { total } syncStatus { source } '
             'stockLevel(sku: "SKU-000001", locationId: "WH01") { onHand views { source } } }')
    with s:
        denied = s.graphql(query, headers={"X-API-Key": "clerk-key-0123456789"})
        allowed = s.graphql(query, headers={"X-API-Key": "auditor-key-0123456789"})
    assert denied["data"]["discrepancies"] is None
    assert denied["data"]["syncStatus"] == []
    assert denied["data"]["stockLevel"]["views"] == []
    assert isinstance(denied["data"]["stockLevel"]["onHand"], int)
    assert {e["extensions"]["code"] for e in denied["errors"]} == {"FORBIDDEN"}
    assert "errors" not in allowed, allowed
    assert {v["source"] for v in allowed["data"]["stockLevel"]["views"]} == {
        "wms", "commerce", "erp"}
    assert {x["source"] for x in allowed["data"]["syncStatus"]} == {
        "pos", "wms", "erp", "commerce"}
