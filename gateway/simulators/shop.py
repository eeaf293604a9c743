"""The commerce simulator's shop: its state (products, variants, levels, orders), the change
every API goes through (:meth:`Shop.change_level`) and the REST resources its webhooks carry.
Shared by the REST endpoints (:mod:`gateway.simulators.commerce`) and the GraphQL Admin API
(:mod:`gateway.simulators.shopify_graphql`)."""

from __future__ import annotations

import os
import random
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway.intake.signatures import shopify_sign
from gateway.simulators.webhooks import DeliveryOptions, WebhookSender
from gateway.simulators.world import CITIES, EPOCH, Item, Location, World
from resolvers.settings import BackendSettings

API_VERSION = "2025-01"  # the REST version the connector reads, and the webhooks' version
API = f"/admin/api/{API_VERSION}"
# A shop serves REST under every supported version; these two are the ones in use here.
REST_VERSIONS = (API_VERSION, "2026-10")
CURRENCY = "NOK"
VENDOR = "RetailGraph"
GIFT_CARD_SKU = "GIFTCARD-500"
GIFT_CARD_OPENING = 500
MAX_LIMIT = 250
DEFAULT_LIMIT = 50
MAX_IDS = 50
UNAUTHORIZED = "[API] Invalid API key or access token (unrecognized login or wrong password)"
MISSING = "Required parameter missing or invalid"
ORDER_ID_BASE = 5_500_000_000_000
LINE_ITEM_ID_BASE = 13_000_000_000_000
FULFILLMENT_ID_BASE = 4_800_000_000_000
INT_PATTERN = re.compile(r"-?\d{1,18}")


class ApiError(Exception):
    """A request the imitated API refuses; carries Shopify's status and ``errors`` value."""

    def __init__(self, status: int, errors: Any) -> None:
        super().__init__(str(errors))
        self.status = status
        self.errors = errors


def missing(field: str) -> ApiError:
    return ApiError(400, {field: MISSING})


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, {field: [message]})


NOT_FOUND = ApiError(404, "Not Found")


def stamp(moment: datetime) -> str:
    """RFC 3339 UTC, fixed-width milliseconds (string order = time order)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def as_int(value: Any) -> int | None:
    """Shopify takes ids and quantities as JSON integers or numeric strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and INT_PATTERN.fullmatch(value.strip()):
        return int(value)
    return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


QUANTITY_NAMES = ("available", "on_hand", "committed", "incoming", "reserved", "damaged",
                  "quality_control", "safety_stock")


@dataclass(slots=True)
class Level:
    """One inventory level by Shopify's quantity names (``incoming`` is not on hand).

    ``on_hand = available + committed + reserved + damaged + quality_control + safety_stock``.
    """

    available: int
    committed: int
    updated_at: str
    incoming: int = 0
    reserved: int = 0
    damaged: int = 0
    quality_control: int = 0
    safety_stock: int = 0

    @property
    def on_hand(self) -> int:
        return (self.available + self.committed + self.reserved + self.damaged
                + self.quality_control + self.safety_stock)

    def quantity(self, name: str) -> int:
        value: int = getattr(self, name)
        return value


@dataclass(frozen=True, slots=True)
class Variant:
    """What the shop sells under one variant id: a World item, or the gift card (item None)."""

    index: int
    item: Item | None
    product_id: int
    variant_id: int
    inventory_item_id: int

    @property
    def sku(self) -> str:
        return self.item.sku if self.item else GIFT_CARD_SKU

    @property
    def title(self) -> str:
        return self.item.name if self.item else "Gift Card"

    @property
    def price(self) -> Decimal:
        return self.item.online_price if self.item else Decimal("500.00")


@dataclass(slots=True)
class ProductEdit:
    """What the merchant or an app changed on a product and its variant (None: unchanged)."""

    title: str | None = None
    vendor: str | None = None
    product_type: str | None = None
    status: str | None = None
    description_html: str | None = None
    price: Decimal | None = None
    compare_at_price: Decimal | None = None
    compare_at_set: bool = False  # compare_at_price was given (None then clears it)
    barcode: str | None = None
    product_updated_at: str | None = None
    variant_updated_at: str | None = None


class Shop:
    """The shop's mutable state (only changed levels are stored) and its webhook sender."""

    def __init__(self, world: World, settings: BackendSettings, webhook_url: str,
                 options: DeliveryOptions | None) -> None:
        self.world = world
        self.secret = settings.webhook_secret
        self.domain = f"retailgraph-{world.seed}.myshopify.com"
        first = world.item(0)
        self._bases = (first.shopify_product_id, first.shopify_variant_id,
                       first.shopify_inventory_item_id)
        self.locations: dict[int, Location] = {
            loc.shopify_id: loc for loc in world.warehouses if loc.shopify_id is not None}
        self.location_ids = sorted(self.locations)
        self.opened_at = stamp(world.snapshot_as_of)
        self.levels: dict[tuple[int, int], Level] = {}
        self.edits: dict[int, ProductEdit] = {}
        self.orders: dict[int, dict[str, Any]] = {}
        self._line_items = 0
        self._last = world.snapshot_as_of
        # Webhook and event ids only: seeded per boot, so a restarted shop never repeats ids a
        # gateway with a persistent dedupe store has already seen.
        self._rng = random.Random(world.seed << 64 | int.from_bytes(os.urandom(8), "big"))
        # Webhook id -> (topic, event id, triggered at): the headers every retry repeats.
        self._meta: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        self.sender = WebhookSender(webhook_url, self.sign, options, seed=world.seed)

    # -- catalog ---------------------------------------------------------------------------------

    @property
    def n_variants(self) -> int:
        return self.world.n_skus + 1

    def variant(self, index: int) -> Variant:
        item = self.world.item(index) if index < self.world.n_skus else None
        product, variant, inventory = (base + index for base in self._bases)
        return Variant(index, item, product, variant, inventory)

    def _index(self, native_id: int, base: int) -> int | None:
        index = native_id - base
        return index if 0 <= index < self.n_variants else None

    def by_variant_id(self, variant_id: int) -> Variant | None:
        index = self._index(variant_id, self._bases[1])
        return None if index is None else self.variant(index)

    def by_inventory_item_id(self, inventory_item_id: int) -> Variant | None:
        index = self._index(inventory_item_id, self._bases[2])
        return None if index is None else self.variant(index)

    # -- inventory -------------------------------------------------------------------------------

    def level(self, variant: Variant, location_id: int) -> Level:
        key = (variant.index, location_id)
        found = self.levels.get(key)
        if found is not None:
            return found
        if variant.item is None:
            return Level(GIFT_CARD_OPENING, 0, self.opened_at)
        loc = self.locations[location_id].index
        committed = self.world.online_committed(variant.index, loc)
        available = self.world.warehouse_balance(variant.index, loc).available - committed
        return Level(max(0, available), committed, self.opened_at)

    def next_line_item_id(self) -> int:
        self._line_items += 1
        return LINE_ITEM_ID_BASE + self._line_items

    def store(self, variant: Variant, location_id: int, level: Level) -> None:
        self.levels[(variant.index, location_id)] = level

    def change_level(self, variant: Variant, location_id: int, **quantities: int) -> Level:
        """Set named quantities of a level; if anything changed, stamp it and send
        ``inventory_levels/update``. The one write path of REST, GraphQL and admin edits."""
        level = self.level(variant, location_id)
        if all(level.quantity(name) == value for name, value in quantities.items()):
            return level
        at = self.now()
        level = replace(level, updated_at=at, **quantities)
        self.store(variant, location_id, level)
        self.emit(at, [("inventory_levels/update",
                        level_json(variant.inventory_item_id, location_id, level))])
        return level

    def edit(self, variant: Variant) -> ProductEdit:
        return self.edits.get(variant.index) or ProductEdit()

    def update_product(self, variant: Variant, edit: ProductEdit) -> None:
        """Store a product/variant edit and send ``products/update`` (the REST product)."""
        self.edits[variant.index] = edit
        self.emit(edit.product_updated_at or self.now(),
                  [("products/update", product_json(self, variant))])

    def now(self) -> str:
        """Strictly increasing: two changes never share an ``updated_at``."""
        moment = datetime.now(UTC)
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        self._last = max(moment, self._last + timedelta(milliseconds=1))
        return stamp(self._last)

    # -- webhooks --------------------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def emit(self, triggered_at: str, deliveries: list[tuple[str, Any]]) -> None:
        """Send the webhooks of one merchant action; they share one ``X-Shopify-Event-Id``."""
        event_id = self._uuid()
        for topic, payload in deliveries:
            webhook_id = self._uuid()
            self._meta[webhook_id] = (topic, event_id, triggered_at)
            while len(self._meta) > 100_000:
                self._meta.popitem(last=False)
            self.sender.send(topic, webhook_id, payload)

    def sign(self, body: bytes, attempt: int, webhook_id: str) -> dict[str, str]:
        topic, event_id, triggered_at = self._meta[webhook_id]
        return {"X-Shopify-Topic": topic,
                "X-Shopify-Hmac-Sha256": shopify_sign(self.secret, body),
                "X-Shopify-Shop-Domain": self.domain,
                "X-Shopify-API-Version": API_VERSION,
                "X-Shopify-Webhook-Id": webhook_id,
                "X-Shopify-Event-Id": event_id,
                "X-Shopify-Triggered-At": triggered_at}


# -- REST resources (the webhooks' bodies too) -------------------------------------------------


def level_json(inventory_item_id: int, location_id: int, level: Level) -> dict[str, Any]:
    return {"inventory_item_id": inventory_item_id, "location_id": location_id,
            "available": level.available, "updated_at": level.updated_at,
            "admin_graphql_api_id": (f"gid://shopify/InventoryLevel/{location_id}"
                                     f"?inventory_item_id={inventory_item_id}")}


def compare_at_price(shop: Shop, v: Variant) -> Decimal | None:
    edit = shop.edit(v)
    if edit.compare_at_set:
        return edit.compare_at_price
    item = v.item
    return item.list_price if item and item.list_price > item.online_price else None


def product_json(shop: Shop, v: Variant) -> dict[str, Any]:
    created = stamp(EPOCH + timedelta(minutes=v.index))
    item = v.item
    edit = shop.edit(v)
    compare_at = compare_at_price(shop, v)
    quantity = sum(shop.level(v, loc).available for loc in shop.location_ids)
    title = edit.title or v.title
    variant = {
        "id": v.variant_id, "product_id": v.product_id, "title": "Default Title",
        "price": str(edit.price if edit.price is not None else v.price),
        "compare_at_price": None if compare_at is None else str(compare_at), "sku": v.sku,
        "barcode": edit.barcode or (item.gtin13 if item else None), "position": 1,
        "inventory_policy": "deny", "inventory_management": "shopify",
        "fulfillment_service": "manual", "inventory_item_id": v.inventory_item_id,
        "inventory_quantity": quantity, "option1": "Default Title", "option2": None,
        "option3": None, "taxable": True, "requires_shipping": item is not None,
        "grams": 0, "weight": 0.0, "weight_unit": "kg", "created_at": created,
        "updated_at": edit.variant_updated_at or created,
        "admin_graphql_api_id": f"gid://shopify/ProductVariant/{v.variant_id}",
    }
    return {
        "id": v.product_id, "title": title,
        "body_html": edit.description_html or f"<p>{v.title}</p>",
        "vendor": edit.vendor or VENDOR,
        "product_type": edit.product_type or (item.category if item else "Gift Cards"),
        "handle": slug(f"{v.title} {v.sku}"), "status": (edit.status or "active").lower(),
        "tags": "", "created_at": created,
        "updated_at": edit.product_updated_at or created, "published_at": created,
        "published_scope": "global", "template_suffix": None,
        "admin_graphql_api_id": f"gid://shopify/Product/{v.product_id}",
        "variants": [variant],
        "options": [{"id": v.product_id, "product_id": v.product_id, "name": "Title",
                     "position": 1, "values": ["Default Title"]}],
        "images": [], "image": None,
    }


def location_json(loc: Location, opened_at: str) -> dict[str, Any]:
    assert loc.shopify_id is not None
    return {"id": loc.shopify_id, "name": loc.name, "address1": f"Lagerveien {loc.index + 1}",
            "address2": None, "city": CITIES[loc.index % len(CITIES)], "zip": None,
            "province": None, "country": "NO", "country_code": "NO", "country_name": "Norway",
            "phone": None, "created_at": stamp(EPOCH), "updated_at": opened_at,
            "active": True, "legacy": False, "localized_country_name": "Norway",
            "localized_province_name": None,
            "admin_graphql_api_id": f"gid://shopify/Location/{loc.shopify_id}"}
