"""Shopify GraphQL Admin API (2026-10) subset over the commerce simulator's :class:`Shop`.

``POST /admin/api/2026-10/graphql.json`` with ``X-Shopify-Access-Token``; the body is
``{"query", "variables"?, "operationName"?}`` (or the bare query as ``application/graphql``).
A real GraphQL schema (graphql-core), with Shopify's type and field names for the subset:

- reads: ``shop``, ``node``/``nodes``, ``location(id)``/``locations``,
  ``inventoryItem(id)``/``inventoryItems(query: "sku:...")``, ``inventoryLevel(id)``,
  ``product(id)``/``products``, ``productVariant(id)``/``productVariants(query: "sku:...")``;
  ``InventoryItem.inventoryLevel(locationId)``/``inventoryLevels``,
  ``InventoryLevel.quantities(names: [...])`` over the names ``available on_hand committed
  incoming reserved damaged quality_control safety_stock`` (``on_hand = available + committed
  + reserved + damaged + quality_control + safety_stock``). Ids are GIDs
  (``gid://shopify/InventoryItem/N``, ``gid://shopify/Location/N``,
  ``gid://shopify/ProductVariant/N``, ``gid://shopify/InventoryLevel/L?inventory_item_id=I``).
  Connections take ``first``/``last`` (one of them required, at most 250) and cursors.
- ``inventorySetQuantities(input: {name, reason, referenceDocumentUri, quantities:
  [{inventoryItemId, locationId, quantity, changeFromQuantity}]}) @idempotent(key: "...")``:
  ``name`` is ``available`` or ``on_hand``; every quantity must carry ``changeFromQuantity``
  (explicit ``null`` opts out of the check; omitting it is an error); a mismatch with the
  persisted value is ``CHANGE_FROM_QUANTITY_STALE`` and nothing of the call is applied. The
  ``@idempotent`` key is required (enforced at run time, as since 2026-04): the same key with
  the same input returns the original result without a second effect; with another input it
  is ``IDEMPOTENCY_KEY_PARAMETER_MISMATCH``; a key whose first attempt failed answers
  ``IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED`` (retry with a new key).
- ``bulkOperationRunQuery(query: "...")``: a bulk query over one root connection (no
  ``first``/``last``: connections in it are unbounded), run at once and kept as JSONL (one
  line per node; a nested connection's nodes on lines of their own with ``__parentId``);
  ``currentBulkOperation(type: QUERY)`` / ``bulkOperation(id)`` / ``node(id)`` report it
  ``RUNNING`` at first, ``COMPLETED`` from the next read on, with ``url``: a signed download
  on this server (``/_sim/shop/bulk/N.jsonl?signature=...``, no access token, as Shopify's
  storage URLs take none). At most 5 run at once (2026-01's limit, ``LIMIT_REACHED``); the
  inner query costs nothing from the bucket, the mutation 10 points.
- ``productUpdate(product: {id, title, descriptionHtml, vendor, productType, status})`` and
  ``productVariantsBulkUpdate(productId, variants: [{id, price, compareAtPrice, barcode}])``:
  the writes a sync of name and price uses; each change sends ``products/update``.

Every effective write (one that changed a level) sends ``inventory_levels/update`` with the
REST-shaped body, signed like every webhook of the shop; a REST write or admin edit sends the
same. Cost-based rate limit, a leaky bucket per shop: every response carries
``extensions.cost {requestedQueryCost, actualQueryCost, throttleStatus {maximumAvailable,
currentlyAvailable, restoreRate}}``; a query whose requested cost exceeds what the bucket holds
is not run and answers ``errors[0].extensions.code = "THROTTLED"`` (HTTP 200), one over 1,000
points ``MAX_COST_EXCEEDED``. Costs follow Shopify's rules: scalar and enum 0, object 1,
connection 2 + its page size times its node's cost, mutation 10; the bucket is charged the
actual cost (connections by the nodes returned).

Not verified against a primary source, so chosen and documented here: the error for a missing
``@idempotent`` key or ``changeFromQuantity`` (a top-level error with
``extensions.code = "BAD_REQUEST"``), and the default bucket size (2,000 points, restore 100
points/s: the Standard plan's rate).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLResolveInfo,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    build_schema,
    execute_sync,
    get_named_type,
    parse,
    validate,
)
from graphql.execution.values import get_directive_values
from graphql.language import IntValueNode, VariableNode
from graphql.type import GraphQLObjectType
from starlette.requests import Request
from starlette.responses import Response

from gateway.simulators.shop import (
    QUANTITY_NAMES,
    ProductEdit,
    Shop,
    Variant,
    compare_at_price,
    slug,
    stamp,
)
from gateway.simulators.world import EPOCH, Location

API_VERSION = "2026-10"
GRAPHQL_PATH = f"/admin/api/{API_VERSION}/graphql.json"
MAX_PAGE = 250
MAX_QUERY_COST = 1000
MUTATION_COST = 10
SETTABLE = ("available", "on_hand")
REASONS = ("correction", "cycle_count_available", "damaged", "movement_created",
           "movement_updated", "movement_received", "movement_canceled", "other", "promotion",
           "quality_control", "received", "reservation_created", "reservation_deleted",
           "reservation_updated", "restock", "safety_stock", "shrinkage")
MAX_QUANTITY = 1_000_000_000
IDEMPOTENCY_KEPT = 100_000
RATE_LIMITS_DOC = "https://shopify.dev/api/usage/rate-limits"
MAX_BULK_RUNNING = 5  # bulk query operations per shop at once (2026-01)
BULK_PATH = "/_sim/shop/bulk"
# True while a bulk query executes: its connections take neither first nor last.
_BULK: ContextVar[bool] = ContextVar("bulk", default=False)

SDL = '''
schema { query: QueryRoot mutation: Mutation }

"Makes a mutation safe to retry: the same key returns the first result, applied once."
directive @idempotent(key: String!) on FIELD

scalar DateTime
scalar Money
scalar URL
scalar HTML
scalar UnsignedInt64

interface Node { id: ID! }

type PageInfo {
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  startCursor: String
  endCursor: String
}

enum CurrencyCode { NOK }
enum ProductStatus { ACTIVE ARCHIVED DRAFT }

type Shop implements Node {
  id: ID!
  name: String!
  myshopifyDomain: String!
  currencyCode: CurrencyCode!
}

type Location implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  name: String!
  isActive: Boolean!
  fulfillsOnlineOrders: Boolean!
  inventoryLevel(inventoryItemId: ID!): InventoryLevel
  inventoryLevels(first: Int, after: String, last: Int, before: String): InventoryLevelConnection!
}
type LocationEdge { cursor: String! node: Location! }
type LocationConnection { edges: [LocationEdge!]! nodes: [Location!]! pageInfo: PageInfo! }

type InventoryItem implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  sku: String
  tracked: Boolean!
  requiresShipping: Boolean!
  createdAt: DateTime!
  updatedAt: DateTime!
  variant: ProductVariant!
  inventoryLevel(locationId: ID!): InventoryLevel
  inventoryLevels(first: Int, after: String, last: Int, before: String): InventoryLevelConnection!
}
type InventoryItemEdge { cursor: String! node: InventoryItem! }
type InventoryItemConnection {
  edges: [InventoryItemEdge!]! nodes: [InventoryItem!]! pageInfo: PageInfo!
}

type InventoryQuantity { id: ID! name: String! quantity: Int! updatedAt: DateTime }

type InventoryLevel implements Node {
  id: ID!
  item: InventoryItem!
  location: Location!
  createdAt: DateTime!
  updatedAt: DateTime!
  quantities(names: [String!]!): [InventoryQuantity!]!
}
type InventoryLevelEdge { cursor: String! node: InventoryLevel! }
type InventoryLevelConnection {
  edges: [InventoryLevelEdge!]! nodes: [InventoryLevel!]! pageInfo: PageInfo!
}

type Product implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  title: String!
  handle: String!
  status: ProductStatus!
  vendor: String!
  productType: String!
  descriptionHtml: HTML!
  createdAt: DateTime!
  updatedAt: DateTime!
  variants(first: Int, after: String, last: Int, before: String): ProductVariantConnection!
}
type ProductEdge { cursor: String! node: Product! }
type ProductConnection { edges: [ProductEdge!]! nodes: [Product!]! pageInfo: PageInfo! }

type ProductVariant implements Node {
  id: ID!
  legacyResourceId: UnsignedInt64!
  sku: String
  title: String!
  displayName: String!
  price: Money!
  compareAtPrice: Money
  barcode: String
  inventoryQuantity: Int
  inventoryItem: InventoryItem!
  product: Product!
  createdAt: DateTime!
  updatedAt: DateTime!
}
type ProductVariantEdge { cursor: String! node: ProductVariant! }
type ProductVariantConnection {
  edges: [ProductVariantEdge!]! nodes: [ProductVariant!]! pageInfo: PageInfo!
}

type QueryRoot {
  shop: Shop!
  node(id: ID!): Node
  nodes(ids: [ID!]!): [Node]!
  location(id: ID): Location
  locations(
    first: Int, after: String, last: Int, before: String, query: String
  ): LocationConnection!
  inventoryItem(id: ID!): InventoryItem
  inventoryItems(
    first: Int, after: String, last: Int, before: String, query: String
  ): InventoryItemConnection!
  inventoryLevel(id: ID!): InventoryLevel
  product(id: ID!): Product
  products(
    first: Int, after: String, last: Int, before: String, query: String
  ): ProductConnection!
  productVariant(id: ID!): ProductVariant
  productVariants(
    first: Int, after: String, last: Int, before: String, query: String
  ): ProductVariantConnection!
  currentBulkOperation(type: BulkOperationType = QUERY): BulkOperation
  bulkOperation(id: ID!): BulkOperation
}

enum BulkOperationStatus { CANCELED CANCELING COMPLETED CREATED EXPIRED FAILED RUNNING }
enum BulkOperationType { QUERY MUTATION }
enum BulkOperationErrorCode { ACCESS_DENIED INTERNAL_SERVER_ERROR TIMEOUT }
type BulkOperation implements Node {
  id: ID!
  type: BulkOperationType!
  status: BulkOperationStatus!
  errorCode: BulkOperationErrorCode
  createdAt: DateTime!
  completedAt: DateTime
  objectCount: UnsignedInt64!
  rootObjectCount: UnsignedInt64!
  fileSize: UnsignedInt64
  url: URL
  partialDataUrl: URL
  query: String!
}
enum BulkOperationUserErrorCode { INVALID LIMIT_REACHED OPERATION_IN_PROGRESS }
type BulkOperationUserError {
  code: BulkOperationUserErrorCode
  field: [String!]
  message: String!
}
type BulkOperationRunQueryPayload {
  bulkOperation: BulkOperation
  userErrors: [BulkOperationUserError!]!
}

input InventoryQuantityInput {
  inventoryItemId: ID!
  locationId: ID!
  quantity: Int!
  changeFromQuantity: Int
}
input InventorySetQuantitiesInput {
  name: String!
  reason: String!
  referenceDocumentUri: URL
  quantities: [InventoryQuantityInput!]!
}
enum InventorySetQuantitiesUserErrorCode {
  CHANGE_FROM_QUANTITY_STALE
  COMPARE_QUANTITY_REQUIRED
  COMPARE_QUANTITY_STALE
  IDEMPOTENCY_CONCURRENT_REQUEST
  IDEMPOTENCY_KEY_PARAMETER_MISMATCH
  IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED
  INVALID_INVENTORY_ITEM
  INVALID_LOCATION
  INVALID_NAME
  INVALID_QUANTITY_NEGATIVE
  INVALID_QUANTITY_TOO_HIGH
  INVALID_QUANTITY_TOO_LOW
  INVALID_REASON
  INVALID_REFERENCE_DOCUMENT
  ITEM_NOT_STOCKED_AT_LOCATION
  NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR
  NON_MUTABLE_INVENTORY_ITEM
}
type InventorySetQuantitiesUserError {
  code: InventorySetQuantitiesUserErrorCode
  field: [String!]
  message: String!
}
type InventoryChange {
  name: String!
  delta: Int!
  quantityAfterChange: Int
  item: InventoryItem
  location: Location
  ledgerDocumentUri: URL
}
type InventoryAdjustmentGroup implements Node {
  id: ID!
  createdAt: DateTime!
  reason: String!
  referenceDocumentUri: String
  changes(
    inventoryItemIds: [ID!], locationIds: [ID!], quantityNames: [String!]
  ): [InventoryChange!]!
}
type InventorySetQuantitiesPayload {
  inventoryAdjustmentGroup: InventoryAdjustmentGroup
  userErrors: [InventorySetQuantitiesUserError!]!
}

type UserError { field: [String!] message: String! }
input ProductUpdateInput {
  id: ID!
  title: String
  descriptionHtml: String
  vendor: String
  productType: String
  status: ProductStatus
}
type ProductUpdatePayload { product: Product userErrors: [UserError!]! }

input ProductVariantsBulkInput {
  id: ID
  price: Money
  compareAtPrice: Money
  barcode: String
}
enum ProductVariantsBulkUpdateUserErrorCode {
  GREATER_THAN_OR_EQUAL_TO
  INVALID_INPUT
  MUST_BE_FOR_THIS_PRODUCT
  NEGATIVE_PRICE_VALUE
  PRODUCT_DOES_NOT_EXIST
  PRODUCT_VARIANT_DOES_NOT_EXIST
  PRODUCT_VARIANT_ID_MISSING
}
type ProductVariantsBulkUpdateUserError {
  code: ProductVariantsBulkUpdateUserErrorCode
  field: [String!]
  message: String!
}
type ProductVariantsBulkUpdatePayload {
  product: Product
  productVariants: [ProductVariant!]
  userErrors: [ProductVariantsBulkUpdateUserError!]!
}

type Mutation {
  inventorySetQuantities(input: InventorySetQuantitiesInput!): InventorySetQuantitiesPayload
  productUpdate(product: ProductUpdateInput!): ProductUpdatePayload
  productVariantsBulkUpdate(
    productId: ID!, variants: [ProductVariantsBulkInput!]!, allowPartialUpdates: Boolean = false
  ): ProductVariantsBulkUpdatePayload
  bulkOperationRunQuery(query: String!, groupObjects: Boolean = false
  ): BulkOperationRunQueryPayload
}
'''

if TYPE_CHECKING:
    Info = GraphQLResolveInfo[Any]
else:
    Info = GraphQLResolveInfo

_GID = re.compile(r"gid://shopify/([A-Za-z]+)/(\d{1,19})(\?inventory_item_id=(\d{1,19}))?")


def gid(kind: str, number: int) -> str:
    return f"gid://shopify/{kind}/{number}"


def parse_gid(value: Any, kind: str) -> int | None:
    """The numeric id of a GID of ``kind``, or None when it is not one."""
    match = _GID.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(1) != kind or match.group(3):
        return None
    return int(match.group(2))


def bad_request(message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": "BAD_REQUEST"})


# -- scalars -------------------------------------------------------------------------------------

def money(value: Any) -> Decimal | None:
    """A ``Money`` input (a decimal string, or a number) as a Decimal; None when invalid."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


# -- the objects behind the schema -------------------------------------------------------------

class ShopNode:
    typename = "Shop"

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.id = gid("Shop", 60_000_000_000 + shop.world.seed % 1_000_000_000)
        self.name = "RetailGraph Demo"
        self.myshopifyDomain = shop.domain
        self.currencyCode = "NOK"


@dataclass(frozen=True, slots=True)
class LocationNode:
    admin: ShopifyAdmin
    location: Location

    typename = "Location"

    @property
    def shopify_id(self) -> int:
        assert self.location.shopify_id is not None
        return self.location.shopify_id

    @property
    def id(self) -> str:
        return gid("Location", self.shopify_id)

    @property
    def legacyResourceId(self) -> str:
        return str(self.shopify_id)

    @property
    def name(self) -> str:
        return self.location.name

    isActive = True
    fulfillsOnlineOrders = True

    def inventoryLevel(self, info: Info, inventoryItemId: str) -> LevelNode | None:
        variant = self.admin.variant_of_item(inventoryItemId)
        return None if variant is None else LevelNode(self.admin, variant, self.shopify_id)

    def inventoryLevels(self, info: Info, **page: Any) -> Connection:
        admin = self.admin
        return Connection.of(info, page, admin.shop.n_variants,
                             lambda i: LevelNode(admin, admin.shop.variant(i), self.shopify_id))


@dataclass(frozen=True, slots=True)
class ItemNode:
    admin: ShopifyAdmin
    variant_: Variant

    typename = "InventoryItem"

    @property
    def id(self) -> str:
        return gid("InventoryItem", self.variant_.inventory_item_id)

    @property
    def legacyResourceId(self) -> str:
        return str(self.variant_.inventory_item_id)

    @property
    def sku(self) -> str:
        return self.variant_.sku

    tracked = True

    @property
    def requiresShipping(self) -> bool:
        return self.variant_.item is not None

    @property
    def createdAt(self) -> str:
        return created_at(self.variant_)

    @property
    def updatedAt(self) -> str:
        return max([created_at(self.variant_)] + [
            self.admin.shop.level(self.variant_, loc).updated_at
            for loc in self.admin.shop.location_ids])

    @property
    def variant(self) -> VariantNode:
        return VariantNode(self.admin, self.variant_)

    def inventoryLevel(self, info: Info, locationId: str) -> LevelNode | None:
        location = self.admin.location_id(locationId)
        return None if location is None else LevelNode(self.admin, self.variant_, location)

    def inventoryLevels(self, info: Info, **page: Any) -> Connection:
        ids = self.admin.shop.location_ids
        return Connection.of(info, page, len(ids),
                             lambda n: LevelNode(self.admin, self.variant_, ids[n]))


@dataclass(frozen=True, slots=True)
class QuantityNode:
    level: LevelNode
    name: str
    quantity: int
    updatedAt: str | None

    @property
    def id(self) -> str:
        return (f"gid://shopify/InventoryQuantity/{self.level.location_id}"
                f"?inventory_item_id={self.level.variant.inventory_item_id}&name={self.name}")


@dataclass(frozen=True, slots=True)
class LevelNode:
    admin: ShopifyAdmin
    variant: Variant
    location_id: int

    typename = "InventoryLevel"

    @property
    def id(self) -> str:
        return (f"gid://shopify/InventoryLevel/{self.location_id}"
                f"?inventory_item_id={self.variant.inventory_item_id}")

    @property
    def item(self) -> ItemNode:
        return ItemNode(self.admin, self.variant)

    @property
    def location(self) -> LocationNode:
        return LocationNode(self.admin, self.admin.shop.locations[self.location_id])

    @property
    def createdAt(self) -> str:
        return self.admin.shop.opened_at

    @property
    def updatedAt(self) -> str:
        return self.admin.shop.level(self.variant, self.location_id).updated_at

    def quantities(self, info: Info, names: list[str]) -> list[QuantityNode]:
        unknown = [n for n in names if n not in QUANTITY_NAMES]
        if unknown:
            raise GraphQLError(f"Invalid quantity name(s): {', '.join(unknown)}. Valid names "
                               f"are: {', '.join(QUANTITY_NAMES)}",
                               extensions={"code": "BAD_REQUEST"})
        level = self.admin.shop.level(self.variant, self.location_id)
        return [QuantityNode(self, n, level.on_hand if n == "on_hand" else level.quantity(n),
                             level.updated_at) for n in names]


@dataclass(frozen=True, slots=True)
class ProductNode:
    admin: ShopifyAdmin
    variant_: Variant

    typename = "Product"

    @property
    def edit(self) -> ProductEdit:
        return self.admin.shop.edit(self.variant_)

    @property
    def id(self) -> str:
        return gid("Product", self.variant_.product_id)

    @property
    def legacyResourceId(self) -> str:
        return str(self.variant_.product_id)

    @property
    def title(self) -> str:
        return self.edit.title or self.variant_.title

    @property
    def handle(self) -> str:
        return slug(f"{self.variant_.title} {self.variant_.sku}")

    @property
    def status(self) -> str:
        return self.edit.status or "ACTIVE"

    @property
    def vendor(self) -> str:
        return self.edit.vendor or "RetailGraph"

    @property
    def productType(self) -> str:
        item = self.variant_.item
        return self.edit.product_type or (item.category if item else "Gift Cards")

    @property
    def descriptionHtml(self) -> str:
        return self.edit.description_html or f"<p>{self.variant_.title}</p>"

    @property
    def createdAt(self) -> str:
        return created_at(self.variant_)

    @property
    def updatedAt(self) -> str:
        return self.edit.product_updated_at or created_at(self.variant_)

    def variants(self, info: Info, **page: Any) -> Connection:
        return Connection.of(info, page, 1, lambda n: VariantNode(self.admin, self.variant_))


@dataclass(frozen=True, slots=True)
class VariantNode:
    admin: ShopifyAdmin
    variant: Variant

    typename = "ProductVariant"

    @property
    def edit(self) -> ProductEdit:
        return self.admin.shop.edit(self.variant)

    @property
    def id(self) -> str:
        return gid("ProductVariant", self.variant.variant_id)

    @property
    def legacyResourceId(self) -> str:
        return str(self.variant.variant_id)

    @property
    def sku(self) -> str:
        return self.variant.sku

    title = "Default Title"

    @property
    def displayName(self) -> str:
        return f"{ProductNode(self.admin, self.variant).title} - Default Title"

    @property
    def price(self) -> Decimal:
        return self.edit.price if self.edit.price is not None else self.variant.price

    @property
    def compareAtPrice(self) -> Decimal | None:
        return compare_at_price(self.admin.shop, self.variant)

    @property
    def barcode(self) -> str | None:
        item = self.variant.item
        return self.edit.barcode or (item.gtin13 if item else None)

    @property
    def inventoryQuantity(self) -> int:
        shop = self.admin.shop
        return sum(shop.level(self.variant, loc).available for loc in shop.location_ids)

    @property
    def inventoryItem(self) -> ItemNode:
        return ItemNode(self.admin, self.variant)

    @property
    def product(self) -> ProductNode:
        return ProductNode(self.admin, self.variant)

    @property
    def createdAt(self) -> str:
        return created_at(self.variant)

    @property
    def updatedAt(self) -> str:
        return self.edit.variant_updated_at or created_at(self.variant)


def created_at(variant: Variant) -> str:
    return stamp(EPOCH + timedelta(minutes=variant.index))


@dataclass(frozen=True, slots=True)
class ChangeNode:
    name: str
    delta: int
    quantityAfterChange: int
    item: ItemNode
    location: LocationNode
    ledgerDocumentUri: str | None = None


@dataclass(frozen=True, slots=True)
class AdjustmentGroup:
    id: str
    createdAt: str
    reason: str
    referenceDocumentUri: str | None
    all_changes: tuple[ChangeNode, ...]

    typename = "InventoryAdjustmentGroup"

    def changes(self, info: Info, inventoryItemIds: list[str] | None = None,
                locationIds: list[str] | None = None,
                quantityNames: list[str] | None = None) -> list[ChangeNode]:
        return [c for c in self.all_changes
                if (inventoryItemIds is None or c.item.id in inventoryItemIds)
                and (locationIds is None or c.location.id in locationIds)
                and (quantityNames is None or c.name in quantityNames)]


# -- connections ---------------------------------------------------------------------------------

def _cursor(position: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"last_id": position})).decode().rstrip("=")


def _position(cursor: str) -> int:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise GraphQLError(f"Invalid cursor for current pagination sort: {cursor}",
                           extensions={"code": "BAD_REQUEST"}) from exc
    if not isinstance(data, dict) or type(data.get("last_id")) is not int:
        raise GraphQLError(f"Invalid cursor for current pagination sort: {cursor}",
                           extensions={"code": "BAD_REQUEST"})
    position: int = data["last_id"]
    return position


@dataclass(frozen=True, slots=True)
class Edge:
    cursor: str
    node: Any


@dataclass(slots=True)
class Connection:
    """A page over positions ``0..total-1`` whose nodes ``make`` builds on demand."""

    edges: list[Edge]
    pageInfo: dict[str, Any]

    @property
    def nodes(self) -> list[Any]:
        return [e.node for e in self.edges]

    @staticmethod
    def window(page: dict[str, Any], total: int) -> range:
        first, last = page.get("first"), page.get("last")
        if first is None and last is None and _BULK.get():
            return range(total)  # a bulk query reads the whole connection
        if first is None and last is None:
            raise GraphQLError("you must provide one of first or last",
                               extensions={"code": "BAD_REQUEST"})
        if first is not None and last is not None:
            raise GraphQLError("providing both first and last is not supported",
                               extensions={"code": "BAD_REQUEST"})
        size = first if first is not None else last
        assert isinstance(size, int)
        if not 0 <= size <= MAX_PAGE:
            raise GraphQLError(f"The page size must be between 0 and {MAX_PAGE}",
                               extensions={"code": "BAD_REQUEST"})
        lo = _position(page["after"]) + 1 if page.get("after") else 0
        hi = _position(page["before"]) if page.get("before") else total
        lo, hi = max(0, lo), min(total, hi)
        if hi <= lo:
            return range(lo, lo)
        return range(lo, min(hi, lo + size)) if first is not None else range(max(lo, hi - size), hi)

    @classmethod
    def of(cls, info: Info, page: dict[str, Any], total: int,
           make: Callable[[int], Any]) -> Connection:
        return cls.over(page, range(total), make)

    @classmethod
    def over(cls, page: dict[str, Any], positions: Sequence[int],
             make: Callable[[int], Any]) -> Connection:
        """A page over a sequence of node keys; cursors are positions in that sequence."""
        window = cls.window(page, len(positions))
        edges = [Edge(_cursor(n), make(positions[n])) for n in window]
        return cls(edges, {"hasNextPage": window.stop < len(positions),
                           "hasPreviousPage": window.start > 0,
                           "startCursor": edges[0].cursor if edges else None,
                           "endCursor": edges[-1].cursor if edges else None})


# -- search syntax (the subset: sku:, id:, free text on the title) ------------------------------

_TERM = re.compile(r'(\w+):("([^"]*)"|\S+)|"([^"]*)"|(\S+)')


def search_terms(query: str | None) -> list[tuple[str, str]]:
    if not query:
        return []
    out = []
    for m in _TERM.finditer(query):
        if m.group(1):
            out.append((m.group(1).lower(), m.group(3) if m.group(3) is not None
                        else m.group(2)))
        else:
            out.append(("", m.group(4) if m.group(4) is not None else m.group(5)))
    return out


# -- cost ----------------------------------------------------------------------------------------

class Cost:
    """Shopify's calculated query cost: requested (from page sizes) and actual (from data)."""

    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode],
                 variables: dict[str, Any]) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables

    def _fields(self, selection_set: SelectionSetNode | None) -> Iterator[FieldNode]:
        if selection_set is None:
            return
        for sel in selection_set.selections:
            if isinstance(sel, FieldNode):
                yield sel
            elif isinstance(sel, InlineFragmentNode):
                yield from self._fields(sel.selection_set)
            elif isinstance(sel, FragmentSpreadNode):
                fragment = self.fragments.get(sel.name.value)
                if fragment is not None:
                    yield from self._fields(fragment.selection_set)

    def _arg(self, node: FieldNode, name: str) -> int | None:
        for arg in node.arguments or ():
            if arg.name.value != name:
                continue
            if isinstance(arg.value, IntValueNode):
                return int(arg.value.value)
            if isinstance(arg.value, VariableNode):
                value = self.variables.get(arg.value.name.value)
                return value if isinstance(value, int) else None
        return None

    def _field_type(self, parent: Any, node: FieldNode) -> Any:
        """The named type of a selected field; on an interface, of whichever type has it."""
        name = node.name.value
        if name.startswith("__") or parent is None:
            return None
        candidates = [parent]
        if not isinstance(parent, GraphQLObjectType) and hasattr(parent, "fields"):
            candidates += self.schema.get_implementations(parent).objects
        for candidate in candidates:
            fields = getattr(candidate, "fields", None) or {}
            if name in fields:
                return get_named_type(fields[name].type)
        return None

    def requested(self, selection_set: SelectionSetNode | None, parent: Any,
                  mutation: bool = False) -> int:
        total = 0
        for node in self._fields(selection_set):
            if mutation:
                total += MUTATION_COST
                continue
            kind = self._field_type(parent, node)
            if kind is None or not hasattr(kind, "fields"):
                continue  # scalar or enum: free
            if kind.name.endswith("Connection"):
                size = self._arg(node, "first") or self._arg(node, "last") or 0
                total += 2 + size * self._connection_node_cost(node, kind)
            else:
                total += 1 + self.requested(node.selection_set, kind)
        return total

    def _connection_node_cost(self, node: FieldNode, kind: Any) -> int:
        """Cost of one node of a connection: its object plus what is selected under it."""
        node_type = get_named_type(kind.fields["edges"].type).fields["node"].type
        node_type = get_named_type(node_type)
        per = 0
        for sub in self._fields(node.selection_set):
            if sub.name.value == "edges":
                for inner in self._fields(sub.selection_set):
                    if inner.name.value == "node":
                        per = max(per, self.requested(inner.selection_set, node_type))
            elif sub.name.value == "nodes":
                per = max(per, self.requested(sub.selection_set, node_type))
        return 1 + per

    def actual(self, selection_set: SelectionSetNode | None, parent: Any, data: Any,
               mutation: bool = False) -> int:
        if not isinstance(data, dict):
            return 0
        total = 0
        for node in self._fields(selection_set):
            key = node.alias.value if node.alias else node.name.value
            if key not in data:
                continue
            if mutation:
                total += MUTATION_COST
                continue
            kind = self._field_type(parent, node)
            value = data[key]
            if kind is None or value is None or not hasattr(kind, "fields"):
                continue
            if kind.name.endswith("Connection"):
                total += 2 + self._actual_nodes(node, kind, value)
            elif isinstance(value, list):  # a plain list costs like one object, as requested
                total += 1 + max((self.actual(node.selection_set, kind, v) for v in value),
                                 default=0)
            else:
                total += 1 + self.actual(node.selection_set, kind, value)
        return total

    def _actual_nodes(self, node: FieldNode, kind: Any, value: dict[str, Any]) -> int:
        node_type = get_named_type(get_named_type(kind.fields["edges"].type).fields["node"].type)
        best = 0
        for sub in self._fields(node.selection_set):
            key = sub.alias.value if sub.alias else sub.name.value
            items = value.get(key)
            if not isinstance(items, list):
                continue
            if sub.name.value == "edges":
                found = 0
                for inner in self._fields(sub.selection_set):
                    if inner.name.value == "node":
                        ikey = inner.alias.value if inner.alias else "node"
                        found = sum(1 + self.actual(inner.selection_set, node_type, e.get(ikey))
                                    for e in items if isinstance(e, dict))
                best = max(best, found or len(items))
            elif sub.name.value == "nodes":
                best = max(best, sum(1 + self.actual(sub.selection_set, node_type, n)
                                     for n in items))
        return best


# -- the leaky bucket ----------------------------------------------------------------------------

@dataclass(slots=True)
class Bucket:
    """Cost points per shop: refills at ``restore_rate``/s up to ``maximum``."""

    maximum: float = 2000.0
    restore_rate: float = 100.0
    available: float = 2000.0
    at: float = field(default_factory=time.monotonic)

    def refill(self) -> float:
        now = time.monotonic()
        self.available = min(self.maximum, self.available + (now - self.at) * self.restore_rate)
        self.at = now
        return self.available

    def status(self) -> dict[str, float]:
        return {"maximumAvailable": self.maximum,
                "currentlyAvailable": round(self.refill(), 1),
                "restoreRate": self.restore_rate}


# -- writes --------------------------------------------------------------------------------------

@dataclass(slots=True)
class EffectiveWrite:
    """One write that changed the shop, for ``GET /_sim/shop/writes``."""

    key: str
    mutation: str
    at: str
    changes: list[dict[str, Any]]


@dataclass(slots=True)
class Remembered:
    """An idempotency key's first request (its input) and result."""

    fingerprint: bytes
    payload: Any
    failed: bool


@dataclass(slots=True)
class BulkOp:
    """One bulk query operation and its JSONL result."""

    number: int
    query: str
    created_at: str
    result: bytes
    objects: int
    roots: int
    url: str
    reads: int = 0  # RUNNING until read once, COMPLETED after
    completed_at: str | None = None

    typename = "BulkOperation"
    type = "QUERY"
    errorCode = None
    partialDataUrl = None

    @property
    def id(self) -> str:
        return gid("BulkOperation", self.number)

    @property
    def status(self) -> str:
        return "COMPLETED" if self.completed_at else "RUNNING"

    @property
    def createdAt(self) -> str:
        return self.created_at

    @property
    def completedAt(self) -> str | None:
        return self.completed_at

    @property
    def objectCount(self) -> str:
        return str(self.objects)

    @property
    def rootObjectCount(self) -> str:
        return str(self.roots)

    @property
    def fileSize(self) -> str | None:
        return str(len(self.result)) if self.completed_at else None

    @property
    def url_(self) -> str | None:
        return self.url if self.completed_at else None


def jsonl_lines(node: Any, parent: str | None, out: list[bytes]) -> int:
    """One bulk result node as JSONL lines: itself, then each nested connection's nodes as
    lines of their own with ``__parentId``; how many objects that was."""
    if not isinstance(node, dict):
        return 0
    children: list[Any] = []
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and (isinstance(value.get("edges"), list)
                                        or isinstance(value.get("nodes"), list)):
            children += [e.get("node") for e in value.get("edges") or [] if isinstance(e, dict)]
            children += value.get("nodes") or []
        else:
            flat[key] = value
    if parent is not None:
        flat["__parentId"] = parent
    out.append(orjson.dumps(flat, default=str))
    return 1 + sum(jsonl_lines(c, flat.get("id"), out) for c in children)


def user_error(code: str | None, message: str, *path: Any) -> dict[str, Any]:
    return {"code": code, "field": [str(p) for p in path] or None, "message": message}


class ShopifyAdmin:
    """The GraphQL Admin API of one :class:`Shop`: schema, bucket, idempotency, write log."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.bucket = Bucket()
        self.idempotency: OrderedDict[str, Remembered] = OrderedDict()
        self.writes_by_key: Counter[str] = Counter()
        self.writes: list[EffectiveWrite] = []
        self.groups = 0
        self.bulk: list[BulkOp] = []
        self.base_url = ""
        self.schema = build_schema(SDL)
        # Parsed and validated documents by query text (a GraphQL server's document cache:
        # a client sends the same few queries again and again, and validating one costs
        # several times its execution).
        self._documents: OrderedDict[str, DocumentNode | list[dict[str, Any]]] = OrderedDict()
        self._wire()

    # -- schema wiring -----------------------------------------------------------------------

    def _wire(self) -> None:
        schema = self.schema
        node = schema.get_type("Node")
        assert node is not None

        def resolve_type(obj: Any, info: Info, kind: Any) -> str | None:
            return getattr(obj, "typename", None)

        assert isinstance(node, GraphQLInterfaceType)
        node.resolve_type = resolve_type
        query = schema.query_type
        mutation = schema.mutation_type
        assert query is not None
        assert mutation is not None
        resolvers: dict[str, Callable[..., Any]] = {
            "shop": lambda _, info: ShopNode(self.shop),
            "node": lambda _, info, id: self.node(id),
            "nodes": lambda _, info, ids: [self.node(i) for i in ids],
            "location": lambda _, info, id=None: self.location(id),
            "locations": self.locations,
            "inventoryItem": lambda _, info, id: self.item(id),
            "inventoryItems": lambda _, info, query=None, **page: Connection.over(
                page, self.search(query), lambda i: ItemNode(self, self.shop.variant(i))),
            "inventoryLevel": lambda _, info, id: self.level(id),
            "product": lambda _, info, id: self.product(id),
            "products": lambda _, info, query=None, **page: Connection.over(
                page, self.search(query), lambda i: ProductNode(self, self.shop.variant(i))),
            "productVariant": lambda _, info, id: self.variant(id),
            "productVariants": lambda _, info, query=None, **page: Connection.over(
                page, self.search(query), lambda i: VariantNode(self, self.shop.variant(i))),
        }
        for name, fn in resolvers.items():
            query.fields[name].resolve = fn
        mutation.fields["inventorySetQuantities"].resolve = self.set_quantities
        mutation.fields["productUpdate"].resolve = self.product_update
        mutation.fields["productVariantsBulkUpdate"].resolve = self.variants_bulk_update
        mutation.fields["bulkOperationRunQuery"].resolve = self.bulk_run
        query.fields["currentBulkOperation"].resolve = \
            lambda _, info, type="QUERY": self.bulk_read(self.bulk[-1] if self.bulk and
                                                          type == "QUERY" else None)
        query.fields["bulkOperation"].resolve = lambda _, info, id: self.bulk_op(id)
        bulk_type = schema.get_type("BulkOperation")
        assert isinstance(bulk_type, GraphQLObjectType)
        bulk_type.fields["url"].resolve = lambda op, info: op.url_

    # -- lookups -----------------------------------------------------------------------------

    def variant_of_item(self, value: Any) -> Variant | None:
        number = parse_gid(value, "InventoryItem")
        return None if number is None else self.shop.by_inventory_item_id(number)

    def location_id(self, value: Any) -> int | None:
        number = parse_gid(value, "Location")
        return number if number in self.shop.locations else None

    def item(self, value: Any) -> ItemNode | None:
        variant = self.variant_of_item(value)
        return None if variant is None else ItemNode(self, variant)

    def variant(self, value: Any) -> VariantNode | None:
        number = parse_gid(value, "ProductVariant")
        found = None if number is None else self.shop.by_variant_id(number)
        return None if found is None else VariantNode(self, found)

    def product_variant(self, value: Any) -> Variant | None:
        number = parse_gid(value, "Product")
        if number is None:
            return None
        index = number - self.shop.variant(0).product_id
        return self.shop.variant(index) if 0 <= index < self.shop.n_variants else None

    def product(self, value: Any) -> ProductNode | None:
        found = self.product_variant(value)
        return None if found is None else ProductNode(self, found)

    def location(self, value: Any) -> LocationNode | None:
        location_id = self.shop.location_ids[0] if value is None else self.location_id(value)
        return None if location_id is None else LocationNode(self, self.shop.locations[
            location_id])

    def level(self, value: Any) -> LevelNode | None:
        match = _GID.fullmatch(value) if isinstance(value, str) else None
        if match is None or match.group(1) != "InventoryLevel" or not match.group(4):
            return None
        location_id, item_id = int(match.group(2)), int(match.group(4))
        variant = self.shop.by_inventory_item_id(item_id)
        if variant is None or location_id not in self.shop.locations:
            return None
        return LevelNode(self, variant, location_id)

    def node(self, value: Any) -> Any:
        match = _GID.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            return None
        kind = match.group(1)
        found: Callable[[Any], Any] | None = {
            "InventoryItem": self.item, "ProductVariant": self.variant,
            "Product": self.product, "InventoryLevel": self.level,
            "Location": lambda v: self.location(v) if self.location_id(v) else None,
            "BulkOperation": self.bulk_op,
        }.get(kind)
        return None if found is None else found(value)

    def locations(self, _: Any, info: Info, query: str | None = None,
                  **page: Any) -> Connection:
        ids = self.shop.location_ids
        return Connection.over(page, range(len(ids)),
                               lambda n: LocationNode(self, self.shop.locations[ids[n]]))

    def search(self, query: str | None) -> Sequence[int]:
        """Variant indices matching Shopify's search syntax subset: ``sku:``, ``id:``, text."""
        terms = search_terms(query)
        if not terms:
            return range(self.shop.n_variants)
        found: Sequence[int] = range(self.shop.n_variants)
        for name, value in terms:
            if name == "sku":
                index = self._sku_index(value)
                found = [i for i in ([index] if index is not None else []) if i in found]
            elif name == "id":
                hits = [v.index for v in (self.shop.by_variant_id(int(value))
                                          if value.isdigit() else None,
                                          self.shop.by_inventory_item_id(int(value))
                                          if value.isdigit() else None) if v is not None]
                found = [i for i in hits if i in found]
            else:
                text = value.lower()
                found = [i for i in found if text in self.shop.variant(i).title.lower()
                         or text in self.shop.variant(i).sku.lower()]
        return found

    def _sku_index(self, sku: str) -> int | None:
        if sku == self.shop.variant(self.shop.n_variants - 1).sku:
            return self.shop.n_variants - 1
        if sku.startswith("SKU-") and sku[4:].isdigit():
            index = int(sku[4:]) - 1
            if 0 <= index < self.shop.world.n_skus and self.shop.variant(index).sku == sku:
                return index
        return None

    # -- mutations ---------------------------------------------------------------------------

    def _idempotency_key(self, info: Info) -> str | None:
        directive = self.schema.get_directive("idempotent")
        assert directive is not None
        values = get_directive_values(directive, info.field_nodes[0], info.variable_values)
        key = values.get("key") if values else None
        return key if isinstance(key, str) else None

    def set_quantities(self, _: Any, info: Info,
                       input: dict[str, Any]) -> dict[str, Any]:
        key = self._idempotency_key(info)
        if not key:
            raise bad_request("The @idempotent directive with a non-empty key is required for "
                              "inventorySetQuantities")
        fingerprint = orjson.dumps(input, option=orjson.OPT_SORT_KEYS, default=str)
        seen = self.idempotency.get(key)
        if seen is not None:
            if seen.fingerprint != fingerprint:
                return {"inventoryAdjustmentGroup": None, "userErrors": [user_error(
                    "IDEMPOTENCY_KEY_PARAMETER_MISMATCH", "The same idempotency key cannot be "
                    "used with different operation parameters.")]}
            if seen.failed:
                return {"inventoryAdjustmentGroup": None, "userErrors": [user_error(
                    "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED", "A previous request with this "
                    "idempotency key failed. Retry with a new idempotency key.")]}
            payload: dict[str, Any] = seen.payload
            return payload
        for n, quantity in enumerate(input["quantities"]):
            if "changeFromQuantity" not in quantity:
                raise bad_request(f"input.quantities[{n}].changeFromQuantity must be given "
                                  "(pass null explicitly to skip the compare-and-set check)")
        payload = self._set(key, input)
        self._remember(key, Remembered(fingerprint, payload, bool(payload["userErrors"])))
        return payload

    def _remember(self, key: str, entry: Remembered) -> None:
        self.idempotency[key] = entry
        while len(self.idempotency) > IDEMPOTENCY_KEPT:
            self.idempotency.popitem(last=False)

    def _set(self, key: str, input: dict[str, Any]) -> dict[str, Any]:
        name, reason, uri = input["name"], input["reason"], input.get("referenceDocumentUri")
        errors = []
        if name not in SETTABLE:
            errors.append(user_error("INVALID_NAME", "The quantity name must be either "
                                     "'available' or 'on_hand'.", "input", "name"))
        if reason not in REASONS:
            errors.append(user_error("INVALID_REASON", "The specified reason is invalid.",
                                     "input", "reason"))
        if uri is not None and (not isinstance(uri, str) or ":" not in uri):
            errors.append(user_error("INVALID_REFERENCE_DOCUMENT", "The specified reference "
                                     "document is invalid.", "input", "referenceDocumentUri"))
        targets: list[tuple[Variant, int, int]] = []
        seen: set[tuple[int, int]] = set()
        for n, q in enumerate(input["quantities"]):
            path = ("input", "quantities", n)
            variant = self.variant_of_item(q["inventoryItemId"])
            location_id = self.location_id(q["locationId"])
            if variant is None:
                errors.append(user_error("INVALID_INVENTORY_ITEM", "The specified inventory "
                                         "item could not be found.", *path, "inventoryItemId"))
            if location_id is None:
                errors.append(user_error("INVALID_LOCATION", "The specified location could "
                                         "not be found.", *path, "locationId"))
            if q["quantity"] < 0:
                errors.append(user_error("INVALID_QUANTITY_NEGATIVE", "The quantity can't be "
                                         "negative.", *path, "quantity"))
            elif q["quantity"] > MAX_QUANTITY:
                errors.append(user_error("INVALID_QUANTITY_TOO_HIGH", "The total quantity "
                                         "can't be higher than 1,000,000,000.", *path,
                                         "quantity"))
            if variant is None or location_id is None:
                continue
            if (variant.index, location_id) in seen:
                errors.append(user_error("NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR",
                                         "The combination of inventoryItemId and locationId "
                                         "must be unique.", *path))
            seen.add((variant.index, location_id))
            if name in SETTABLE and q["changeFromQuantity"] is not None:
                level = self.shop.level(variant, location_id)
                current = level.on_hand if name == "on_hand" else level.available
                if current != q["changeFromQuantity"]:
                    errors.append(user_error(
                        "CHANGE_FROM_QUANTITY_STALE", "The changeFromQuantity value does not "
                        f"match persisted value ({current}).", *path, "changeFromQuantity"))
            targets.append((variant, location_id, q["quantity"]))
        if name == "available" and not errors:
            for n, (variant, location_id, quantity) in enumerate(targets):
                level = self.shop.level(variant, location_id)
                if quantity - level.available + level.on_hand > MAX_QUANTITY:
                    errors.append(user_error("INVALID_QUANTITY_TOO_HIGH", "The total quantity "
                                             "can't be higher than 1,000,000,000.", "input",
                                             "quantities", n, "quantity"))
        if name == "on_hand" and not errors:
            for n, (variant, location_id, quantity) in enumerate(targets):
                level = self.shop.level(variant, location_id)
                if quantity - (level.on_hand - level.available) < 0:
                    errors.append(user_error(
                        "INVALID_QUANTITY_NEGATIVE", "The quantity can't be negative.",
                        "input", "quantities", n, "quantity"))
        if errors:
            return {"inventoryAdjustmentGroup": None, "userErrors": errors}
        return {"inventoryAdjustmentGroup": self._apply(key, name, reason, uri, targets),
                "userErrors": []}

    def _apply(self, key: str, name: str, reason: str, uri: str | None,
               targets: list[tuple[Variant, int, int]]) -> AdjustmentGroup | None:
        changes: list[ChangeNode] = []
        logged: list[dict[str, Any]] = []
        for variant, location_id, quantity in targets:
            before = self.shop.level(variant, location_id)
            available = quantity if name == "available" else \
                quantity - (before.on_hand - before.available)
            after = self.shop.change_level(variant, location_id, available=available)
            delta = after.available - before.available
            if delta == 0:
                continue
            item, loc = ItemNode(self, variant), LocationNode(self, self.shop.locations[
                location_id])
            changes += [ChangeNode("available", delta, after.available, item, loc),
                        ChangeNode("on_hand", delta, after.on_hand, item, loc)]
            logged.append({"sku": variant.sku, "inventoryItemId": item.id,
                           "locationId": loc.id, "name": name,
                           "from": before.on_hand if name == "on_hand" else before.available,
                           "to": quantity, "available": after.available})
        at = self.shop.now()
        self.groups += 1
        group = AdjustmentGroup(gid("InventoryAdjustmentGroup", 90_000_000_000 + self.groups),
                                at, reason, uri, tuple(changes))
        if logged:
            self.writes_by_key[key] += 1
            self.writes.append(EffectiveWrite(key, "inventorySetQuantities", at, logged))
            del self.writes[:-10_000]
        return group

    def product_update(self, _: Any, info: Info,
                       product: dict[str, Any]) -> dict[str, Any]:
        variant = self.product_variant(product["id"])
        if variant is None:
            return {"product": None, "userErrors": [
                {"field": ["id"], "message": "Product does not exist"}]}
        if "title" in product and not (product["title"] or "").strip():
            return {"product": None, "userErrors": [
                {"field": ["title"], "message": "Title can't be blank"}]}
        edit = replace(self.shop.edit(variant))
        for graph, attr in (("title", "title"), ("descriptionHtml", "description_html"),
                            ("vendor", "vendor"), ("productType", "product_type"),
                            ("status", "status")):
            if graph in product:
                setattr(edit, attr, product[graph])
        if edit != self.shop.edit(variant):
            edit.product_updated_at = self.shop.now()
            self.shop.update_product(variant, edit)
            self._log_write(info, "productUpdate", [{"sku": variant.sku, **{
                k: str(v) for k, v in product.items() if k != "id"}}])
        return {"product": ProductNode(self, variant), "userErrors": []}

    def variants_bulk_update(self, _: Any, info: Info, productId: str,
                             variants: list[dict[str, Any]],
                             allowPartialUpdates: bool = False) -> dict[str, Any]:
        owner = self.product_variant(productId)
        if owner is None:
            return {"product": None, "productVariants": None, "userErrors": [user_error(
                "PRODUCT_DOES_NOT_EXIST", "Product does not exist", "productId")]}
        errors = []
        for n, v in enumerate(variants):
            found = None if v.get("id") is None else self.variant(v["id"])
            if v.get("id") is None:
                errors.append(user_error("PRODUCT_VARIANT_ID_MISSING", "Product variant id "
                                         "is missing.", "variants", n, "id"))
            elif found is None:
                errors.append(user_error("PRODUCT_VARIANT_DOES_NOT_EXIST", "Product variant "
                                         "does not exist", "variants", n, "id"))
            elif found.variant.index != owner.index:
                errors.append(user_error("MUST_BE_FOR_THIS_PRODUCT", "Product variant does "
                                         "not belong to this product", "variants", n, "id"))
            for name in ("price", "compareAtPrice"):
                if v.get(name) is None:
                    continue
                amount = money(v[name])
                if amount is None:
                    errors.append(user_error("INVALID_INPUT", f"{name} is not a valid amount",
                                             "variants", n, name))
                elif amount < 0:
                    errors.append(user_error("GREATER_THAN_OR_EQUAL_TO", "The price of the "
                                             "variant must be greater than or equal to zero.",
                                             "variants", n, name))
                else:
                    v[name] = amount
        if errors:
            return {"product": None, "productVariants": None, "userErrors": errors}
        edit = replace(self.shop.edit(owner))
        for v in variants:
            if "price" in v and v["price"] is not None:
                edit.price = v["price"]
            if "compareAtPrice" in v:
                edit.compare_at_price, edit.compare_at_set = v["compareAtPrice"], True
            if "barcode" in v:
                edit.barcode = v["barcode"]
        if edit != self.shop.edit(owner):
            edit.variant_updated_at = edit.product_updated_at = self.shop.now()
            self.shop.update_product(owner, edit)
            self._log_write(info, "productVariantsBulkUpdate", [
                {"sku": owner.sku, **{k: str(x) for k, x in v.items() if k != "id"}}
                for v in variants])
        return {"product": ProductNode(self, owner),
                "productVariants": [VariantNode(self, owner)], "userErrors": []}

    # -- bulk operations -----------------------------------------------------------------------

    def bulk_op(self, value: Any) -> BulkOp | None:
        number = parse_gid(value, "BulkOperation")
        found = [op for op in self.bulk if op.number == number]
        return self.bulk_read(found[0]) if found else None

    def bulk_read(self, op: BulkOp | None) -> BulkOp | None:
        """An operation as a read shows it: RUNNING the first time, COMPLETED from then on."""
        if op is not None:
            if op.reads and op.completed_at is None:
                op.completed_at = self.shop.now()
            op.reads += 1
        return op

    def bulk_run(self, _: Any, info: Info, query: str,
                 groupObjects: bool = False) -> dict[str, Any]:
        running = [op for op in self.bulk if op.completed_at is None]
        if len(running) >= MAX_BULK_RUNNING:
            return {"bulkOperation": None, "userErrors": [user_error(
                "LIMIT_REACHED", f"A maximum of {MAX_BULK_RUNNING} bulk queries can run at "
                "once for this shop.")]}
        try:
            document = parse(query)
        except GraphQLError as exc:
            return {"bulkOperation": None, "userErrors": [user_error(
                "INVALID", f"Invalid bulk query: {exc.message}", "query")]}
        problems = validate(self.schema, document)
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if problems or len(operations) != 1 or operations[0].operation.value != "query":
            message = problems[0].message if problems else "a bulk query is one query"
            return {"bulkOperation": None, "userErrors": [user_error(
                "INVALID", f"Invalid bulk query: {message}", "query")]}
        roots = [f for f in operations[0].selection_set.selections if isinstance(f, FieldNode)]
        root_type = self.schema.query_type
        assert root_type is not None
        kinds = [get_named_type(root_type.fields[f.name.value].type) for f in roots]
        if len(roots) != 1 or not kinds[0].name.endswith("Connection"):
            return {"bulkOperation": None, "userErrors": [user_error(
                "INVALID", "Bulk queries must contain exactly one top-level connection "
                "field.", "query")]}
        token = _BULK.set(True)
        try:
            result = execute_sync(self.schema, document)
        finally:
            _BULK.reset(token)
        if result.errors or not result.data:
            message = result.errors[0].message if result.errors else "no data"
            return {"bulkOperation": None, "userErrors": [user_error(
                "INVALID", f"Invalid bulk query: {message}", "query")]}
        key = roots[0].alias.value if roots[0].alias else roots[0].name.value
        connection = result.data[key]
        nodes = [e["node"] for e in connection.get("edges") or []] + list(
            connection.get("nodes") or [])
        lines: list[bytes] = []
        objects = sum(jsonl_lines(n, None, lines) for n in nodes)
        number = 70_000_000_000 + len(self.bulk) + 1
        url = f"{self.base_url}{BULK_PATH}/{number}.jsonl?signature={self.bulk_signature(number)}"
        op = BulkOp(number, query, self.shop.now(), b"".join(line + b"\n" for line in lines),
                    objects, len(nodes), url)
        self.bulk.append(op)
        del self.bulk[:-100]
        return {"bulkOperation": op, "userErrors": []}

    def bulk_signature(self, number: int) -> str:
        return hmac.new(f"{self.shop.secret}:bulk".encode(), str(number).encode(),
                        hashlib.sha256).hexdigest()

    async def bulk_result(self, request: Request) -> Response:
        """The signed download of a completed bulk operation's JSONL."""
        name = request.path_params["name"]
        number = int(name) if name.isdigit() else -1
        found = [op for op in self.bulk if op.number == number and op.completed_at]
        signature = request.query_params.get("signature", "")
        if not found or not hmac.compare_digest(signature, self.bulk_signature(number)):
            return Response("AccessDenied", 403, media_type="text/plain")
        return Response(found[0].result, 200, media_type="application/jsonl")

    def _log_write(self, info: Info, mutation: str,
                   changes: list[dict[str, Any]]) -> None:
        key = self._idempotency_key(info) or ""
        if key:
            self.writes_by_key[key] += 1
        self.writes.append(EffectiveWrite(key, mutation, self.shop.now(), changes))
        del self.writes[:-10_000]

    # -- the endpoint ------------------------------------------------------------------------

    def run(self, query: str, variables: dict[str, Any] | None,
            operation_name: str | None) -> dict[str, Any]:
        """Parse, validate, cost, throttle, execute: the response body (always HTTP 200)."""
        document = self._document(query)
        if isinstance(document, list):
            return {"errors": document}
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        chosen = [o for o in operations if operation_name is None
                  or (o.name and o.name.value == operation_name)]
        if len(chosen) != 1:
            message = (f'No operation named "{operation_name}"' if operation_name
                       else "An operation name is required when sending multiple operations.")
            return {"errors": [{"message": message}]}
        operation = chosen[0]
        fragments = {d.name.value: d for d in document.definitions
                     if isinstance(d, FragmentDefinitionNode)}
        mutation = operation.operation.value == "mutation"
        root = self.schema.mutation_type if mutation else self.schema.query_type
        cost = Cost(self.schema, fragments, variables or {})
        requested = cost.requested(operation.selection_set, root, mutation=mutation)
        if requested > MAX_QUERY_COST:
            return {"errors": [{
                "message": f"Query cost is {requested}, which exceeds the single query max "
                           f"cost limit ({MAX_QUERY_COST}).",
                "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested,
                               "maxCost": MAX_QUERY_COST,
                               "documentation": RATE_LIMITS_DOC}}],
                "extensions": {"cost": {"requestedQueryCost": requested,
                                        "actualQueryCost": None,
                                        "throttleStatus": self.bucket.status()}}}
        if requested > self.bucket.refill():
            return {"errors": [{"message": "Throttled",
                                "extensions": {"code": "THROTTLED",
                                               "documentation": RATE_LIMITS_DOC}}],
                    "extensions": {"cost": {"requestedQueryCost": requested,
                                            "actualQueryCost": None,
                                            "throttleStatus": self.bucket.status()}}}
        result = execute_sync(self.schema, document, variable_values=variables,
                              operation_name=operation_name)
        body: dict[str, Any] = {}
        if result.errors:
            body["errors"] = [e.formatted for e in result.errors]
        data = result.data
        body["data"] = data
        actual = cost.actual(operation.selection_set, root, data, mutation=mutation)
        self.bucket.available -= actual
        body["extensions"] = {"cost": {"requestedQueryCost": requested,
                                       "actualQueryCost": actual,
                                       "throttleStatus": self.bucket.status()}}
        return body

    def _document(self, query: str) -> DocumentNode | list[dict[str, Any]]:
        """The query parsed and validated, or its errors; the last 256 queries are kept."""
        known = self._documents.get(query)
        if known is not None:
            self._documents.move_to_end(query)
            return known
        try:
            document = parse(query)
        except GraphQLError as exc:
            return [dict(exc.formatted)]
        problems = validate(self.schema, document)
        found: DocumentNode | list[dict[str, Any]] = (
            [dict(p.formatted) for p in problems] if problems else document)
        self._documents[query] = found
        if len(self._documents) > 256:
            self._documents.popitem(last=False)
        return found

    async def endpoint(self, request: Request) -> Response:
        raw = await request.body()
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type == "application/graphql":
            payload: Any = {"query": raw.decode("utf-8", "replace")}
        else:
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return reply({"errors": [{"message": "Invalid JSON in request body"}]}, 400)
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return reply({"errors": [{"message": "No query string was present"}]}, 400)
        variables = payload.get("variables")
        if variables is not None and not isinstance(variables, dict):
            return reply({"errors": [{"message": "Variables must be a JSON object"}]}, 400)
        operation = payload.get("operationName")
        if operation is not None and not isinstance(operation, str):
            return reply({"errors": [{"message": "operationName must be a string"}]}, 400)
        self.base_url = str(request.base_url).rstrip("/")
        return reply(self.run(payload["query"], variables, operation or None))

    def writes_json(self) -> dict[str, Any]:
        return {"byKey": dict(self.writes_by_key),
                "writes": [{"key": w.key, "mutation": w.mutation, "at": w.at,
                            "changes": w.changes} for w in self.writes]}


def reply(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, default=str), status, media_type="application/json")

