"""The unified retail model: GraphQL object types, each a thin view over a merged record.

Leaf fields are plain attributes (sync, cheap); only fields that need another backend's data
are async and go through the request's DataLoaders (see ``resolvers/loaders.py``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import strawberry

from resolvers import merge
from resolvers.access import DISCREPANCIES_READ, STOCK_READ, Forbidden
from resolvers.errors import BadUserInput
from resolvers.identity import node_id
from resolvers.types import (
    LocationRecord,
    MasterItem,
)
from resolvers.types import LocationType as LocationTypeEnum
from resolvers.types import (
    PurchaseOrderLine as PurchaseOrderLineRecord,
)
from resolvers.types import (
    UnmappedIdentifier as UnmappedRecord,
)
from schema.context import Ctx
from schema.permissions import requires
from schema.sources import SourceView, source_views

if TYPE_CHECKING:
    from collections.abc import Sequence

# strawberry.enum registers the enum class itself (and returns it): fields are annotated with
# the classes, LocationTypeEnum and merge.Channel.
LocationType = strawberry.enum(LocationTypeEnum, name="LocationType",
                               description="What a location is for.")
Channel = strawberry.enum(merge.Channel, name="Channel",
                          description="A sales channel: ONLINE ships from warehouses, "
                                      "STORE sells from store shelves.")


@strawberry.type(description="An amount of money in a currency.")
class Money:
    amount: Decimal = strawberry.field(description="Amount in major units, as a decimal string.")
    currency_code: str = strawberry.field(description="ISO 4217 currency code.")


@strawberry.type(description="This thing's identifier in another system.")
class ExternalId:
    namespace: str = strawberry.field(description="Identifier scheme: square, shopify, erp, gs1.")
    kind: str = strawberry.field(description="Which identifier, e.g. catalog_object_id, gln.")
    value: str = strawberry.field(description="The identifier as that system spells it.")


@strawberry.interface(description="An object with a globally unique id (Relay Global Object "
                                  "Identification): fetch it again with Query.node(id:), and "
                                  "client caches (Apollo InMemoryCache, urql graphcache, Relay) "
                                  "normalise it without configuration. A Location's id is its "
                                  "location code; every other type's id is opaque.")
class Node:
    id: strawberry.ID = strawberry.field(description="Globally unique, stable id.")


# Federation v2 entities (keys below): other subgraphs of a supergraph extend Product by
# `sku`, Location by `id` and StockLevel by `sku location { id }` (see schema.federation_sdl).
@strawberry.federation.type(keys=["id"],
                            description="A store or warehouse, from the ERP's location master.")
class Location(Node):
    id: strawberry.ID = strawberry.field(description="Unified location id (ERP location code): "
                                                     "also its global Node id, and what every "
                                                     "locationIds argument takes.")
    name: str = strawberry.field(description="Display name.")
    type: LocationTypeEnum = strawberry.field(description="STORE or WAREHOUSE.")
    gln: str | None = strawberry.field(description="GS1 Global Location Number.")
    external_ids: list[ExternalId] = strawberry.field(
        description="This location's ids in the POS, e-commerce platform and WMS.")

    @classmethod
    def of(cls, r: LocationRecord) -> Location:
        refs = [ExternalId(namespace=x.namespace, kind=x.kind, value=x.value) for x in r.refs]
        if r.gln and not any((x.namespace, x.kind, x.value) == ("gs1", "gln", r.gln)
                             for x in r.refs):
            refs.append(ExternalId(namespace="gs1", kind="gln", value=r.gln))
        return cls(id=strawberry.ID(r.id), name=r.name, type=r.type, gln=r.gln,
                   external_ids=refs)

    @classmethod
    async def load(cls, info: Ctx, location_id: str) -> Location | None:
        """One location, as ``Query.location``, ``Query.node`` and ``_entities`` read it:
        FORBIDDEN outside the caller's locations."""
        record = await info.context.loaders.location(location_id)
        return cls.of(record) if record else None

    @classmethod
    async def resolve_reference(cls, info: Ctx, id: strawberry.ID) -> Location | None:
        """Federation ``_entities``: the location another subgraph refers to."""
        return await cls.load(info, str(id))


@strawberry.federation.type(keys=["sku location { id }"],
                            description="Stock of one SKU at one location, from that "
                                        "location's system of record (stores: POS; "
                                        "warehouses: WMS).")
class StockLevel(Node):
    id: strawberry.ID = strawberry.field(description="Global id of this SKU x location "
                                                     "(opaque).")
    sku: strawberry.ID = strawberry.field(description="The SKU.")
    location: Location = strawberry.field(description="Where the stock is.")
    on_hand: int = strawberry.field(description="Physically present: available + committed + "
                                                "quality control + damaged.")
    available: int = strawberry.field(description="Can be sold now at this location.")
    committed: int = strawberry.field(description="On orders (or reserved for sale), not yet "
                                                  "shipped or picked up.")
    incoming: int = strawberry.field(description="On its way here (purchase orders, transfers); "
                                                 "not on hand.")
    quality_control: int = strawberry.field(description="Received, awaiting inspection/putaway.")
    damaged: int = strawberry.field(description="On hand but not sellable.")
    safety_stock: int = strawberry.field(description="Held back from online sale (ERP setting).")
    sellable: int = strawberry.field(description="available minus safety stock, at least 0.")
    reserved: int = strawberry.field(description="Units held here by retailgraph's "
                                                 "reservations (ACTIVE, and COMMITTED until "
                                                 "the system of record shows the order).")
    available_to_sell: int = strawberry.field(description="available minus safety stock minus "
                                                          "reserved, at least 0: what a new "
                                                          "reservation or sale can take.")
    source: str = strawberry.field(description="Backend this value came from.")
    as_of: datetime = strawberry.field(description="When the source computed this value.")
    stale: bool = strawberry.field(description="True when served from cache while the source is "
                                               "unreachable.")

    @strawberry.field(description="Every system's view of this stock level next to the system "
                                  "of record's: the web shop (warehouses) and the ERP's "
                                  "snapshot, each with its age. Needs discrepancies:read.",
                      extensions=[requires(DISCREPANCIES_READ)])
    async def views(self, info: Ctx) -> list[SourceView]:
        return await source_views(info, str(self.sku), str(self.location.id))

    @classmethod
    def of(cls, r: merge.StockLevelRecord) -> StockLevel:
        return cls(id=strawberry.ID(node_id("StockLevel", stock_level_key(r.sku, r.location.id))),
                   sku=strawberry.ID(r.sku), location=Location.of(r.location), on_hand=r.on_hand,
                   available=r.available, committed=r.committed, incoming=r.incoming,
                   quality_control=r.quality_control, damaged=r.damaged,
                   safety_stock=r.safety_stock, sellable=r.sellable, reserved=r.reserved,
                   available_to_sell=r.available_to_sell, source=r.source,
                   as_of=r.as_of, stale=r.stale)

    @classmethod
    async def load(cls, info: Ctx, sku: str, location_id: str) -> StockLevel | None:
        """One level, as ``Query.stockLevel``, ``Query.node`` and ``_entities`` read it:
        FORBIDDEN without the stock:read scope or outside the caller's locations."""
        principal = info.context.principal
        if not principal.has(STOCK_READ):
            raise Forbidden(f"the {STOCK_READ} scope is required for StockLevel")
        principal.require_location(location_id)
        levels = await info.context.loaders.stock(sku, [location_id])
        return cls.of(levels[0]) if levels else None

    @classmethod
    async def resolve_reference(cls, info: Ctx, sku: strawberry.ID,
                                location: dict[str, Any]) -> StockLevel | None:
        """Federation ``_entities``: the level another subgraph refers to by SKU and location,
        with the permissions of ``Query.stockLevel``."""
        return await cls.load(info, str(sku), str(location["id"]))


def stock_level_key(sku: str, location_id: str) -> str:
    """The key in a StockLevel's global id: ``["<sku>","<location id>"]`` (JSON, so any
    character in either part stays unambiguous)."""
    return orjson.dumps([sku, location_id]).decode()


def parse_stock_level_key(key: str) -> tuple[str, str] | None:
    try:
        parts = orjson.loads(key)
    except orjson.JSONDecodeError:
        return None
    if (not isinstance(parts, list) or len(parts) != 2
            or not all(isinstance(x, str) for x in parts)):
        return None
    return parts[0], parts[1]


@strawberry.type(description="How many units of a SKU can be promised on a channel.")
class Availability:
    channel: merge.Channel = strawberry.field(description="The channel.")
    available: int = strawberry.field(
        description="The sum of availableToSell over the locations serving the channel "
                    "(ONLINE: warehouses, WMS available - safety stock - reserved; STORE: "
                    "stores, POS available - reserved). A sum past 2147483647 is served as "
                    "2147483647 (at least that many).")
    by_location: list[StockLevel] = strawberry.field(
        description="The levels this number is made of.")
    sources: list[str] = strawberry.field(description="Backends the number was computed from.")
    as_of: datetime | None = strawberry.field(description="Newest asOf of the levels used.")

    @classmethod
    def of(cls, r: merge.AvailabilityRecord) -> Availability:
        return cls(channel=r.channel, available=r.available,
                   by_location=[StockLevel.of(x) for x in r.by_location], sources=r.sources,
                   as_of=r.as_of)


@strawberry.type(description="A price on a channel, with where it came from.")
class ChannelPrice:
    channel: merge.Channel | None = strawberry.field(
        description="Channel; null for the ERP list price.")
    price: Money = strawberry.field(description="The price.")
    source: str = strawberry.field(description="Backend the price came from.")
    as_of: datetime = strawberry.field(description="When the source last changed it.")


@strawberry.type(description="The product as the web shop presents it.")
class OnlineListing:
    title: str = strawberry.field(description="Title shown online.")
    status: str = strawberry.field(description="Shop status, e.g. active, draft, archived.")
    product_id: str = strawberry.field(description="Shop product id.")
    variant_id: str = strawberry.field(description="Shop variant id.")
    source: str = strawberry.field(description="Backend the listing came from.")
    as_of: datetime = strawberry.field(description="When the listing last changed.")


@strawberry.type(description="An open purchase-order line: stock on its way to a location.")
class PurchaseOrderLine:
    po_number: str = strawberry.field(description="ERP purchase order number.")
    location_id: strawberry.ID = strawberry.field(description="Receiving location.")
    quantity_ordered: int = strawberry.field(description="Units ordered.")
    quantity_received: int = strawberry.field(description="Units received so far.")
    expected_at: datetime | None = strawberry.field(description="Expected delivery.")
    status: str = strawberry.field(description="OPEN, PARTIALLY_RECEIVED or RECEIVED.")

    @classmethod
    def of(cls, r: PurchaseOrderLineRecord) -> PurchaseOrderLine:
        return cls(po_number=r.po_number, location_id=strawberry.ID(r.location_id),
                   quantity_ordered=r.quantity_ordered, quantity_received=r.quantity_received,
                   expected_at=r.expected_at, status=r.status)


@strawberry.type(description="An identifier a system sent that maps to no SKU or location.")
class UnmappedIdentifier:
    namespace: str = strawberry.field(description="Identifier scheme.")
    kind: str = strawberry.field(description="Which identifier.")
    value: str = strawberry.field(description="The identifier.")
    reason: str = strawberry.field(description="Why it could not be mapped.")
    seen_in: str = strawberry.field(description="Where it was seen.")

    @classmethod
    def of(cls, r: UnmappedRecord) -> UnmappedIdentifier:
        return cls(namespace=r.namespace, kind=r.kind, value=r.value, reason=r.reason,
                   seen_in=r.seen_in)


@strawberry.federation.type(keys=["sku"],
                            description="A sellable item: master data from the ERP, joined "
                                        "with its online listing, store price and stock "
                                        "everywhere.")
class Product(Node):
    id: strawberry.ID = strawberry.field(description="Global id of this product (opaque; the "
                                                     "SKU is `sku`).")
    sku: strawberry.ID = strawberry.field(description="Unified SKU.")
    item_number: str = strawberry.field(description="ERP item number.")
    gtin: str | None = strawberry.field(description="GTIN-14.")
    name: str = strawberry.field(description="Product name from the item master.")
    category: str | None = strawberry.field(description="Category from the item master.")
    price: Money = strawberry.field(description="ERP list price.")
    safety_stock: int = strawberry.field(description="Units per warehouse held back from online "
                                                     "sale.")
    source: str = strawberry.field(description="Backend of the master data.")
    as_of: datetime = strawberry.field(description="When the master record last changed.")

    @classmethod
    def of(cls, r: MasterItem) -> Product:
        return cls(id=strawberry.ID(node_id("Product", r.sku)), sku=strawberry.ID(r.sku),
                   item_number=r.item_number, gtin=r.gtin14,
                   name=r.name, category=r.category,
                   price=Money(amount=r.list_price, currency_code=r.currency),
                   safety_stock=r.safety_stock, source=r.source, as_of=r.as_of)

    @classmethod
    async def load(cls, info: Ctx, sku: str) -> Product | None:
        """One product, as ``Query.product``, ``Query.node`` and ``_entities`` read it."""
        item = await info.context.loaders.master.load(sku)
        return cls.of(item) if item else None

    @classmethod
    async def resolve_reference(cls, info: Ctx, sku: strawberry.ID) -> Product | None:
        """Federation ``_entities``: the product another subgraph refers to."""
        return await cls.load(info, str(sku))

    # Fields read from a backend at request time are nullable: when that backend is down only
    # they become null (with an error naming it), not the product or the whole page.
    @strawberry.field(description="Stock at every location (or the given ones), each from its "
                                  "system of record; null if one of them is unreachable (the "
                                  "error names it).",
                      extensions=[requires(STOCK_READ)])
    async def stock(self, info: Ctx,
                    location_ids: list[strawberry.ID] | None = None) -> list[StockLevel] | None:
        levels = await info.context.loaders.stock(str(self.sku), location_ids)
        return [StockLevel.of(x) for x in levels]

    @strawberry.field(description="What can be promised on a channel; null if the channel's "
                                  "system of record is unreachable (the error names it).",
                      extensions=[requires(STOCK_READ)])
    async def availability(self, info: Ctx,
                           channel: Annotated[merge.Channel, strawberry.argument(
                               description="ONLINE or STORE.")]) -> Availability | None:
        location_type = merge.CHANNEL_LOCATIONS[channel]
        levels = await info.context.loaders.stock(str(self.sku), location_type=location_type)
        return Availability.of(merge.availability(channel, levels))

    @strawberry.field(description="The web shop's listing, if the product is sold online.")
    def online(self, info: Ctx) -> OnlineListing | None:
        catalog = info.context.graph.catalog
        listing = catalog.online.get(str(self.sku)) if catalog else None
        if listing is None:
            return None
        return OnlineListing(title=listing.title, status=listing.status,
                             product_id=listing.product_id, variant_id=listing.variant_id,
                             source=listing.source, as_of=listing.as_of)

    @strawberry.field(description="List price (ERP), online price (web shop) and store price "
                                  "(POS).")
    def prices(self, info: Ctx) -> list[ChannelPrice]:
        out = [ChannelPrice(channel=None, price=self.price, source=self.source, as_of=self.as_of)]
        catalog = info.context.graph.catalog
        sku = str(self.sku)
        if catalog and (online := catalog.online.get(sku)):
            out.append(ChannelPrice(channel=merge.Channel.ONLINE,
                                    price=Money(amount=online.price, currency_code=online.currency),
                                    source=online.source, as_of=online.as_of))
        if catalog and (store := catalog.store.get(sku)) and store.price is not None:
            out.append(ChannelPrice(channel=merge.Channel.STORE,
                                    price=Money(amount=store.price, currency_code=store.currency),
                                    source=store.source, as_of=store.as_of))
        return out

    @strawberry.field(description="Open purchase-order lines for this SKU (ERP); null if the "
                                  "ERP is unreachable.",
                      extensions=[requires(STOCK_READ)])
    async def purchase_orders(self, info: Ctx) -> list[PurchaseOrderLine] | None:
        lines = await info.context.loaders.purchase_orders.load(str(self.sku))
        return [PurchaseOrderLine.of(x) for x in lines]


def check_page_size(first: int, limit: int) -> None:
    """Every paged field's ``first``: 1 to ``max_page_size`` (``limit``), else BAD_USER_INPUT."""
    if not 1 <= first <= limit:
        raise BadUserInput(f"first must be between 1 and {limit}, got {first}")


@strawberry.type(description="Relay page information.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="True when a later page exists.")
    has_previous_page: bool = strawberry.field(
        description="True when this page was asked for with `after`.")
    start_cursor: str | None = strawberry.field(
        description="Cursor of the first edge; null on an empty page.")
    end_cursor: str | None = strawberry.field(
        description="Cursor of the last edge: pass it as `after` for the next page.")


@strawberry.type(description="A product and its cursor.")
class ProductEdge:
    cursor: str = strawberry.field(description="Opaque position of this product in the list.")
    node: Product = strawberry.field(description="The product.")


@strawberry.type(description="A page of products, ordered by SKU.")
class ProductConnection:
    edges: list[ProductEdge] = strawberry.field(description="The products of this page.")
    page_info: PageInfo = strawberry.field(description="Where this page is in the list.")

    @strawberry.field(description="The products of this page, without cursors.")
    def nodes(self) -> list[Product]:
        return [edge.node for edge in self.edges]


def stock_levels(records: Sequence[merge.StockLevelRecord]) -> list[StockLevel]:
    return [StockLevel.of(r) for r in records]
