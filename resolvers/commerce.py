"""Connector for the e-commerce platform: Shopify's Admin REST API (2025-01).

Maps products/variants to :class:`OnlineListing`, locations to :class:`NativeLocation` and
inventory levels to :class:`StockView`. Shopify's REST level carries only ``available``, so
that is the only quantity reported; ``updated_at`` is both ``as_of`` and ``version``.
Pagination follows the ``page_info`` cursor of the ``Link`` header, and level queries are
chunked to Shopify's 50 ids per parameter.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from gateway.config import BackendSettings
from resolvers.errors import BackendProtocolError, OutOfRange, ValueOutOfRange
from resolvers.http import BackendClient
from resolvers.identity import SHOPIFY_INVENTORY_ITEM, SHOPIFY_LOCATION, IdentityMap
from resolvers.types import NativeLocation, OnlineListing, Quantities, StockView, bounded
from resolvers.values import plain_decimal, shown

API = "/admin/api/2025-01"
MAX_IDS = 50  # Shopify's cap on inventory_item_ids and location_ids per request
CONCURRENCY = 4  # Shopify's REST bucket refills at 2 requests/s; don't flood it or the pool
_NEXT_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


def _native_id(obj: dict[str, Any], key: str, source: str) -> str:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise BackendProtocolError(source, f"{key} {value!r} is not a numeric id")
    return str(value)


def _timestamp(value: Any, what: str, source: str) -> datetime:
    if not isinstance(value, str):
        raise BackendProtocolError(source, f"{what} {value!r} is not a timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BackendProtocolError(source, f"{what} {value!r} is not RFC 3339") from exc
    if moment.tzinfo is None:
        raise BackendProtocolError(source, f"{what} {value!r} has no UTC offset")
    return moment.astimezone(UTC)


def _object(value: Any, what: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BackendProtocolError(source, f"{what} is not an object")
    return value


def _optional_str(obj: dict[str, Any], key: str, source: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise BackendProtocolError(source, f"{key} {value!r} is not a string")
    return value or None


def level_to_view(level: dict[str, Any], identity: IdentityMap, source: str, *,
                  fallback_as_of: datetime | None = None) -> StockView | None:
    """A Shopify InventoryLevel (REST resource or ``inventory_levels/update`` body) as a view.

    None when its item or location maps to nothing (the IdentityMap records which).
    ``updated_at`` is optional in some webhook fixtures: pass ``fallback_as_of`` to accept
    such a level; without it, it is malformed. Webhook intake passes the time it received
    the delivery, never the unsigned ``X-Shopify-Triggered-At`` header: a version (which
    decides what wins over what) comes only from signed content or our own clock.
    """
    level = _object(level, "inventory level", source)
    item_id = _native_id(level, "inventory_item_id", source)
    location_id = _native_id(level, "location_id", source)
    available = level.get("available")
    if available is not None and (isinstance(available, bool) or not isinstance(available, int)):
        raise BackendProtocolError(source, f"available {available!r} is not an integer")
    if available is not None:
        try:  # negative is real (oversold); past 32 bits is not servable
            bounded(available, "available")
        except OutOfRange as exc:
            raise ValueOutOfRange(source, str(exc)) from exc
    updated_at = level.get("updated_at")
    if updated_at is None and fallback_as_of is not None:
        as_of, version = fallback_as_of.astimezone(UTC), fallback_as_of.isoformat()
    else:
        as_of, version = _timestamp(updated_at, "updated_at", source), str(updated_at)
    sku = identity.sku(SHOPIFY_INVENTORY_ITEM, item_id, seen_in=source)
    location = identity.location(SHOPIFY_LOCATION, location_id, seen_in=source)
    if sku is None or location is None:
        return None
    return StockView(sku=sku, location_id=location, source=source,
                     quantities=Quantities(available=available), as_of=as_of, version=version)


def next_page_info(link: str | None) -> str | None:
    """The ``page_info`` of the ``rel="next"`` link, or None on the last page."""
    match = _NEXT_LINK.search(link or "")
    if match is None:
        return None
    return httpx.URL(match.group(1)).params.get("page_info") or None


def _chunks(values: Sequence[str], size: int) -> list[Sequence[str]]:
    return [values[i:i + size] for i in range(0, len(values), size)]


class CommerceConnector:
    """Reads the catalog, locations and inventory levels of one Shopify shop."""

    page_limit = 250  # Shopify's maximum; tests lower it to exercise pagination

    def __init__(self, settings: BackendSettings, identity: IdentityMap,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = settings.name
        self.identity = identity
        self.client = BackendClient(settings, transport)
        self._currency: str | None = None

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _pages(self, resource: str, key: str,
                     params: dict[str, Any]) -> AsyncIterator[list[Any]]:
        """Each page's ``key`` list, following ``page_info`` (which forbids other filters)."""
        path = f"{API}/{resource}.json"
        query: dict[str, Any] = {**params, "limit": self.page_limit}
        seen: set[str] = set()
        while True:
            response = await self.client.request("GET", path, params=query)
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError as exc:
                raise BackendProtocolError(self.name, f"GET {path}: body is not JSON") from exc
            items = _object(body, f"GET {path} body", self.name).get(key)
            if not isinstance(items, list):
                raise BackendProtocolError(self.name, f"GET {path}: {key!r} is not a list")
            yield items
            page_info = next_page_info(response.headers.get("link"))
            if page_info is None:
                return
            if page_info in seen:
                raise BackendProtocolError(self.name, f"GET {path}: pagination loops")
            seen.add(page_info)
            query = {"limit": self.page_limit, "page_info": page_info}

    async def currency(self) -> str:
        """The shop's currency (``shop.json``); prices in the catalog are in it."""
        if self._currency is None:
            body = await self.client.json("GET", f"{API}/shop.json")
            shop = _object(_object(body, "shop.json body", self.name).get("shop"), "shop",
                           self.name)
            currency = shop.get("currency")
            if not isinstance(currency, str) or len(currency) != 3:
                raise BackendProtocolError(self.name, f"shop currency {currency!r} is invalid")
            self._currency = currency
        return self._currency

    async def products(self) -> list[OnlineListing]:
        """One listing per variant of every product in the shop."""
        currency = await self.currency()
        listings: list[OnlineListing] = []
        async for page in self._pages("products", "products", {}):
            for product in page:
                listings.extend(self._listings(_object(product, "product", self.name),
                                               currency))
        return listings

    def _listings(self, product: dict[str, Any], currency: str) -> list[OnlineListing]:
        product_id = _native_id(product, "id", self.name)
        title, status = product.get("title"), product.get("status")
        variants = product.get("variants")
        if not isinstance(title, str) or not isinstance(status, str) \
                or not isinstance(variants, list):
            raise BackendProtocolError(self.name, f"product {product_id} lacks title, status "
                                       "or variants")
        return [self._listing(_object(v, "variant", self.name), product_id, title, status,
                              currency) for v in variants]

    def _listing(self, variant: dict[str, Any], product_id: str, product_title: str,
                 status: str, currency: str) -> OnlineListing:
        variant_id = _native_id(variant, "id", self.name)
        raw = variant.get("price")
        price = plain_decimal(raw if isinstance(raw, str) else str(raw))
        if price is None:
            raise BackendProtocolError(self.name, f"variant {variant_id} price {shown(raw)} "
                                       "is not a decimal")
        variant_title = _optional_str(variant, "title", self.name)
        title = product_title if variant_title in (None, "Default Title") \
            else f"{product_title} - {variant_title}"
        return OnlineListing(
            sku=_optional_str(variant, "sku", self.name) or "", product_id=product_id,
            variant_id=variant_id,
            inventory_item_id=_native_id(variant, "inventory_item_id", self.name),
            title=title, price=price, currency=currency, status=status,
            barcode=_optional_str(variant, "barcode", self.name), source=self.name,
            as_of=_timestamp(variant.get("updated_at"), f"variant {variant_id} updated_at",
                             self.name))

    async def locations(self) -> list[NativeLocation]:
        body = await self.client.json("GET", f"{API}/locations.json")
        locations = _object(body, "locations.json body", self.name).get("locations")
        if not isinstance(locations, list):
            raise BackendProtocolError(self.name, "'locations' is not a list")
        out = []
        for raw in locations:
            loc = _object(raw, "location", self.name)
            name = loc.get("name")
            if not isinstance(name, str):
                raise BackendProtocolError(self.name, f"location {loc.get('id')!r} has no name")
            out.append(NativeLocation("shopify", _native_id(loc, "id", self.name), name))
        return out

    async def levels(self, skus: Sequence[str], location_ids: Sequence[str]) -> list[StockView]:
        """``available`` of each SKU at each location, as far as both map to Shopify ids."""
        items = [n for n in dict.fromkeys(
            self.identity.native_sku(SHOPIFY_INVENTORY_ITEM, s) for s in skus) if n]
        locations = [n for n in dict.fromkeys(
            self.identity.native_location(SHOPIFY_LOCATION, loc) for loc in location_ids) if n]
        batches = [(item_chunk, loc_chunk) for item_chunk in _chunks(items, MAX_IDS)
                   for loc_chunk in _chunks(locations, MAX_IDS)]
        gate = asyncio.Semaphore(CONCURRENCY)
        results = await asyncio.gather(*(self._level_batch(gate, i, loc) for i, loc in batches))
        return [view for batch in results for view in batch]

    async def _level_batch(self, gate: asyncio.Semaphore, items: Sequence[str],
                           locations: Sequence[str]) -> list[StockView]:
        async with gate:
            return [view async for view in self._level_views(items, locations)]

    async def _level_views(self, items: Sequence[str],
                           locations: Sequence[str]) -> AsyncIterator[StockView]:
        params = {"inventory_item_ids": ",".join(items), "location_ids": ",".join(locations)}
        async for page in self._pages("inventory_levels", "inventory_levels", params):
            for level in page:
                view = level_to_view(level, self.identity, self.name)
                if view is not None:
                    yield view
