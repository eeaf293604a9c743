"""The ERP's item, stock and purchase-order events, normalised."""

from __future__ import annotations

from typing import Any

from gateway.events.envelope import Envelope, EventKind, Movement, MovementType
from gateway.intake.normalize.base import (
    Delivery,
    Malformed,
    Unappliable,
    make_envelope,
    not_future,
    out_of_range,
    payload_field,
    payload_object,
    payload_quantity,
    signed_time,
)
from resolvers.connectors import erp as erp_connector
from resolvers.errors import BackendProtocolError, ValueOutOfRange
from resolvers.identity import IdentityMap
from resolvers.types import MAX_VERSION, Quantities
from resolvers.values import version_number


def erp(d: Delivery, identity: IdentityMap) -> tuple[str, list[Envelope]]:
    p = payload_object(d.payload, "body")
    event_id = payload_field(p, "id", "body")
    topic = payload_field(p, "type", "body")
    if not isinstance(event_id, str) or not isinstance(topic, str):
        raise Malformed("body.id and body.type must be strings")
    occurred = signed_time(d, payload_field(p, "occurredAt", "body"), "body.occurredAt")
    sequence = payload_field(p, "sequence", "body")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        raise Malformed("body.sequence must be a non-negative integer")
    if sequence > MAX_VERSION:
        raise Unappliable(f"body.sequence {sequence} is out of range (0..{MAX_VERSION})")
    data = payload_object(payload_field(p, "data", "body"), "body.data")
    common: dict[str, Any] = {"topic": topic, "source_event_id": event_id,
                              "delivery_id": d.header("webhook-id") or event_id,
                              "occurred_at": occurred, "version": sequence}
    if topic == "item.updated":
        try:
            item = erp_connector.parse_item(erp_connector.Payload(d.backend.name, "body.data",
                                                                  data), identity)
        except ValueOutOfRange as exc:
            raise out_of_range(exc) from exc
        except BackendProtocolError as exc:
            raise Malformed(str(exc).split(": ", 1)[-1]) from exc
        not_future(d, item.as_of, "body.data.updatedAt")
        # Versioned by the item's updatedAt, as read-through fills are.
        common["version"] = version_number("", item.as_of)
        return event_id, [make_envelope(d, kind=EventKind.MASTER_UPDATE, sku=item.sku,
                                    data=erp_connector.item_resource(item), **common)]
    if topic == "stock.adjusted":
        sku, loc, on_hand = data.get("sku"), data.get("locationCode"), data.get("onHand")
        if not isinstance(sku, str) or not isinstance(loc, str):
            raise Malformed("body.data.sku and body.data.locationCode must be strings")
        if not isinstance(on_hand, int) or isinstance(on_hand, bool):
            raise Malformed("body.data.onHand must be an integer")
        if sku not in identity.known_skus or loc not in identity.known_locations:
            raise Unappliable(f"stock adjustment for unmapped SKU {sku} or location {loc}")
        if on_hand < 0:
            raise Unappliable(f"impossible quantity: onHand {on_hand} for {sku} at {loc}")
        payload_quantity(on_hand, "body.data.onHand")
        # Versioned by time, as snapshot rows read through are (by the snapshot's asOf): the
        # global sequence is no cell version and lost to any cached row of the same cell.
        adjusted = data.get("adjustedAt")
        common["version"] = version_number("", signed_time(d, adjusted, "body.data.adjustedAt")
                                           if isinstance(adjusted, str) else occurred)
        return event_id, [make_envelope(
            d, kind=EventKind.LEVEL_SNAPSHOT, sku=sku, location_id=loc,
            quantities=Quantities(on_hand=on_hand), full=True,
            movement=Movement(type=MovementType.ADJUSTMENT, quantity=on_hand,
                              documents=(("reason", str(data.get("reason", ""))),)), **common)]
    if topic == "purchase_order.received":
        lines = data.get("lines")
        if not isinstance(lines, list):
            raise Malformed("body.data.lines must be a list")
        skus = sorted({str(line.get("sku")) for line in lines if isinstance(line, dict)})
        return event_id, [make_envelope(d, kind=EventKind.NOTICE, sku=sku, **common)
                          for sku in skus] or [make_envelope(d, kind=EventKind.NOTICE, **common)]
    return event_id, [make_envelope(d, kind=EventKind.NOTICE, **common)]
