"""Reservations on the one event path.

Every change of a hold becomes a ``HOLD`` envelope of source ``retailgraph``: logged in the
event log (deduplicated by reservation id and change number, so a sweeper publishing again
what a stopped replica might not have adds nothing), applied (cached responses of the SKU
invalidated) and published on the change stream like any other change, so ``stockChanged``,
``availabilityChanged`` and ``stockStatusChanged`` fire and the sync rules see it. The
envelope carries the system of record's cell as the cache holds it and, in
``extra["reserved"]``, the units held there after the change.

The other direction: after the applier wrote a system of record's event for a cell,
:meth:`HoldSettlement.observe` ends the holds of committed reservations the system of record now
shows, and gives the units held at the cell, which the published change carries.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from redis.exceptions import RedisError
from ulid import ULID

from gateway.events.envelope import Envelope, EventKind, Movement, MovementType
from gateway.events.log import EventLog
from resolvers.graph import RetailGraph
from resolvers.store.client import Backoff
from resolvers.store.reservations import (
    HOLDS_SOURCE,
    HoldChange,
    HoldEnd,
    HoldsStore,
    Reservation,
    ReservationStatus,
    ReservationStore,
)
from resolvers.types import Quantities, StockView

log = logging.getLogger("retailgraph.holds")

SWEEP_INTERVAL_SECONDS = 0.5


def movement_of(r: Reservation) -> MovementType:
    if r.status is ReservationStatus.ACTIVE:
        return MovementType.RESERVE
    if r.status is ReservationStatus.RELEASED:
        return MovementType.RELEASE
    if r.status is ReservationStatus.EXPIRED or r.ended_by is HoldEnd.EXPIRY:
        return MovementType.EXPIRE
    return MovementType.SETTLE if r.ended_by is HoldEnd.SYSTEM_OF_RECORD \
        else MovementType.COMMIT


class HoldLog:
    """Puts a hold change on the one event path: a ``HOLD`` envelope appended to the event
    log once per change (the applier applies and publishes it: :meth:`Applier.publish_hold`,
    which is the reservations' store's publishing port)."""

    def __init__(self, graph: RetailGraph, events: EventLog) -> None:
        self.graph = graph
        self.events = events

    async def logged(self, change: HoldChange) -> tuple[str, Envelope] | None:
        """The change's log entry and envelope; None when it was logged already (a sweeper
        publishing again what a stopped replica might not have)."""
        r = change.reservation
        quantities, as_of = change.quantities, change.as_of
        if quantities is None:  # the cache holds none of the cell: read it through
            view = await self.graph.current_view(r.sku, r.location_id)
            quantities = view.quantities if view is not None else Quantities()
            as_of = view.as_of if view is not None else None
        now = datetime.now(UTC)
        documents = [("reservation", r.id)]
        documents += [("reference", r.reference)] if r.reference else []
        documents += [("order", r.order_reference)] if r.order_reference else []
        envelope = Envelope(
            id=str(ULID()), kind=EventKind.HOLD, source=HOLDS_SOURCE, system=HOLDS_SOURCE,
            topic=f"reservation/{movement_of(r).value.lower()}",
            source_event_id=f"{r.id}:{r.seq}", delivery_id="", occurred_at=as_of or now,
            received_at=now, source_version=r.seq, sku=r.sku, location_id=r.location_id,
            quantities=quantities, full=True,
            movement=Movement(movement_of(r), r.quantity, documents=tuple(documents)),
            extra={"reserved": change.held, "status": r.status.value,
                   "record_source": self.graph.system_of_record(r.location_id)})
        appended = await self.events.append(HOLDS_SOURCE, f"{r.id}:{r.seq}", [envelope])
        return (appended.ids[0], envelope) if appended.new else None


class HoldSettlement:
    """The applier's :class:`gateway.events.applier.HoldObserver`: after a system of
    record's event, the units held at its cell, having ended the committed holds it now
    shows."""

    def __init__(self, graph: RetailGraph, holds: HoldsStore) -> None:
        self.graph = graph
        self.holds = holds

    async def observe(self, envelope: Envelope, cell: StockView | None,
                      ) -> tuple[int | None, list[HoldChange]]:
        """After a stock event was written: the units held at its cell (None when it is not
        the system of record's), having ended the committed holds it now shows; and those
        hold changes, to publish after the event's own change."""
        e = envelope
        if (e.sku is None or e.location_id is None
                or self.graph.system_of_record(e.location_id) != e.source):
            return None, []
        quantities = cell.quantities if cell is not None else e.quantities
        committed = quantities.committed if quantities is not None else None
        documents = [doc for _, doc in e.movement.documents] if e.movement else []
        held, ended = await self.holds.observe(e.sku, e.location_id, committed, documents)
        as_of = cell.as_of if cell is not None else e.occurred_at
        return held, [HoldChange(r, held, quantities, as_of) for r in ended]


class HoldSweeper:
    """Expires holds, ends lapsed committed ones and publishes what a stopped replica did
    not, on every replica (each step is idempotent), every half second."""

    def __init__(self, store: ReservationStore) -> None:
        self.store = store

    async def run(self) -> None:
        backoff = Backoff("reservation sweeper")
        while True:
            delay = SWEEP_INTERVAL_SECONDS
            try:
                while await self.store.sweep() == 500:
                    pass
                backoff.succeeded()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                delay = max(delay, backoff.failed(exc))
            await asyncio.sleep(delay)
