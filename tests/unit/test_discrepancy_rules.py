"""The pure discrepancy rules (resolvers/discrepancies.py), judged directly: no Redis, no
backends. What the README's "four kinds of discrepancy" promise, cell by cell: the ERP
snapshot against the system of record with the movements since, the shop's offer against
what the warehouse can ship, the gateway's cache against its own backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from resolvers.discrepancies import (
    CellViews,
    Finding,
    History,
    HistoryEntry,
    Kind,
    Role,
    Severity,
    Status,
    assess,
    cache_drift,
    cell_slots,
    derived_on_hand,
    in_flight,
    in_the_future,
)
from resolvers.types import LocationType, Quantities, StockView

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SNAPSHOT_AT = NOW - timedelta(hours=6)  # the ERP's nightly snapshot


def view(source: str, at: datetime, version: str = "", **quantities: int) -> StockView:
    return StockView("SKU-000001", "WH01", source, Quantities(**quantities), at, version)


def warehouse(record: StockView | None = None, erp: StockView | None = None,
              online: StockView | None = None) -> CellViews:
    return CellViews("SKU-000001", "WH01", LocationType.WAREHOUSE, record, erp, online,
                     origins={"wms": "cache", "erp": "backend", "commerce": "cache"})


def only(findings: list[Finding], kind: Kind) -> Finding:
    (found,) = [f for f in findings if f.kind is kind]
    return found


MOVED = SNAPSHOT_AT + timedelta(hours=2)


def sold_since_the_snapshot(on_hand_then: int) -> tuple[CellViews, History]:
    """A warehouse whose record had ``on_hand_then`` at the snapshot's time and 70 since
    ``MOVED``; the ERP snapshot says 100."""
    history = History((HistoryEntry(SNAPSHOT_AT - timedelta(hours=1), None, on_hand_then),
                       HistoryEntry(MOVED, on_hand_then, 70)))
    cell = warehouse(record=view("wms", MOVED, on_hand=70),
                     erp=view("erp", SNAPSHOT_AT, on_hand=100))
    return cell, history


# -- the ERP snapshot against the system of record --------------------------------------------

def test_a_cell_without_its_system_of_record_is_not_judged() -> None:
    cell = warehouse(erp=view("erp", SNAPSHOT_AT, on_hand=100))
    assert assess(cell, None, tolerance=0, now=NOW) == []


def test_snapshot_within_the_tolerance_is_no_finding() -> None:
    cell = warehouse(record=view("wms", SNAPSHOT_AT - timedelta(hours=1), on_hand=100),
                     erp=view("erp", SNAPSHOT_AT, on_hand=102))
    assert assess(cell, None, tolerance=2, now=NOW) == []
    assert len(assess(cell, None, tolerance=1, now=NOW)) == 1


def test_snapshot_that_differs_with_no_movement_since_is_wrong_by_the_difference() -> None:
    cell = warehouse(record=view("wms", SNAPSHOT_AT - timedelta(hours=1), on_hand=100),
                     erp=view("erp", SNAPSHOT_AT, on_hand=130))
    found = only(assess(cell, None, tolerance=0, now=NOW), Kind.ERP_SNAPSHOT_DRIFT)
    assert (found.status, found.delta, found.source) == (Status.WRONG, 30, "erp")
    assert found.severity is Severity.HIGH  # 25 units or more
    assert found.explained == 0
    erp_side, record_side = found.sides
    assert (erp_side.role, erp_side.value, erp_side.origin) == (Role.ERP_SNAPSHOT, 130, "backend")
    assert (record_side.role, record_side.value, record_side.origin) == (
        Role.SYSTEM_OF_RECORD, 100, "cache")
    assert found.detected_at == NOW


@pytest.mark.parametrize(("snapshot", "record", "severity"), [
    (103, 100, Severity.LOW),  # 3 units, 3%
    (106, 100, Severity.MEDIUM),  # 5 units or more
    (12, 10, Severity.MEDIUM),  # 20% of the record's on-hand
    (16, 10, Severity.HIGH),  # half of it, and at least 5 units
    (125, 100, Severity.HIGH),  # 25 units
])
def test_severity_of_an_unexplained_difference(snapshot: int, record: int,
                                               severity: Severity) -> None:
    cell = warehouse(record=view("wms", SNAPSHOT_AT - timedelta(hours=1), on_hand=record),
                     erp=view("erp", SNAPSHOT_AT, on_hand=snapshot))
    assert only(assess(cell, None, 0, NOW), Kind.ERP_SNAPSHOT_DRIFT).severity is severity


def test_movements_since_the_snapshot_that_explain_it_make_the_snapshot_lagging() -> None:
    # 100 at the snapshot, then 30 sold: the snapshot's 100 is old, not wrong.
    cell, history = sold_since_the_snapshot(100)
    found = only(assess(cell, history, 0, NOW), Kind.ERP_SNAPSHOT_DRIFT)
    assert (found.status, found.severity, found.delta) == (Status.LAGGING, Severity.LOW, 30)
    assert found.explained == 30
    assert found.last_movement_at == MOVED


def test_movements_that_explain_only_part_leave_the_rest_wrong() -> None:
    # The record had 90 at the snapshot's time, the snapshot says 100: 10 units unexplained.
    cell, history = sold_since_the_snapshot(90)
    found = only(assess(cell, history, 0, NOW), Kind.ERP_SNAPSHOT_DRIFT)
    assert (found.status, found.delta, found.explained) == (Status.WRONG, 10, 20)
    assert "+10 unit(s) unexplained" in found.message


def test_moved_since_the_snapshot_with_unknown_movements_is_lagging() -> None:
    cell = warehouse(record=view("wms", SNAPSHOT_AT + timedelta(hours=1), on_hand=70),
                     erp=view("erp", SNAPSHOT_AT, on_hand=100))
    found = only(assess(cell, None, 0, NOW), Kind.ERP_SNAPSHOT_DRIFT)
    assert (found.status, found.delta, found.explained) == (Status.LAGGING, 30, None)


def test_a_store_compares_the_erp_with_the_pos_count_its_states_add_up_to() -> None:
    # Square has no on-hand: IN_STOCK (available) plus committed is what is on the shelf.
    record = StockView("SKU-000001", "ST001", "pos", Quantities(available=20, committed=3),
                       SNAPSHOT_AT - timedelta(hours=1))
    erp = StockView("SKU-000001", "ST001", "erp", Quantities(on_hand=30), SNAPSHOT_AT)
    cell = CellViews("SKU-000001", "ST001", LocationType.STORE, record, erp)
    found = only(assess(cell, None, 0, NOW), Kind.POS_ERP_STORE_COUNT)
    assert (found.status, found.delta) == (Status.WRONG, 7)
    assert [s.value for s in found.sides] == [30, 23]


def test_derived_on_hand() -> None:
    assert derived_on_hand(Quantities(on_hand=5, available=100)) == 5
    assert derived_on_hand(Quantities(available=4, committed=1, quality_control=2,
                                      damaged=3)) == 10
    assert derived_on_hand(Quantities(incoming=50)) is None


def test_history_tells_the_on_hand_at_a_moment_when_it_knows() -> None:
    t0, t1 = SNAPSHOT_AT - timedelta(hours=1), SNAPSHOT_AT + timedelta(hours=1)
    history = History((HistoryEntry(t0, 80, 100), HistoryEntry(t1, 100, 70)))
    assert history.on_hand_at(SNAPSHOT_AT) == 100
    assert history.on_hand_at(t1) == 70
    assert history.on_hand_at(t0 - timedelta(minutes=1)) == 80  # before: the first "before"
    assert History((HistoryEntry(t1, None, 70),)).on_hand_at(SNAPSHOT_AT) is None
    assert history.last_movement == t1
    assert History().last_movement is None


# -- the web shop against the warehouse ----------------------------------------------------------

@pytest.mark.parametrize(("shop", "available", "severity"), [
    (12, 10, Severity.MEDIUM),
    (15, 10, Severity.HIGH),  # 5 units or more
    (30, 10, Severity.CRITICAL),  # 10 units or more
    (1, 0, Severity.CRITICAL),  # the warehouse has nothing to ship
])
def test_the_shop_offering_more_than_the_warehouse_has_is_an_oversell_risk(
        shop: int, available: int, severity: Severity) -> None:
    at = NOW - timedelta(minutes=5)
    cell = warehouse(record=view("wms", at, available=available),
                     online=view("commerce", at, available=shop))
    found = only(assess(cell, None, 0, NOW), Kind.ONLINE_OVERSELL_RISK)
    assert (found.status, found.severity, found.delta) == (Status.WRONG, severity,
                                                          shop - available)
    assert found.source == "commerce"
    assert [(s.role, s.quantity, s.value) for s in found.sides] == [
        (Role.ONLINE, "available", shop), (Role.SYSTEM_OF_RECORD, "available", available)]


def test_a_shop_behind_the_warehouses_last_movement_is_lagging_one_severity_lower() -> None:
    cell = warehouse(record=view("wms", NOW - timedelta(minutes=1), available=10),
                     online=view("commerce", NOW - timedelta(minutes=5), available=30))
    found = only(assess(cell, None, 0, NOW), Kind.ONLINE_OVERSELL_RISK)
    assert (found.status, found.severity) == (Status.LAGGING, Severity.HIGH)
    assert "has not caught up" in found.message


def test_the_shop_offering_less_or_a_store_location_is_no_oversell_risk() -> None:
    at = NOW - timedelta(minutes=5)
    fewer = warehouse(record=view("wms", at, available=10), online=view("commerce", at,
                                                                         available=8))
    assert assess(fewer, None, 0, NOW) == []
    store = CellViews("SKU-000001", "ST001", LocationType.STORE,
                      view("pos", at, available=1), None, view("commerce", at, available=50))
    assert assess(store, None, 0, NOW) == []


# -- the gateway's cache against its backend -----------------------------------------------------

def test_no_cached_cell_or_an_agreeing_one_is_no_drift() -> None:
    backend = view("wms", NOW - timedelta(minutes=10), "7", on_hand=10, available=8)
    assert cache_drift(backend, None, Role.SYSTEM_OF_RECORD, NOW, 5.0) is None
    assert cache_drift(backend, backend, Role.SYSTEM_OF_RECORD, NOW, 5.0) is None


def test_a_cache_newer_than_the_backends_read_is_no_drift() -> None:
    # An event arrived after the backend was read: the cache is ahead, not wrong.
    backend = view("wms", NOW - timedelta(seconds=30), "7", on_hand=10)
    cached = view("wms", NOW - timedelta(seconds=29), "8", on_hand=12)
    assert cache_drift(backend, cached, Role.SYSTEM_OF_RECORD, NOW, 5.0) is None


def test_a_cache_behind_an_old_change_of_its_backend_is_wrong() -> None:
    backend = view("wms", NOW - timedelta(minutes=10), "8", on_hand=10, available=8)
    cached = view("wms", NOW - timedelta(minutes=20), "7", on_hand=13, available=8)
    found = cache_drift(backend, cached, Role.SYSTEM_OF_RECORD, NOW, grace_seconds=5.0)
    assert found is not None
    assert (found.kind, found.status, found.severity, found.delta) == (
        Kind.CACHE_DRIFT, Status.WRONG, Severity.HIGH, 3)
    assert found.slot == "CACHE_DRIFT:wms"
    assert [(s.origin, s.value) for s in found.sides] == [("backend", 10), ("cache", 13)]
    assert "onHand +3" in found.message


def test_a_cache_behind_a_change_younger_than_the_grace_is_in_flight() -> None:
    backend = view("wms", NOW - timedelta(seconds=2), "8", on_hand=10)
    cached = view("wms", NOW - timedelta(minutes=20), "7", on_hand=13)
    assert in_flight(backend, cached, NOW, grace_seconds=5.0)
    found = cache_drift(backend, cached, Role.SYSTEM_OF_RECORD, NOW, grace_seconds=5.0)
    assert found is not None
    assert (found.status, found.severity) == (Status.LAGGING, Severity.MEDIUM)
    # The same difference at the backend's own version cannot be waiting for a webhook.
    same_version = view("wms", NOW - timedelta(minutes=20), "8", on_hand=13)
    assert not in_flight(backend, same_version, NOW, grace_seconds=5.0)
    wrong = cache_drift(backend, same_version, Role.SYSTEM_OF_RECORD, NOW, 5.0)
    assert wrong is not None
    assert wrong.status is Status.WRONG


def test_the_shops_cache_is_compared_on_available_only() -> None:
    # Its webhook carries nothing else: the other quantities age between reads by design.
    backend = view("commerce", NOW - timedelta(minutes=10), "8", available=5, on_hand=50)
    ages = view("commerce", NOW - timedelta(minutes=20), "7", available=5, on_hand=40)
    assert cache_drift(backend, ages, Role.ONLINE, NOW, 5.0) is None
    differs = view("commerce", NOW - timedelta(minutes=20), "7", available=9, on_hand=50)
    found = cache_drift(backend, differs, Role.ONLINE, NOW, 5.0)
    assert found is not None
    assert (found.severity, found.delta) == (Severity.MEDIUM, 4)
    assert {s.quantity for s in found.sides} == {"available"}


def test_a_version_from_the_future_is_a_drift_even_where_the_values_agree() -> None:
    later = (NOW + timedelta(days=400)).isoformat()
    backend = view("commerce", NOW - timedelta(minutes=1), NOW.isoformat(), available=5)
    cached = view("commerce", NOW - timedelta(minutes=2), later, available=5)
    assert in_the_future(backend, cached, NOW, max_skew_seconds=300)
    found = cache_drift(backend, cached, Role.ONLINE, NOW, 5.0, max_skew_seconds=300)
    assert found is not None
    assert found.status is Status.WRONG
    assert "from the future" in found.message
    # A sequence number ahead of the backend's, although the backend changed after it.
    seq_backend = view("erp", NOW - timedelta(minutes=1), "10", on_hand=5)
    seq_cached = view("erp", NOW - timedelta(hours=2), "99", on_hand=5)
    assert in_the_future(seq_backend, seq_cached, NOW, max_skew_seconds=300)
    # Ahead, but the backend has not changed since: an event that came after the read.
    recent = view("erp", NOW - timedelta(minutes=1, seconds=10), "11", on_hand=5)
    assert not in_the_future(seq_backend, recent, NOW, max_skew_seconds=300)


# -- records --------------------------------------------------------------------------------------

def test_a_finding_survives_its_encoding() -> None:
    cell, history = sold_since_the_snapshot(90)
    found = only(assess(cell, history, 0, NOW), Kind.ERP_SNAPSHOT_DRIFT)
    since = (NOW - timedelta(days=1)).isoformat()
    back = Finding.decode(found.encode(), since=since.encode())
    assert back == Finding(**{**{f: getattr(found, f) for f in Finding.__slots__},
                              "since": datetime.fromisoformat(since)})
    assert back.key == "WH01|SKU-000001|ERP_SNAPSHOT_DRIFT"
    assert back.signature == "WRONG|MEDIUM|10"


def test_the_slots_of_a_cell() -> None:
    assert cell_slots(LocationType.STORE, ["pos"]) == ["POS_ERP_STORE_COUNT", "CACHE_DRIFT:pos"]
    assert cell_slots(LocationType.WAREHOUSE, ["wms", "commerce"]) == [
        "ERP_SNAPSHOT_DRIFT", "ONLINE_OVERSELL_RISK", "CACHE_DRIFT:wms", "CACHE_DRIFT:commerce"]
