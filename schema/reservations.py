"""Reservations: the mutations a checkout or click-and-collect app holds stock with, and
``Query.reservations``. Rules: ``resolvers/reservations.py``; Redis: ``resolvers/store/``.
Every field here needs the ``stock:reserve`` scope, and no answer is ever stored in or
served from the response cache."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated

import strawberry

from resolvers import merge
from resolvers import reservations as rules
from resolvers.access import STOCK_RESERVE
from resolvers.errors import BadUserInput, ServiceUnavailable
from resolvers.store import reservations as store
from schema.context import Ctx
from schema.permissions import requires
from schema.sync import SyncNowResult, sync_now_field
from schema.types import Location, PageInfo, check_page_size

ReservationStatus = strawberry.enum(
    store.ReservationStatus, name="ReservationStatus",
    description="ACTIVE: holding its units. COMMITTED: the order was placed; its units stay "
                "held until the system of record shows the order (or the hold expires). "
                "RELEASED: given back by the client. EXPIRED: its expiresAt passed first.")


@strawberry.type(description="Why a mutation changed nothing (or, with ALREADY_FINAL, what "
                             "it found instead).")
class UserError:
    code: str = strawberry.field(description="INSUFFICIENT_STOCK, INVALID_QUANTITY, "
                                             "INVALID_TTL, INVALID_INPUT, UNKNOWN_SKU, "
                                             "UNKNOWN_LOCATION, IDEMPOTENCY_KEY_REUSED, "
                                             "NOT_FOUND, ALREADY_FINAL, TRY_AGAIN, ...")
    message: str = strawberry.field(description="What happened, for a person.")
    field: list[str] | None = strawberry.field(description="Path of the input at fault.")

    @classmethod
    def of(cls, e: rules.UserError) -> UserError:
        return cls(code=e.code, message=e.message,
                   field=list(e.field) if e.field is not None else None)


@strawberry.type(description="Units of a SKU held at a location for a cart or order.")
class Reservation:
    id: strawberry.ID = strawberry.field(description="Opaque; the same for every retry with "
                                                     "the same idempotencyKey.")
    sku: strawberry.ID = strawberry.field(description="The SKU.")
    location: Location = strawberry.field(description="Where the units are held.")
    quantity: int = strawberry.field(description="Units held.")
    status: store.ReservationStatus = strawberry.field(description="Where it is in its life.")
    expires_at: datetime = strawberry.field(
        description="When the hold ends by itself (a commit extends it: see README).")
    reference: str | None = strawberry.field(description="The cart or order id given.")
    created_at: datetime = strawberry.field(description="When it was made.")

    @classmethod
    async def of(cls, info: Ctx, r: store.Reservation) -> Reservation:
        catalog = await info.context.graph.ready_catalog()
        return cls(id=strawberry.ID(r.id), sku=strawberry.ID(r.sku),
                   location=Location.of(catalog.locations[r.location_id]),
                   quantity=r.quantity, status=r.status, expires_at=r.expires_at,
                   reference=r.reference, created_at=r.created_at)


@strawberry.input(description="What to hold: a SKU, where (a location, or a channel for "
                              "retailgraph to pick one), how many, for how long.")
class ReserveStockInput:
    sku: strawberry.ID = strawberry.field(description="The SKU.")
    location_id: strawberry.ID | None = strawberry.field(
        default=strawberry.UNSET, description="A store or warehouse; or give channel.")
    channel: merge.Channel | None = strawberry.field(
        default=strawberry.UNSET,
        description="ONLINE: retailgraph picks the warehouse with the most available to "
                    "sell that covers the quantity (lowest id on a tie).")
    quantity: int = strawberry.field(description="Units, at least 1.")
    ttl_seconds: int | None = strawberry.field(
        default=900, description="How long to hold (1 to 86400 s; null: 900).")
    idempotency_key: str = strawberry.field(
        description="Retries with the same key get the same reservation, on any replica.")
    reference: str | None = strawberry.field(default=strawberry.UNSET,
                                             description="The cart or order id.")


@strawberry.type(description="The reservation made (or made before with the same "
                             "idempotencyKey), or why none was.")
class ReserveStockPayload:
    reservation: Reservation | None = strawberry.field(
        description="The reservation; null when there is none to show.")
    user_errors: list[UserError] = strawberry.field(
        description="Empty when it worked; otherwise why not (nothing was changed).")


@strawberry.type(description="The reservation after the change, or why it did not change.")
class ReservationPayload:
    reservation: Reservation | None = strawberry.field(
        description="The reservation; null when there is none to show.")
    user_errors: list[UserError] = strawberry.field(
        description="Empty when it worked; otherwise why not (nothing was changed).")


def _given(value: object) -> str | None:
    return None if value is None or value is strawberry.UNSET else str(value)


def _no_store(info: Ctx) -> None:
    """Nothing of this request may be stored in (or come from) the response cache."""
    info.context.loaders.freshness.uncacheable = True


def _service(info: Ctx) -> rules.Reservations:
    service = info.context.reservations
    if service is None:
        raise ServiceUnavailable("reservations unavailable (Redis not connected)")
    return service


async def _payload(info: Ctx, outcome: rules.Outcome) -> tuple[Reservation | None,
                                                               list[UserError]]:
    reservation = (await Reservation.of(info, outcome.reservation)
                   if outcome.reservation is not None else None)
    return reservation, [UserError.of(e) for e in outcome.errors]


@strawberry.type(description="Hold stock for a checkout, give it back, or mark it ordered "
                             "(the stock:reserve scope, at the caller's locations); push the "
                             "truth to the channels now (sync:write).")
class Mutation:
    # Recompute and push now (schema/sync.py; scope sync:write).
    sync_now: SyncNowResult = sync_now_field

    @strawberry.mutation(description="Hold units if available to sell covers them at this "
                                     "instant (available - safety stock - reserved).",
                         extensions=[requires(STOCK_RESERVE)])
    async def reserve_stock(self, info: Ctx, input: ReserveStockInput) -> ReserveStockPayload:
        _no_store(info)
        channel = None if input.channel is strawberry.UNSET else input.channel
        request = rules.ReserveRequest(
            sku=str(input.sku), location_id=_given(input.location_id), channel=channel,
            quantity=input.quantity,
            ttl_seconds=900 if input.ttl_seconds is None else input.ttl_seconds,
            idempotency_key=input.idempotency_key, reference=_given(input.reference))
        outcome = await _service(info).reserve(info.context.loaders, request)
        reservation, errors = await _payload(info, outcome)
        return ReserveStockPayload(reservation=reservation, user_errors=errors)

    @strawberry.mutation(description="Give the units back (an ACTIVE reservation).",
                         extensions=[requires(STOCK_RESERVE)])
    async def release_reservation(self, info: Ctx, id: strawberry.ID) -> ReservationPayload:
        _no_store(info)
        outcome = await _service(info).release(info.context.principal, str(id))
        reservation, errors = await _payload(info, outcome)
        return ReservationPayload(reservation=reservation, user_errors=errors)

    @strawberry.mutation(description="The order was placed: the units stay held until the "
                                     "system of record shows it, then count there alone.",
                         extensions=[requires(STOCK_RESERVE)])
    async def commit_reservation(self, info: Ctx, id: strawberry.ID,
                                 order_reference: str | None = strawberry.UNSET,
                                 ) -> ReservationPayload:
        _no_store(info)
        outcome = await _service(info).commit(info.context.principal, str(id),
                                              _given(order_reference))
        reservation, errors = await _payload(info, outcome)
        return ReservationPayload(reservation=reservation, user_errors=errors)


@strawberry.type(description="A reservation and its cursor.")
class ReservationEdge:
    cursor: str = strawberry.field(description="Opaque position; pass as after.")
    node: Reservation = strawberry.field(description="The reservation.")


@strawberry.type(description="A page of reservations, oldest first.")
class ReservationConnection:
    edges: list[ReservationEdge] = strawberry.field(description="This page.")
    page_info: PageInfo = strawberry.field(description="Where this page is in the list.")

    @strawberry.field(description="The reservations of this page, without cursors.")
    def nodes(self) -> list[Reservation]:
        return [edge.node for edge in self.edges]


CURSOR_PREFIX = "rsv:"


def encode_cursor(r: store.Reservation) -> str:
    raw = f"{CURSOR_PREFIX}{int(r.created_at.timestamp() * 1000)}:{r.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
        ms, _, rid = raw.removeprefix(CURSOR_PREFIX).partition(":")
        if raw.startswith(CURSOR_PREFIX) and rid and len(ms) < 16:
            return int(ms), rid
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise BadUserInput(f"invalid cursor {cursor[:40]!r}")


async def reservations(
        info: Ctx,
        sku: Annotated[strawberry.ID | None, strawberry.argument(
            description="Only this SKU.")] = None,
        location_id: Annotated[strawberry.ID | None, strawberry.argument(
            description="Only this location.")] = None,
        status: Annotated[store.ReservationStatus | None, strawberry.argument(
            description="Only this status.")] = None,
        reference: Annotated[str | None, strawberry.argument(
            description="Only this cart or order id.")] = None,
        first: Annotated[int, strawberry.argument(
            description="Page size, 1 to the configured maximum.")] = 50,
        after: Annotated[str | None, strawberry.argument(
            description="endCursor of the previous page.")] = None,
) -> ReservationConnection:
    _no_store(info)
    limit = info.context.graph.settings.max_page_size
    check_page_size(first, limit)
    position = decode_cursor(after) if after is not None else None
    found, more = await _service(info).page(
        info.context.principal, _given(sku), _given(location_id), status, reference, position,
        first)
    edges = [ReservationEdge(cursor=encode_cursor(r), node=await Reservation.of(info, r))
             for r in found]
    return ReservationConnection(edges=edges, page_info=PageInfo(
        has_next_page=more, has_previous_page=after is not None,
        start_cursor=edges[0].cursor if edges else None,
        end_cursor=edges[-1].cursor if edges else None))


reservations_field: ReservationConnection | None = strawberry.field(
    resolver=reservations, extensions=[requires(STOCK_RESERVE)],
    description="Reservations, oldest first (records are kept 7 days after they end); the "
                "caller's locations only. Needs the stock:reserve scope.")
