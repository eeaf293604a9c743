"""The contract between connectors, merge rules, cache and schema: plain immutable records.

Connectors turn each system's native payloads into these; nothing above ``resolvers/`` ever
sees a native format. Identifiers here are always unified: ``sku`` and ``location_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from resolvers.errors import OutOfRange

# Every quantity the schema exposes is a GraphQL ``Int``: a signed 32-bit integer. A value
# outside it cannot be served, so none is accepted: webhook intake dead-letters it and a
# polled answer holding one is a BackendProtocolError (ValueOutOfRange). Numbers the gateway
# computes from accepted ones (derived on-hand, availability over locations, deltas) saturate
# at the bounds instead (see :func:`saturate`).
INT_MIN = -(2**31)
INT_MAX = 2**31 - 1
# Versions (sequence numbers, epoch microseconds) are compared as Lua numbers (doubles) by
# the cache's scripts: exact up to 2**53 - 1, so none may be larger.
MAX_VERSION = 2**53 - 1


def bounded(value: int | Decimal, what: str, low: int = INT_MIN, high: int = INT_MAX) -> int:
    """``value`` as an int if ``low <= value <= high``; else :class:`OutOfRange` naming
    ``what`` (a Decimal is compared before it is converted: no huge integer is built)."""
    if not low <= value <= high:
        raise OutOfRange(f"{what} {value} is out of range ({low}..{high})")
    return int(value)


def saturate(value: int) -> int:
    """A computed quantity clamped to the GraphQL ``Int`` range: a sum past 2**31 - 1 is
    served as 2147483647 ("at least that many"), never as an error."""
    return INT_MIN if value < INT_MIN else INT_MAX if value > INT_MAX else value


class LocationType(StrEnum):
    STORE = "STORE"
    WAREHOUSE = "WAREHOUSE"


@dataclass(frozen=True, slots=True)
class Quantities:
    """Stock quantities as one system reports them; ``None`` means the system does not say.

    Semantics follow Shopify's quantity names: ``on_hand = available + committed +
    quality_control + damaged + safety_stock``; ``incoming`` is not physically present.
    """

    on_hand: int | None = None
    available: int | None = None
    committed: int | None = None
    incoming: int | None = None
    quality_control: int | None = None
    damaged: int | None = None


@dataclass(frozen=True, slots=True)
class StockView:
    """One system's view of one SKU at one location."""

    sku: str
    location_id: str
    source: str  # backend name, e.g. "pos"
    quantities: Quantities
    as_of: datetime
    # Orders this view against others from the same source (sequence number or timestamp).
    version: str = ""


@dataclass(frozen=True, slots=True)
class ExternalRef:
    """An identifier in another system: ``namespace`` is a format name or ``gs1``."""

    namespace: str  # "square" | "shopify" | "epcis" | "erp" | "gs1"
    kind: str  # e.g. "location_id", "catalog_object_id", "gln"
    value: str


@dataclass(frozen=True, slots=True)
class MasterItem:
    """The ERP's item master record."""

    sku: str
    item_number: str
    gtin14: str | None
    name: str
    category: str | None
    list_price: Decimal
    cost: Decimal | None
    currency: str
    safety_stock: int
    source: str
    as_of: datetime


@dataclass(frozen=True, slots=True)
class OnlineListing:
    """The e-commerce platform's variant of a SKU."""

    sku: str
    product_id: str
    variant_id: str
    inventory_item_id: str
    title: str
    price: Decimal
    currency: str
    status: str
    barcode: str | None
    source: str
    as_of: datetime


@dataclass(frozen=True, slots=True)
class StoreListing:
    """The POS catalog's item variation of a SKU."""

    sku: str | None  # None when the POS catalog has no SKU on the variation
    catalog_object_id: str
    upc: str | None
    name: str
    price: Decimal | None
    currency: str
    source: str
    as_of: datetime


@dataclass(frozen=True, slots=True)
class LocationRecord:
    """A location from the ERP's location master, with its identifiers in other systems."""

    id: str
    name: str
    type: LocationType
    gln: str | None
    refs: tuple[ExternalRef, ...]
    source: str
    as_of: datetime


@dataclass(frozen=True, slots=True)
class NativeLocation:
    """A location as a non-master system lists it, before identity resolution."""

    namespace: str
    native_id: str
    name: str


@dataclass(frozen=True, slots=True)
class PurchaseOrderLine:
    """An ERP purchase-order line: stock on its way to a location."""

    po_number: str
    sku: str
    location_id: str
    quantity_ordered: int
    quantity_received: int
    expected_at: datetime | None
    status: str
    source: str
    as_of: datetime


@dataclass(frozen=True, slots=True)
class UnmappedIdentifier:
    """An identifier a system sent that maps to no SKU or location; reported, never dropped."""

    namespace: str
    kind: str
    value: str
    reason: str
    seen_in: str = ""


@dataclass(slots=True)
class Page:
    """One page of a Relay-style listing."""

    items: list[MasterItem] = field(default_factory=list)
    end_cursor: str | None = None
    has_next_page: bool = False
