"""Root query fields."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable
from typing import Annotated

import strawberry

from resolvers.access import ADMIN, STOCK_READ
from resolvers.errors import BadUserInput
from resolvers.identity import parse_node_id
from resolvers.types import LocationType as LocationTypeEnum
from schema.context import Ctx
from schema.permissions import requires
from schema.reconciliation import (
    DiscrepancyConnection,
    SourceStatus,
    discrepancies_field,
    sync_status_field,
)
from schema.reservations import ReservationConnection, reservations_field
from schema.subscription import StockChangePage, stock_events
from schema.sync import SyncActionConnection, sync_actions_field
from schema.types import (
    Location,
    Node,
    PageInfo,
    Product,
    ProductConnection,
    ProductEdge,
    StockLevel,
    UnmappedIdentifier,
    check_page_size,
    parse_stock_level_key,
)

CURSOR_PREFIX = "sku:"


def encode_cursor(sku: str) -> str:
    return base64.urlsafe_b64encode((CURSOR_PREFIX + sku).encode()).decode()


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith(CURSOR_PREFIX):
        raise BadUserInput(f"invalid cursor {cursor!r}")
    return raw.removeprefix(CURSOR_PREFIX)


async def resolve_node(info: Ctx, id: str) -> Node | None:
    """``Query.node``: a global id of ours (base64 of ``Type:key``) names its type; anything
    else is a location code (the ERP's location master refuses codes of the other form)."""
    parsed = parse_node_id(id)
    if parsed is None:
        return await Location.load(info, id)
    type_name, key = parsed
    if type_name == "Product":
        return await Product.load(info, key)
    if type_name == "StockLevel" and (cell := parse_stock_level_key(key)):
        return await StockLevel.load(info, *cell)
    return None


@strawberry.type(description="Read the unified retail graph.")
class Query:
    @strawberry.field(description="One product by SKU; null if the item master has no such SKU.")
    async def product(self, info: Ctx, sku: strawberry.ID) -> Product | None:
        return await Product.load(info, str(sku))

    @strawberry.field(description="Products in SKU order, Relay-style.")
    async def products(self, info: Ctx,
                       first: Annotated[int, strawberry.argument(
                           description="Page size, 1 to the configured maximum.")] = 50,
                       after: Annotated[str | None, strawberry.argument(
                           description="endCursor of the previous page.")] = None,
                       ) -> ProductConnection:
        limit = info.context.graph.settings.max_page_size
        check_page_size(first, limit)
        after_sku = decode_cursor(after) if after else None
        items, next_cursor = await info.context.graph.backends.erp.items_page(after_sku, first)
        info.context.loaders.master.prime_many({item.sku: item for item in items})
        edges = [ProductEdge(cursor=encode_cursor(i.sku), node=Product.of(i)) for i in items]
        return ProductConnection(edges=edges, page_info=PageInfo(
            has_next_page=next_cursor is not None, has_previous_page=after is not None,
            start_cursor=edges[0].cursor if edges else None,
            end_cursor=edges[-1].cursor if edges else None))

    @strawberry.field(description="One location by id.")
    async def location(self, info: Ctx, id: strawberry.ID) -> Location | None:
        return await Location.load(info, str(id))

    @strawberry.field(description="All locations, optionally of one type, ordered by id.")
    async def locations(self, info: Ctx, type: LocationTypeEnum | None = None) -> list[Location]:
        return [Location.of(r) for r in await info.context.loaders.locations()
                if type is None or r.type is type]

    @strawberry.field(description="Stock of one SKU at one location.",
                      extensions=[requires(STOCK_READ)])
    async def stock_level(self, info: Ctx, sku: strawberry.ID,
                          location_id: strawberry.ID) -> StockLevel | None:
        return await StockLevel.load(info, str(sku), str(location_id))

    @strawberry.field(description="The object with this global id (Relay), with the same "
                                  "permissions as the root field that reads it (product, "
                                  "location, stockLevel); null if there is none.")
    async def node(self, info: Ctx, id: strawberry.ID) -> Node | None:
        return await resolve_node(info, str(id))

    @strawberry.field(description="The objects with these global ids, in order; each is null "
                                  "if there is none, or null with an error if the caller may "
                                  "not read it.",
                      graphql_type=list[Node | None])
    def nodes(self, info: Ctx, ids: list[strawberry.ID]) -> list[Awaitable[Node | None]]:
        # Each item is awaited on its own: one FORBIDDEN id nulls only its own entry.
        return [resolve_node(info, str(x)) for x in ids]

    stock_events: StockChangePage | None = strawberry.field(
        resolver=stock_events, extensions=[requires(STOCK_READ)],
        description="Past stock changes with the movement that caused each, oldest first; "
                    "subscribe with after: endCursor to continue live without a gap. Null "
                    "(FORBIDDEN) without the stock:read scope or for another's location.")

    @strawberry.field(description="Identifiers some system sent that map to no SKU or location. "
                                  "Fix them in the systems or in the mapping file.",
                      extensions=[requires(ADMIN)])
    async def unmapped_identifiers(self, info: Ctx) -> list[UnmappedIdentifier]:
        await info.context.graph.ready_catalog()
        return [UnmappedIdentifier.of(u) for u in info.context.graph.unmapped()]

    # Reservations (schema/reservations.py; scope stock:reserve).
    reservations: ReservationConnection | None = reservations_field

    # Where the systems disagree (schema/reconciliation.py; scope discrepancies:read).
    discrepancies: DiscrepancyConnection | None = discrepancies_field
    sync_status: list[SourceStatus] = sync_status_field
    # What sync pushed where (schema/sync.py; scope sync:read).
    sync_actions: SyncActionConnection | None = sync_actions_field

