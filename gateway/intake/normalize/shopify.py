"""Shopify's ``inventory_levels/update`` (and order) webhooks, normalised."""

from __future__ import annotations

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
    payload_time,
    unmapped_ids,
)
from resolvers.connectors import commerce
from resolvers.errors import BackendProtocolError, ValueOutOfRange
from resolvers.identity import SHOPIFY_VARIANT, IdentityMap
from resolvers.values import version_number


def shopify(d: Delivery, identity: IdentityMap) -> tuple[str, list[Envelope]]:
    topic = d.header("x-shopify-topic")
    if not topic:
        raise Malformed("X-Shopify-Topic header is missing")
    webhook_id = d.header("x-shopify-webhook-id")
    if not webhook_id:
        raise Malformed("X-Shopify-Webhook-Id header is missing")
    event_id = d.header("x-shopify-event-id") or webhook_id
    triggered = d.header("x-shopify-triggered-at")
    # Not signed: never a version; it only dates orders and notices, and never later than
    # their receipt.
    stamp = payload_time(triggered, "X-Shopify-Triggered-At") if triggered else d.received_at
    p = payload_object(d.payload, "body")
    if topic == "inventory_levels/update":
        try:  # without updated_at (signed), the level is ordered by its receipt
            view = commerce.level_to_view(p, identity, d.backend.name,
                                          fallback_as_of=d.received_at)
        except ValueOutOfRange as exc:
            raise out_of_range(exc) from exc
        except BackendProtocolError as exc:
            raise Malformed(str(exc).split(": ", 1)[-1]) from exc
        if view is None:
            raise Unappliable("inventory level for an unmapped item or location: "
                              + unmapped_ids(identity, d.backend.name))
        not_future(d, view.as_of, "body.updated_at")
        return webhook_id, [make_envelope(
            d, kind=EventKind.LEVEL_SNAPSHOT, topic=topic, source_event_id=event_id,
            delivery_id=webhook_id, occurred_at=view.as_of,
            version=version_number(view.version, view.as_of), sku=view.sku,
            location_id=view.location_id, quantities=view.quantities, full=True)]
    occurred = min(stamp, d.received_at)
    if topic in ("orders/create", "orders/fulfilled"):
        lines = payload_field(p, "line_items", "body")
        if not isinstance(lines, list):
            raise Malformed("body.line_items must be a list")
        kind = MovementType.ONLINE_ORDER if topic == "orders/create" else MovementType.FULFILMENT
        out = []
        for n, raw in enumerate(lines):
            line = payload_object(raw, f"body.line_items[{n}]")
            variant = str(payload_field(line, "variant_id", f"body.line_items[{n}]"))
            quantity = payload_field(line, "quantity", f"body.line_items[{n}]")
            if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
                raise Malformed(f"body.line_items[{n}].quantity must be a positive integer")
            payload_quantity(quantity, f"body.line_items[{n}].quantity")
            sku = identity.sku(SHOPIFY_VARIANT, variant, seen_in=d.backend.name)
            if sku is None:
                raise Unappliable(f"order line for unmapped variant {variant}")
            out.append(make_envelope(
                d, kind=EventKind.MOVEMENT, topic=topic, source_event_id=event_id,
                delivery_id=webhook_id, occurred_at=occurred, version=0, sku=sku,
                movement=Movement(type=kind, quantity=quantity,
                                  documents=(("order", str(p.get("id", ""))),))))
        return webhook_id, out
    return webhook_id, [make_envelope(d, kind=EventKind.NOTICE, topic=topic,
                                  source_event_id=event_id, delivery_id=webhook_id,
                                  occurred_at=occurred, version=0)]
