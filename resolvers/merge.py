"""Merge rules: which system is the system of record for what, in one place.

| data                          | system of record (format) | why                                  |
|-------------------------------|---------------------------|--------------------------------------|
| stock at stores               | POS (square)              | the till sees every sale first       |
| stock at warehouses           | WMS (epcis)               | it moves the boxes                   |
| item master, locations, POs   | ERP (erp)                 | the master data system               |
| online title, price, status   | e-commerce (shopify)      | what shoppers see                    |
| store shelf price             | POS (square)              | what the till charges                |

Available to sell at a location is ``max(0, available - safety stock - reserved)``: the
system of record's available, less what the ERP holds back from online sale (warehouses
only) and what retailgraph's reservations hold there (``resolvers/store/reservations.py``).
Online availability is what the fulfilment warehouses can ship: the sum of their available
to sell, where the WMS's available already excludes stock committed (allocated) to orders,
in quality control, or damaged. Store availability is the sum of the stores' available to
sell (the POS's IN_STOCK count less reservations). Every merged value keeps its ``source``
and ``as_of``.

Range: every quantity a system reports fits GraphQL's 32-bit ``Int`` (intake and the
connectors refuse others). What is computed here from them (on-hand derived from its parts,
sellable, availability summed over locations) saturates at 2,147,483,647 (and
-2,147,483,648): "at least that many", never an error and never more than is there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from resolvers.types import LocationRecord, LocationType, StockView, saturate


class Channel(StrEnum):
    ONLINE = "ONLINE"
    STORE = "STORE"


# Which backend format is the system of record for stock at each location type.
STOCK_SYSTEM_OF_RECORD: dict[LocationType, str] = {
    LocationType.STORE: "square",
    LocationType.WAREHOUSE: "epcis",
}
# Which location types serve each sales channel.
CHANNEL_LOCATIONS: dict[Channel, LocationType] = {
    Channel.ONLINE: LocationType.WAREHOUSE,
    Channel.STORE: LocationType.STORE,
}


@dataclass(frozen=True, slots=True)
class StockLevelRecord:
    """The merged stock of one SKU at one location, from its system of record."""

    sku: str
    location: LocationRecord
    on_hand: int
    available: int
    committed: int
    incoming: int
    quality_control: int
    damaged: int
    safety_stock: int
    source: str
    as_of: datetime
    stale: bool = False
    reserved: int = 0  # units held here by retailgraph's reservations

    @property
    def sellable(self) -> int:
        """What can be promised on this location's channel after safety stock."""
        return saturate(max(0, self.available - self.safety_stock))

    @property
    def available_to_sell(self) -> int:
        """Available minus safety stock minus reserved, at least 0."""
        return saturate(max(0, self.available - self.safety_stock - self.reserved))


@dataclass(frozen=True, slots=True)
class AvailabilityRecord:
    channel: Channel
    available: int
    by_location: list[StockLevelRecord]
    sources: list[str]
    as_of: datetime | None


@dataclass(frozen=True, slots=True)
class PriceRecord:
    channel: Channel | None  # None: the ERP list price
    amount: Decimal
    currency: str
    source: str
    as_of: datetime


def stock_level(view: StockView, location: LocationRecord, safety_stock: int,
                stale: bool = False, reserved: int = 0) -> StockLevelRecord:
    """A system-of-record view as a merged level; missing quantities count as zero.

    Safety stock (an ERP item setting) only holds back warehouse stock from online sale.
    """
    q = view.quantities
    available = q.available or 0
    committed = q.committed or 0
    quality_control = q.quality_control or 0
    damaged = q.damaged or 0
    on_hand = (q.on_hand if q.on_hand is not None
               else saturate(available + committed + quality_control + damaged))
    return StockLevelRecord(
        sku=view.sku, location=location, on_hand=on_hand, available=available,
        committed=committed, incoming=q.incoming or 0, quality_control=quality_control,
        damaged=damaged,
        safety_stock=safety_stock if location.type is LocationType.WAREHOUSE else 0,
        source=view.source, as_of=view.as_of, stale=stale, reserved=reserved)


def levels_for(views: Iterable[StockView], locations: dict[str, LocationRecord],
               safety_stock: int, location_ids: Sequence[str] | None = None,
               stale_sources: frozenset[str] | set[str] = frozenset(),
               reserved: dict[str, int] | None = None) -> list[StockLevelRecord]:
    """Merged levels for the views' locations, optionally filtered, ordered by location id.

    Values from a source in ``stale_sources`` (down, served from cache) are flagged stale;
    ``reserved`` gives the units held per location.
    """
    wanted = set(location_ids) if location_ids is not None else None
    held = reserved or {}
    out = [stock_level(v, locations[v.location_id], safety_stock, v.source in stale_sources,
                       held.get(v.location_id, 0))
           for v in views
           if v.location_id in locations and (wanted is None or v.location_id in wanted)]
    return sorted(out, key=lambda level: level.location.id)


def availability(channel: Channel, levels: Sequence[StockLevelRecord]) -> AvailabilityRecord:
    """Availability on a channel from the levels of the locations that serve it."""
    serving = [lv for lv in levels if lv.location.type is CHANNEL_LOCATIONS[channel]]
    return AvailabilityRecord(
        channel=channel,
        available=saturate(sum(lv.available_to_sell for lv in serving)),
        by_location=serving,
        sources=sorted({lv.source for lv in serving}),
        as_of=max((lv.as_of for lv in serving), default=None),
    )
