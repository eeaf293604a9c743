"""The WMS's EPCIS 2.0 ``ObjectEvent`` captures, normalised."""

from __future__ import annotations

from gateway.events.envelope import Envelope, EventKind, Movement, MovementType
from gateway.intake.normalize.base import (
    Delivery,
    Malformed,
    Unappliable,
    make_envelope,
    not_future,
    payload_field,
    payload_object,
)
from resolvers.connectors import wms
from resolvers.errors import BackendProtocolError, OutOfRange, ValueOutOfRange
from resolvers.identity import IdentityMap

EPCIS_MOVEMENTS = {"receiving": MovementType.RECEIPT, "storing": MovementType.PUTAWAY,
                   "picking": MovementType.ALLOCATION, "shipping": MovementType.TRANSFER_OUT,
                   "arriving": MovementType.TRANSFER_IN, "cycle_counting": MovementType.COUNT}


def epcis(d: Delivery, identity: IdentityMap) -> tuple[str, list[Envelope]]:
    doc = payload_object(d.payload, "body")
    if doc.get("type") == "EPCISDocument":
        body = payload_object(payload_field(doc, "epcisBody", "body"), "body.epcisBody")
        events = payload_field(body, "eventList", "body.epcisBody")
        if not isinstance(events, list) or not events:
            raise Malformed("body.epcisBody.eventList must be a non-empty list")
    else:
        events = [doc]
    out = []
    for n, raw in enumerate(events):
        try:
            m = wms.parse_object_event(payload_object(raw, f"eventList[{n}]"))
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
        q = view.quantities  # never negative: wms.balance_to_view refuses that (Malformed)
        not_future(d, m.occurred_at, f"eventList[{n}].eventTime")
        if m.recorded_at is not None:
            not_future(d, m.recorded_at, f"eventList[{n}].recordTime")
        out.append(make_envelope(
            d, kind=EventKind.MOVEMENT, topic=m.biz_step, source_event_id=m.event_id,
            delivery_id=d.header("webhook-id"), occurred_at=m.occurred_at,
            version=m.sequence or 0, sku=view.sku, location_id=view.location_id,
            quantities=q, full=True,
            movement=Movement(type=EPCIS_MOVEMENTS.get(m.biz_step, MovementType.OTHER),
                              quantity=m.quantity, biz_step=m.biz_step,
                              to_state=m.disposition,
                              documents=tuple((x["type"], x["id"]) for x in m.documents))))
    return d.header("webhook-id"), out
