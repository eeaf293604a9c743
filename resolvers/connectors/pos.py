"""Connector for the POS (Square): store locations, the store catalog and store stock.

Square keeps a count per inventory state; :func:`counts_to_views` folds them into the
unified :class:`Quantities` (IN_STOCK -> available, RESERVED_FOR_SALE -> committed,
RECEIVED_FROM_VENDOR -> quality_control, IN_TRANSIT_TO/IN_TRANSIT -> incoming; WASTE has left
the shelf, so damaged is 0). Both the polling path and webhook normalisation use it.

Every call names ``Square-Version: 2026-09-16`` (resolvers/connectors/http.py). Writes
(:mod:`resolvers.writes`): :meth:`PosConnector.update_item` puts the item master's name and
list price on the catalog variation (the store's shelf price is the ERP's list price; the
online price is the shop's and not here), by UpsertCatalogObject with the object's
``version``; :meth:`PosConnector.set_available` / :meth:`~PosConnector.set_available_many`
send ``PHYSICAL_COUNT``s of IN_STOCK through ``inventory/changes/batch-create`` (at most 100
changes a call, an idempotency key), for when stores are sync targets.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from resolvers.abc import NO_OBSERVER, Observer
from resolvers.connectors.base import BackendConnector, backend_time
from resolvers.errors import (
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    OutOfRange,
    ValueOutOfRange,
)
from resolvers.identity import SQUARE_LOCATION, SQUARE_VARIATION, IdentityMap
from resolvers.settings import BackendSettings
from resolvers.types import NativeLocation, Quantities, StockView, StoreListing, bounded, saturate
from resolvers.values import plain_decimal, shown
from resolvers.writes import ItemWrite, Outcome, StockWrite, WriteResult, refused

MAX_IDS = 1000  # catalog_object_ids per BatchRetrieveInventoryCounts request
PAGE_LIMIT = 1000  # counts per page (Square's maximum)
MINOR_UNITS = {"JPY": 0, "KRW": 0, "ISK": 0}  # everything else has 2 decimals
INCOMING = ("IN_TRANSIT_TO", "IN_TRANSIT")
SQUARE_PLACES = 5  # Square's quantities are decimal strings with up to 5 decimals
MAX_CHANGES = 100  # changes per inventory/changes/batch-create call


def _count_time(source: str, value: Any) -> datetime:
    """A count's ``calculated_at`` (:func:`backend_time`); a bulk read meets the same few
    stamps many times, so the parsed ones are remembered."""
    if type(value) is str:
        return _count_time_text(source, value)
    return backend_time(source, value, "calculated_at")


@functools.lru_cache(maxsize=4096)
def _count_time_text(source: str, value: str) -> datetime:
    return backend_time(source, value, "calculated_at")


def _quantity(source: str, value: Any) -> int:
    """Square's decimal string (up to 5 decimals) as an integer, checked before it is
    converted (resolvers/values.py); fractional stock is not something we model."""
    if type(value) is str:
        return _quantity_text(source, value)
    return _checked_quantity(source, value)


@functools.lru_cache(maxsize=4096)
def _quantity_text(source: str, value: str) -> int:
    return _checked_quantity(source, value)


def _checked_quantity(source: str, value: Any) -> int:
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


@functools.lru_cache(maxsize=4096)
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
                 _count_time(source, count.get("calculated_at")))
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


class PosConnector(BackendConnector):
    """Square Locations, Catalog and Inventory APIs mapped to unified records."""

    def __init__(self, settings: BackendSettings, identity: IdentityMap,
                 transport: httpx.AsyncBaseTransport | None = None,
                 observer: Observer = NO_OBSERVER) -> None:
        super().__init__(settings, identity, transport, observer)
        self.max_ids = MAX_IDS
        self.page_limit = PAGE_LIMIT

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
            as_of=backend_time(self.name, obj.get("updated_at"), "catalog updated_at"))

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

    # -- writes (resolvers.writes.ItemTarget / StockTarget) ----------------------------------

    async def read_available(self, sku: str, location_id: str) -> int | None:
        """The store's sellable (IN_STOCK) count now; None when the SKU or store maps to
        nothing in Square. Raises :class:`BackendError` when Square cannot answer."""
        if self.identity.native_sku(SQUARE_VARIATION, sku) is None \
                or self.identity.native_location(SQUARE_LOCATION, location_id) is None:
            return None
        views = await self.counts([sku], [location_id])
        return views[0].quantities.available if views else 0

    async def set_available(self, write: StockWrite) -> WriteResult:
        """A ``PHYSICAL_COUNT`` of IN_STOCK through ``inventory/changes/batch-create``.

        Square has no compare-and-set for counts: the count is read first and compared with
        ``expected`` (a mismatch is :attr:`Outcome.STALE` with what it holds, nothing
        written), then the count is sent with an idempotency key of the action, the belief
        and the value. Square applies changes by their ``occurred_at``, which is the time of
        that read: a sale rung up after the read still counts on top of our count."""
        results = await self.set_available_many([write])
        return results[0]

    async def set_available_many(self, writes: Sequence[StockWrite]) -> list[WriteResult]:
        """:meth:`set_available` for many cells, at most 100 changes per batch-create call
        (Square's limit); the results are in the order of ``writes``."""
        results: list[WriteResult | None] = [None] * len(writes)
        pending: list[tuple[int, StockWrite, str, str, int]] = []
        for n, write in enumerate(writes):
            variation = self.identity.native_sku(SQUARE_VARIATION, write.sku)
            store = self.identity.native_location(SQUARE_LOCATION, write.location_id)
            if variation is None or store is None:
                results[n] = WriteResult(Outcome.UNMAPPED, error=f"{write.sku} at "
                                         f"{write.location_id} has no Square variation or "
                                         "location")
                continue
            pending.append((n, write, variation, store, 0))
        try:
            read_at = datetime.now(UTC)
            held = await self._in_stock([(p[1].sku, p[1].location_id) for p in pending])
        except BackendStatusError as exc:
            return [r or refused(exc) for r in results]
        except BackendError as exc:
            return [r or WriteResult(Outcome.FAILED, error=str(exc)) for r in results]
        to_send: list[tuple[int, StockWrite, str, str, int]] = []
        for n, write, variation, store, _ in pending:
            current = held.get((write.sku, write.location_id), 0)
            if write.available == current:
                results[n] = WriteResult(Outcome.DONE, actual=current)
            elif write.expected is not None and write.expected != current:
                results[n] = WriteResult(Outcome.STALE, actual=current, error=f"IN_STOCK is "
                                         f"{current}, not the expected {write.expected}")
            elif write.available < 0:
                results[n] = WriteResult(Outcome.FAILED, error="a count cannot be negative")
            else:
                to_send.append((n, write, variation, store, current))
        for start in range(0, len(to_send), MAX_CHANGES):
            chunk = to_send[start:start + MAX_CHANGES]
            for n, result in zip([c[0] for c in chunk], await self._count_batch(chunk, read_at),
                                 strict=True):
                results[n] = result
        return [r or WriteResult(Outcome.FAILED, error="not written") for r in results]

    async def _in_stock(self, cells: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        if not cells:
            return {}
        views = await self.counts(sorted({s for s, _ in cells}), sorted({x for _, x in cells}))
        return {(v.sku, v.location_id): v.quantities.available or 0 for v in views}

    async def _count_batch(self, chunk: Sequence[tuple[int, StockWrite, str, str, int]],
                           read_at: datetime) -> list[WriteResult]:
        # The action's key with the count read and the value: a retry of the same write is
        # the same request; a batch of several has a key of all of theirs.
        parts = [f"{w.idempotency_key}:{current}:{w.available}" for _, w, _, _, current in chunk]
        key = parts[0] if len(parts) == 1 else "batch:" + ":".join(parts)
        if len(key) > 128:  # Square's limit on idempotency keys
            key = "rg-" + hashlib.sha256(key.encode()).hexdigest()
        occurred = _version(read_at)
        changes = [{"type": "PHYSICAL_COUNT", "physical_count": {
            "catalog_object_id": variation, "location_id": store, "state": "IN_STOCK",
            "quantity": str(write.available), "occurred_at": occurred,
            "reference_id": write.idempotency_key[:255]}}
            for _, write, variation, store, _ in chunk]
        try:
            payload = await self.client.json("POST", "/v2/inventory/changes/batch-create",
                                             json={"idempotency_key": key, "changes": changes,
                                                   "ignore_unchanged_counts": True},
                                             idempotent=True)
        except BackendStatusError as exc:
            return [refused(exc)] * len(chunk)
        except BackendError as exc:
            return [WriteResult(Outcome.FAILED, error=str(exc))] * len(chunk)
        counts = self._list(payload, "counts", "batch-create")
        after = {(c.get("catalog_object_id"), c.get("location_id")): c.get("quantity")
                 for c in counts if isinstance(c, dict) and c.get("state") == "IN_STOCK"}
        out = []
        for _, write, variation, store, _ in chunk:
            raw = after.get((variation, store))
            try:
                actual = _quantity(self.name, raw) if raw is not None else write.available
            except BackendProtocolError:
                actual = write.available
            out.append(WriteResult(Outcome.DONE, actual=actual))
        return out

    async def update_item(self, write: ItemWrite) -> WriteResult:
        """The item's name and, when given, its price on its catalog variation (the store's
        shelf price: the sync rules send the ERP list price only with
        ``sync.pos_price_from_erp``), by UpsertCatalogObject with the object's ``version``;
        ``VERSION_MISMATCH`` (someone changed it meanwhile) re-reads and retries once, and
        a second one is :attr:`Outcome.STALE`."""
        variation = self.identity.native_sku(SQUARE_VARIATION, write.sku)
        if variation is None:
            return WriteResult(Outcome.UNMAPPED, error=f"{write.sku} has no Square variation")
        if write.name is None and write.list_price is None:
            return WriteResult(Outcome.DONE)
        try:
            for _attempt in range(2):
                found = await self.client.json("GET", f"/v2/catalog/object/{variation}")
                obj = found.get("object") if isinstance(found, dict) else None
                if not isinstance(obj, dict) or not isinstance(obj.get("version"), int) \
                        or not isinstance(obj.get("item_variation_data"), dict):
                    raise BackendProtocolError(self.name, f"catalog object {variation} has no "
                                               "version or variation data")
                data = dict(obj["item_variation_data"])
                changed = self._apply_item(data, write)
                if not changed:
                    return WriteResult(Outcome.DONE)
                try:
                    await self.client.json("POST", "/v2/catalog/object", idempotent=True, json={
                        "idempotency_key": f"{write.idempotency_key}:v{obj['version']}"[:128],
                        "object": {**obj, "item_variation_data": data}})
                except BackendStatusError as exc:
                    if exc.status == 400 and "VERSION_MISMATCH" in exc.body:
                        continue
                    raise
                return WriteResult(Outcome.DONE)
            return WriteResult(Outcome.STALE, error="VERSION_MISMATCH twice: the catalog "
                               "object keeps changing")
        except BackendStatusError as exc:
            if exc.status == 404:
                return WriteResult(Outcome.UNMAPPED, error=str(exc))
            return refused(exc)
        except BackendError as exc:
            return WriteResult(Outcome.FAILED, error=str(exc))

    @staticmethod
    def _apply_item(data: dict[str, Any], write: ItemWrite) -> bool:
        """Put the write's fields into variation data; whether anything changed."""
        changed = False
        if write.name is not None and data.get("name") != write.name:
            data["name"], changed = write.name, True
        money = data.get("price_money")
        if write.list_price is not None and isinstance(money, dict) \
                and data.get("pricing_type", "FIXED_PRICING") == "FIXED_PRICING":
            currency = str(money.get("currency", ""))
            amount = int(write.list_price.scaleb(MINOR_UNITS.get(currency, 2))
                         .to_integral_value())
            if money.get("amount") != amount:
                data["price_money"], changed = {"amount": amount, "currency": currency}, True
        return changed

