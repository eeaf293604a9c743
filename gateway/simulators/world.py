"""The seeded retail world every simulator starts from.

One seed gives the same items, locations, identifiers and opening stock in every simulator,
so four independent processes agree on what exists while each keeps its own state. Opening
quantities are a pure function of (seed, item, location): nothing is materialised until a
cell changes, so 100,000 SKUs x 50 locations load in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property

MASK64 = (1 << 64) - 1
COMPANY_PREFIX = "701234"  # GS1 company prefix (6 digits) of the demo retailer
SQUARE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ0123456789"
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
CACHED = 16_384  # items (and store cells) a World keeps built

ADJECTIVES = ("Classic", "Organic", "Everyday", "Premium", "Trail", "Urban", "Soft", "Bold",
              "Nordic", "Coastal", "Vintage", "Light")
NOUNS = ("T-Shirt", "Hoodie", "Sneaker", "Backpack", "Mug", "Candle", "Jacket", "Scarf",
         "Water Bottle", "Notebook", "Beanie", "Socks", "Lamp", "Blanket")
COLOURS = ("Red", "Navy", "Black", "White", "Olive", "Sand", "Grey", "Teal")
CATEGORIES = {"T-Shirt": "Apparel", "Hoodie": "Apparel", "Jacket": "Apparel", "Scarf": "Apparel",
              "Beanie": "Apparel", "Socks": "Apparel", "Sneaker": "Footwear",
              "Backpack": "Accessories", "Water Bottle": "Accessories", "Mug": "Home",
              "Candle": "Home", "Lamp": "Home", "Blanket": "Home", "Notebook": "Stationery"}
CITIES = ("Oslo", "Bergen", "Trondheim", "Stavanger", "Tromsø", "Drammen", "Kristiansand",
          "Fredrikstad", "Bodø", "Ålesund", "Tønsberg", "Moss", "Hamar", "Molde", "Harstad")


def mix(*parts: int) -> int:
    """SplitMix64 over the parts: a fast, well-distributed, deterministic hash."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (part & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & MASK64
        h ^= h >> 31
    return h


def gs1_check_digit(body: str) -> str:
    """Mod-10 check digit, weights 3 and 1 from the right (GS1 General Specifications 7.9.1)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


@dataclass(frozen=True, slots=True)
class Item:
    index: int
    sku: str
    item_number: str  # ERP material number
    gtin13: str
    name: str
    category: str
    list_price: Decimal
    cost: Decimal
    online_price: Decimal
    safety_stock: int
    square_variation_id: str
    shopify_product_id: int
    shopify_variant_id: int
    shopify_inventory_item_id: int

    @property
    def gtin14(self) -> str:
        return "0" + self.gtin13


@dataclass(frozen=True, slots=True)
class Location:
    index: int
    code: str  # ERP location code, also the unified location id
    name: str
    type: str  # "STORE" | "WAREHOUSE"
    gln: str
    square_id: str | None  # stores only
    shopify_id: int | None  # warehouses only (they fulfil online orders)

    @property
    def sgln(self) -> str:
        """EPCIS location URN (company prefix . location reference . extension 0)."""
        return f"urn:epc:id:sgln:{COMPANY_PREFIX}.{self.gln[6:12]}.0"


@dataclass(frozen=True, slots=True)
class WarehouseBalance:
    on_hand: int
    allocated: int
    quality_control: int
    damaged: int
    incoming: int

    @property
    def available(self) -> int:
        return max(0, self.on_hand - self.allocated - self.quality_control - self.damaged)


class World:
    """Deterministic catalog, locations and opening stock for a seed and a size."""

    def __init__(self, seed: int = 42, skus: int = 200, stores: int = 8, warehouses: int = 2):
        if skus < 1 or stores < 0 or warehouses < 1:
            raise ValueError("need at least one SKU and one warehouse")
        if skus > 999_999 or stores > 999 or warehouses > 99:
            raise ValueError("at most 999,999 SKUs, 999 stores and 99 warehouses")
        self.seed = seed
        self.n_skus = skus
        self.n_stores = stores
        self.n_warehouses = warehouses
        self.snapshot_as_of = datetime.now(UTC).replace(hour=0, minute=0, second=0,
                                                        microsecond=0)
        # Pure, but ~10 us an item: a page of 1,000 rows names the same few items again and
        # again (one row per item x location), so the last few thousand are kept.
        self._items: dict[int, Item] = {}
        self._store_counts: dict[tuple[int, int], tuple[int, int]] = {}

    def _h(self, *parts: int) -> int:
        return mix(self.seed, *parts)

    def _square_id(self, kind: int, index: int, length: int) -> str:
        h, out = self._h(kind, index), []
        for _ in range(length):
            out.append(SQUARE_ALPHABET[h & 31])
            h >>= 5
            if h < 32:
                h = mix(h, kind, index, len(out))
        return "".join(out)

    def item(self, i: int) -> Item:
        found = self._items.get(i)
        if found is None:
            if len(self._items) >= CACHED:
                self._items.clear()
            found = self._items[i] = self._item(i)
        return found

    def _item(self, i: int) -> Item:
        h = self._h(1, i)
        noun = NOUNS[(h >> 8) % len(NOUNS)]
        name = f"{ADJECTIVES[h % len(ADJECTIVES)]} {noun} {COLOURS[(h >> 16) % len(COLOURS)]}"
        cents = 99 + 100 * (4 + (h >> 24) % 120)
        price = Decimal(cents) / 100
        online = price if (h >> 40) % 4 else (Decimal(cents) * Decimal("0.9")).quantize(
            Decimal("1")) / 100
        ref = f"{i:06d}"
        return Item(
            index=i, sku=f"SKU-{i + 1:06d}", item_number=f"{10_000_000 + i * 7}",
            gtin13=COMPANY_PREFIX + ref + gs1_check_digit(COMPANY_PREFIX + ref),
            name=name, category=CATEGORIES[noun], list_price=price,
            cost=(price * Decimal("0.45")).quantize(Decimal("0.01")),
            online_price=online, safety_stock=(h >> 32) % 4,
            square_variation_id=self._square_id(2, i, 24),
            shopify_product_id=8_000_000_000_000 + i, shopify_variant_id=45_000_000_000_000 + i,
            shopify_inventory_item_id=47_000_000_000_000 + i,
        )

    @cached_property
    def items(self) -> list[Item]:
        return [self.item(i) for i in range(self.n_skus)]

    @cached_property
    def locations(self) -> list[Location]:
        out: list[Location] = []
        for s in range(self.n_stores):
            ref = f"{100 + s:06d}"
            out.append(Location(
                index=len(out), code=f"ST{s + 1:03d}",
                name=f"Store {s + 1:03d} {CITIES[s % len(CITIES)]}", type="STORE",
                gln=COMPANY_PREFIX + ref + gs1_check_digit(COMPANY_PREFIX + ref),
                square_id=self._square_id(3, s, 13), shopify_id=None))
        for w in range(self.n_warehouses):
            ref = f"{900 + w:06d}"
            out.append(Location(
                index=len(out), code=f"WH{w + 1:02d}", name=f"Warehouse {w + 1:02d}",
                type="WAREHOUSE",
                gln=COMPANY_PREFIX + ref + gs1_check_digit(COMPANY_PREFIX + ref),
                square_id=None, shopify_id=70_000_000_000 + w))
        return out

    @property
    def stores(self) -> list[Location]:
        return [loc for loc in self.locations if loc.type == "STORE"]

    @property
    def warehouses(self) -> list[Location]:
        return [loc for loc in self.locations if loc.type == "WAREHOUSE"]

    # -- opening stock: pure functions of (seed, item, location) ------------------------------

    def store_counts(self, i: int, loc: int) -> tuple[int, int]:
        """Square IN_STOCK and RESERVED_FOR_SALE at a store."""
        found = self._store_counts.get((i, loc))
        if found is None:  # asked once per Square state of a cell: kept for a while
            if len(self._store_counts) >= CACHED:
                self._store_counts.clear()
            h = self._h(10, i, loc)
            found = self._store_counts[i, loc] = (h % 30, (h >> 8) % 3)
        return found

    def warehouse_balance(self, i: int, loc: int) -> WarehouseBalance:
        h = self._h(11, i, loc)
        incoming = 24 * (1 + (h >> 24) % 4) if (h >> 21) % 5 == 0 else 0
        return WarehouseBalance(on_hand=40 + h % 300, allocated=(h >> 9) % 8,
                                quality_control=(h >> 13) % 5,
                                damaged=1 if (h >> 17) % 3 == 0 else 0, incoming=incoming)

    def online_committed(self, i: int, loc: int) -> int:
        """Units on unfulfilled online orders at a fulfilment warehouse."""
        return (self._h(12, i, loc) >> 3) % 3

    def erp_snapshot_on_hand(self, i: int, loc: int) -> int:
        """Last night's ERP view: the opening on-hand, with a little deterministic drift."""
        location = self.locations[loc]
        if location.type == "STORE":
            in_stock, reserved = self.store_counts(i, loc)
            on_hand = in_stock + reserved
        else:
            on_hand = self.warehouse_balance(i, loc).on_hand
        h = self._h(13, i, loc)
        if h % 25 == 0:
            on_hand = max(0, on_hand + (1 + (h >> 8) % 3) * (1 if (h >> 16) & 1 else -1))
        return on_hand

    def purchase_orders(self) -> list[tuple[str, int, int, int, datetime]]:
        """Open POs as (po number, item index, warehouse index, quantity, expected date).

        They are the source of every warehouse's ``incoming`` quantity.
        """
        out = []
        for w in self.warehouses:
            for i in range(self.n_skus):
                qty = self.warehouse_balance(i, w.index).incoming
                if qty:
                    h = self._h(14, i, w.index)
                    out.append((f"PO-{w.code}-{i + 1:06d}", i, w.index, qty,
                                EPOCH + timedelta(days=400 + h % 30)))
        return out
