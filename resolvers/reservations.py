"""Reservations: the rules a frontend's hold on stock follows, over the store's Redis part
(``resolvers/store/reservations.py``).

- A reservation is for one SKU at one location: a store or warehouse named by
  ``locationId``, or, for ``channel: ONLINE``, the warehouse retailgraph picks: **the
  warehouse with the most units available to sell that covers the whole quantity; on a tie
  the lowest location id** (a reservation is never split over locations). A location-
  restricted caller reserves only at its locations (another is FORBIDDEN; ONLINE picks
  among its warehouses).
- An idempotency key belongs to its caller. Its first use binds it to the request and the
  location (picked) for it; every retry, on any replica, returns the same reservation, and a
  retry after INSUFFICIENT_STOCK tries the same location again. The same key with another
  request is ``IDEMPOTENCY_KEY_REUSED``.
- Refusals are user errors (``code``, ``message``, ``field``) and change nothing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import orjson
from redis.exceptions import RedisError

from resolvers import merge
from resolvers.errors import RetailgraphError
from resolvers.store.reservations import (
    CellMissing,
    Reservation,
    ReservationStatus,
    ReservationStore,
    parse_reservation_id,
    reservation_id,
)
from resolvers.types import INT_MAX, LocationType

log = logging.getLogger("retailgraph.reservations")

MAX_TTL_SECONDS = 86_400
MAX_TEXT = 255
FILL_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class UserError:
    code: str
    message: str
    field: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    reservation: Reservation | None = None
    errors: list[UserError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    sku: str
    location_id: str | None
    channel: merge.Channel | None
    quantity: int
    ttl_seconds: int
    idempotency_key: str
    reference: str | None

    def fingerprint(self) -> str:
        body = orjson.dumps([self.sku, self.location_id, self.channel, self.quantity,
                             self.ttl_seconds, self.reference])
        return hashlib.sha256(body).hexdigest()[:32]


class Forbidden(RetailgraphError):
    """The caller may not act at this location (a GraphQL error, code FORBIDDEN)."""

    code = "FORBIDDEN"


class ReservationsUnavailable(RetailgraphError):
    """Redis did not answer in time: nothing is known to have changed; retry (with the same
    idempotency key, which makes the retry safe). A GraphQL error, code SERVICE_UNAVAILABLE."""

    code = "SERVICE_UNAVAILABLE"


P = ParamSpec("P")
R = TypeVar("R")


def _redis_errors(what: str) -> Callable[[Callable[P, Awaitable[R]]],
                                         Callable[P, Coroutine[Any, Any, R]]]:
    """Redis errors of ``what`` as :class:`ReservationsUnavailable`."""

    def wrap(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(method)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await method(*args, **kwargs)
            except (RedisError, OSError) as exc:
                log.warning("%s: Redis did not answer (%s)", what, exc)
                raise ReservationsUnavailable(
                    f"reservations are unavailable right now ({what}: Redis did not answer); "
                    "retry with the same idempotencyKey") from exc
        return guarded
    return wrap


def _input(*name: str) -> tuple[str, ...]:
    return ("input", *name)


class Reservations:
    """The service behind the mutations and ``Query.reservations``.

    ``graph`` is the :class:`resolvers.graph.RetailGraph` (catalog, loaders, current views).
    """

    def __init__(self, graph: Any, store: ReservationStore) -> None:
        self.graph = graph
        self.store = store

    # -- reserve -------------------------------------------------------------------------------

    def _check(self, request: ReserveRequest) -> list[UserError]:
        errors = []
        if not 1 <= request.quantity <= INT_MAX:
            errors.append(UserError("INVALID_QUANTITY",
                                    f"quantity must be at least 1, got {request.quantity}",
                                    _input("quantity")))
        if not 1 <= request.ttl_seconds <= MAX_TTL_SECONDS:
            errors.append(UserError("INVALID_TTL", f"ttlSeconds must be between 1 and "
                                    f"{MAX_TTL_SECONDS}, got {request.ttl_seconds}",
                                    _input("ttlSeconds")))
        if not 1 <= len(request.idempotency_key) <= MAX_TEXT:
            errors.append(UserError("INVALID_IDEMPOTENCY_KEY", "idempotencyKey must be 1 to "
                                    f"{MAX_TEXT} characters", _input("idempotencyKey")))
        if request.reference is not None and len(request.reference) > MAX_TEXT:
            errors.append(UserError("INVALID_REFERENCE",
                                    f"reference must be at most {MAX_TEXT} characters",
                                    _input("reference")))
        if len(request.sku) > MAX_TEXT:
            errors.append(UserError("UNKNOWN_SKU", "no such SKU", _input("sku")))
        if (request.location_id is None) == (request.channel is None):
            errors.append(UserError("INVALID_INPUT", "give either locationId or channel",
                                    _input("locationId")))
        elif request.channel is merge.Channel.STORE:
            errors.append(UserError("INVALID_INPUT", "channel STORE needs a locationId: name "
                                    "the store (only ONLINE picks a location)",
                                    _input("channel")))
        return errors

    @_redis_errors("reserveStock")
    async def reserve(self, loaders: Any, request: ReserveRequest) -> Outcome:
        errors = self._check(request)
        if errors:
            return Outcome(errors=errors)
        principal = loaders.principal
        catalog = await self.graph.ready_catalog()
        master = await loaders.master.load(request.sku)
        if master is None:
            return Outcome(errors=[UserError("UNKNOWN_SKU", f"no SKU {request.sku!r} in the "
                                             "item master", _input("sku"))])
        location_id = request.location_id
        if location_id is not None:
            if location_id not in catalog.locations:
                return Outcome(errors=[UserError(
                    "UNKNOWN_LOCATION", f"no location {location_id!r}", _input("locationId"))])
            if not principal.sees(location_id):
                raise Forbidden(f"not allowed to reserve at location {location_id}")
        else:
            picked = await self._pick_online(loaders, request)
            if isinstance(picked, UserError):
                return Outcome(errors=[picked])
            location_id = picked
        scope = principal.client_id or principal.kind
        fingerprint = request.fingerprint()
        claim = await self.store.claim(scope, request.idempotency_key, fingerprint,
                                       request.sku, location_id)
        if claim.fingerprint != fingerprint:
            return Outcome(errors=[UserError(
                "IDEMPOTENCY_KEY_REUSED", "this idempotencyKey was used for another request; "
                "use a new key for a new reservation", _input("idempotencyKey"))])
        location_id = claim.location_id
        location = catalog.locations[location_id]
        safety = master.safety_stock if location.type is LocationType.WAREHOUSE else 0
        rid = reservation_id(scope, request.idempotency_key, request.sku, location_id)
        fallback: tuple[int, str] | None = None
        for _ in range(FILL_ATTEMPTS):
            try:
                result = await self.store.reserve(
                    rid, request.sku, location_id, request.quantity,
                    request.ttl_seconds * 1000, safety, request.reference, fingerprint,
                    fallback)
                break
            except CellMissing as missing:
                # The cache holds no available for the cell: read it from the system of
                # record (read-through fills the cache) and try again.
                view = await self.graph.current_view(request.sku, location_id)
                available = view.quantities.available if view is not None else None
                fallback = (available or 0, missing.generation)
        else:
            return Outcome(errors=[UserError(
                "TRY_AGAIN", f"the stock at {location_id} changed while it was read; try "
                "again with the same idempotencyKey")])
        if result.reservation is None:
            return Outcome(errors=[UserError(
                "INSUFFICIENT_STOCK", f"only {result.available_to_sell} available to sell of "
                f"{request.sku} at {location_id}; {request.quantity} asked for",
                _input("quantity"))])
        return Outcome(result.reservation)

    async def _pick_online(self, loaders: Any, request: ReserveRequest) -> str | UserError:
        levels = await loaders.stock(request.sku, location_type=LocationType.WAREHOUSE)
        if not levels:
            return UserError("INSUFFICIENT_STOCK", f"no warehouse you may reserve at stocks "
                             f"{request.sku}", _input("channel"))
        best = min(levels, key=lambda lv: (-lv.available_to_sell, lv.location.id))
        if best.available_to_sell < request.quantity:
            total = sum(lv.available_to_sell for lv in levels)
            return UserError("INSUFFICIENT_STOCK", f"only {best.available_to_sell} available "
                             f"to sell of {request.sku} in one warehouse ({best.location.id}; "
                             f"{total} in all); {request.quantity} asked for",
                             _input("quantity"))
        return str(best.location.id)

    # -- release, commit -----------------------------------------------------------------------

    def _where(self, principal: Any, reservation_id_: str) -> str | None:
        cell = parse_reservation_id(reservation_id_)
        if cell is None:
            return None
        if not principal.sees(cell[1]):
            raise Forbidden(f"not allowed to change reservations at location {cell[1]}")
        return cell[1]

    @_redis_errors("releaseReservation")
    async def release(self, principal: Any, reservation_id_: str) -> Outcome:
        if self._where(principal, reservation_id_) is None:
            return _not_found(reservation_id_)
        changed = await self.store.release(reservation_id_)
        return _outcome(changed.reservation, changed.refused, reservation_id_, "released")

    @_redis_errors("commitReservation")
    async def commit(self, principal: Any, reservation_id_: str,
                     order_reference: str | None) -> Outcome:
        if order_reference is not None and len(order_reference) > MAX_TEXT:
            return Outcome(errors=[UserError("INVALID_REFERENCE", "orderReference must be at "
                                             f"most {MAX_TEXT} characters",
                                             ("orderReference",))])
        if self._where(principal, reservation_id_) is None:
            return _not_found(reservation_id_)
        changed = await self.store.commit(reservation_id_, order_reference)
        return _outcome(changed.reservation, changed.refused, reservation_id_, "committed")

    # -- listing -------------------------------------------------------------------------------

    @_redis_errors("reservations")
    async def page(self, principal: Any, sku: str | None, location_id: str | None,
                   status: ReservationStatus | None, reference: str | None,
                   after: tuple[int, str] | None, first: int,
                   ) -> tuple[list[Reservation], bool]:
        if location_id is not None and not principal.sees(location_id):
            raise Forbidden(f"not allowed to read location {location_id}")

        def accept(r: Reservation) -> bool:
            return (principal.sees(r.location_id)
                    and (sku is None or r.sku == sku)
                    and (location_id is None or r.location_id == location_id)
                    and (status is None or r.status is status)
                    and (reference is None or r.reference == reference))

        return await self.store.page(accept, after, first)


def _not_found(reservation_id_: str) -> Outcome:
    return Outcome(errors=[UserError("NOT_FOUND", "no such reservation", ("id",))])


def _outcome(reservation: Reservation | None, refused: bool, reservation_id_: str,
             action: str) -> Outcome:
    if reservation is None:
        return _not_found(reservation_id_)
    if refused:
        return Outcome(reservation, [UserError(
            "ALREADY_FINAL", f"the reservation is {reservation.status.value} and cannot be "
            f"{action}", ("id",))])
    return Outcome(reservation)


class HeldUnits:
    """Units held at one cell, as the sync rules (issue 13) read them: the web shop's
    available to sell is the system of record's available less safety stock, buffer and
    these."""

    def __init__(self, store: ReservationStore) -> None:
        self.store = store

    async def held(self, sku: str, location_id: str) -> int:
        return (await self.store.held([sku])).get(sku, {}).get(location_id, 0)
