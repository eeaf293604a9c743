"""Connector for the e-commerce platform: Shopify's GraphQL Admin API, version 2026-10.

Reads and writes go to ``POST /admin/api/2026-10/graphql.json`` with
``X-Shopify-Access-Token`` (the REST Admin API is legacy; only the shop's webhooks stay
REST-shaped, see :func:`level_to_view`).

Reads:

- Inventory levels by quantity name (``available on_hand committed incoming reserved damaged
  quality_control safety_stock``), mapped onto :class:`Quantities`: ``available``,
  ``on_hand``, ``incoming``, ``damaged`` and ``quality_control`` as they are; ``committed`` is
  Shopify's ``committed + reserved`` (both held for orders, neither sellable). The shop's own
  ``safety_stock`` state is in ``on_hand`` and in no part (the merged safety stock is the
  ERP's). A level's ``updatedAt`` is its ``as_of`` and ``version``, the same stamp its
  ``inventory_levels/update`` webhook carries as ``updated_at``. Up to 50 inventory items per
  query (``nodes``), each item's levels paged by cursor.
- Variants (one :class:`OnlineListing` each), locations and the shop's currency, paged by
  cursor (``pageInfo.endCursor``), 250 per page; a catalog larger than one page by a bulk
  operation (``bulkOperationRunQuery``, its JSONL fetched without our credential), which is
  Shopify's way to read a whole catalog within the rate limit.

The cost-based rate limit is honoured: every answer's ``extensions.cost.throttleStatus`` updates
a model of the shop's bucket (:class:`CostBucket`); a query waits until the bucket holds what it
cost last time, and a ``THROTTLED`` answer is retried after the delay its numbers give
(``(requested - currentlyAvailable) / restoreRate``), within :attr:`CommerceConnector.
throttle_budget` seconds; beyond that a read fails with a 429 :class:`BackendStatusError`.

Writes (:mod:`resolvers.writes`): :meth:`CommerceConnector.set_available` through
``inventorySetQuantities`` (name ``available``, ``changeFromQuantity`` = what we believe the
shop holds, ``@idempotent(key:)``; a stale belief is :attr:`Outcome.STALE` with the level
re-read, never an overwrite), :meth:`CommerceConnector.update_item` through ``productUpdate``.
What of the item master the shop takes: the **name only**, as the product's title (when the
product has that one variant; a product of several variants is titled for all of them and is
left alone). The ERP list price is never written to the shop: the online price and the
compare-at ("was") price are the shop's own (merge rules: online title, price and status are
the shop's; the sync pushes the name because the ERP's ``item.updated`` renames the item).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from resolvers.abc import NO_OBSERVER, Observer
from resolvers.connectors.base import BackendConnector, backend_time
from resolvers.errors import (
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    OutOfRange,
    ValueOutOfRange,
)
from resolvers.identity import (
    SHOPIFY_INVENTORY_ITEM,
    SHOPIFY_LOCATION,
    SHOPIFY_VARIANT,
    IdentityMap,
)
from resolvers.settings import BackendSettings
from resolvers.types import NativeLocation, OnlineListing, Quantities, StockView, bounded
from resolvers.values import plain_decimal, shown
from resolvers.writes import ItemWrite, Outcome, StockWrite, WriteResult, refused

API_VERSION = "2026-10"
GRAPHQL_PATH = f"/admin/api/{API_VERSION}/graphql.json"
QUANTITY_NAMES = ("available", "on_hand", "committed", "incoming", "reserved", "damaged",
                  "quality_control", "safety_stock")
MAX_IDS = 50  # inventory items per levels query
LEVELS_PAGE = 50  # levels per item and page (an item is rarely stocked at more locations)
CONCURRENCY = 4  # level queries in flight at once (they share one cost bucket)
_GID = re.compile(r"gid://shopify/([A-Za-z]+)/(\d{1,19})")

# The names go as a variable: a literal list would be coerced again for every level.
_LEVEL_FIELDS = """fragment RetailgraphLevel on InventoryLevel {
  location { id } updatedAt quantities(names: $names) { name quantity }
}"""
LEVELS_QUERY = """query RetailgraphLevels($ids: [ID!]!, $first: Int!, $names: [String!]!) {
  nodes(ids: $ids) { ... on InventoryItem { id inventoryLevels(first: $first) {
    pageInfo { hasNextPage endCursor } nodes { ...RetailgraphLevel } } } }
}
""" + _LEVEL_FIELDS
MORE_LEVELS_QUERY = """query RetailgraphMoreLevels($id: ID!, $first: Int!, $after: String,
                             $names: [String!]!) {
  inventoryItem(id: $id) { id inventoryLevels(first: $first, after: $after) {
    pageInfo { hasNextPage endCursor } nodes { ...RetailgraphLevel } } }
}
""" + _LEVEL_FIELDS
LEVEL_QUERY = """query RetailgraphLevel($item: ID!, $location: ID!, $names: [String!]!) {
  inventoryItem(id: $item) { id inventoryLevel(locationId: $location) { ...RetailgraphLevel } }
}
""" + _LEVEL_FIELDS
VARIANTS_QUERY = """query RetailgraphVariants($first: Int!, $after: String) {
  productVariants(first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes { id sku title price barcode updatedAt inventoryItem { id }
            product { id title status } }
  }
}"""
BULK_VARIANTS_QUERY = """{ productVariants { edges { node {
  id sku title price barcode updatedAt inventoryItem { id } product { id title status }
} } } }"""
BULK_RUN_MUTATION = """mutation RetailgraphBulkVariants($query: String!) {
  bulkOperationRunQuery(query: $query) { bulkOperation { id status } userErrors { code message } }
}"""
BULK_STATUS_QUERY = """query RetailgraphBulkStatus($id: ID!) {
  bulkOperation(id: $id) { id status errorCode objectCount url }
}"""
LOCATIONS_QUERY = """query RetailgraphLocations($first: Int!, $after: String) {
  locations(first: $first, after: $after) {
    pageInfo { hasNextPage endCursor } nodes { id name }
  }
}"""
SHOP_QUERY = "query RetailgraphShop { shop { currencyCode } }"
SET_MUTATION = """mutation RetailgraphSetAvailable($input: InventorySetQuantitiesInput!,
                                                  $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup {
      changes { name quantityAfterChange item { id } location { id } }
    }
    userErrors { code field message }
  }
}"""
PRODUCT_QUERY = """query RetailgraphProductOf($id: ID!) {
  productVariant(id: $id) { id product { id title variants(first: 2) { nodes { id } } } }
}"""
# productUpdate is idempotent by nature (setting a title twice is setting it once) and is not
# one of the mutations Shopify's @idempotent directive applies to: it gets no key.
PRODUCT_MUTATION = """mutation RetailgraphRename($product: ProductUpdateInput!) {
  productUpdate(product: $product) {
    product { id title } userErrors { field message }
  }
}"""
# Quantities per inventorySetQuantities call. Shopify documents no maximum for the list
# (unverified); 250 is its largest page and the largest batch this connector sends.
MAX_SET_QUANTITIES = 250
# userErrors of inventorySetQuantities that mean "no such thing to write to"
_UNMAPPED_CODES = frozenset({"INVALID_INVENTORY_ITEM", "INVALID_LOCATION",
                             "ITEM_NOT_STOCKED_AT_LOCATION", "NON_MUTABLE_INVENTORY_ITEM"})


def gid(kind: str, native_id: str) -> str:
    return f"gid://shopify/{kind}/{native_id}"


def gid_number(value: Any, kind: str, source: str) -> str:
    """The numeric id of a GID of ``kind`` (ids in the identity map and webhooks are numeric)."""
    match = _GID.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(1) != kind:
        raise BackendProtocolError(source, f"{shown(value)} is not a {kind} GID")
    return match.group(2)


def batch_key(keys: Sequence[str]) -> str:
    """The ``@idempotent`` key of one call: a single write's own :func:`shop_key`, several
    writes' a digest of theirs (the same writes retried are the same request)."""
    if len(keys) == 1:
        return keys[0]
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:40]
    return f"batch:{len(keys)}:{digest}"


def shop_key(write: StockWrite, expected: int | None) -> str:
    """The ``@idempotent`` key of one inventory write: the action's key with the belief and the
    value. A retry of the same write is the same request (the shop applies it once); a write
    recomputed after a stale belief is a new one (reusing the key for other input would be
    ``IDEMPOTENCY_KEY_PARAMETER_MISMATCH``)."""
    belief = "*" if expected is None else str(expected)
    return f"{write.idempotency_key}:{belief}:{write.available}"


@dataclass(slots=True)
class CostBucket:
    """The shop's cost bucket as its last answer described it, refilled by the clock.

    Before a query the connector waits until the bucket holds the query's last cost and then
    debits it here, so concurrent queries do not all spend the same points; the next answer's
    ``throttleStatus`` replaces the estimate.
    """

    maximum: float | None = None  # None: no answer yet, nothing known
    available: float = 0.0
    restore_rate: float = 0.0
    at: float = 0.0

    def update(self, status: Any) -> None:
        if not isinstance(status, dict):
            return
        values: list[float] = []
        for name in ("maximumAvailable", "currentlyAvailable", "restoreRate"):
            value = status.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                return
            values.append(float(value))
        self.maximum, self.available, self.restore_rate = values
        self.at = time.monotonic()

    def current(self) -> float | None:
        if self.maximum is None:
            return None
        refilled = self.available + (time.monotonic() - self.at) * self.restore_rate
        return min(self.maximum, refilled)

    def delay_for(self, cost: float) -> float:
        """Seconds until ``cost`` points are there (0 when unknown or already there)."""
        held = self.current()
        if held is None or cost <= held or self.restore_rate <= 0:
            return 0.0
        if self.maximum is not None and cost > self.maximum:
            return 0.0  # never fits: let the shop say so
        return (cost - held) / self.restore_rate

    def debit(self, cost: float) -> None:
        held = self.current()
        if held is not None:
            self.available, self.at = held - cost, time.monotonic()


@dataclass(frozen=True, slots=True)
class Answer:
    """One GraphQL response: its data, its top-level errors and what it cost."""

    data: dict[str, Any]
    errors: list[dict[str, Any]]
    cost: dict[str, Any]

    def code(self) -> str | None:
        for error in self.errors:
            ext = error.get("extensions")
            if isinstance(ext, dict) and isinstance(ext.get("code"), str):
                return str(ext["code"])
        return None

    def throttle_delay(self) -> float:
        """How long until the refused query's requested cost is back in the bucket."""
        status = self.cost.get("throttleStatus")
        requested = self.cost.get("requestedQueryCost")
        if isinstance(status, dict) and isinstance(requested, int | float):
            held, rate = status.get("currentlyAvailable"), status.get("restoreRate")
            if isinstance(held, int | float) and isinstance(rate, int | float) and rate > 0:
                return max(0.05, (float(requested) - float(held)) / float(rate))
        return 1.0

    def message(self) -> str:
        return "; ".join(str(e.get("message", e)) for e in self.errors)[:300]


@dataclass(slots=True)
class _Queued:
    """One stock write waiting for the next ``inventorySetQuantities`` call."""

    write: StockWrite
    item: str  # Shopify inventory item id
    location: str  # Shopify location id
    expected: int
    key: str  # shop_key(write, expected)
    result: asyncio.Future[WriteResult]


def _quantity_index(error: dict[str, Any], size: int) -> int | None:
    """The quantity a userError is about (``field: ["input", "quantities", "3", ...]``)."""
    field = error.get("field")
    if isinstance(field, list) and len(field) >= 3 and field[:2] == ["input", "quantities"]:
        try:
            index = int(field[2])
        except (TypeError, ValueError):
            return None
        return index if 0 <= index < size else None
    return None


class Throttled(BackendStatusError):
    """The shop's cost bucket did not refill within the connector's budget."""


def _native_id(obj: dict[str, Any], key: str, source: str) -> str:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise BackendProtocolError(source, f"{key} {value!r} is not a numeric id")
    return str(value)


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
        as_of, version = backend_time(source, updated_at, "updated_at"), str(updated_at)
    sku = identity.sku(SHOPIFY_INVENTORY_ITEM, item_id, seen_in=source)
    location = identity.location(SHOPIFY_LOCATION, location_id, seen_in=source)
    if sku is None or location is None:
        return None
    return StockView(sku=sku, location_id=location, source=source,
                     quantities=Quantities(available=available), as_of=as_of, version=version)


def _quantities(level: dict[str, Any], source: str) -> dict[str, int]:
    raw = level.get("quantities")
    if not isinstance(raw, list):
        raise BackendProtocolError(source, "inventory level quantities is not a list")
    out: dict[str, int] = {}
    for entry in raw:
        entry = _object(entry, "inventory quantity", source)
        name, quantity = entry.get("name"), entry.get("quantity")
        if not isinstance(name, str) or isinstance(quantity, bool) \
                or not isinstance(quantity, int):
            raise BackendProtocolError(source, f"inventory quantity {shown(name)} = "
                                       f"{shown(quantity)} is not a named integer")
        try:  # negative is real (oversold); past 32 bits is not servable
            out[name] = bounded(quantity, name)
        except OutOfRange as exc:
            raise ValueOutOfRange(source, str(exc)) from exc
    return out


def quantities_of(named: dict[str, int]) -> Quantities:
    """Shopify's named quantities as the unified ones (see the module docstring)."""
    committed = [named[n] for n in ("committed", "reserved") if n in named]
    return Quantities(
        on_hand=named.get("on_hand"), available=named.get("available"),
        committed=sum(committed) if committed else None, incoming=named.get("incoming"),
        quality_control=named.get("quality_control"), damaged=named.get("damaged"))


def graphql_level_to_view(item_id: str, level: Any, identity: IdentityMap,
                          source: str) -> StockView | None:
    """A GraphQL ``InventoryLevel`` (location, updatedAt, quantities) of inventory item
    ``item_id`` as a view; None when the item or location maps to nothing."""
    level = _object(level, "inventory level", source)
    location = gid_number(_object(level.get("location"), "level location", source).get("id"),
                          "Location", source)
    updated_at = level.get("updatedAt")
    as_of = backend_time(source, updated_at, "updatedAt")
    quantities = quantities_of(_quantities(level, source))
    sku = identity.sku(SHOPIFY_INVENTORY_ITEM, item_id, seen_in=source)
    location_id = identity.location(SHOPIFY_LOCATION, location, seen_in=source)
    if sku is None or location_id is None:
        return None
    return StockView(sku=sku, location_id=location_id, source=source, quantities=quantities,
                     as_of=as_of, version=str(updated_at))


def _chunks(values: Sequence[str], size: int) -> list[Sequence[str]]:
    return [values[i:i + size] for i in range(0, len(values), size)]


class CommerceConnector(BackendConnector):
    """Reads and writes one Shopify shop through its GraphQL Admin API."""

    page_limit = 250  # Shopify's maximum page size; tests lower it to exercise pagination
    throttle_budget = 10.0  # seconds a read may wait for the cost bucket in all
    bulk_catalog = True  # a catalog of more than one page is read by a bulk operation
    bulk_timeout = 300.0  # seconds to wait for it before paging instead

    def __init__(self, settings: BackendSettings, identity: IdentityMap,
                 transport: httpx.AsyncBaseTransport | None = None,
                 observer: Observer = NO_OBSERVER) -> None:
        super().__init__(settings, identity, transport, observer)
        self.bucket = CostBucket()
        self._costs: dict[str, float] = {}  # operation -> what it cost last time
        self._currency: str | None = None
        # Waiting for the bucket is one queue: concurrent calls must not all see the same
        # points and spend them at once (each would be THROTTLED but the first).
        self._spending = asyncio.Lock()
        # Stock writes waiting for the next inventorySetQuantities call, and the task that
        # sends them: one call at a time, each carrying what queued while the last one ran.
        self._writes: list[_Queued] = []
        self._sender: asyncio.Task[None] | None = None
        # Bulk results are fetched from the URL the shop gives (its file storage), never with
        # our access token: a client of its own, without credentials.
        self._downloads = httpx.AsyncClient(
            transport=transport, follow_redirects=True,
            timeout=httpx.Timeout(max(settings.timeout, 30.0), connect=settings.connect_timeout))

    async def aclose(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        await super().aclose()
        await self._downloads.aclose()

    # -- the GraphQL endpoint --------------------------------------------------------------------

    async def _spend(self, operation: str) -> None:
        """Wait until the bucket holds what ``operation`` cost last time, and debit it; the
        waits are served one after another."""
        cost = self._costs.get(operation, 0.0)
        async with self._spending:
            await asyncio.sleep(self.bucket.delay_for(cost))
            self.bucket.debit(cost)

    async def _post(self, operation: str, query: str, variables: dict[str, Any],
                    paid: bool = False) -> Answer:
        """One call: wait for the bucket to hold what ``operation`` cost last time (unless
        the caller has: ``paid``), send, read the answer and its cost. Every request is marked
        idempotent for the transport's retries: reads are, the inventory write carries an
        ``@idempotent`` key, and ``productUpdate`` (a title set) is idempotent by nature."""
        if not paid:
            await self._spend(operation)
        body = await self.client.json("POST", GRAPHQL_PATH, idempotent=True,
                                      json={"query": query, "variables": variables,
                                            "operationName": operation})
        body = _object(body, f"{operation} answer", self.name)
        extensions = body.get("extensions")
        cost = extensions.get("cost") if isinstance(extensions, dict) else None
        cost = cost if isinstance(cost, dict) else {}
        self.bucket.update(cost.get("throttleStatus"))
        requested = cost.get("requestedQueryCost")
        if isinstance(requested, int | float) and not isinstance(requested, bool):
            self._costs[operation] = float(requested)
        errors = body.get("errors") or []
        if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
            raise BackendProtocolError(self.name, f"{operation}: errors is not a list of "
                                       "objects")
        data = body.get("data")
        if data is None and not errors:
            raise BackendProtocolError(self.name, f"{operation}: neither data nor errors")
        return Answer(data if isinstance(data, dict) else {}, errors, cost)

    async def query(self, operation: str, query: str,
                    variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """A read's data; ``THROTTLED`` waits and retries within :attr:`throttle_budget`,
        any other GraphQL error is a :class:`BackendProtocolError`."""
        deadline = time.monotonic() + self.throttle_budget
        while True:
            answer = await self._post(operation, query, variables or {})
            if answer.code() != "THROTTLED":
                break
            delay = answer.throttle_delay()
            if time.monotonic() + delay > deadline:
                raise Throttled(self.name, 429, f"{operation}: THROTTLED, the cost bucket "
                                f"refills in {delay:.1f} s", retry_after=delay)
            await asyncio.sleep(delay)
        if answer.errors:
            raise BackendProtocolError(self.name, f"{operation}: {answer.code() or 'error'}: "
                                       f"{answer.message()}")
        return answer.data

    async def _connection(self, operation: str, query: str, field: str,
                          variables: dict[str, Any],
                          after: str | None = None) -> AsyncIterator[list[Any]]:
        """Each page's nodes of the root connection ``field`` (from ``after`` on), following
        ``endCursor``."""
        seen: set[str] = set()
        while True:
            data = await self.query(operation, query,
                                    {**variables, "first": self.page_limit, "after": after})
            connection = _object(data.get(field), f"{operation} {field}", self.name)
            nodes = connection.get("nodes")
            if not isinstance(nodes, list):
                raise BackendProtocolError(self.name, f"{operation}: {field}.nodes is not a "
                                           "list")
            yield nodes
            after = _next_cursor(connection, operation, self.name)
            if after is None:
                return
            if after in seen:
                raise BackendProtocolError(self.name, f"{operation}: pagination loops")
            seen.add(after)

    # -- catalog ---------------------------------------------------------------------------------

    async def currency(self) -> str:
        """The shop's currency; prices in the catalog are in it."""
        if self._currency is None:
            data = await self.query("RetailgraphShop", SHOP_QUERY)
            currency = _object(data.get("shop"), "shop", self.name).get("currencyCode")
            if not isinstance(currency, str) or len(currency) != 3:
                raise BackendProtocolError(self.name, f"shop currency {currency!r} is invalid")
            self._currency = currency
        return self._currency

    async def products(self) -> list[OnlineListing]:
        """One listing per variant in the shop: a catalog that fits one page is read as that
        page; a larger one by a bulk operation (one JSONL file, a few points of the cost
        bucket instead of ~750 per page of 250), paged by cursor if the bulk operation
        cannot run (another one in progress, failed, or not done within
        :attr:`bulk_timeout`)."""
        currency = await self.currency()
        first = await self.query("RetailgraphVariants", VARIANTS_QUERY,
                                 {"first": self.page_limit, "after": None})
        connection = _object(first.get("productVariants"), "productVariants", self.name)
        nodes = connection.get("nodes")
        if not isinstance(nodes, list):
            raise BackendProtocolError(self.name, "productVariants.nodes is not a list")
        listings = [self._listing(_object(v, "variant", self.name), currency) for v in nodes]
        after = _next_cursor(connection, "productVariants", self.name)
        if after is None:
            return listings
        if self.bulk_catalog:
            variants = await self._bulk_variants()
            if variants is not None:
                return [self._listing(v, currency) for v in variants]
        async for page in self._connection("RetailgraphVariants", VARIANTS_QUERY,
                                           "productVariants", {}, after):
            listings.extend(self._listing(_object(v, "variant", self.name), currency)
                            for v in page)
        return listings

    async def _bulk_variants(self) -> list[dict[str, Any]] | None:
        """Every variant by ``bulkOperationRunQuery``; None when the shop would not run it."""
        try:
            answer = await self._post("RetailgraphBulkVariants", BULK_RUN_MUTATION,
                                      {"query": BULK_VARIANTS_QUERY})
            payload = answer.data.get("bulkOperationRunQuery")
            if answer.errors or not isinstance(payload, dict) or payload.get("userErrors"):
                return None  # e.g. LIMIT_REACHED: other bulk operations are running
            operation = payload.get("bulkOperation")
            if not isinstance(operation, dict):
                return None
            deadline = time.monotonic() + self.bulk_timeout
            pause = 0.05
            while True:
                data = await self.query("RetailgraphBulkStatus", BULK_STATUS_QUERY,
                                        {"id": operation.get("id")})
                operation = _object(data.get("bulkOperation"), "bulkOperation", self.name)
                status = operation.get("status")
                if status == "COMPLETED":
                    break
                if status not in ("CREATED", "RUNNING") or time.monotonic() > deadline:
                    return None
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)
            url = operation.get("url")
            if url is None:
                return []  # a bulk query that found nothing has no file
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise BackendProtocolError(self.name, f"bulk operation url {shown(url)}")
            response = await self._downloads.get(url)
        except (BackendError, httpx.HTTPError):
            return None
        if response.status_code != 200:
            return None
        variants: list[dict[str, Any]] = []
        for line in response.content.splitlines():
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise BackendProtocolError(self.name, "bulk result line is not JSON") from exc
            if isinstance(row, dict) and "__parentId" not in row:
                variants.append(row)
        return variants

    def _listing(self, variant: dict[str, Any], currency: str) -> OnlineListing:
        variant_id = gid_number(variant.get("id"), "ProductVariant", self.name)
        product = _object(variant.get("product"), f"variant {variant_id} product", self.name)
        product_title, status = product.get("title"), product.get("status")
        if not isinstance(product_title, str) or not isinstance(status, str):
            raise BackendProtocolError(self.name, f"variant {variant_id}: its product lacks "
                                       "title or status")
        raw = variant.get("price")
        price = plain_decimal(raw if isinstance(raw, str) else str(raw))
        if price is None:
            raise BackendProtocolError(self.name, f"variant {variant_id} price {shown(raw)} "
                                       "is not a decimal")
        variant_title = _optional_str(variant, "title", self.name)
        title = product_title if variant_title in (None, "Default Title") \
            else f"{product_title} - {variant_title}"
        item = _object(variant.get("inventoryItem"), f"variant {variant_id} inventoryItem",
                       self.name)
        return OnlineListing(
            sku=_optional_str(variant, "sku", self.name) or "",
            product_id=gid_number(product.get("id"), "Product", self.name),
            variant_id=variant_id,
            inventory_item_id=gid_number(item.get("id"), "InventoryItem", self.name),
            title=title, price=price, currency=currency, status=status.lower(),
            barcode=_optional_str(variant, "barcode", self.name), source=self.name,
            as_of=backend_time(self.name, variant.get("updatedAt"),
                               f"variant {variant_id} updatedAt"))

    async def locations(self) -> list[NativeLocation]:
        out = []
        async for page in self._connection("RetailgraphLocations", LOCATIONS_QUERY,
                                           "locations", {}):
            for raw in page:
                loc = _object(raw, "location", self.name)
                name = loc.get("name")
                if not isinstance(name, str):
                    raise BackendProtocolError(self.name, f"location {loc.get('id')!r} has no "
                                               "name")
                out.append(NativeLocation("shopify", gid_number(loc.get("id"), "Location",
                                                                self.name), name))
        return out

    # -- inventory levels ------------------------------------------------------------------------

    async def levels(self, skus: Sequence[str], location_ids: Sequence[str]) -> list[StockView]:
        """Every quantity of each SKU at each location, as far as both map to Shopify ids."""
        items = [n for n in dict.fromkeys(
            self.identity.native_sku(SHOPIFY_INVENTORY_ITEM, s) for s in skus) if n]
        wanted = set(location_ids)
        if not items or not any(self.identity.native_location(SHOPIFY_LOCATION, loc)
                                for loc in wanted):
            return []
        gate = asyncio.Semaphore(CONCURRENCY)
        results = await asyncio.gather(*(self._level_batch(gate, chunk)
                                         for chunk in _chunks(items, MAX_IDS)))
        return [view for batch in results for view in batch if view.location_id in wanted]

    async def _level_batch(self, gate: asyncio.Semaphore,
                           items: Sequence[str]) -> list[StockView]:
        async with gate:
            data = await self.query("RetailgraphLevels", LEVELS_QUERY, {
                "names": list(QUANTITY_NAMES),
                "ids": [gid("InventoryItem", i) for i in items], "first": LEVELS_PAGE})
            nodes = data.get("nodes")
            if not isinstance(nodes, list) or len(nodes) != len(items):
                raise BackendProtocolError(self.name, "RetailgraphLevels: nodes does not "
                                           "answer each id")
            out: list[StockView] = []
            for item_id, node in zip(items, nodes, strict=True):
                if node is None:
                    continue  # no such inventory item (any more)
                out.extend(await self._item_levels(item_id, _object(
                    node, "inventory item", self.name)))
            return out

    async def _item_levels(self, item_id: str, node: dict[str, Any]) -> list[StockView]:
        """The views of one item's level connection, fetching any further pages."""
        out: list[StockView] = []
        seen: set[str] = set()
        while True:
            connection = _object(node.get("inventoryLevels"), "inventoryLevels", self.name)
            levels = connection.get("nodes")
            if not isinstance(levels, list):
                raise BackendProtocolError(self.name, "inventoryLevels.nodes is not a list")
            for level in levels:
                view = graphql_level_to_view(item_id, level, self.identity, self.name)
                if view is not None:
                    out.append(view)
            after = _next_cursor(connection, "inventoryLevels", self.name)
            if after is None:
                return out
            if after in seen:
                raise BackendProtocolError(self.name, "inventoryLevels: pagination loops")
            seen.add(after)
            data = await self.query("RetailgraphMoreLevels", MORE_LEVELS_QUERY, {
                "names": list(QUANTITY_NAMES),
                "id": gid("InventoryItem", item_id), "first": LEVELS_PAGE, "after": after})
            node = _object(data.get("inventoryItem"), "inventory item", self.name)

    async def level(self, sku: str, location_id: str) -> StockView | None:
        """One cell's level, read now (None: unmapped, or the item is not stocked there)."""
        item = self.identity.native_sku(SHOPIFY_INVENTORY_ITEM, sku)
        location = self.identity.native_location(SHOPIFY_LOCATION, location_id)
        if item is None or location is None:
            return None
        data = await self.query("RetailgraphLevel", LEVEL_QUERY, {
            "names": list(QUANTITY_NAMES),
            "item": gid("InventoryItem", item), "location": gid("Location", location)})
        node = data.get("inventoryItem")
        if node is None:
            return None
        level = _object(node, "inventory item", self.name).get("inventoryLevel")
        return None if level is None else graphql_level_to_view(item, level, self.identity,
                                                                self.name)

    # -- writes (resolvers.writes.StockTarget / ItemTarget) --------------------------------------

    async def read_available(self, sku: str, location_id: str) -> int | None:
        """The shop's ``available`` of one cell now; None when it has no such level.
        Raises :class:`BackendError` when the shop cannot answer."""
        view = await self.level(sku, location_id)
        return None if view is None else view.quantities.available

    async def set_available(self, write: StockWrite) -> WriteResult:
        """``inventorySetQuantities`` of ``available`` with ``changeFromQuantity``.

        ``expected`` None (we do not know what the shop holds) reads the level first and
        compares against that: the shop's value is never overwritten unseen. A stale belief
        re-reads the level: :attr:`Outcome.STALE` with what it holds (or DONE when it
        already holds the desired value).

        Writes are batched: the ones that queue while a call is in flight (or waiting for
        the cost bucket) go together in the next call, up to :data:`MAX_SET_QUANTITIES`
        (one call costs the same whatever it carries). A call is all or nothing: when some
        of its quantities are refused (stale, unmapped), the others are sent again in the
        next call, under that call's own key."""
        item = self.identity.native_sku(SHOPIFY_INVENTORY_ITEM, write.sku)
        location = self.identity.native_location(SHOPIFY_LOCATION, write.location_id)
        if item is None or location is None:
            return WriteResult(Outcome.UNMAPPED, error=f"{write.sku} at {write.location_id} "
                               "has no Shopify inventory item or location")
        try:
            expected = write.expected
            if expected is None:
                expected = await self.read_available(write.sku, write.location_id)
                if expected is None:
                    return WriteResult(Outcome.UNMAPPED, error=f"{write.sku} is not stocked "
                                       f"at {write.location_id} in the shop")
            if expected == write.available:  # nothing to change, if the belief holds
                held = expected if write.expected is None else await self.read_available(
                    write.sku, write.location_id)
                if held == write.available:
                    return WriteResult(Outcome.DONE, actual=held)
                return WriteResult(Outcome.STALE, actual=held, error=f"available is {held}, "
                                   f"not the expected {write.expected}")
            result = await self._queue(write, item, location, expected)
            if result.outcome is Outcome.STALE and result.actual is None:
                actual = await self.read_available(write.sku, write.location_id)
                if actual == write.available:
                    return WriteResult(Outcome.DONE, actual=actual)
                return WriteResult(Outcome.STALE, actual=actual, error=result.error)
            return result
        except BackendStatusError as exc:
            return refused(exc)
        except BackendError as exc:
            return WriteResult(Outcome.FAILED, error=str(exc))

    async def _queue(self, write: StockWrite, item: str, location: str,
                     expected: int) -> WriteResult:
        queued = _Queued(write, item, location, expected, shop_key(write, expected),
                         asyncio.get_running_loop().create_future())
        self._writes.append(queued)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_queued())
        return await queued.result

    async def _send_queued(self) -> None:
        """Send what is queued, a call at a time, until nothing is."""
        batch: list[_Queued] = []
        try:
            while True:
                self._writes = [q for q in self._writes if not q.result.done()]
                if not self._writes:
                    return
                await self._spend("RetailgraphSetAvailable")
                batch, rest, cells = [], [], set()
                reason = self._writes[0].write.reason
                for queued in self._writes:
                    if queued.result.done():
                        continue
                    if len(batch) < MAX_SET_QUANTITIES and queued.write.reason == reason \
                            and (queued.item, queued.location) not in cells:
                        batch.append(queued)
                        cells.add((queued.item, queued.location))
                    else:
                        rest.append(queued)
                self._writes = rest  # what queues during the call goes after these
                batch.sort(key=lambda q: q.key)
                try:
                    results = await self._set_batch(batch)
                except BackendStatusError as exc:
                    results = [refused(exc)] * len(batch)
                except BackendError as exc:
                    results = [WriteResult(Outcome.FAILED, error=str(exc))] * len(batch)
                except Exception as exc:  # handed to each waiting write
                    for queued in batch:
                        if not queued.result.done():
                            queued.result.set_exception(exc)
                    continue
                again = []
                for queued, result in zip(batch, results, strict=True):
                    if result is None:
                        again.append(queued)  # not applied for another's error: next call
                    elif not queued.result.done():
                        queued.result.set_result(result)
                self._writes[:0] = again
                batch = []
        except asyncio.CancelledError:
            for queued in [*batch, *self._writes]:
                queued.result.cancel()
            raise

    async def _set_batch(self, batch: Sequence[_Queued]) -> list[WriteResult | None]:
        """One ``inventorySetQuantities`` call (the bucket is paid for); per write its result,
        or None for one to send again."""
        key = batch_key([q.key for q in batch])
        uri = (f"retailgraph://sync/{batch[0].write.idempotency_key}" if len(batch) == 1
               else f"retailgraph://sync/{key}")
        for attempt in range(2):
            if attempt:
                await self._spend("RetailgraphSetAvailable")
            answer = await self._post("RetailgraphSetAvailable", SET_MUTATION, {
                "key": key, "input": {
                    "name": "available", "reason": batch[0].write.reason,
                    "referenceDocumentUri": uri,
                    "quantities": [{"inventoryItemId": gid("InventoryItem", q.item),
                                    "locationId": gid("Location", q.location),
                                    "quantity": q.write.available,
                                    "changeFromQuantity": q.expected} for q in batch]}},
                paid=True)
            results = self._set_results(answer, batch)
            if results is not None:
                return results
            # The key's first attempt failed (nothing applied): the same call, a new key.
            key = f"{key}:{uuid.uuid4().hex[:12]}"
        return [WriteResult(Outcome.FAILED, error="idempotency key refused twice")] * len(batch)

    def _set_results(self, answer: Answer,
                     batch: Sequence[_Queued]) -> list[WriteResult | None] | None:
        """What one call's answer means for each of its writes (None: send the call again
        under a new key)."""
        size = len(batch)
        if answer.code() == "THROTTLED":
            return [WriteResult(Outcome.THROTTLED, retry_after=answer.throttle_delay(),
                                error="THROTTLED")] * size
        if answer.errors:
            return [WriteResult(Outcome.FAILED, error=f"{answer.code() or 'error'}: "
                                f"{answer.message()}")] * size
        payload = answer.data.get("inventorySetQuantities")
        if not isinstance(payload, dict) or not isinstance(payload.get("userErrors"), list):
            return [WriteResult(Outcome.FAILED,
                                error="inventorySetQuantities: no payload")] * size
        errors = [e for e in payload["userErrors"] if isinstance(e, dict)]
        if errors:
            general: list[dict[str, Any]] = []
            own: dict[int, list[dict[str, Any]]] = {}
            for error in errors:
                index = _quantity_index(error, size)
                (general if index is None else own.setdefault(index, [])).append(error)
            codes = {e.get("code") for e in general}
            if "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED" in codes:
                return None
            text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in general)
            if "IDEMPOTENCY_CONCURRENT_REQUEST" in codes:
                return [WriteResult(Outcome.THROTTLED, retry_after=0.5, error=text)] * size
            if general:
                return [WriteResult(Outcome.FAILED, error=text)] * size
            out: list[WriteResult | None] = []
            for index in range(size):
                mine = own.get(index)
                if not mine:
                    out.append(None)
                    continue
                mine_codes = {e.get("code") for e in mine}
                mine_text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in mine)
                if "CHANGE_FROM_QUANTITY_STALE" in mine_codes:  # re-read by set_available
                    out.append(WriteResult(Outcome.STALE, error=mine_text))
                elif mine_codes & _UNMAPPED_CODES:
                    out.append(WriteResult(Outcome.UNMAPPED, error=mine_text))
                else:
                    out.append(WriteResult(Outcome.FAILED, error=mine_text))
            return out
        group = payload.get("inventoryAdjustmentGroup")
        changes = group.get("changes") if isinstance(group, dict) else None
        after: dict[tuple[str, str], int] = {}
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict) or change.get("name") != "available" \
                    or not isinstance(change.get("quantityAfterChange"), int):
                continue
            item, loc = change.get("item"), change.get("location")
            item_id = _GID.fullmatch(str(item.get("id"))) if isinstance(item, dict) else None
            loc_id = _GID.fullmatch(str(loc.get("id"))) if isinstance(loc, dict) else None
            if item_id is not None and loc_id is not None:
                after[item_id.group(2), loc_id.group(2)] = change["quantityAfterChange"]
        return [WriteResult(Outcome.DONE, actual=after.get((q.item, q.location),
                                                           q.write.available))
                for q in batch]

    async def update_item(self, write: ItemWrite) -> WriteResult:
        """The item's name as its product's title (the only item-master field the shop
        takes; the list price is never written: see the module docstring)."""
        if write.name is None:
            return WriteResult(Outcome.DONE)  # nothing of this change belongs to the shop
        variant = self.identity.native_sku(SHOPIFY_VARIANT, write.sku)
        if variant is None:
            return WriteResult(Outcome.UNMAPPED, error=f"{write.sku} has no Shopify variant")
        try:
            data = await self.query("RetailgraphProductOf", PRODUCT_QUERY,
                                    {"id": gid("ProductVariant", variant)})
            node = data.get("productVariant")
            if node is None:
                return WriteResult(Outcome.UNMAPPED, error=f"variant {variant} is gone")
            product = _object(_object(node, "variant", self.name).get("product"), "product",
                              self.name)
            siblings = _object(product.get("variants"), "variants", self.name).get("nodes")
            if not isinstance(siblings, list) or len(siblings) != 1:
                return WriteResult(Outcome.UNMAPPED, error=f"product {product.get('id')} has "
                                   "several variants: its title is not one item's name")
            if product.get("title") == write.name:
                return WriteResult(Outcome.DONE)
            answer = await self._post("RetailgraphRename", PRODUCT_MUTATION, {
                "product": {"id": product.get("id"), "title": write.name}})
        except BackendStatusError as exc:
            return refused(exc)
        except BackendError as exc:
            return WriteResult(Outcome.FAILED, error=str(exc))
        if answer.code() == "THROTTLED":
            return WriteResult(Outcome.THROTTLED, retry_after=answer.throttle_delay(),
                               error="THROTTLED")
        payload = answer.data.get("productUpdate")
        if answer.errors or not isinstance(payload, dict):
            return WriteResult(Outcome.FAILED, error=answer.message() or "productUpdate: no "
                               "payload")
        errors = payload.get("userErrors") or []
        if errors:
            return WriteResult(Outcome.FAILED, error="; ".join(
                str(e.get("message")) for e in errors if isinstance(e, dict)))
        return WriteResult(Outcome.DONE)


def _next_cursor(connection: dict[str, Any], what: str, source: str) -> str | None:
    info = _object(connection.get("pageInfo"), f"{what} pageInfo", source)
    if not info.get("hasNextPage"):
        return None
    cursor = info.get("endCursor")
    if not isinstance(cursor, str) or not cursor:
        raise BackendProtocolError(source, f"{what}: hasNextPage without an endCursor")
    return cursor

