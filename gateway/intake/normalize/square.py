"""Square's ``inventory.count.updated`` webhooks, normalised."""

from __future__ import annotations

from gateway.events.envelope import Envelope, EventKind, MovementType
from gateway.intake.normalize.base import (
    Delivery,
    Malformed,
    Unappliable,
    make_envelope,
    not_future,
    out_of_range,
    payload_field,
    payload_object,
    signed_time,
    unmapped_ids,
)
from resolvers.connectors import pos
from resolvers.errors import BackendProtocolError, ValueOutOfRange
from resolvers.identity import IdentityMap
from resolvers.values import version_number

SQUARE_MOVEMENTS = {("IN_STOCK", "SOLD"): MovementType.SALE,
                    ("SOLD", "IN_STOCK"): MovementType.RETURN,
                    ("NONE", "IN_TRANSIT_TO"): MovementType.TRANSFER_OUT,
                    ("IN_TRANSIT_TO", "IN_STOCK"): MovementType.TRANSFER_IN,
                    ("IN_STOCK", "RESERVED_FOR_SALE"): MovementType.ALLOCATION}


def square(d: Delivery, identity: IdentityMap) -> tuple[str, list[Envelope]]:
    p = payload_object(d.payload, "body")
    event_id = str(payload_field(p, "event_id", "body"))
    topic = str(payload_field(p, "type", "body"))
    created = signed_time(d, payload_field(p, "created_at", "body"), "body.created_at")
    if topic != "inventory.count.updated":
        return event_id, [make_envelope(d, kind=EventKind.NOTICE, topic=topic,
                                    source_event_id=event_id, delivery_id=event_id,
                                    occurred_at=created, version=0)]
    data = payload_object(payload_field(p, "data", "body"), "body.data")
    obj = payload_object(payload_field(data, "object", "body.data"), "body.data.object")
    counts = payload_field(obj, "inventory_counts", "body.data.object")
    if not isinstance(counts, list) or not counts:
        raise Malformed("body.data.object.inventory_counts must be a non-empty list")
    try:
        views = pos.counts_to_views(counts, identity, d.backend.name, partial=True)
    except ValueOutOfRange as exc:
        raise out_of_range(exc) from exc
    except BackendProtocolError as exc:
        raise Malformed(str(exc).split(": ", 1)[-1]) from exc
    if len(views) < len({(c.get("catalog_object_id"), c.get("location_id")) for c in counts}):
        raise Unappliable("inventory count for an unmapped catalog object or location: "
                          + unmapped_ids(identity, d.backend.name))
    for v in views:
        not_future(d, v.as_of, "body.data.object.inventory_counts[].calculated_at")
    return event_id, [
        make_envelope(d, kind=EventKind.LEVEL_SNAPSHOT, topic=topic, source_event_id=event_id,
                  delivery_id=d.header("square-initial-delivery-timestamp") or event_id,
                  occurred_at=v.as_of, version=version_number(v.version, v.as_of),
                  sku=v.sku, location_id=v.location_id, quantities=v.quantities, full=False)
        for v in views]
