"""Each vendor's webhook payload, turned into canonical :class:`~gateway.events.Envelope` s.

Raises :class:`Malformed` (the sender gets 400 naming the problem; nothing is recorded) or
:class:`Unappliable` (the delivery is kept in the dead-letter stream with the reason and
acknowledged, so the sender stops retrying and an operator can replay it after fixing the
mapping). The payload's signature has been verified before anything here runs.

What is accepted can always be served, and nothing pins a cell:

- every quantity must fit GraphQL's 32-bit ``Int`` (``resolvers.types.INT_MAX``) and every
  sequence number 2**53 - 1; a delivery holding a larger one is dead-lettered, naming it;
- a version (what decides which event wins) comes only from signed content, and no
  timestamp may lie more than ``max_clock_skew_seconds`` ahead of the gateway's clock (it
  would outrank every genuine event after it): such a delivery is dead-lettered too. A
  Shopify level without ``updated_at`` is ordered by the time the gateway received it (the
  ``X-Shopify-Triggered-At`` header is not signed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ulid import ULID

from gateway.events import Envelope, EventKind, Movement, MovementType
from resolvers import commerce, pos, wms
from resolvers import erp as erp_connector
from resolvers.errors import BackendProtocolError, OutOfRange, ValueOutOfRange
from resolvers.identity import SHOPIFY_VARIANT, IdentityMap
from resolvers.settings import BackendSettings
from resolvers.types import INT_MAX, MAX_VERSION, Quantities, bounded
from resolvers.values import version_number


class Malformed(ValueError):
    """The payload is not what this vendor sends; the message names the problem."""


class Unappliable(ValueError):
    """A well-formed event that cannot be applied (unmapped identifier, impossible value)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One verified webhook request."""

    backend: BackendSettings
    body: bytes
    payload: Any
    headers: Mapping[str, str]
    received_at: datetime
    # Settings.max_clock_skew_seconds: how far ahead of received_at a timestamp may be.
    max_skew_seconds: float = 300.0

    @property
    def raw_ref(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{where} must be a JSON object")
    return value


def _field(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise Malformed(f"{where}.{key} is missing")
    return obj[key]


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise Malformed(f"{where} must be an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Malformed(f"{where} {value!r} is not an RFC 3339 timestamp") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _not_future(d: Delivery, moment: datetime, where: str) -> datetime:
    """``moment`` unless it lies more than the clock skew ahead of the delivery's receipt:
    as a version it would outrank every genuine event after it (the cell would be pinned)."""
    ahead = (moment - d.received_at).total_seconds()
    if ahead > d.max_skew_seconds:
        raise Unappliable(f"{where} {moment.isoformat()} lies {ahead:.0f}s in the future "
                          f"(more than max_clock_skew_seconds = {d.max_skew_seconds:g})")
    return moment


def _signed_time(d: Delivery, value: Any, where: str) -> datetime:
    return _not_future(d, _time(value, where), where)


def _quantity(value: int, where: str, low: int = 0) -> int:
    """A quantity from a payload: within GraphQL's Int (and ``low``), else dead-lettered."""
    try:
        return bounded(value, where, low, INT_MAX)
    except OutOfRange as exc:
        raise Unappliable(str(exc)) from exc


def _out_of_range(exc: Exception) -> Unappliable:
    """A connector's :class:`ValueOutOfRange` (``"<backend>: <message>"``) as a dead letter."""
    return Unappliable(str(exc).split(": ", 1)[-1])


def _envelope(d: Delivery, *, kind: EventKind, topic: str, source_event_id: str,
              delivery_id: str, occurred_at: datetime, version: int, **rest: Any) -> Envelope:
    return Envelope(id=str(ULID()), kind=kind, source=d.backend.name, system=d.backend.format,
                    topic=topic, source_event_id=source_event_id, delivery_id=delivery_id,
                    occurred_at=occurred_at, received_at=d.received_at, source_version=version,
                    raw_ref=d.raw_ref, **rest)


# -- Square ----------------------------------------------------------------------------------------

SQUARE_MOVEMENTS = {("IN_STOCK", "SOLD"): MovementType.SALE,
                    ("SOLD", "IN_STOCK"): MovementType.RETURN,
                    ("NONE", "IN_TRANSIT_TO"): MovementType.TRANSFER_OUT,
                    ("IN_TRANSIT_TO", "IN_STOCK"): MovementType.TRANSFER_IN,
                    ("IN_STOCK", "RESERVED_FOR_SALE"): MovementType.ALLOCATION}


def square(d: Delivery, identity: IdentityMap) -> tuple[str, list[Envelope]]:
    p = _obj(d.payload, "body")
    event_id = str(_field(p, "event_id", "body"))
    topic = str(_field(p, "type", "body"))
    created = _signed_time(d, _field(p, "created_at", "body"), "body.created_at")
    if topic != "inventory.count.updated":
        return event_id, [_envelope(d, kind=EventKind.NOTICE, topic=topic,
                                    source_event_id=event_id, delivery_id=event_id,
                                    occurred_at=created, version=0)]
    data = _obj(_field(p, "data", "body"), "body.data")
    obj = _obj(_field(data, "object", "body.data"), "body.data.object")
    counts = _field(obj, "inventory_counts", "body.data.object")
    if not isinstance(counts, list) or not counts:
        raise Malformed("body.data.object.inventory_counts must be a non-empty list")
    try:
        views = pos.counts_to_views(counts, identity, d.backend.name, partial=True)
    except ValueOutOfRange as exc:
        raise _out_of_range(exc) from exc
    except BackendProtocolError as exc:
        raise Malformed(str(exc).split(": ", 1)[-1]) from exc
    if len(views) < len({(c.get("catalog_object_id"), c.get("location_id")) for c in counts}):
        raise Unappliable("inventory count for an unmapped catalog object or location: "
                          + _unmapped(identity, d.backend.name))
    for v in views:
        _not_future(d, v.as_of, "body.data.object.inventory_counts[].calculated_at")
    return event_id, [
        _envelope(d, kind=EventKind.LEVEL_SNAPSHOT, topic=topic, source_event_id=event_id,
                  delivery_id=d.header("square-initial-delivery-timestamp") or event_id,
                  occurred_at=v.as_of, version=version_number(v.version, v.as_of),
                  sku=v.sku, location_id=v.location_id, quantities=v.quantities, full=False)
        for v in views]


def _unmapped(identity: IdentityMap, seen_in: str) -> str:
    found = [f"{u.namespace} {u.kind} {u.value}" for u in identity.unmapped.values()
             if u.seen_in == seen_in]
    return ", ".join(found[-3:]) or "unknown identifier"


# -- Shopify ---------------------------------------------------------------------------------------

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
    stamp = _time(triggered, "X-Shopify-Triggered-At") if triggered else d.received_at
    p = _obj(d.payload, "body")
    if topic == "inventory_levels/update":
        try:  # without updated_at (signed), the level is ordered by its receipt
            view = commerce.level_to_view(p, identity, d.backend.name,
                                          fallback_as_of=d.received_at)
        except ValueOutOfRange as exc:
            raise _out_of_range(exc) from exc
        except BackendProtocolError as exc:
            raise Malformed(str(exc).split(": ", 1)[-1]) from exc
        if view is None:
            raise Unappliable("inventory level for an unmapped item or location: "
                              + _unmapped(identity, d.backend.name))
        _not_future(d, view.as_of, "body.updated_at")
        return webhook_id, [_envelope(
            d, kind=EventKind.LEVEL_SNAPSHOT, topic=topic, source_event_id=event_id,
            delivery_id=webhook_id, occurred_at=view.as_of,
            version=version_number(view.version, view.as_of), sku=view.sku,
            location_id=view.location_id, quantities=view.quantities, full=True)]
    occurred = min(stamp, d.received_at)
    if topic in ("orders/create", "orders/fulfilled"):
        lines = _field(p, "line_items", "body")
        if not isinstance(lines, list):
            raise Malformed("body.line_items must be a list")
        kind = MovementType.ONLINE_ORDER if topic == "orders/create" else MovementType.FULFILMENT
        out = []
        for n, raw in enumerate(lines):
            line = _obj(raw, f"body.line_items[{n}]")
            variant = str(_field(line, "variant_id", f"body.line_items[{n}]"))
            quantity = _field(line, "quantity", f"body.line_items[{n}]")
            if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
                raise Malformed(f"body.line_items[{n}].quantity must be a positive integer")
            _quantity(quantity, f"body.line_items[{n}].quantity")
            sku = identity.sku(SHOPIFY_VARIANT, variant, seen_in=d.backend.name)
            if sku is None:
                raise Unappliable(f"order line for unmapped variant {variant}")
            out.append(_envelope(
                d, kind=EventKind.MOVEMENT, topic=topic, source_event_id=event_id,
                delivery_id=webhook_id, occurred_at=occurred, version=0, sku=sku,
                movement=Movement(type=kind, quantity=quantity,
                                  documents=(("order", str(p.get("id", ""))),))))
        return webhook_id, out
    return webhook_id, [_envelope(d, kind=EventKind.NOTICE, topic=topic,
                                  source_event_id=event_id, delivery_id=webhook_id,
                                  occurred_at=occurred, version=0)]


# -- EPCIS (WMS) -----------------------------------------------------------------------------------

EPCIS_MOVEMENTS = {"receiving": MovementType.RECEIPT, "storing": MovementType.PUTAWAY,
                   "picking": MovementType.ALLOCATION, "shipping": MovementType.TRANSFER_OUT,
                   "arriving": MovementType.TRANSFER_IN, "cycle_counting": MovementType.COUNT}


def epcis(d: Delivery, identity: IdentityMap) -> tuple[str, list[Envelope]]:
    doc = _obj(d.payload, "body")
    if doc.get("type") == "EPCISDocument":
        body = _obj(_field(doc, "epcisBody", "body"), "body.epcisBody")
        events = _field(body, "eventList", "body.epcisBody")
        if not isinstance(events, list) or not events:
            raise Malformed("body.epcisBody.eventList must be a non-empty list")
    else:
        events = [doc]
    out = []
    for n, raw in enumerate(events):
        try:
            m = wms.parse_object_event(_obj(raw, f"eventList[{n}]"))
            row = m.balance_row()
            view = wms.balance_to_view(row, identity, d.backend.name) if row else None
        except (OutOfRange, ValueOutOfRange) as exc:
            raise Unappliable(f"eventList[{n}]: {str(exc).split(': ', 1)[-1]}") from exc
        except (ValueError, BackendProtocolError) as exc:
            raise Malformed(f"eventList[{n}]: {exc}") from exc
        if row is None:
            raise Malformed(f"eventList[{n}] carries no wms:balance/wms:sequence")
        if view is None:
            raise Unappliable(f"eventList[{n}]: unmapped GTIN {m.gtin14} or location {m.sgln}")
        q = view.quantities
        if any(v is not None and v < 0 for v in (q.on_hand, q.available, q.committed)):
            raise Unappliable(f"eventList[{n}]: impossible negative quantity in wms:balance")
        _not_future(d, m.occurred_at, f"eventList[{n}].eventTime")
        if m.recorded_at is not None:
            _not_future(d, m.recorded_at, f"eventList[{n}].recordTime")
        out.append(_envelope(
            d, kind=EventKind.MOVEMENT, topic=m.biz_step, source_event_id=m.event_id,
            delivery_id=d.header("webhook-id"), occurred_at=m.occurred_at,
            version=m.sequence or 0, sku=view.sku, location_id=view.location_id,
            quantities=q, full=True,
            movement=Movement(type=EPCIS_MOVEMENTS.get(m.biz_step, MovementType.OTHER),
                              quantity=m.quantity, biz_step=m.biz_step,
                              to_state=m.disposition,
                              documents=tuple((x["type"], x["id"]) for x in m.documents))))
    return d.header("webhook-id"), out


Normalizer = Callable[[Delivery, IdentityMap], tuple[str, list[Envelope]]]


# -- ERP -------------------------------------------------------------------------------------------

def erp(d: Delivery, identity: IdentityMap) -> tuple[str, list[Envelope]]:
    p = _obj(d.payload, "body")
    event_id = _field(p, "id", "body")
    topic = _field(p, "type", "body")
    if not isinstance(event_id, str) or not isinstance(topic, str):
        raise Malformed("body.id and body.type must be strings")
    occurred = _signed_time(d, _field(p, "occurredAt", "body"), "body.occurredAt")
    sequence = _field(p, "sequence", "body")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        raise Malformed("body.sequence must be a non-negative integer")
    if sequence > MAX_VERSION:
        raise Unappliable(f"body.sequence {sequence} is out of range (0..{MAX_VERSION})")
    data = _obj(_field(p, "data", "body"), "body.data")
    common: dict[str, Any] = {"topic": topic, "source_event_id": event_id,
                              "delivery_id": d.header("webhook-id") or event_id,
                              "occurred_at": occurred, "version": sequence}
    if topic == "item.updated":
        try:
            item = erp_connector.parse_item(erp_connector.Payload(d.backend.name, "body.data",
                                                                  data), identity)
        except ValueOutOfRange as exc:
            raise _out_of_range(exc) from exc
        except BackendProtocolError as exc:
            raise Malformed(str(exc).split(": ", 1)[-1]) from exc
        _not_future(d, item.as_of, "body.data.updatedAt")
        # Versioned by the item's updatedAt, as read-through fills are.
        common["version"] = version_number("", item.as_of)
        return event_id, [_envelope(d, kind=EventKind.MASTER_UPDATE, sku=item.sku,
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
        _quantity(on_hand, "body.data.onHand")
        # Versioned by time, as snapshot rows read through are (by the snapshot's asOf): the
        # global sequence is no cell version and lost to any cached row of the same cell.
        adjusted = data.get("adjustedAt")
        common["version"] = version_number("", _signed_time(d, adjusted, "body.data.adjustedAt")
                                           if isinstance(adjusted, str) else occurred)
        return event_id, [_envelope(
            d, kind=EventKind.LEVEL_SNAPSHOT, sku=sku, location_id=loc,
            quantities=Quantities(on_hand=on_hand), full=True,
            movement=Movement(type=MovementType.ADJUSTMENT, quantity=on_hand,
                              documents=(("reason", str(data.get("reason", ""))),)), **common)]
    if topic == "purchase_order.received":
        lines = data.get("lines")
        if not isinstance(lines, list):
            raise Malformed("body.data.lines must be a list")
        skus = sorted({str(line.get("sku")) for line in lines if isinstance(line, dict)})
        return event_id, [_envelope(d, kind=EventKind.NOTICE, sku=sku, **common)
                          for sku in skus] or [_envelope(d, kind=EventKind.NOTICE, **common)]
    return event_id, [_envelope(d, kind=EventKind.NOTICE, **common)]


NORMALIZERS: dict[str, Normalizer] = {"square": square, "shopify": shopify, "epcis": epcis,
                                      "erp": erp}
