"""Connector for the POS (Square): store locations, the store catalog and store stock.

Square keeps a count per inventory state; :func:`counts_to_views` folds them into the
unified :class:`Quantities` (IN_STOCK -> available, RESERVED_FOR_SALE -> committed,
RECEIVED_FROM_VENDOR -> quality_control, IN_TRANSIT_TO/IN_TRANSIT -> incoming; WASTE has left
the shelf, so damaged is 0). Both the polling path and webhook normalisation use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from gateway.config import BackendSettings
from resolvers.errors import BackendProtocolError, OutOfRange, ValueOutOfRange
from resolvers.http import BackendClient
from resolvers.identity import SQUARE_LOCATION, SQUARE_VARIATION, IdentityMap
from resolvers.types import NativeLocation, Quantities, StockView, StoreListing, bounded, saturate
from resolvers.values import plain_decimal, shown

MAX_IDS = 1000  # catalog_object_ids per BatchRetrieveInventoryCounts request
PAGE_LIMIT = 1000  # counts per page (Square's maximum)
MINOR_UNITS = {"JPY": 0, "KRW": 0, "ISK": 0}  # everything else has 2 decimals
INCOMING = ("IN_TRANSIT_TO", "IN_TRANSIT")
SQUARE_PLACES = 5  # Square's quantities are decimal strings with up to 5 decimals


def _parse_time(source: str, value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise BackendProtocolError(source, f"{what} is missing")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BackendProtocolError(source, f"{what} {value!r} is not RFC 3339") from exc
    if moment.tzinfo is None:
        raise BackendProtocolError(source, f"{what} {value!r} has no time zone")
    return moment.astimezone(UTC)


def _quantity(source: str, value: Any) -> int:
    """Square's decimal string (up to 5 decimals) as an integer, checked before it is
    converted (resolvers/values.py); fractional stock is not something we model."""
    q = plain_decimal(value, places=SQUARE_PLACES)
    if q is None:
        raise BackendProtocolError(source, f"count quantity {shown(value)} is not a decimal "
                                   f"string (digits, at most {SQUARE_PLACES} decimals)")
    if q != q.to_integral_value():
        raise BackendProtocolError(source, f"count quantity {shown(value)} is not a whole "
                                   "number")
    try:
        return bounded(q, "count quantity")
    except OutOfRange as exc:
        raise ValueOutOfRange(source, str(exc)) from exc


def _version(moment: datetime) -> str:
    """Fixed-width UTC timestamp: versions of one source compare correctly as strings."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fold(states: Mapping[str, int], partial: bool) -> Quantities:
    def get(*names: str) -> int | None:
        present = [states[n] for n in names if n in states]
        if not present:
            return None if partial else 0
        return saturate(sum(present))

    available, committed = get("IN_STOCK"), get("RESERVED_FOR_SALE")
    quality_control, incoming = get("RECEIVED_FROM_VENDOR"), get(*INCOMING)
    # Square has no on-hand count: the merge derives it from these parts, so a webhook that
    # changes one state keeps on-hand right without knowing the others.
    return Quantities(on_hand=None, available=available, committed=committed,
                      incoming=incoming, quality_control=quality_control, damaged=0)


def counts_to_views(counts: list[dict[str, Any]], identity: IdentityMap, source: str,
                    *, partial: bool = False) -> list[StockView]:
    """Fold Square InventoryCounts into one StockView per (variation, location).

    ``partial=True`` is for ``inventory.count.updated`` payloads, which carry only the states
    that changed: absent states are then unknown (None) rather than 0. Variations and
    locations the identity map does not know are reported there and skipped.
    """
    cells: dict[tuple[str, str], dict[str, tuple[int, datetime]]] = {}
    for count in counts:
        if not isinstance(count, dict):
            raise BackendProtocolError(source, "an inventory count is not an object")
        ids = (count.get("catalog_object_id"), count.get("location_id"), count.get("state"))
        if not all(isinstance(v, str) for v in ids):
            raise BackendProtocolError(source, "an inventory count lacks catalog_object_id, "
                                       "location_id or state")
        variation, location, state = (str(v) for v in ids)
        entry = (_quantity(source, count.get("quantity")),
                 _parse_time(source, count.get("calculated_at"), "calculated_at"))
        states = cells.setdefault((variation, location), {})
        if state not in states or states[state][1] <= entry[1]:
            states[state] = entry
    views = []
    for (variation, location), states in cells.items():
        sku = identity.sku(SQUARE_VARIATION, variation, seen_in=source)
        location_id = identity.location(SQUARE_LOCATION, location, seen_in=source)
        if sku is None or location_id is None:
            continue
        as_of = max(at for _, at in states.values())
        views.append(StockView(sku=sku, location_id=location_id, source=source,
                               quantities=_fold({s: q for s, (q, _) in states.items()}, partial),
                               as_of=as_of, version=_version(as_of)))
    return views


class PosConnector:
    """Square Locations, Catalog and Inventory APIs mapped to unified records."""

    def __init__(self, settings: BackendSettings, identity: IdentityMap,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = settings.name
        self.identity = identity
        self.client = BackendClient(settings, transport)
        self.max_ids = MAX_IDS
        self.page_limit = PAGE_LIMIT

    async def aclose(self) -> None:
        await self.client.aclose()

    def _list(self, payload: Any, key: str, what: str) -> list[Any]:
        if not isinstance(payload, dict):
            raise BackendProtocolError(self.name, f"{what}: response is not an object")
        value = payload.get(key, [])  # Square omits empty lists
        if not isinstance(value, list):
            raise BackendProtocolError(self.name, f"{what}: {key} is not a list")
        return value

    async def locations(self) -> list[NativeLocation]:
        """Every Square location, for identity checks against the ERP's cross-references."""
        payload = await self.client.json("GET", "/v2/locations")
        out = []
        for loc in self._list(payload, "locations", "locations"):
            if not isinstance(loc, dict) or not isinstance(loc.get("id"), str):
                raise BackendProtocolError(self.name, "locations: a location has no id")
            out.append(NativeLocation("square", loc["id"], str(loc.get("name", ""))))
        return out

    async def catalog(self) -> list[StoreListing]:
        """Every live ITEM_VARIATION, following the cursor through all pages."""
        out: list[StoreListing] = []
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            params = {"types": "ITEM_VARIATION"} | ({"cursor": cursor} if cursor else {})
            payload = await self.client.json("GET", "/v2/catalog/list", params=params)
            for obj in self._list(payload, "objects", "catalog"):
                listing = self._listing(obj)
                if listing is not None:
                    out.append(listing)
            cursor = payload.get("cursor")
            if not cursor:
                return out
            if not isinstance(cursor, str) or cursor in seen:
                raise BackendProtocolError(self.name, "catalog: cursor repeats or is invalid")
            seen.add(cursor)

    def _listing(self, obj: Any) -> StoreListing | None:
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise BackendProtocolError(self.name, "catalog: an object has no id")
        if obj.get("type") != "ITEM_VARIATION" or obj.get("is_deleted"):
            return None
        data = obj.get("item_variation_data")
        if not isinstance(data, dict):
            raise BackendProtocolError(self.name, f"catalog: {obj['id']} has no variation data")
        money = data.get("price_money")
        price, currency = None, ""
        if isinstance(money, dict):
            amount, currency = money.get("amount"), str(money.get("currency", ""))
            if not isinstance(amount, int) or isinstance(amount, bool):
                raise BackendProtocolError(self.name, f"catalog: {obj['id']} price is not an "
                                           "integer amount")
            price = Decimal(amount).scaleb(-MINOR_UNITS.get(currency, 2))
        return StoreListing(
            sku=data.get("sku") or None, catalog_object_id=obj["id"],
            upc=data.get("upc") or None, name=str(data.get("name", "")), price=price,
            currency=currency, source=self.name,
            as_of=_parse_time(self.name, obj.get("updated_at"), "catalog updated_at"))

    async def counts(self, skus: Sequence[str], location_ids: Sequence[str]) -> list[StockView]:
        """Store stock per requested (SKU, store) the POS knows; one request per 1000 SKUs
        (plus one per further page of 1000 counts)."""
        variations = {v: sku for sku in dict.fromkeys(skus)
                      if (v := self.identity.native_sku(SQUARE_VARIATION, sku))}
        stores = {n: loc for loc in dict.fromkeys(location_ids)
                  if (n := self.identity.native_location(SQUARE_LOCATION, loc))}
        if not variations or not stores:
            return []
        ids = list(variations)
        pages = await asyncio.gather(*(self._count_pages(ids[k:k + self.max_ids], list(stores))
                                       for k in range(0, len(ids), self.max_ids)))
        counts = [c for page in pages for c in page
                  if c.get("catalog_object_id") in variations
                  and c.get("location_id") in stores]
        return counts_to_views(counts, self.identity, self.name)

    async def _count_pages(self, ids: list[str], locations: list[str]) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"catalog_object_ids": ids, "location_ids": locations,
                                "limit": self.page_limit}
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            payload = await self.client.json("POST", "/v2/inventory/counts/batch-retrieve",
                                             json=body, idempotent=True)
            page = self._list(payload, "counts", "inventory counts")
            if not all(isinstance(c, dict) for c in page):
                raise BackendProtocolError(self.name, "inventory counts: a count is not an "
                                           "object")
            out.extend(page)
            cursor = payload.get("cursor")
            if not cursor:
                return out
            if not isinstance(cursor, str) or cursor in seen:
                raise BackendProtocolError(self.name, "inventory counts: cursor repeats or is "
                                           "invalid")
            seen.add(cursor)
            body = body | {"cursor": cursor}
