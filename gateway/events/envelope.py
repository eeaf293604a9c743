"""The canonical event envelope: what every accepted webhook becomes, whatever its format
(one per SKU x location it touches).

Envelope fields (also in the README, "Event envelope")::

    id               gateway-assigned ULID (sortable)
    kind             LEVEL_SNAPSHOT | MOVEMENT | MASTER_UPDATE | INVALIDATE | NOTICE | HOLD
    source, system   backend name and its format (square, shopify, epcis, erp)
    topic            the vendor's event type / topic / bizStep
    source_event_id  the vendor's idempotency id (Square event_id, Shopify X-Shopify-Event-Id,
                     EPCIS eventID, ERP event id)
    delivery_id      the vendor's delivery id (X-Shopify-Webhook-Id, webhook-id, ...)
    occurred_at      when it happened at the source; received_at when we got it
    source_version   integer ordering events of one source for one entry
    sku, location_id unified identifiers
    quantities       the cell's quantities after the event (only those the source sent)
    full             True when quantities describe the whole cell
    movement         what caused the change: type, quantity, bizStep, states, documents
    data             master data payload (item updates)
    raw_ref          sha256 of the raw body, which the DLQ keeps in full
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from resolvers.types import Quantities


class EventKind(StrEnum):
    LEVEL_SNAPSHOT = "LEVEL_SNAPSHOT"
    MOVEMENT = "MOVEMENT"
    MASTER_UPDATE = "MASTER_UPDATE"
    INVALIDATE = "INVALIDATE"
    NOTICE = "NOTICE"
    # A reservation's hold changed (gateway/events/holds.py): the cell's system-of-record
    # quantities are unchanged, the units held there are in extra["reserved"].
    HOLD = "HOLD"


class MovementType(StrEnum):
    SALE = "SALE"
    RETURN = "RETURN"
    RECEIPT = "RECEIPT"
    PUTAWAY = "PUTAWAY"
    ALLOCATION = "ALLOCATION"
    TRANSFER_OUT = "TRANSFER_OUT"
    TRANSFER_IN = "TRANSFER_IN"
    COUNT = "COUNT"
    ONLINE_ORDER = "ONLINE_ORDER"
    FULFILMENT = "FULFILMENT"
    ADJUSTMENT = "ADJUSTMENT"
    REPAIR = "REPAIR"
    # Reservations (HOLD envelopes): units held, given back, expired (an ACTIVE one, or a
    # committed hold the system of record never showed), committed, and a committed hold
    # ended because the system of record shows the order.
    RESERVE = "RESERVE"
    RELEASE = "RELEASE"
    EXPIRE = "EXPIRE"
    COMMIT = "COMMIT"
    SETTLE = "SETTLE"
    OTHER = "OTHER"


@dataclass(frozen=True, slots=True)
class Movement:
    type: MovementType
    quantity: int
    biz_step: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    documents: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    kind: EventKind
    source: str
    system: str
    topic: str
    source_event_id: str
    delivery_id: str
    occurred_at: datetime
    received_at: datetime
    source_version: int
    sku: str | None = None
    location_id: str | None = None
    quantities: Quantities | None = None
    full: bool = False
    movement: Movement | None = None
    data: dict[str, Any] | None = None
    raw_ref: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses, enums and datetimes natively

    @classmethod
    def decode(cls, raw: bytes | str) -> Envelope:
        d = orjson.loads(raw)
        d["kind"] = EventKind(d["kind"])
        d["occurred_at"] = datetime.fromisoformat(d["occurred_at"])
        d["received_at"] = datetime.fromisoformat(d["received_at"])
        if d.get("quantities") is not None:
            d["quantities"] = Quantities(**d["quantities"])
        if d.get("movement") is not None:
            m = d["movement"]
            d["movement"] = Movement(
                type=MovementType(m["type"]), quantity=m["quantity"], biz_step=m["biz_step"],
                from_state=m["from_state"], to_state=m["to_state"],
                documents=tuple(tuple(x) for x in m["documents"]))
        return cls(**d)



# KEYS: dedupe key, stream, pending set (or the stream again when not tracked)
# ARGV: ttl, max length, then per envelope: its source-event key ('' for none), the envelope.
# An envelope whose source event is already logged (e.g. fetched by gap healing before its
# late webhook arrived) is not logged again: its existing entry id stands in for it.
