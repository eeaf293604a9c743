"""The sync rules: what retailgraph pushes to which system, in one place (pure functions).

- **Available-to-sell** (trigger: the system of record's level at a location that fulfils
  online orders: warehouses, and stores listed in ``sync.online_stores``): the web shop's
  ``available`` at that location := :func:`available_to_sell`.
- **The truth wins** (trigger: the shop's own level above what the system of record allows:
  an admin edit, a lost push, an ``ONLINE_OVERSELL_RISK`` from a re-check or a run): the same
  push, at once.
- **Item master** (trigger: an ERP ``item.updated``): the name to the shop's product and the
  POS catalog item (the list price to the POS too only with ``sync.pos_price_from_erp``),
  per field ownership (:func:`item_fields`); a changed
  safety stock recomputes available-to-sell everywhere the item is sold online.

Available-to-sell = the system of record's ``available`` (which already excludes units
committed to orders, in quality control or damaged) - the item's safety stock - the channel's
buffer - units held by retailgraph reservations, never below zero.

A shop level *below* the available-to-sell is left alone: the shop lowers its own
``available`` the moment it takes an order, before the warehouse has allocated it, and pushing
the warehouse's number back would sell those units twice. It is set when the system of record
next changes (and reconciliation lists a lasting difference).

Nothing here does I/O; :mod:`gateway.sync.executor` feeds these rules what the cache holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from gateway.config import SyncSettings
from resolvers.types import LocationRecord, LocationType, saturate


@dataclass(frozen=True, slots=True)
class Rules:
    """The rules' settings (from ``[sync]``, gateway.config.SyncSettings)."""

    enabled: bool = True
    buffer: int = 0
    location_buffers: tuple[tuple[str, int], ...] = ()
    online_stores: frozenset[str] = frozenset()
    exclude_locations: frozenset[str] = frozenset()
    items: bool = True
    pos_price_from_erp: bool = False

    @classmethod
    def of(cls, sync: SyncSettings) -> Rules:
        return cls(enabled=sync.enabled, buffer=sync.buffer,
                   location_buffers=tuple(sorted(sync.location_buffers.items())),
                   online_stores=frozenset(sync.online_stores),
                   exclude_locations=frozenset(sync.exclude_locations), items=sync.items,
                   pos_price_from_erp=sync.pos_price_from_erp)

    def buffer_at(self, location_id: str) -> int:
        return dict(self.location_buffers).get(location_id, self.buffer)


def fulfils_online(rules: Rules, location: LocationRecord) -> bool:
    """Whether the web shop sells this location's stock: warehouses by default, stores that
    ship or hold for collection when listed, never an excluded location."""
    if location.id in rules.exclude_locations:
        return False
    if location.type is LocationType.WAREHOUSE:
        return True
    return location.id in rules.online_stores


def available_to_sell(record_available: int | None, safety_stock: int, buffer: int,
                      reserved: int = 0) -> int:
    """The channel's available-to-sell: the system of record's available minus safety stock,
    the channel buffer and reserved units, never below zero (an unknown available is 0:
    nothing is promised that nobody counted)."""
    return saturate(max(0, (record_available or 0) - max(0, safety_stock) - max(0, buffer)
                        - max(0, reserved)))


def shop_drifted(shop_available: int | None, allowed: int) -> bool:
    """The shop offers more than the system of record allows: push at once."""
    return shop_available is not None and shop_available > allowed


def needs_write(target_holds: int | None, desired: int) -> bool:
    """A write is needed unless the target is known to hold the desired value already."""
    return target_holds is None or target_holds != desired


def is_echo(reported: int | None, written: int | None) -> bool:
    """The target's webhook reports the value we wrote last: our own write coming back."""
    return reported is not None and written is not None and reported == written


@dataclass(frozen=True, slots=True)
class ItemFields:
    name: str | None
    list_price: Decimal | None

    @property
    def empty(self) -> bool:
        return self.name is None and self.list_price is None


# Per-field ownership of the item master in each target role (the merge table in README.md):
# the ERP owns the name everywhere; the online price belongs to the shop (its own pricing and
# promotions) and the store shelf price to the POS, neither overwritten, unless
# ``sync.pos_price_from_erp`` says the ERP's list price is the shelf price.
ITEM_OWNERSHIP: dict[str, frozenset[str]] = {
    "shopify": frozenset({"name"}),
    "square": frozenset({"name"}),
}
ERP_PRICED_TILL: dict[str, frozenset[str]] = {**ITEM_OWNERSHIP,
                                              "square": frozenset({"name", "list_price"})}


def item_fields(target_format: str, name: str | None, list_price: Decimal | None,
                pos_price_from_erp: bool = False) -> ItemFields:
    """What of an ERP item update a target takes (``ITEM_OWNERSHIP``; with
    ``pos_price_from_erp`` the POS takes the list price as its shelf price too)."""
    owned = (ERP_PRICED_TILL if pos_price_from_erp else ITEM_OWNERSHIP).get(
        target_format, frozenset())
    return ItemFields(name=name if "name" in owned else None,
                      list_price=list_price if "list_price" in owned else None)


def backoff_seconds(attempt: int, base: float, cap: float, retry_after: float | None,
                    jitter: Callable[[], float]) -> float:
    """Delay before attempt ``attempt + 1``: exponential with full jitter (``jitter()`` in
    [0, 1)), at least what the target asked for (Retry-After / THROTTLED)."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    delay = ceiling / 2 + jitter() * ceiling / 2
    if retry_after is not None and retry_after > 0:
        delay = max(delay, retry_after + jitter() * base)
    return float(delay)


def throttled_seconds(retry_after: float, base: float, jitter: Callable[[], float]) -> float:
    """Delay after a THROTTLED / 429 answer: what the target asked, plus up to ``base`` of
    jitter (the writes it held back do not all come back at once). Not exponential, and no
    attempt towards the dead-letter list: a throttling target is up and says when to come
    back."""
    return float(max(0.0, retry_after) + jitter() * base)
