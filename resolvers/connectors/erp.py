"""Connector for the ERP: item master, location master, purchase orders, nightly stock snapshot.

The ERP defines the unified identifiers (its SKUs and location codes), so the gateway learns the
IdentityMap from :meth:`ErpConnector.all_items` and :meth:`ErpConnector.locations`. Purchase
orders and snapshot rows are then checked against what was learned: a SKU or location the map
does not know is reported and skipped, never passed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx

from resolvers.abc import NO_OBSERVER, Observer
from resolvers.connectors.base import BackendConnector
from resolvers.errors import BackendProtocolError, OutOfRange, ValueOutOfRange
from resolvers.identity import (
    ERP_ITEM,
    GLN,
    GTIN,
    SHOPIFY_LOCATION,
    SQUARE_LOCATION,
    IdentityMap,
    normalize_gtin,
    parse_node_id,
)
from resolvers.settings import BackendSettings
from resolvers.types import (
    INT_MAX,
    INT_MIN,
    ExternalRef,
    LocationRecord,
    LocationType,
    MasterItem,
    PurchaseOrderLine,
    Quantities,
    StockView,
    bounded,
)
from resolvers.values import plain_decimal

PAGE = 1000  # the ERP's largest page
BATCH = 1000  # the ERP's largest skus= filter
PARALLEL = 4  # chunk requests in flight at once
EXTERNAL_IDS = {"squareLocationId": SQUARE_LOCATION, "shopifyLocationId": SHOPIFY_LOCATION}

T = TypeVar("T")


def chunks(values: Sequence[str], size: int) -> list[list[str]]:
    unique = list(dict.fromkeys(values))
    return [unique[n:n + size] for n in range(0, len(unique), size)]


def _plain_row(row: Any) -> bool:
    """A snapshot row with string sku, itemNumber and locationCode and an int onHand within
    GraphQL's Int: what :meth:`ErpConnector._rows` reads without a checked reader."""
    if type(row) is not dict:
        return False
    on_hand = row.get("onHand")
    return (type(on_hand) is int and INT_MIN <= on_hand <= INT_MAX
            and type(row.get("sku")) is str and type(row.get("itemNumber")) is str
            and type(row.get("locationCode")) is str)


class Payload:
    """Typed reads from one JSON object; anything unexpected is a BackendProtocolError."""

    def __init__(self, backend: str, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise BackendProtocolError(backend, f"{where}: expected an object")
        self.backend, self.where, self.data = backend, where, data

    def fail(self, key: str, what: str) -> BackendProtocolError:
        return BackendProtocolError(self.backend, f"{self.where}.{key}: {what}")

    def get(self, key: str, kind: type[T]) -> T:
        value = self.data.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def optional(self, key: str, kind: type[T]) -> T | None:
        return None if self.data.get(key) is None else self.get(key, kind)

    def text(self, key: str) -> str:
        return self.get(key, str)

    def integer(self, key: str) -> int:
        return self.get(key, int)

    def quantity(self, key: str) -> int:
        """A count the schema exposes, within GraphQL's Int (32 bits)."""
        try:
            return bounded(self.integer(key), f"{self.where}.{key}")
        except OutOfRange as exc:
            raise ValueOutOfRange(self.backend, str(exc)) from exc

    def decimal(self, key: str) -> Decimal:
        value = plain_decimal(self.text(key))
        if value is None:
            raise self.fail(key, "not a plain decimal string")
        return value

    def time(self, key: str) -> datetime:
        try:
            moment = datetime.fromisoformat(self.text(key))
        except ValueError as exc:
            raise self.fail(key, "not an RFC 3339 timestamp or date") from exc
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    def objects(self, key: str) -> list[Payload]:
        return [Payload(self.backend, f"{self.where}.{key}[{n}]", value)
                for n, value in enumerate(self.get(key, list))]

    def child(self, key: str) -> Payload:
        return Payload(self.backend, f"{self.where}.{key}", self.data.get(key))


def parse_item(raw: Payload, identity: IdentityMap) -> MasterItem:
    """An ERP item resource (API page or ``item.updated`` webhook data) as a MasterItem."""
    gtin = raw.optional("gtin", str)
    gtin14 = normalize_gtin(gtin) if gtin else None
    if gtin and gtin14 is None:
        identity.report(GTIN, gtin, f"invalid GTIN on ERP item {raw.text('sku')}", raw.backend)
    cost = raw.decimal("cost") if raw.data.get("cost") is not None else None
    return MasterItem(
        sku=raw.text("sku"), item_number=raw.text("itemNumber"), gtin14=gtin14,
        name=raw.text("description"), category=raw.optional("category", str),
        list_price=raw.decimal("listPrice"), cost=cost, currency=raw.text("currency"),
        safety_stock=raw.quantity("safetyStock"), source=raw.backend, as_of=raw.time("updatedAt"))


def item_resource(item: MasterItem) -> dict[str, Any]:
    """A MasterItem back in the ERP's item resource shape (what the cache stores)."""
    return {"sku": item.sku, "itemNumber": item.item_number, "gtin": item.gtin14,
            "description": item.name, "category": item.category,
            "listPrice": str(item.list_price),
            "cost": str(item.cost) if item.cost is not None else None,
            "currency": item.currency, "safetyStock": item.safety_stock,
            "updatedAt": item.as_of.isoformat()}


class ErpConnector(BackendConnector):
    """Reads the ERP's masters and stock; every batch call chunks and follows cursors."""

    def __init__(self, settings: BackendSettings, identity: IdentityMap,
                 transport: httpx.AsyncBaseTransport | None = None,
                 observer: Observer = NO_OBSERVER) -> None:
        super().__init__(settings, identity, transport, observer)
        self._parallel = asyncio.Semaphore(PARALLEL)

    # -- plumbing --------------------------------------------------------------------------------

    async def _get(self, path: str, params: dict[str, Any]) -> Payload:
        async with self._parallel:
            body = await self.client.json("GET", path, params=params)
        return Payload(self.name, f"GET {path}", body)

    async def _pages(self, path: str, params: dict[str, Any]) -> list[Payload]:
        """Every page of one listing, following ``nextCursor``."""
        pages: list[Payload] = []
        after: str | None = None
        while True:
            page = await self._get(path, {**params, "limit": PAGE,
                                          **({"after": after} if after else {})})
            pages.append(page)
            after = page.optional("nextCursor", str)
            if after is None:
                return pages

    async def _per_chunk(self, skus: Sequence[str],
                         fetch: Callable[[list[str]], Awaitable[list[T]]]) -> list[T]:
        results = await asyncio.gather(*(fetch(chunk) for chunk in chunks(skus, BATCH)))
        return [row for rows in results for row in rows]

    def _known(self, sku: str, item_number: str, location_id: str) -> bool:
        """Whether a row's SKU and location are in the learned masters; reports them if not."""
        if sku not in self.identity.known_skus:
            self.identity.report(ERP_ITEM, item_number, f"SKU {sku!r} is not in the item master",
                                 self.name)
            return False
        if location_id not in self.identity.known_locations:
            self.identity.report(("erp", "location_code"), location_id,
                                 "not in the location master", self.name)
            return False
        return True

    # -- items -----------------------------------------------------------------------------------

    def _item(self, raw: Payload) -> MasterItem:
        return parse_item(raw, self.identity)

    def _items(self, pages: list[Payload]) -> list[MasterItem]:
        return [self._item(raw) for page in pages for raw in page.objects("items")]

    async def items_page(self, after: str | None, limit: int) -> tuple[list[MasterItem],
                                                                        str | None]:
        """One page of the item master in sku order, and the cursor of the next page."""
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        page = await self._get("/api/v1/items", params)
        return self._items([page]), page.optional("nextCursor", str)

    async def all_items(self) -> list[MasterItem]:
        return self._items(await self._pages("/api/v1/items", {}))

    async def items(self, skus: Sequence[str]) -> dict[str, MasterItem]:
        """The master records of ``skus``; SKUs the ERP does not know are simply absent."""
        async def fetch(chunk: list[str]) -> list[MasterItem]:
            return self._items(await self._pages("/api/v1/items", {"skus": ",".join(chunk)}))

        return {item.sku: item for item in await self._per_chunk(skus, fetch)}

    # -- locations ------------------------------------------------------------------------------

    def _location(self, raw: Payload) -> LocationRecord:
        code, gln = raw.text("code"), raw.optional("gln", str)
        kind = raw.text("type")
        if kind not in LocationType.__members__:
            raise raw.fail("type", f"unknown location type {kind!r}")
        refs = [ExternalRef(*GLN, gln)] if gln else []
        external = raw.child("externalIds")
        for field, (namespace, ref_kind) in EXTERNAL_IDS.items():
            value = external.optional(field, str)
            if value:
                refs.append(ExternalRef(namespace, ref_kind, value))
        return LocationRecord(id=code, name=raw.text("name"), type=LocationType(kind), gln=gln,
                              refs=tuple(refs), source=self.name, as_of=raw.time("updatedAt"))

    async def locations(self) -> list[LocationRecord]:
        page = await self._get("/api/v1/locations", {})
        out = []
        for record in (self._location(raw) for raw in page.objects("locations")):
            # A location's id is its code; every other type's global id is base64 of
            # "Type:key". A code of that form would make Query.node ambiguous: refused.
            if parse_node_id(record.id) is not None:
                self.identity.report(("erp", "location_code"), record.id,
                                     "has the form of another type's global id (base64 of "
                                     "'Type:key'); rename the location", self.name)
                continue
            out.append(record)
        return out

    # -- purchase orders ---------------------------------------------------------------------------

    def _po_lines(self, raw: Payload) -> list[PurchaseOrderLine]:
        number, location = raw.text("poNumber"), raw.text("locationCode")
        status = raw.text("status")
        expected = raw.time("expectedDate") if raw.data.get("expectedDate") else None
        as_of = raw.time("updatedAt")
        return [PurchaseOrderLine(
            po_number=number, sku=line.text("sku"), location_id=location,
            quantity_ordered=line.quantity("quantityOrdered"),
            quantity_received=line.quantity("quantityReceived"), expected_at=expected,
            status=status, source=self.name, as_of=as_of)
            for line in raw.objects("lines")
            if self._known(line.text("sku"), line.text("itemNumber"), location)]

    async def purchase_orders(self, skus: Sequence[str],
                              location_ids: Sequence[str] | None = None,
                              status: str = "open") -> list[PurchaseOrderLine]:
        """Lines of POs (``open``, ``received`` or ``all``) for ``skus``, only those SKUs' lines."""
        wanted = set(skus)
        params: dict[str, Any] = {"status": status}
        if location_ids is not None:
            if not location_ids:
                return []
            params["locations"] = ",".join(dict.fromkeys(location_ids))

        async def fetch(chunk: list[str]) -> list[PurchaseOrderLine]:
            pages = await self._pages("/api/v1/purchase-orders",
                                      {**params, "skus": ",".join(chunk)})
            return [line for page in pages for raw in page.objects("purchaseOrders")
                    for line in self._po_lines(raw) if line.sku in wanted]

        return await self._per_chunk(skus, fetch)

    # -- stock ------------------------------------------------------------------------------------

    async def snapshot(self, skus: Sequence[str], location_ids: Sequence[str]) -> list[StockView]:
        """Last night's on-hand per (sku, location), versioned by the snapshot id."""
        if not location_ids:
            return []
        locations = ",".join(dict.fromkeys(location_ids))

        async def fetch(chunk: list[str]) -> list[StockView]:
            pages = await self._pages("/api/v1/stock-snapshots/latest",
                                      {"skus": ",".join(chunk), "locations": locations})
            return [view for page in pages for view in self._rows(page)]

        return await self._per_chunk(skus, fetch)

    def _rows(self, page: Payload) -> list[StockView]:
        version, as_of = page.text("snapshotId"), page.time("asOf")
        rows = page.get("rows", list)
        if all(_plain_row(row) for row in rows):
            # Every row well-formed (the usual case): read straight from the dicts, without a
            # checked reader per row; a page with any odd row takes the checked path below,
            # which names what is wrong with it.
            known, name = self._known, self.name
            return [StockView(sku=row["sku"], location_id=row["locationCode"], source=name,
                              quantities=Quantities(on_hand=row["onHand"]), as_of=as_of,
                              version=version)
                    for row in rows if known(row["sku"], row["itemNumber"], row["locationCode"])]
        return [StockView(sku=row.text("sku"), location_id=row.text("locationCode"),
                          source=self.name, quantities=Quantities(on_hand=row.quantity("onHand")),
                          as_of=as_of, version=version)
                for row in page.objects("rows")
                if self._known(row.text("sku"), row.text("itemNumber"), row.text("locationCode"))]
