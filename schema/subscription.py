"""Live stock: subscriptions and the change history they share cursors with."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, TypeVar

import strawberry

from resolvers import merge
from resolvers.abc import ChangeFeed
from resolvers.access import STOCK_READ
from resolvers.changes import MAX_FILTER_IDS, CellFilter, make_filter
from resolvers.errors import BadUserInput, ServiceUnavailable
from resolvers.store.reservations import HOLDS_SOURCE
from resolvers.types import LocationType as LocationTypeEnum
from resolvers.types import StockView, saturate
from schema.context import Ctx
from schema.permissions import requires
from schema.reconciliation import DiscrepancyNotice, discrepancy_detected_field
from schema.sync import SyncAction, sync_action_completed_field
from schema.types import Availability, StockLevel, check_page_size

T = TypeVar("T")


@strawberry.type(description="Quantities of a cell before a change.")
class StockQuantities:
    on_hand: int | None = strawberry.field(description="On hand, where the source says.")
    available: int | None = strawberry.field(description="Available, where the source says.")
    committed: int | None = strawberry.field(description="Committed, where the source says.")
    incoming: int | None = strawberry.field(description="Incoming, where the source says.")


@strawberry.type(description="What caused a change: a sale, receipt, putaway, transfer, count, "
                             "online order, ...")
class StockMovement:
    type: str = strawberry.field(description="SALE, RETURN, RECEIPT, PUTAWAY, ALLOCATION, "
                                             "TRANSFER_OUT, TRANSFER_IN, COUNT, ONLINE_ORDER, "
                                             "FULFILMENT, ADJUSTMENT, REPAIR, OTHER; for a "
                                             "reservation (source retailgraph): RESERVE, "
                                             "RELEASE, EXPIRE, COMMIT or SETTLE (a committed "
                                             "hold ended: the system of record shows it).")
    quantity: int = strawberry.field(description="Units moved (counted, for a COUNT).")
    biz_step: str | None = strawberry.field(description="EPCIS CBV bizStep, when from the WMS.")
    documents: list[str] = strawberry.field(description="Business documents as type:id.")


@strawberry.type(description="One change of stock at a SKU x location, from its system of "
                             "record or a reservation's hold (source retailgraph). Pass its "
                             "cursor as `after` to resume without a gap.")
class StockChange:
    cursor: str = strawberry.field(description="Position in the change log; resume after it.")
    sku: strawberry.ID = strawberry.field(description="The SKU.")
    location_id: strawberry.ID = strawberry.field(description="The location.")
    stock_level: StockLevel = strawberry.field(description="The level after the change.")
    previous: StockQuantities | None = strawberry.field(
        description="The quantities before the change, when known.")
    movement: StockMovement | None = strawberry.field(description="What caused it.")
    source: str = strawberry.field(description="Backend the change came from.")
    occurred_at: datetime = strawberry.field(description="When it happened at the source.")
    conflated: bool = strawberry.field(
        description="True when this subscriber fell behind and intermediate changes of this "
                    "cell were skipped: this is the latest state.")


@strawberry.type(description="A page of past stock changes.")
class StockChangePage:
    changes: list[StockChange] = strawberry.field(description="Oldest first.")
    end_cursor: str | None = strawberry.field(
        description="Subscribe (or page on) with after: endCursor to continue without a gap.")
    has_more: bool = strawberry.field(description="More changes follow endCursor.")


@strawberry.enum(description="Where a level stands against a low-stock threshold.")
class StockStatus(Enum):
    IN_STOCK = "IN_STOCK"
    LOW_STOCK = "LOW_STOCK"
    OUT_OF_STOCK = "OUT_OF_STOCK"


@strawberry.type(description="A level crossed between in-stock, low and out-of-stock.")
class StockStatusChange:
    change: StockChange = strawberry.field(description="The change that crossed.")
    status: StockStatus = strawberry.field(description="Status after the change.")
    previous_status: StockStatus | None = strawberry.field(
        description="Status before, when known.")


def status_of(available: int | None, threshold: int) -> StockStatus:
    """The status of a level's available less what reservations hold (the caller's)."""
    if available is None or available <= 0:
        return StockStatus.OUT_OF_STOCK
    return StockStatus.LOW_STOCK if available <= threshold else StockStatus.IN_STOCK


async def safety_stocks(info: Ctx, skus: Iterable[str]) -> dict[str, int]:
    """Safety stock per SKU from the item master as every replica sees it (the shared cache,
    kept current by item.updated events; as ``Product.safetyStock`` answers), not from this
    replica's catalog snapshot, which is only refreshed every few minutes and so would make
    the answer depend on the replica. The snapshot is the fallback while the ERP is down."""
    graph = info.context.graph
    wanted = sorted(set(skus))
    loader = graph.loaders().master  # not the request's loaders: no response-cache tags
    found = await asyncio.gather(*(loader.load(sku) for sku in wanted), return_exceptions=True)
    out: dict[str, int] = {}
    for sku, item in zip(wanted, found, strict=True):
        master = graph.master_item(sku) if isinstance(item, BaseException) or item is None \
            else item
        out[sku] = master.safety_stock if master else 0
    return out


def to_graphql(info: Ctx, change: Any, safety_stock: int | None = None) -> StockChange | None:
    """A feed change as the API shows it; None if the location is unknown."""
    graph = info.context.graph
    location = graph.catalog.locations.get(change.location_id) if graph.catalog else None
    if location is None:
        return None
    if safety_stock is None:
        item = graph.master_item(change.sku)
        safety_stock = item.safety_stock if item else 0
    # A reservation's change (source retailgraph) shows the system of record's level.
    source = change.source if change.source != HOLDS_SOURCE else (
        graph.system_of_record(change.location_id) or change.source)
    view = StockView(sku=change.sku, location_id=change.location_id, source=source,
                     quantities=change.quantities, as_of=change.occurred_at)
    level = merge.stock_level(view, location, safety_stock, reserved=change.reserved or 0)
    p, m = change.previous, change.movement
    return StockChange(
        cursor=change.cursor, sku=strawberry.ID(change.sku),
        location_id=strawberry.ID(change.location_id), stock_level=StockLevel.of(level),
        previous=None if p is None else StockQuantities(
            on_hand=p.on_hand, available=p.available, committed=p.committed,
            incoming=p.incoming),
        movement=None if m is None else StockMovement(
            type=m.type.value, quantity=saturate(m.quantity), biz_step=m.biz_step,
            documents=[f"{t}:{i}" for t, i in m.documents]),
        source=change.source, occurred_at=change.occurred_at, conflated=change.conflated)


def _feed(info: Ctx) -> ChangeFeed:
    feed = info.context.feed
    if feed is None:
        raise ServiceUnavailable("change feed unavailable (event log not connected)")
    return feed


def _filter(info: Ctx, skus: list[strawberry.ID] | None,
            location_ids: list[strawberry.ID] | None) -> CellFilter:
    for name, given in (("skus", skus), ("locationIds", location_ids)):
        if given is not None and len(given) > MAX_FILTER_IDS:
            raise BadUserInput(f"{name} names more than {MAX_FILTER_IDS}; leave it out for all")
    graph = info.context.graph
    # Only the caller's locations; asking for others is FORBIDDEN (resolvers/access.py).
    locations = info.context.principal.restrict(
        [str(x) for x in location_ids] if location_ids is not None else None)
    return make_filter([str(s) for s in skus] if skus is not None else None, locations,
                       lambda location_id, source: source == HOLDS_SOURCE
                       or graph.system_of_record(location_id) == source)


@dataclass(slots=True)
class StreamPosition:
    """Where one subscription operation stands in the change log, for its transport.

    The transport sets one per operation (gateway/http/streams.py): ``resume_after`` is the cursor a
    reconnecting client sent (SSE ``Last-Event-ID``), and ``cursor`` is that of the change
    behind the result being delivered, which every transport reports as
    ``extensions.cursor`` (and SSE as the event's ``id``). Subscriptions pull one change at a
    time, so while a result is being delivered ``cursor`` is its change's.
    """

    resume_after: str | None = None
    cursor: str | None = None


STREAM_POSITION: ContextVar[StreamPosition | None] = ContextVar("retailgraph_stream_position",
                                                                default=None)


async def _changes(info: Ctx, accept: Any, after: str | None) -> AsyncGenerator[Any, None]:
    """The matching changes (after ``after``), each with fresh loaders in the context.

    Checked before the subscription starts, so a refusal is the operation's error (the
    WebSocket protocols' ``error`` message): the caller's subscription quota and the cursor.
    A reconnect's ``Last-Event-ID`` (see :class:`StreamPosition`) replaces ``after``: it is
    later than any ``after:`` of the query.
    """
    feed = _feed(info)
    owner = info.context.client
    feed.quota.check(owner)
    position = STREAM_POSITION.get()
    if position is not None and position.resume_after is not None:
        after = position.resume_after
    if after is not None:
        await feed.check_cursor(after)  # CursorExpired, InvalidCursor: the operation's error
    return _feed_changes(info, feed, accept, after, owner, position)


async def _feed_changes(info: Ctx, feed: Any, accept: Any, after: str | None, owner: str,
                        position: StreamPosition | None = None) -> AsyncGenerator[Any, None]:
    # A cursor trimmed between the check and the first read raises CursorExpired from here.
    with feed.quota.hold(owner):
        async with contextlib.aclosing(feed.subscribe(accept, after)) as changes:
            async for change in changes:
                # Computing the event waits its turn: webhook intake goes first
                # (gateway.events.changes.Deliveries).
                await feed.deliveries.turn()
                try:
                    # Each event is resolved from what is current, like a query.
                    info.context.renew_loaders()
                    if position is not None:
                        position.cursor = change.cursor
                    yield change
                finally:
                    feed.deliveries.delivered()  # if the transport has not yet


async def _safety_stock(info: Ctx, change: Any) -> int:
    """The safety stock of a change's SKU, read once for all of the change's subscribers."""
    feed = _feed(info)
    found = await feed.shared(change, "safety", lambda: safety_stocks(info, [change.sku]))
    return int(found[change.sku])


async def _shared_graphql(info: Ctx, change: Any) -> StockChange | None:
    """A change as the API shows it, built once for all of its subscribers: one object, so
    the subscribers of a group share its executed payload (schema/events.py)."""
    async def build() -> StockChange | None:
        return to_graphql(info, change, await _safety_stock(info, change))

    found: StockChange | None = await _feed(info).shared(
        change, ("graphql", change.conflated), build)
    return found


async def _stock_changes(info: Ctx, changes: AsyncGenerator[Any, None]
                         ) -> AsyncGenerator[StockChange, None]:
    async with contextlib.aclosing(changes):
        async for change in changes:
            out = await _shared_graphql(info, change)
            if out is not None:
                yield out


async def _availabilities(info: Ctx, channel: merge.Channel, changes: AsyncGenerator[Any, None]
                          ) -> AsyncGenerator[Availability, None]:
    location_type = merge.CHANNEL_LOCATIONS[channel]
    last: dict[str, int] = {}
    async with contextlib.aclosing(changes):
        async for change in changes:
            levels = await info.context.loaders.stock(change.sku, location_type=location_type)
            record = merge.availability(channel, levels)
            if last.get(change.sku) != record.available:
                last[change.sku] = record.available
                yield Availability.of(record)


async def _status_changes(info: Ctx, threshold: int, changes: AsyncGenerator[Any, None]
                          ) -> AsyncGenerator[StockStatusChange, None]:
    known: dict[tuple[str, str], StockStatus] = {}
    async with contextlib.aclosing(changes):
        async for change in changes:
            out = to_graphql(info, change, await _safety_stock(info, change))
            if out is None:
                continue
            level = out.stock_level
            status = status_of(level.available - level.reserved, threshold)
            before = known.get(change.key())
            if before is None and change.previous is not None \
                    and change.previous.available is not None:
                before = status_of(change.previous.available
                                   - (change.previous_reserved or 0), threshold)
            known[change.key()] = status
            if status != before:
                yield StockStatusChange(change=out, status=status, previous_status=before)


SkusArg = Annotated[list[strawberry.ID] | None, strawberry.argument(
    description="Only these SKUs (default: all).")]
LocationsArg = Annotated[list[strawberry.ID] | None, strawberry.argument(
    description="Only these locations (default: all).")]
AfterArg = Annotated[str | None, strawberry.argument(
    description="Resume after this cursor: missed changes first, then live ones.")]


@strawberry.type(description="Live stock changes, in order per SKU x location.")
class Subscription:
    # Each resolver checks its arguments before returning the stream, so a refusal
    # (FORBIDDEN, a bad or expired cursor, too many subscriptions) is the operation's error.
    @strawberry.subscription(description="Every change of stock at the matching cells.",
                             extensions=[requires(STOCK_READ)])
    async def stock_changed(self, info: Ctx, skus: SkusArg = None,
                            location_ids: LocationsArg = None,
                            after: AfterArg = None) -> AsyncGenerator[StockChange, None]:
        return _stock_changes(info, await _changes(info, _filter(info, skus, location_ids),
                                                   after))

    @strawberry.subscription(description="Availability of SKUs on a channel, each time it "
                                         "changes.", extensions=[requires(STOCK_READ)])
    async def availability_changed(self, info: Ctx, channel: merge.Channel,
                                   skus: SkusArg = None) -> AsyncGenerator[Availability, None]:
        location_type = merge.CHANNEL_LOCATIONS[channel]
        graph = info.context.graph
        base = _filter(info, skus, None)
        record = base.sources

        def counts(location_id: str, source: str) -> bool:
            location = graph.catalog.locations.get(location_id) if graph.catalog else None
            return location is not None and location.type is location_type \
                and (record is None or record(location_id, source))

        # Still a CellFilter (its SKUs), so the fan-out offers it only its SKUs' changes.
        accept = CellFilter(base.skus, base.locations, counts)
        return _availabilities(info, channel, await _changes(info, accept, None))

    @strawberry.subscription(description="Fires only when a level crosses between in-stock, "
                                         "low (<= lowStockThreshold) and out-of-stock.",
                             extensions=[requires(STOCK_READ)])
    async def stock_status_changed(self, info: Ctx, low_stock_threshold: int,
                                   skus: SkusArg = None, location_ids: LocationsArg = None,
                                   after: AfterArg = None,
                                   ) -> AsyncGenerator[StockStatusChange, None]:
        changes = await _changes(info, _filter(info, skus, location_ids), after)
        return _status_changes(info, low_stock_threshold, changes)

    # Where the systems disagree (schema/reconciliation.py; scope discrepancies:read).
    discrepancy_detected: AsyncGenerator[DiscrepancyNotice, None] = discrepancy_detected_field
    # What sync finished (schema/sync.py; scope sync:read).
    sync_action_completed: AsyncGenerator[SyncAction, None] = sync_action_completed_field


async def stock_events(info: Ctx, skus: SkusArg = None, location_ids: LocationsArg = None,
                       after: AfterArg = None,
                       first: Annotated[int, strawberry.argument(
                           description="Page size, 1 to the configured maximum.")] = 50,
                       ) -> StockChangePage | None:
    """Past stock changes (the same log and cursors as the subscriptions)."""
    limit = info.context.graph.settings.max_page_size
    check_page_size(first, limit)
    page = await _feed(info).history(_filter(info, skus, location_ids), after, first)
    safety = await safety_stocks(info, (x.sku for x in page.changes))
    changes = [c for c in (to_graphql(info, x, safety[x.sku]) for x in page.changes)
               if c is not None]
    return StockChangePage(changes=changes, end_cursor=page.end_cursor, has_more=page.has_more)


__all__ = ["STREAM_POSITION", "LocationTypeEnum", "StockChangePage", "StreamPosition",
           "Subscription", "stock_events"]
