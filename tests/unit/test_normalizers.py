"""Every vendor's webhook normaliser (gateway/intake/normalize/), called directly on the
payload shapes the vendors document (/work/shared/reference/retail-formats.md,
vendor-apis-2026.md): what each turns into envelopes, and what each refuses, as ``Malformed``
(400, nothing recorded) or ``Unappliable`` (dead-lettered). The signature has been checked
before a normaliser runs, so none is computed here; no network, no Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.events.envelope import Envelope, EventKind, MovementType
from gateway.intake.normalize import (
    NORMALIZERS,
    Delivery,
    Malformed,
    Unappliable,
    epcis,
    erp,
    shopify,
    square,
)
from resolvers.connectors import wms
from resolvers.identity import (
    GLN,
    GTIN,
    SHOPIFY_INVENTORY_ITEM,
    SHOPIFY_LOCATION,
    SHOPIFY_VARIANT,
    SQUARE_LOCATION,
    SQUARE_VARIATION,
    IdentityMap,
    gln_from_sgln,
)
from resolvers.settings import BackendSettings
from resolvers.types import MAX_VERSION, Quantities

RECEIVED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
BACKENDS = {"square": BackendSettings("pos", "square", "http://pos.invalid"),
            "shopify": BackendSettings("commerce", "shopify", "http://shop.invalid"),
            "epcis": BackendSettings("wms", "epcis", "http://wms.invalid"),
            "erp": BackendSettings("erp", "erp", "http://erp.invalid")}

# Square's own example (docs/inventory-api/webhooks), dated just before the receipt.
SQUARE_VARIATION_ID, SQUARE_LOCATION_ID = "6F4K33KPNUVDWKZ43KUIFH6K", "EF6D9SACKWBKZ"
SQUARE_EXAMPLE: dict[str, Any] = {
    "merchant_id": "6SSW7HV8K2ST5", "type": "inventory.count.updated",
    "event_id": "df5f3813-a913-45a1-94e9-fdc3f7d5e3b6",
    "created_at": "2026-11-30T11:59:58.455006797Z",
    "data": {"type": "inventory_counts", "id": "84e4ac73-d605-4dbd-a9e5-ffff794ddb9d",
             "object": {"inventory_counts": [{
                 "calculated_at": "2026-11-30T11:59:58.10296Z",
                 "catalog_object_id": SQUARE_VARIATION_ID,
                 "catalog_object_type": "ITEM_VARIATION", "location_id": SQUARE_LOCATION_ID,
                 "quantity": "90", "state": "IN_STOCK"}]}}}

# Shopify's inventory_levels/update sample (REST-shaped, ``available`` only).
SHOPIFY_ITEM, SHOPIFY_LOC = 271878346596884015, 24826418
SHOPIFY_LEVEL: dict[str, Any] = {
    "inventory_item_id": SHOPIFY_ITEM, "location_id": SHOPIFY_LOC, "available": 10,
    "updated_at": "2026-11-30T06:59:00-05:00",
    "admin_graphql_api_id": f"gid://shopify/InventoryLevel/{SHOPIFY_LOC}"
                            f"?inventory_item_id={SHOPIFY_ITEM}"}
SHOPIFY_HEADERS = {"x-shopify-topic": "inventory_levels/update",
                   "x-shopify-webhook-id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
                   "x-shopify-event-id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
                   "x-shopify-triggered-at": "2026-11-30T11:59:59Z",
                   "x-shopify-shop-domain": "retailgraph-demo.myshopify.com",
                   "x-shopify-api-version": "2026-10"}

# GS1's ObjectEvent example (Example_9.6.2), plus the WMS's own balance extension (wms:).
SGLN = "urn:epc:id:sgln:0614141.00888.0"
GS1_OBJECT_EVENT: dict[str, Any] = {
    "type": "ObjectEvent", "eventID": "ni:///sha-256;df7bb3c352fef055578554f09f5e2aa4?ver=CBV2.0",
    "eventTime": "2026-11-30T11:58:56.591Z", "eventTimeZoneOffset": "+02:00",
    "action": "OBSERVE", "bizStep": "receiving", "disposition": "in_progress",
    "readPoint": {"id": "urn:epc:id:sgln:0614141.00777.0"}, "bizLocation": {"id": SGLN},
    "quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.998877",
                      "quantity": 200, "uom": "EA"}],
    "bizTransactionList": [{"type": "po",
                            "bizTransaction": "urn:epc:id:gdti:0614141.00001.1618034"}]}
# (The balance is as of the event's recordTime, which the WMS always sets.)
WMS_EXTENSION: dict[str, Any] = {
    "recordTime": "2026-11-30T11:58:57.002Z", "wms:sequence": 41,
    "wms:balance": {"onHand": 260, "allocated": 12, "qualityControl": 200, "damaged": 0,
                    "incoming": 0, "available": 48}}

ERP_STOCK_ADJUSTED: dict[str, Any] = {
    "id": "evt_01JDX4", "type": "stock.adjusted", "occurredAt": "2026-11-30T11:59:00Z",
    "sequence": 7781, "data": {"snapshotId": "snap_20261130", "itemNumber": "100042",
                               "sku": "SKU-000042", "locationCode": "WH01", "onHand": 135,
                               "previousOnHand": 140, "reason": "count",
                               "adjustedAt": "2026-11-30T11:58:30Z"}}


def identity() -> IdentityMap:
    ids = IdentityMap()
    ids.add_sku(SQUARE_VARIATION, SQUARE_VARIATION_ID, "SKU-000042")
    ids.add_location(SQUARE_LOCATION, SQUARE_LOCATION_ID, "ST001")
    ids.add_sku(SHOPIFY_INVENTORY_ITEM, str(SHOPIFY_ITEM), "SKU-000042")
    ids.add_sku(SHOPIFY_VARIANT, "808950810", "SKU-000042")
    ids.add_location(SHOPIFY_LOCATION, str(SHOPIFY_LOC), "WH01")
    gtin = wms.parse_object_event(GS1_OBJECT_EVENT).gtin14
    gln = gln_from_sgln(SGLN)
    assert gtin is not None
    assert gln is not None
    ids.add_sku(GTIN, gtin, "SKU-000042")
    ids.add_location(GLN, gln, "WH01")
    ids.known_skus.add("SKU-000042")
    ids.known_locations.add("WH01")
    return ids


def delivery(fmt: str, payload: Any, headers: dict[str, str] | None = None) -> Delivery:
    body = json.dumps(payload).encode()
    return Delivery(BACKENDS[fmt], body, payload, headers or {}, RECEIVED)


def one(result: tuple[str, list[Envelope]]) -> tuple[str, Envelope]:
    delivery_id, envelopes = result
    assert len(envelopes) == 1, envelopes
    return delivery_id, envelopes[0]


def test_every_format_has_a_normaliser() -> None:
    assert set(NORMALIZERS) == set(BACKENDS) == {"square", "shopify", "epcis", "erp"}


# -- Square --------------------------------------------------------------------------------------

def test_square_count_is_a_partial_level_of_the_mapped_cell() -> None:
    d = delivery("square", SQUARE_EXAMPLE,
                 {"square-initial-delivery-timestamp": "2026-11-30T11:59:58.5Z"})
    event_id, env = one(square(d, identity()))
    assert event_id == SQUARE_EXAMPLE["event_id"]
    assert (env.kind, env.source, env.system, env.topic) == (
        EventKind.LEVEL_SNAPSHOT, "pos", "square", "inventory.count.updated")
    assert (env.sku, env.location_id, env.full) == ("SKU-000042", "ST001", False)
    # Only the state it carries is known; Square has no on-hand of its own.
    assert env.quantities is not None
    assert (env.quantities.available, env.quantities.committed, env.quantities.on_hand) == (
        90, None, None)
    assert env.occurred_at == datetime(2026, 11, 30, 11, 59, 58, 102960, tzinfo=UTC)
    assert env.source_version == int(env.occurred_at.timestamp() * 1_000_000)
    assert env.delivery_id == "2026-11-30T11:59:58.5Z"
    assert env.raw_ref.startswith("sha256:")


def test_square_state_change_carries_before_and_after_counts_of_one_cell() -> None:
    counts = [dict(SQUARE_EXAMPLE["data"]["object"]["inventory_counts"][0], quantity="89"),
              dict(SQUARE_EXAMPLE["data"]["object"]["inventory_counts"][0],
                   state="RESERVED_FOR_SALE", quantity="1")]
    payload = {**SQUARE_EXAMPLE, "data": {**SQUARE_EXAMPLE["data"],
                                          "object": {"inventory_counts": counts}}}
    _, env = one(square(delivery("square", payload), identity()))
    assert env.quantities is not None
    assert (env.quantities.available, env.quantities.committed) == (89, 1)


def test_square_other_topics_are_notices() -> None:
    payload = {**SQUARE_EXAMPLE, "type": "catalog.version.updated"}
    _, env = one(square(delivery("square", payload), identity()))
    assert (env.kind, env.topic, env.sku) == (EventKind.NOTICE, "catalog.version.updated", None)


@pytest.mark.parametrize(("change", "refusal", "words"), [
    ({"event_id": None}, Malformed, "body.event_id is missing"),
    ({"created_at": "yesterday"}, Malformed, "not an RFC 3339 timestamp"),
    ({"data": {"type": "inventory_counts", "object": {"inventory_counts": []}}}, Malformed,
     "must be a non-empty list"),
    ({"created_at": "2026-12-30T12:00:00Z"}, Unappliable, "in the future"),
])
def test_square_refusals(change: dict[str, Any], refusal: type[Exception], words: str) -> None:
    with pytest.raises(refusal, match=words):
        square(delivery("square", {**SQUARE_EXAMPLE, **change}), identity())


def test_square_counts_that_cannot_be_served_are_dead_lettered() -> None:
    count = SQUARE_EXAMPLE["data"]["object"]["inventory_counts"][0]
    for bad, words in ((dict(count, catalog_object_id="UNKNOWNVARIATION"), "unmapped"),
                       (dict(count, quantity=str(2**31)), "out of range|2147483647")):
        payload = {**SQUARE_EXAMPLE, "data": {**SQUARE_EXAMPLE["data"],
                                              "object": {"inventory_counts": [bad]}}}
        with pytest.raises(Unappliable, match=words):
            square(delivery("square", payload), identity())
    with pytest.raises(Malformed):
        square(delivery("square", {**SQUARE_EXAMPLE, "data": {"object": {
            "inventory_counts": [dict(count, quantity="ninety")]}}}), identity())


# -- Shopify -------------------------------------------------------------------------------------

def test_shopify_level_is_a_full_level_of_available_versioned_by_updated_at() -> None:
    webhook_id, env = one(shopify(delivery("shopify", SHOPIFY_LEVEL, SHOPIFY_HEADERS),
                                  identity()))
    assert webhook_id == SHOPIFY_HEADERS["x-shopify-webhook-id"]
    assert (env.kind, env.source, env.sku, env.location_id) == (
        EventKind.LEVEL_SNAPSHOT, "commerce", "SKU-000042", "WH01")
    assert env.quantities is not None
    assert env.quantities.available == 10
    assert env.source_event_id == SHOPIFY_HEADERS["x-shopify-event-id"]
    assert env.occurred_at == datetime(2026, 11, 30, 11, 59, tzinfo=UTC)
    assert env.source_version == int(env.occurred_at.timestamp() * 1_000_000)


def test_shopify_level_without_updated_at_is_ordered_by_its_receipt_not_a_header() -> None:
    # X-Shopify-Triggered-At is not signed: it never becomes a version.
    level = {k: v for k, v in SHOPIFY_LEVEL.items() if k != "updated_at"}
    _, env = one(shopify(delivery("shopify", level, SHOPIFY_HEADERS), identity()))
    assert env.occurred_at == RECEIVED
    assert env.source_version == int(RECEIVED.timestamp() * 1_000_000)


def test_shopify_order_lines_are_movements() -> None:
    order: dict[str, Any] = {
        "id": 820982911946154508, "name": "#9999", "created_at": "2026-11-30T06:58:00-05:00",
        "line_items": [{"id": 866550311766439020, "variant_id": 808950810,
                        "product_id": 632910392, "sku": "SKU-000042", "quantity": 2,
                        "price": "66.59"}]}
    headers = {**SHOPIFY_HEADERS, "x-shopify-topic": "orders/create"}
    _, env = one(shopify(delivery("shopify", order, headers), identity()))
    assert (env.kind, env.sku) == (EventKind.MOVEMENT, "SKU-000042")
    assert env.movement is not None
    assert (env.movement.type, env.movement.quantity) == (MovementType.ONLINE_ORDER, 2)
    assert env.movement.documents == (("order", "820982911946154508"),)
    assert env.occurred_at == datetime(2026, 11, 30, 11, 59, 59, tzinfo=UTC)  # triggered-at
    bad = {**order, "line_items": [{**order["line_items"][0], "quantity": 0}]}
    with pytest.raises(Malformed, match="positive integer"):
        shopify(delivery("shopify", bad, headers), identity())
    unknown = {**order, "line_items": [{**order["line_items"][0], "variant_id": 1}]}
    with pytest.raises(Unappliable, match="unmapped variant 1"):
        shopify(delivery("shopify", unknown, headers), identity())


@pytest.mark.parametrize(("headers", "words"), [
    ({k: v for k, v in SHOPIFY_HEADERS.items() if k != "x-shopify-topic"}, "X-Shopify-Topic"),
    ({k: v for k, v in SHOPIFY_HEADERS.items() if k != "x-shopify-webhook-id"},
     "X-Shopify-Webhook-Id"),
])
def test_shopify_without_its_headers_is_malformed(headers: dict[str, str], words: str) -> None:
    with pytest.raises(Malformed, match=words):
        shopify(delivery("shopify", SHOPIFY_LEVEL, headers), identity())


def test_shopify_levels_that_cannot_be_applied_are_dead_lettered() -> None:
    for level, words in (({**SHOPIFY_LEVEL, "location_id": 1}, "unmapped"),
                         ({**SHOPIFY_LEVEL, "available": 2**31}, "2147483647|range"),
                         ({**SHOPIFY_LEVEL, "updated_at": "2027-06-01T00:00:00Z"},
                          "in the future")):
        with pytest.raises(Unappliable, match=words):
            shopify(delivery("shopify", level, SHOPIFY_HEADERS), identity())


# -- EPCIS (the WMS) -----------------------------------------------------------------------------

def epcis_document(*events: dict[str, Any]) -> dict[str, Any]:
    return {"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
            "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2026-11-30T11:59:00Z", "epcisBody": {"eventList": list(events)}}


def test_epcis_object_event_with_the_wms_balance_is_a_full_level_and_a_movement() -> None:
    event = GS1_OBJECT_EVENT | WMS_EXTENSION
    d = delivery("epcis", epcis_document(event), {"webhook-id": "msg_2Kq3"})
    delivery_id, env = one(epcis(d, identity()))
    assert delivery_id == "msg_2Kq3"
    assert (env.kind, env.topic, env.sku, env.location_id, env.full) == (
        EventKind.MOVEMENT, "receiving", "SKU-000042", "WH01", True)
    assert env.source_event_id == GS1_OBJECT_EVENT["eventID"]
    assert env.source_version == 41
    assert env.quantities == Quantities(on_hand=260, available=48, committed=12, incoming=0,
                                        quality_control=200, damaged=0)
    assert env.movement is not None
    assert (env.movement.type, env.movement.quantity, env.movement.to_state) == (
        MovementType.RECEIPT, 200, "in_progress")
    assert ("po", "urn:epc:id:gdti:0614141.00001.1618034") in env.movement.documents
    # A bare event (not in a document) is read the same way.
    _, bare = one(epcis(delivery("epcis", event, {"webhook-id": "msg_2Kq4"}), identity()))
    assert bare.quantities == env.quantities


def test_epcis_without_the_wms_balance_is_malformed() -> None:
    # GS1's example as it is: a movement with no balance, which this WMS always sends.
    with pytest.raises(Malformed, match=r"eventList\[0\] carries no wms:balance"):
        epcis(delivery("epcis", epcis_document(GS1_OBJECT_EVENT)), identity())
    without_record_time = {k: v for k, v in (GS1_OBJECT_EVENT | WMS_EXTENSION).items()
                           if k != "recordTime"}
    with pytest.raises(Malformed, match="carries no wms:balance"):
        epcis(delivery("epcis", epcis_document(without_record_time)), identity())


@pytest.mark.parametrize(("change", "refusal", "words"), [
    ({"action": "UPDATE"}, Malformed, "ADD, OBSERVE or DELETE"),
    ({"bizLocation": {"id": "WH01"}}, Malformed, "not an SGLN"),
    ({"eventTime": "2027-01-01T00:00:00Z"}, Unappliable, "in the future"),
    ({"bizLocation": {"id": "urn:epc:id:sgln:0614141.00999.0"}}, Unappliable, "unmapped"),
    ({"wms:balance": {**WMS_EXTENSION["wms:balance"], "available": -5}}, Malformed,
     "wms:balance.available must be a non-negative integer"),
    ({"wms:balance": {**WMS_EXTENSION["wms:balance"], "onHand": 2**31}}, Unappliable,
     "2147483647|range"),
    ({"wms:sequence": MAX_VERSION + 1}, Unappliable, "range|wms:sequence"),
])
def test_epcis_refusals(change: dict[str, Any], refusal: type[Exception], words: str) -> None:
    event = GS1_OBJECT_EVENT | WMS_EXTENSION | change
    with pytest.raises(refusal, match=words):
        epcis(delivery("epcis", epcis_document(event)), identity())


def test_epcis_document_without_events_is_malformed() -> None:
    with pytest.raises(Malformed, match="non-empty list"):
        epcis(delivery("epcis", epcis_document()), identity())


# -- the ERP -------------------------------------------------------------------------------------

def test_erp_stock_adjustment_is_a_full_on_hand_level_versioned_by_adjusted_at() -> None:
    d = delivery("erp", ERP_STOCK_ADJUSTED, {"webhook-id": "evt_01JDX4"})
    event_id, env = one(erp(d, identity()))
    assert event_id == "evt_01JDX4"
    assert (env.kind, env.sku, env.location_id, env.full) == (
        EventKind.LEVEL_SNAPSHOT, "SKU-000042", "WH01", True)
    assert env.quantities == Quantities(on_hand=135)
    adjusted = datetime(2026, 11, 30, 11, 58, 30, tzinfo=UTC)
    assert env.source_version == int(adjusted.timestamp() * 1_000_000)  # not the sequence
    assert env.movement is not None
    assert (env.movement.type, env.movement.documents) == (MovementType.ADJUSTMENT,
                                                           (("reason", "count"),))


def test_erp_purchase_order_received_is_a_notice_per_sku() -> None:
    event = {**ERP_STOCK_ADJUSTED, "type": "purchase_order.received", "data": {
        "poNumber": "PO-1", "lines": [{"sku": "SKU-000042"}, {"sku": "SKU-000007"},
                                      {"sku": "SKU-000042"}]}}
    _, envelopes = erp(delivery("erp", event), identity())
    assert [(e.kind, e.sku) for e in envelopes] == [(EventKind.NOTICE, "SKU-000007"),
                                                    (EventKind.NOTICE, "SKU-000042")]


@pytest.mark.parametrize(("change", "data", "refusal", "words"), [
    ({"sequence": -1}, {}, Malformed, "non-negative integer"),
    ({"sequence": True}, {}, Malformed, "non-negative integer"),
    ({"sequence": MAX_VERSION + 1}, {}, Unappliable, "out of range"),
    ({"id": 5}, {}, Malformed, "must be strings"),
    ({"occurredAt": "2027-01-01T00:00:00Z"}, {}, Unappliable, "in the future"),
    ({}, {"onHand": "135"}, Malformed, "must be an integer"),
    ({}, {"onHand": -1}, Unappliable, "impossible quantity"),
    ({}, {"onHand": 2**31}, Unappliable, "2147483647|range"),
    ({}, {"locationCode": "WH99"}, Unappliable, "unmapped SKU SKU-000042 or location WH99"),
    ({}, {"adjustedAt": (RECEIVED + timedelta(days=2)).isoformat()}, Unappliable, "future"),
])
def test_erp_refusals(change: dict[str, Any], data: dict[str, Any], refusal: type[Exception],
                      words: str) -> None:
    event = {**ERP_STOCK_ADJUSTED, **change, "data": {**ERP_STOCK_ADJUSTED["data"], **data}}
    with pytest.raises(refusal, match=words):
        erp(delivery("erp", event), identity())
