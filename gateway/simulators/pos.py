"""Square POS simulator (API version 2026-09-16): Locations, Catalog, Inventory and Events.

Stores of the :class:`World` are the Square locations (``loc.square_id``); every item is an
``ITEM_VARIATION`` (``item.square_variation_id``) plus one "Gift wrapping" variation that
maps to no ERP item (no SKU, no UPC, not inventory-tracked). Currency NOK. Opening counts
come from ``World.store_counts``; only changed (variation, location, state) cells are stored.

Endpoints (``Authorization: Bearer <token>``; every error is Square's ``{"errors":
[{category, code, detail, field?}]}``, 401 included). ``Square-Version`` is recorded per
request; a malformed one is ``INVALID_SQUARE_VERSION_FORMAT``; none means the app's default
version, unless ``/_sim/square`` requires one (then anything else is
``API_VERSION_INCOMPATIBLE``):

- ``GET /v2/locations`` -> ``{"locations": [Location]}``
- ``GET /v2/catalog/list?types=ITEM_VARIATION&cursor=`` -> ``{"objects": [CatalogObject],
  "cursor"?}``; 1000 per page (``limit`` lowers it; a simulator extension for tests).
- ``POST /v2/inventory/counts/batch-retrieve`` ``{catalog_object_ids?, location_ids?, states?,
  updated_after?, cursor?, limit?}`` -> ``{"counts": [InventoryCount], "cursor"?}``.
  At most 1000 ids; unknown ids are ignored. IN_STOCK is always returned, other states once
  they are non-zero or have been set.
- ``POST /v2/inventory/changes/batch-create`` ``{idempotency_key, changes: [InventoryChange],
  ignore_unchanged_counts?}`` -> ``{"counts": [...], "changes": [...]}``. Up to 100 changes of
  type ADJUSTMENT (``from_state`` -> ``to_state``; NONE/SOLD/... are outside the store),
  PHYSICAL_COUNT (absolute) or TRANSFER (between locations). The batch is atomic: unknown
  ids, bad quantities or a count going negative reject all of it with 400. The same
  ``idempotency_key`` with the same body returns the first response and changes nothing;
  with another body it is ``IDEMPOTENCY_KEY_REUSED``. Changes apply by their clients'
  ``occurred_at`` (default: the request time; at most 24 hours old, never in the future): a
  count is its latest physical count plus the adjustments that occurred after it, so a sale
  that arrives after a later count is already in that count, and an older count changes
  nothing now (both still enter the history).
- ``GET /v2/catalog/object/{id}`` -> ``{"object": CatalogObject}`` (404 ``NOT_FOUND``).
- ``POST /v2/catalog/object {idempotency_key, object}``: replaces an ITEM_VARIATION whole
  (no sparse updates) when ``object.version`` is the current one, else 400
  ``VERSION_MISMATCH`` (re-read and retry); -> ``{"catalog_object", "id_mappings": []}`` with a
  new, larger version; fires ``catalog.version.updated``. Creating objects is not simulated.
- ``POST /v2/events {cursor?, limit? (1..100), query?: {filter?: {event_types?,
  merchant_ids?, location_ids?, created_at?: {start_at?, end_at?}}, sort?: {field: DEFAULT,
  order: ASC|DESC (default)}}}`` -> ``{"events", "metadata": [{event_id, api_version}],
  "cursor"?}``: every notification of the last 28 days (older ones are gone), the same
  objects the webhooks carried; a cursor only works with its original query.
- ``POST /v2/inventory/changes/batch-retrieve`` ``{catalog_object_ids?, location_ids?, types?,
  states?, updated_after?, updated_before?, cursor?, limit?}`` -> ``{"changes": [...],
  "cursor"?}``, oldest first.

Controls: ``GET|POST /_sim/square {require_version?, rate_limit_next?: N, retry_after?: S,
advance_clock_seconds?, reset_versions?}``: versions seen, the version to insist on, the next
N API requests answering 429 ``RATE_LIMITED`` (``RATE_LIMIT_ERROR``, ``Retry-After: S``), and
the simulator's clock moved forward (to age events past 28 days).

Webhooks: ``catalog.version.updated`` after an upsert; ``inventory.count.updated`` after every
accepted batch, carrying the new count of
every counted state that changed (at most 100 counts per notification), signed with
``x-square-hmacsha256-signature = base64(HMAC-SHA256(secret, notification_url + body))``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.intake.signatures import square_sign
from gateway.simulators.base import bearer_check, simulator_app
from gateway.simulators.webhooks import DeliveryOptions, WebhookSender
from gateway.simulators.world import EPOCH, SQUARE_ALPHABET, World, mix
from resolvers.settings import BackendSettings

CURRENCY = "NOK"
TOPIC = "inventory.count.updated"
CATALOG_TOPIC = "catalog.version.updated"
API_VERSION = "2026-09-16"  # the Square-Version this simulator implements
SQUARE_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
# States that hold a count at a location, in the order counts are listed.
COUNTED = ("IN_STOCK", "RESERVED_FOR_SALE", "IN_TRANSIT_TO", "IN_TRANSIT",
           "RECEIVED_FROM_VENDOR", "WASTE")
# States outside the store: stock comes from or goes to them without a count.
OUTSIDE = ("NONE", "SOLD", "SOLD_ONLINE", "RETURNED_BY_CUSTOMER", "UNLINKED_RETURN")
CHANGE_TYPES = ("ADJUSTMENT", "PHYSICAL_COUNT", "TRANSFER")
MAX_CHANGES = 100
MAX_IDS = 1000
MAX_LIMIT = 1000
CATALOG_PAGE = 1000
NOTIFICATION_COUNTS = 100
MAX_CHANGE_AGE = timedelta(hours=24)  # occurred_at may be at most this old ...
CLOCK_SKEW = timedelta(seconds=1)  # ... and at most this far ahead of the request
QUANTITY = re.compile(r"^\d{1,12}(\.\d{1,5})?$")
SOURCE = {"product": "SQUARE_POS", "name": "Square Point of Sale"}


def ts(moment: datetime) -> str:
    """RFC 3339 UTC with fixed microsecond width, so strings sort like the times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fmt_quantity(q: Decimal) -> str:
    """Square's decimal string: "12", "1.5"."""
    text = format(q, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class SquareError(Exception):
    """A request Square would refuse; becomes its ``{"errors": [...]}`` body."""

    def __init__(self, code: str, detail: str, field: str | None = None, status: int = 400,
                 category: str = "INVALID_REQUEST_ERROR",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.field = code, detail, field
        self.status, self.category, self.headers = status, category, headers

    def response(self) -> JSONResponse:
        error: dict[str, str] = {"category": self.category, "code": self.code,
                                 "detail": self.detail}
        if self.field:
            error["field"] = self.field
        return JSONResponse({"errors": [error]}, status_code=self.status,
                            headers=self.headers)


def parse_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise SquareError("EXPECTED_STRING", f"{where} must be an RFC 3339 string", where)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise SquareError("INVALID_TIME", f"{where} is not an RFC 3339 time", where) from exc
    if moment.tzinfo is None:
        raise SquareError("INVALID_TIME", f"{where} needs a time zone offset", where)
    return moment


def parse_quantity(value: Any, where: str, positive: bool) -> Decimal:
    if not isinstance(value, str) or not QUANTITY.match(value):
        raise SquareError("INVALID_VALUE", f"{where} must be a non-negative decimal string "
                          "with at most 5 decimal places", where)
    q = Decimal(value)
    if positive and q == 0:
        raise SquareError("INVALID_VALUE", f"{where} must be greater than 0", where)
    return q


def str_list(body: Mapping[str, Any], key: str, limit: int | None = None) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SquareError("EXPECTED_ARRAY", f"{key} must be an array of strings", key)
    if limit is not None and len(value) > limit:
        raise SquareError("TOO_MANY_ARRAY_ELEMENTS", f"{key} has more than {limit} elements",
                          key)
    return value


def page_limit(body: Mapping[str, Any], default: int) -> int:
    limit = body.get("limit", default)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise SquareError("INVALID_VALUE", f"limit must be an integer 1..{MAX_LIMIT}", "limit")
    return limit


Cell = tuple[int, int]  # (item index, location index)
Key = tuple[int, int, str]  # (item index, location index, state)
When = tuple[datetime, int]  # (occurred_at, receipt order): ties go by arrival


@dataclass(slots=True)
class Ledger:
    """One count's physical count (``base`` at ``base_at``; None: the opening count, older
    than any change) plus the adjustments that occurred after it. The count is their sum, so
    a change that arrives late still lands where its ``occurred_at`` puts it."""

    base: Decimal
    base_at: When | None = None
    deltas: list[tuple[When, Decimal]] = field(default_factory=list)

    @property
    def quantity(self) -> Decimal:
        return self.base + sum((d for _, d in self.deltas), Decimal(0))

    def copy(self) -> Ledger:
        return Ledger(self.base, self.base_at, list(self.deltas))

    def adjust(self, at: When, delta: Decimal) -> None:
        """An adjustment that occurred at ``at``; one from before the physical count is
        already in that count."""
        if self.base_at is None or at > self.base_at:
            self.deltas.append((at, delta))

    def count(self, at: When, quantity: Decimal) -> None:
        """A physical count taken at ``at``: the new base unless a later count exists;
        adjustments that occurred after it stay on top of it."""
        if self.base_at is not None and at < self.base_at:
            return
        self.base, self.base_at = quantity, at
        self.deltas = [(t, d) for t, d in self.deltas if t > at]

    def fold(self, before: datetime) -> None:
        """Adjustments older than any count still accepted can no longer be overtaken."""
        old = [d for t, d in self.deltas if t[0] < before]
        if old:
            self.base += sum(old, Decimal(0))
            self.deltas = [(t, d) for t, d in self.deltas if t[0] >= before]


@dataclass
class PosState:
    """Counts as overrides over the World's opening counts, plus history and idempotency."""

    world: World
    overrides: dict[Key, tuple[Decimal, str]] = field(default_factory=dict)
    # How each changed count came about: its last physical count and the adjustments that
    # occurred after it (by the clients' occurred_at), so late changes land in time order.
    ledgers: dict[Key, Ledger] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # the Events API's store
    catalog_edits: dict[int, dict[str, Any]] = field(default_factory=dict)
    catalog_idempotency: dict[str, tuple[bytes, dict[str, Any]]] = field(
        default_factory=dict)
    square_versions: Counter[str] = field(default_factory=Counter)
    required_version: str | None = None
    rate_limited: int = 0  # the next N API requests answer 429 RATE_LIMITED
    retry_after: int | None = None
    clock_offset: timedelta = timedelta(0)
    last_catalog_version: int = 0
    idempotency: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    first_delivery: OrderedDict[str, str] = field(default_factory=OrderedDict)
    catalog_page_size: int = CATALOG_PAGE
    serial: int = 0
    # Mixed into event ids only: a restarted simulator must not repeat the ids a gateway
    # with a persistent dedupe store has already seen (data ids stay deterministic).
    boot: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "big"))
    last_time: datetime = EPOCH

    # -- identifiers -------------------------------------------------------------------------

    def square_id(self, kind: int, n: int, length: int = 24) -> str:
        h, out = mix(self.world.seed, 0x5051, kind, n), []
        for k in range(length):
            out.append(SQUARE_ALPHABET[h & 31])
            h >>= 5
            if h < 32:
                h = mix(h, kind, n, k)
        return "".join(out)

    @cached_property
    def merchant_id(self) -> str:
        return self.square_id(1, 0, 13)

    @cached_property
    def gift_wrap_id(self) -> str:
        return self.square_id(2, 0)

    def next_uuid(self) -> str:
        """A webhook event id: unique per boot (see ``boot``)."""
        self.serial += 1
        value = (mix(self.world.seed, self.boot, 0x55, self.serial) << 64
                 | mix(self.world.seed, self.boot, 0x56, self.serial))
        return str(uuid.UUID(int=value, version=4))

    def next_change_id(self) -> str:
        self.serial += 1
        return self.square_id(3, self.serial, 26)

    def clock(self) -> datetime:
        """The simulator's wall clock (``/_sim/square`` can move it forward, for ageing)."""
        return datetime.now(UTC) + self.clock_offset

    def now(self) -> datetime:
        """Strictly increasing, so ``calculated_at`` orders every change."""
        self.last_time = max(self.clock(), self.last_time + timedelta(microseconds=1))
        return self.last_time

    @cached_property
    def opened_at(self) -> str:
        return ts(self.world.snapshot_as_of)

    @cached_property
    def variation_index(self) -> dict[str, int]:
        """Variation id -> item index, built on first use (about 1 s for 100,000 SKUs)."""
        return {self.world.item(i).square_variation_id: i for i in range(self.world.n_skus)}

    @cached_property
    def store_index(self) -> dict[str, int]:
        return {loc.square_id: loc.index for loc in self.world.stores if loc.square_id}

    # -- counts --------------------------------------------------------------------------------

    def opening(self, i: int, loc: int, state: str) -> Decimal:
        in_stock, reserved = self.world.store_counts(i, loc)
        return Decimal({"IN_STOCK": in_stock, "RESERVED_FOR_SALE": reserved}.get(state, 0))

    def quantity(self, key: Key) -> Decimal:
        held = self.overrides.get(key)
        return held[0] if held else self.opening(*key)

    def ledger(self, key: Key) -> Ledger:
        found = self.ledgers.get(key)
        return found.copy() if found else Ledger(self.quantity(key))

    def count(self, i: int, loc: int, state: str) -> dict[str, Any] | None:
        """The InventoryCount of one state, or None when Square would not list it."""
        held = self.overrides.get((i, loc, state))
        if held is None:
            q = self.opening(i, loc, state)
            if state != "IN_STOCK" and q == 0:
                return None
            held = (q, self.opened_at)
        return {"catalog_object_id": self.world.item(i).square_variation_id,
                "catalog_object_type": "ITEM_VARIATION", "state": state,
                "location_id": self.world.locations[loc].square_id,
                "quantity": fmt_quantity(held[0]), "calculated_at": held[1]}

    def cell_counts(self, i: int, loc: int) -> list[dict[str, Any]]:
        return [c for s in COUNTED if (c := self.count(i, loc, s)) is not None]

    def changed_cells(self, after: str) -> list[Cell]:
        return sorted({(i, loc) for (i, loc, _), (_, at) in self.overrides.items()
                       if at > after})


# -- read endpoints ---------------------------------------------------------------------------

def location_json(state: PosState, index: int) -> dict[str, Any]:
    loc = state.world.locations[index]
    city = loc.name.split(" ", 2)[-1]
    return {"id": loc.square_id, "name": loc.name, "merchant_id": state.merchant_id,
            "status": "ACTIVE", "type": "PHYSICAL", "currency": CURRENCY, "country": "NO",
            "language_code": "nb-NO", "timezone": "Europe/Oslo", "business_name": "Retailgraph",
            "address": {"address_line_1": f"Storgata {loc.index + 1}", "locality": city,
                        "postal_code": f"{1000 + 37 * loc.index:04d}", "country": "NO"},
            "created_at": ts(EPOCH + timedelta(days=loc.index))}


def variation_json(state: PosState, n: int) -> dict[str, Any]:
    """Catalog object ``n``: an item's variation, or the gift wrapping after the last item
    (as last upserted, when it was)."""
    edited = state.catalog_edits.get(n)
    if edited is not None:
        return edited
    world = state.world
    if n == world.n_skus:
        vid, item_id, name, sku, upc, minor = (state.gift_wrap_id, state.square_id(4, n),
                                               "Gift wrapping", None, None, 4900)
    else:
        item = world.item(n)
        vid, item_id, name, sku, upc = (item.square_variation_id, state.square_id(4, n),
                                        item.name, item.sku, item.gtin13)
        minor = int(item.list_price * 100)
    data: dict[str, Any] = {"item_id": item_id, "name": name, "ordinal": 1,
                            "pricing_type": "FIXED_PRICING",
                            "price_money": {"amount": minor, "currency": CURRENCY},
                            "track_inventory": sku is not None}
    if sku is not None:
        data |= {"sku": sku, "upc": upc}
    return {"type": "ITEM_VARIATION", "id": vid, "updated_at": ts(EPOCH),
            "version": int(EPOCH.timestamp() * 1000) + n, "is_deleted": False,
            "present_at_all_locations": True, "item_variation_data": data}


def list_catalog(state: PosState, params: Mapping[str, str]) -> dict[str, Any]:
    types = {t.strip().upper() for t in params.get("types", "ITEM_VARIATION").split(",")}
    if "ITEM_VARIATION" not in types:
        return {}
    start = offset_cursor(params.get("cursor"))
    try:
        size = min(int(params.get("limit", state.catalog_page_size)), state.catalog_page_size)
    except ValueError as exc:
        raise SquareError("INVALID_VALUE", "limit must be an integer", "limit") from exc
    total = state.world.n_skus + 1
    end = min(start + max(size, 1), total)
    out: dict[str, Any] = {"objects": [variation_json(state, n) for n in range(start, end)]}
    if end < total:
        out["cursor"] = str(end)
    return out


def offset_cursor(cursor: Any) -> int:
    if cursor is None:
        return 0
    if not isinstance(cursor, str) or not cursor.isdigit():
        raise SquareError("INVALID_CURSOR", "the cursor is not one this API returned", "cursor")
    return int(cursor)


def retrieve_counts(state: PosState, body: Mapping[str, Any]) -> dict[str, Any]:
    """Counts for (variation x location) cells, walked lazily; cursor = ``cell:position``."""
    ids = str_list(body, "catalog_object_ids", MAX_IDS)
    loc_ids = str_list(body, "location_ids")
    states = str_list(body, "states")
    limit = page_limit(body, 100)
    after = ts(parse_time(body["updated_after"], "updated_after")) \
        if body.get("updated_after") is not None else None
    start, skip = cell_cursor(body.get("cursor"))
    items: Sequence[int] = range(state.world.n_skus) if ids is None else list(dict.fromkeys(
        state.variation_index[v] for v in ids if v in state.variation_index))
    locs = [loc.index for loc in state.world.stores] if loc_ids is None else list(dict.fromkeys(
        state.store_index[v] for v in loc_ids if v in state.store_index))
    if after is not None and after >= state.opened_at:
        wanted_items, wanted_locs = set(items), set(locs)
        cells: Sequence[Cell] = [c for c in state.changed_cells(after)
                                 if c[0] in wanted_items and c[1] in wanted_locs]
    else:
        cells = Grid(items, locs)
    out: list[dict[str, Any]] = []
    for n in range(start, len(cells)):
        found = [c for c in state.cell_counts(*cells[n])
                 if (states is None or c["state"] in states)
                 and (after is None or c["calculated_at"] > after)]
        for j in range(skip if n == start else 0, len(found)):
            if len(out) == limit:
                return {"counts": out, "cursor": f"{n}:{j}"}
            out.append(found[j])
    return {"counts": out}


class Grid(Sequence[Cell]):
    """items x locations as a lazy sequence: 100,000 x 40 cells cost nothing until read."""

    def __init__(self, items: Sequence[int], locs: Sequence[int]) -> None:
        self.items, self.locs = items, locs

    def __len__(self) -> int:
        return len(self.items) * len(self.locs)

    def __getitem__(self, n: Any) -> Any:
        return self.items[n // len(self.locs)], self.locs[n % len(self.locs)]


def cell_cursor(cursor: Any) -> tuple[int, int]:
    if cursor is None:
        return 0, 0
    parts = cursor.split(":") if isinstance(cursor, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise SquareError("INVALID_CURSOR", "the cursor is not one this API returned", "cursor")
    return int(parts[0]), int(parts[1])


def retrieve_changes(state: PosState, body: Mapping[str, Any]) -> dict[str, Any]:
    ids = str_list(body, "catalog_object_ids")
    loc_ids = str_list(body, "location_ids")
    types = str_list(body, "types")
    states = str_list(body, "states")
    limit = page_limit(body, 100)
    after = ts(parse_time(body["updated_after"], "updated_after")) \
        if body.get("updated_after") is not None else None
    before = ts(parse_time(body["updated_before"], "updated_before")) \
        if body.get("updated_before") is not None else None

    def keep(change: dict[str, Any]) -> bool:
        obj = change[change["type"].lower()]
        return ((ids is None or obj["catalog_object_id"] in ids)
                and (loc_ids is None or any(obj.get(k) in loc_ids for k in
                                            ("location_id", "from_location_id",
                                             "to_location_id")))
                and (types is None or change["type"] in types)
                and (states is None or any(obj.get(k) in states for k in
                                           ("state", "from_state", "to_state")))
                and (after is None or obj["created_at"] > after)
                and (before is None or obj["created_at"] < before))

    matched = [c for c in state.history if keep(c)]
    start = offset_cursor(body.get("cursor"))
    out: dict[str, Any] = {"changes": matched[start:start + limit]}
    if start + limit < len(matched):
        out["cursor"] = str(start + limit)
    return out


# -- catalog writes -------------------------------------------------------------------------------

Remembered = dict[str, tuple[bytes, dict[str, Any]]]  # key -> (request fingerprint, response)


def idempotent(store: Remembered, body: Mapping[str, Any]
               ) -> tuple[str, bytes, dict[str, Any] | None]:
    """The request's ``idempotency_key``, its fingerprint and, when the key was used for
    this same request before, the response it got; the key reused for another request is
    ``IDEMPOTENCY_KEY_REUSED``."""
    key = body.get("idempotency_key")
    if not isinstance(key, str) or not 1 <= len(key) <= 128:
        raise SquareError("MISSING_REQUIRED_PARAMETER", "idempotency_key (1..128 characters) "
                          "is required", "idempotency_key")
    fingerprint = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    if key not in store:
        return key, fingerprint, None
    seen, response = store[key]
    if seen != fingerprint:
        raise SquareError("IDEMPOTENCY_KEY_REUSED", "idempotency_key was used for a "
                          "different request", "idempotency_key")
    return key, fingerprint, response

def catalog_index(state: PosState, object_id: Any) -> int | None:
    """Catalog object number of a variation id (the gift wrapping is ``n_skus``)."""
    if not isinstance(object_id, str):
        return None
    if object_id == state.gift_wrap_id:
        return state.world.n_skus
    return state.variation_index.get(object_id)


def retrieve_object(state: PosState, object_id: str) -> dict[str, Any]:
    n = catalog_index(state, object_id)
    if n is None:
        raise SquareError("NOT_FOUND", f"Object with ID `{object_id}` not found.",
                          status=404)
    return {"object": variation_json(state, n)}


def upsert_object(state: PosState, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """UpsertCatalogObject for an existing ITEM_VARIATION: the whole object is replaced
    (Square has no sparse updates) if its ``version`` is the current one."""
    key, fingerprint, seen = idempotent(state.catalog_idempotency, body)
    if seen is not None:
        return seen, False
    obj = body.get("object")
    if not isinstance(obj, dict):
        raise SquareError("MISSING_REQUIRED_PARAMETER", "object is required", "object")
    if obj.get("type") != "ITEM_VARIATION":
        raise SquareError("INVALID_VALUE", "this simulator upserts ITEM_VARIATION objects "
                          "only", "object.type")
    n = catalog_index(state, obj.get("id"))
    if n is None:
        raise SquareError("INVALID_VALUE", f"Object with ID `{obj.get('id')}` not found "
                          "(creating objects is not simulated).", "object.id")
    current = variation_json(state, n)
    if type(obj.get("version")) is not int or obj["version"] != current["version"]:
        raise SquareError("VERSION_MISMATCH", "Object version does not match latest "
                          "database version.", "object.version")
    data = obj.get("item_variation_data")
    if not isinstance(data, dict):
        raise SquareError("MISSING_REQUIRED_PARAMETER", "object.item_variation_data is "
                          "required", "object.item_variation_data")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise SquareError("EXPECTED_STRING", "item_variation_data.name must be a string",
                          "object.item_variation_data.name")
    money = data.get("price_money")
    if money is not None and (not isinstance(money, dict)
                              or type(money.get("amount")) is not int or money["amount"] < 0
                              or money.get("currency") != CURRENCY):
        raise SquareError("INVALID_VALUE", f"price_money must be a non-negative integer "
                          f"amount in {CURRENCY}", "object.item_variation_data.price_money")
    if data.get("item_id", current["item_variation_data"]["item_id"]) != \
            current["item_variation_data"]["item_id"]:
        raise SquareError("INVALID_VALUE", "item_id cannot change",
                          "object.item_variation_data.item_id")
    moment = state.now()
    state.last_catalog_version = max(state.last_catalog_version + 1,
                                     int(moment.timestamp() * 1000))
    replaced = {**data, "item_id": current["item_variation_data"]["item_id"]}
    if "track_inventory" not in replaced:
        replaced["track_inventory"] = current["item_variation_data"]["track_inventory"]
    updated = {**current, "updated_at": ts(moment), "version": state.last_catalog_version,
               "item_variation_data": replaced}
    state.catalog_edits[n] = updated
    response = {"catalog_object": updated, "id_mappings": []}
    state.catalog_idempotency[key] = (fingerprint, response)
    return response, True


# -- Events API -------------------------------------------------------------------------------

EVENT_RETENTION = timedelta(days=28)
MAX_EVENTS_PAGE = 100


def record_event(state: PosState, event: dict[str, Any]) -> None:
    """Keep a notification for the Events API (the same object the webhook carried)."""
    state.events.append(event)
    horizon = ts(state.clock() - EVENT_RETENTION)
    if state.events and state.events[0]["created_at"] < horizon:
        state.events[:] = [e for e in state.events if e["created_at"] >= horizon]


def event_locations(event: dict[str, Any]) -> set[str]:
    obj = event.get("data", {}).get("object") or {}
    found = {c.get("location_id") for c in obj.get("inventory_counts", [])}
    if event.get("location_id"):
        found.add(event["location_id"])
    return {x for x in found if isinstance(x, str)}


def search_events(state: PosState, body: Mapping[str, Any]) -> dict[str, Any]:
    """SearchEvents over the last 28 days: filter by type, location and ``created_at``,
    newest first unless ``sort.order`` is ASC; keyset cursors, so pages never repeat."""
    limit = body.get("limit", MAX_EVENTS_PAGE)
    if type(limit) is not int or not 1 <= limit <= MAX_EVENTS_PAGE:
        raise SquareError("INVALID_VALUE", f"limit must be an integer 1..{MAX_EVENTS_PAGE}",
                          "limit")
    query = body.get("query") or {}
    if not isinstance(query, dict):
        raise SquareError("EXPECTED_OBJECT", "query must be an object", "query")
    flt = query.get("filter") or {}
    sort = query.get("sort") or {}
    if not isinstance(flt, dict) or not isinstance(sort, dict):
        raise SquareError("EXPECTED_OBJECT", "query.filter and query.sort must be objects",
                          "query")
    types = str_list(flt, "event_types")
    merchants = str_list(flt, "merchant_ids")
    locations = str_list(flt, "location_ids")
    window = flt.get("created_at") or {}
    if not isinstance(window, dict):
        raise SquareError("EXPECTED_OBJECT", "query.filter.created_at must be an object",
                          "query.filter.created_at")
    start = ts(parse_time(window["start_at"], "query.filter.created_at.start_at")) \
        if window.get("start_at") is not None else None
    end = ts(parse_time(window["end_at"], "query.filter.created_at.end_at")) \
        if window.get("end_at") is not None else None
    if sort.get("field", "DEFAULT") != "DEFAULT" or sort.get("order", "DESC") not in (
            "ASC", "DESC"):
        raise SquareError("INVALID_ENUM_VALUE", "sort.field must be DEFAULT and sort.order "
                          "ASC or DESC", "query.sort")
    descending = sort.get("order", "DESC") == "DESC"
    horizon = ts(state.clock() - EVENT_RETENTION)
    cursor = body.get("cursor")
    after: tuple[str, str] | None = None
    fingerprint = orjson.dumps(query, option=orjson.OPT_SORT_KEYS).decode()
    if cursor is not None:
        try:
            raw = orjson.loads(base64.urlsafe_b64decode(str(cursor) + "=" * (
                -len(str(cursor)) % 4)))
            after = (str(raw["created_at"]), str(raw["event_id"]))
            same_query = raw["query"] == fingerprint
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise SquareError("INVALID_CURSOR", "the cursor is not one this API returned",
                              "cursor") from exc
        if not same_query:
            raise SquareError("INVALID_CURSOR", "a cursor must be used with its original "
                              "query", "cursor")

    def keep(e: dict[str, Any]) -> bool:
        at = e["created_at"]
        return (at >= horizon and (types is None or e["type"] in types)
                and (merchants is None or e["merchant_id"] in merchants)
                and (locations is None or bool(event_locations(e) & set(locations)))
                and (start is None or at >= start) and (end is None or at < end))

    found = sorted((e for e in state.events if keep(e)),
                   key=lambda e: (e["created_at"], e["event_id"]), reverse=descending)
    if after is not None:
        found = [e for e in found if ((e["created_at"], e["event_id"]) < after) == descending
                 and (e["created_at"], e["event_id"]) != after]
    page = found[:limit]
    out: dict[str, Any] = {
        "events": page,
        "metadata": [{"event_id": e["event_id"], "api_version": API_VERSION} for e in page]}
    if len(found) > limit:
        last = page[-1]
        out["cursor"] = base64.urlsafe_b64encode(orjson.dumps({
            "created_at": last["created_at"], "event_id": last["event_id"],
            "query": fingerprint})).decode().rstrip("=")
    return out


# -- batch change -------------------------------------------------------------------------------

@dataclass
class Batch:
    """One BatchChangeInventory applied to a scratch copy; committed only if all of it is valid."""

    state: PosState
    ignore_unchanged: bool
    scratch: dict[Key, Ledger] = field(default_factory=dict)
    changed: dict[Key, None] = field(default_factory=dict)
    cells: dict[Cell, None] = field(default_factory=dict)
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    received: datetime = field(default_factory=lambda: datetime.now(UTC))
    serial: int = 0

    def ledger(self, key: Key) -> Ledger:
        if key not in self.scratch:
            self.scratch[key] = self.state.ledger(key)
        return self.scratch[key]

    def value(self, key: Key) -> Decimal:
        return self.ledger(key).quantity

    def when(self, occurred: datetime) -> When:
        self.serial += 1
        return occurred, self.state.serial * 1000 + self.serial

    def apply(self, key: Key, where: str, at: When, delta: Decimal | None = None,
              count: Decimal | None = None) -> None:
        """An adjustment (``delta``) or a physical count (``count``) of one state."""
        self.cells[key[0], key[1]] = None
        if key[2] not in COUNTED:
            return  # stock came from, or left to, outside the store
        ledger = self.ledger(key)
        if count is not None:
            ledger.count(at, count)
        else:
            assert delta is not None
            ledger.adjust(at, delta)
        if ledger.quantity < 0:
            raise SquareError("INSUFFICIENT_INVENTORY", f"{where}: {key[2]} would become "
                              f"{fmt_quantity(ledger.quantity)} at the location", where)
        self.changed[key] = None

    def occurred(self, obj: Mapping[str, Any], where: str) -> datetime:
        """The client's ``occurred_at`` (default: now); not in the future, not older than
        24 hours (Square's rule for counts and adjustments)."""
        if obj.get("occurred_at") is None:
            return self.received
        moment = parse_time(obj["occurred_at"], f"{where}.occurred_at").astimezone(UTC)
        if moment > self.received + CLOCK_SKEW:
            raise SquareError("INVALID_VALUE", f"{where}.occurred_at cannot be in the future",
                              f"{where}.occurred_at")
        if moment < self.received - MAX_CHANGE_AGE:
            raise SquareError("INVALID_VALUE", f"{where}.occurred_at cannot be older than "
                              "24 hours", f"{where}.occurred_at")
        return moment

    def item(self, obj: Mapping[str, Any], where: str) -> int:
        value = obj.get("catalog_object_id")
        if not isinstance(value, str):
            raise SquareError("MISSING_REQUIRED_PARAMETER", f"{where} is required", where)
        if value not in self.state.variation_index:
            raise SquareError("NOT_FOUND", f"{where}: {value} is not an inventory-tracked "
                              "item variation", where)
        return self.state.variation_index[value]

    def location(self, obj: Mapping[str, Any], key: str, where: str) -> int:
        value = obj.get(key)
        if not isinstance(value, str) or value not in self.state.store_index:
            raise SquareError("NOT_FOUND", f"{where}: location {value!r} not found", where)
        return self.state.store_index[value]

    def add(self, n: int, change: Any) -> None:
        where = f"changes[{n}]"
        if not isinstance(change, dict) or change.get("type") not in CHANGE_TYPES:
            raise SquareError("INVALID_ENUM_VALUE", f"{where}.type must be one of "
                              f"{', '.join(CHANGE_TYPES)}", f"{where}.type")
        kind = change["type"].lower()
        obj = change.get(kind)
        where = f"{where}.{kind}"
        if not isinstance(obj, dict):
            raise SquareError("MISSING_REQUIRED_PARAMETER", f"{where} is required", where)
        record = {"catalog_object_id": obj.get("catalog_object_id"),
                  "catalog_object_type": "ITEM_VARIATION"}
        if obj.get("reference_id") is not None:
            record["reference_id"] = str(obj["reference_id"])
        moment = self.occurred(obj, where)
        record["occurred_at"] = ts(moment)
        i = self.item(obj, f"{where}.catalog_object_id")
        getattr(self, kind)(i, obj, where, record, self.when(moment))

    def adjustment(self, i: int, obj: Mapping[str, Any], where: str,
                   record: dict[str, Any], at: When) -> None:
        loc = self.location(obj, "location_id", f"{where}.location_id")
        states = [self.enum(obj, k, COUNTED + OUTSIDE, where) for k in ("from_state",
                                                                         "to_state")]
        if states[0] == states[1] or all(s in OUTSIDE for s in states):
            raise SquareError("INVALID_VALUE", f"{where}: an adjustment must move stock "
                              "between two different states, one of them at the location",
                              f"{where}.to_state")
        q = parse_quantity(obj.get("quantity"), f"{where}.quantity", positive=True)
        self.apply((i, loc, states[0]), where, at, delta=-q)
        self.apply((i, loc, states[1]), where, at, delta=q)
        self.records.append(("ADJUSTMENT", record | {
            "from_state": states[0], "to_state": states[1], "location_id": obj["location_id"],
            "quantity": fmt_quantity(q)}))

    def physical_count(self, i: int, obj: Mapping[str, Any], where: str,
                       record: dict[str, Any], at: When) -> None:
        loc = self.location(obj, "location_id", f"{where}.location_id")
        state = self.enum(obj, "state", COUNTED, where)
        q = parse_quantity(obj.get("quantity"), f"{where}.quantity", positive=False)
        if self.ignore_unchanged and self.value((i, loc, state)) == q:
            return
        self.apply((i, loc, state), where, at, count=q)
        self.records.append(("PHYSICAL_COUNT", record | {
            "state": state, "location_id": obj["location_id"], "quantity": fmt_quantity(q)}))

    def transfer(self, i: int, obj: Mapping[str, Any], where: str,
                 record: dict[str, Any], at: When) -> None:
        src = self.location(obj, "from_location_id", f"{where}.from_location_id")
        dst = self.location(obj, "to_location_id", f"{where}.to_location_id")
        if src == dst:
            raise SquareError("INVALID_VALUE", f"{where}: from and to locations are the same",
                              f"{where}.to_location_id")
        state = self.enum(obj, "state", COUNTED, where)
        q = parse_quantity(obj.get("quantity"), f"{where}.quantity", positive=True)
        self.apply((i, src, state), where, at, delta=-q)
        self.apply((i, dst, state), where, at, delta=q)
        self.records.append(("TRANSFER", record | {
            "state": state, "from_location_id": obj["from_location_id"],
            "to_location_id": obj["to_location_id"], "quantity": fmt_quantity(q)}))

    @staticmethod
    def enum(obj: Mapping[str, Any], key: str, allowed: tuple[str, ...], where: str) -> str:
        value = obj.get(key)
        if value not in allowed:
            raise SquareError("INVALID_ENUM_VALUE", f"{where}.{key} must be one of "
                              f"{', '.join(allowed)}", f"{where}.{key}")
        return str(value)

    def commit(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Store the new counts and history; return the response and the changed counts."""
        state = self.state
        at = ts(state.now())
        oldest = self.received - MAX_CHANGE_AGE
        for key in self.changed:
            ledger = self.scratch[key]
            ledger.fold(oldest)
            state.ledgers[key] = ledger
            state.overrides[key] = (ledger.quantity, at)
        state.serial += 1
        changes = []
        for kind, record in self.records:
            obj = {"id": state.next_change_id(), **record, "created_at": at,
                   "source": SOURCE}
            changes.append({"type": kind, kind.lower(): obj})
        state.history.extend(changes)
        counts = [c for cell in self.cells for c in state.cell_counts(*cell)]
        changed = [c for key in self.changed if (c := state.count(*key)) is not None]
        return {"counts": counts, "changes": changes}, changed


def batch_change(state: PosState, body: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    key, fingerprint, seen = idempotent(state.idempotency, body)
    if seen is not None:
        return seen, []
    changes = body.get("changes")
    if not isinstance(changes, list) or not 1 <= len(changes) <= MAX_CHANGES:
        raise SquareError("INVALID_ARRAY_LENGTH", f"changes must hold 1..{MAX_CHANGES} "
                          "changes", "changes")
    batch = Batch(state, ignore_unchanged=body.get("ignore_unchanged_counts", True) is not False,
                  received=state.clock())
    for n, change in enumerate(changes):
        batch.add(n, change)
    response, changed = batch.commit()
    state.idempotency[key] = (fingerprint, response)
    return response, changed


# -- app ------------------------------------------------------------------------------------------

def notify(state: PosState, sender: WebhookSender, counts: list[dict[str, Any]]) -> None:
    """One ``inventory.count.updated`` per 100 counts, as Square splits large updates."""
    for start in range(0, len(counts), NOTIFICATION_COUNTS):
        event_id = state.next_uuid()
        created = ts(state.now())
        state.first_delivery[event_id] = created
        while len(state.first_delivery) > 10_000:
            state.first_delivery.popitem(last=False)
        part = counts[start:start + NOTIFICATION_COUNTS]
        event: dict[str, Any] = {
            "merchant_id": state.merchant_id, "type": TOPIC, "event_id": event_id,
            "created_at": created,
            "data": {"type": "inventory_counts", "id": state.next_uuid(),
                     "object": {"inventory_counts": part}}}
        record_event(state, event)
        sender.send(TOPIC, event_id, event)


def notify_catalog(state: PosState, sender: WebhookSender, updated_at: str) -> None:
    """``catalog.version.updated``: the catalog changed (the payload names no objects)."""
    event_id = state.next_uuid()
    created = ts(state.now())
    state.first_delivery[event_id] = created
    event = {"merchant_id": state.merchant_id, "type": CATALOG_TOPIC, "event_id": event_id,
             "created_at": created,
             "data": {"type": "catalog", "id": "",
                      "object": {"catalog_version": {"updated_at": updated_at}}}}
    record_event(state, event)
    sender.send(CATALOG_TOPIC, event_id, event)


def unauthorized() -> Response:
    return JSONResponse({"errors": [{"category": "AUTHENTICATION_ERROR", "code": "UNAUTHORIZED",
                                     "detail": "This request could not be authorized."}]},
                        status_code=401)


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise SquareError("BAD_REQUEST", "the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise SquareError("BAD_REQUEST", "the request body must be a JSON object")
    return body


def create_app(world: World, settings: BackendSettings, webhook_url: str,
               options: DeliveryOptions | None = None) -> Starlette:
    state = PosState(world)
    notification_url = settings.notification_url or webhook_url

    def sign(body: bytes, attempt: int, delivery_id: str) -> dict[str, str]:
        headers = {
            "x-square-hmacsha256-signature": square_sign(settings.webhook_secret,
                                                         notification_url, body),
            "square-environment": "Production",
            "square-initial-delivery-timestamp": state.first_delivery.get(
                delivery_id, ts(datetime.now(UTC))),
        }
        if attempt:
            headers |= {"square-retry-number": str(attempt), "square-retry-reason": "http_error"}
        return headers

    sender = WebhookSender(webhook_url, sign, options, seed=world.seed)

    def endpoint(fn: Callable[[Request], Awaitable[Any]]) -> Endpoint:
        """Square-Version (recorded; checked), the rate-limit knob, Square's error shape."""

        async def handle(request: Request) -> Response:
            try:
                check_version(state, request.headers.get("square-version"))
                if state.rate_limited > 0:
                    state.rate_limited -= 1
                    raise SquareError(
                        "RATE_LIMITED", "Rate limit exceeded. Retry later.", status=429,
                        category="RATE_LIMIT_ERROR",
                        headers=None if state.retry_after is None else {
                            "Retry-After": str(state.retry_after)})
                found = await fn(request)
            except SquareError as exc:
                return exc.response()
            return found if isinstance(found, Response) else JSONResponse(found)
        return handle

    async def locations(request: Request) -> dict[str, Any]:
        return {"locations": [location_json(state, loc.index) for loc in world.stores]}

    async def catalog(request: Request) -> dict[str, Any]:
        return list_catalog(state, request.query_params)

    async def catalog_object(request: Request) -> dict[str, Any]:
        return retrieve_object(state, request.path_params["object_id"])

    async def upsert(request: Request) -> dict[str, Any]:
        response, changed = upsert_object(state, await json_body(request))
        if changed:
            notify_catalog(state, sender, response["catalog_object"]["updated_at"])
        return response

    async def counts(request: Request) -> dict[str, Any]:
        return retrieve_counts(state, await json_body(request))

    async def change(request: Request) -> dict[str, Any]:
        response, changed = batch_change(state, await json_body(request))
        notify(state, sender, changed)
        return response

    async def history(request: Request) -> dict[str, Any]:
        return retrieve_changes(state, await json_body(request))

    async def events(request: Request) -> dict[str, Any]:
        return search_events(state, await json_body(request))

    async def controls(request: Request) -> Response:
        """``/_sim/square``: versions seen, the version to require, the rate-limit knob and
        the simulator's clock offset (ageing events past the 28-day window)."""
        if request.method == "POST":
            try:
                apply_controls(state, await json_body(request))
            except SquareError as exc:
                return exc.response()
        return JSONResponse({
            "square_versions": dict(state.square_versions),
            "require_version": state.required_version,
            "rate_limit_next": state.rate_limited, "retry_after": state.retry_after,
            "clock_offset_seconds": state.clock_offset.total_seconds(),
            "events": len(state.events)})

    routes = [
        Route("/v2/locations", endpoint(locations), methods=["GET"]),
        Route("/v2/catalog/list", endpoint(catalog), methods=["GET"]),
        Route("/v2/catalog/object", endpoint(upsert), methods=["POST"]),
        Route("/v2/catalog/object/{object_id}", endpoint(catalog_object), methods=["GET"]),
        Route("/v2/inventory/counts/batch-retrieve", endpoint(counts), methods=["POST"]),
        Route("/v2/inventory/changes/batch-create", endpoint(change), methods=["POST"]),
        Route("/v2/inventory/changes/batch-retrieve", endpoint(history), methods=["POST"]),
        Route("/v2/events", endpoint(events), methods=["POST"]),
        Route("/_sim/square", controls, methods=["GET", "POST"]),
    ]
    return simulator_app(settings.name, routes, sender, bearer_check(settings.token),
                         unauthorized, state)


Endpoint = Callable[[Request], Awaitable[Response]]


def check_version(state: PosState, version: str | None) -> None:
    """Record the request's ``Square-Version``; refuse a malformed one, and (when the test
    asks for it) any other than the required one. Without the header Square uses the app's
    default version, so that is accepted unless a version is required."""
    state.square_versions[version or "missing"] += 1
    if version is not None and not SQUARE_VERSION.fullmatch(version):
        raise SquareError("INVALID_SQUARE_VERSION_FORMAT", f"Square-Version {version!r} is "
                          "not of the form YYYY-MM-DD", "Square-Version")
    if state.required_version is not None and version != state.required_version:
        raise SquareError("API_VERSION_INCOMPATIBLE", f"this endpoint needs Square-Version "
                          f"{state.required_version} (got {version or 'none'})",
                          "Square-Version")


def apply_controls(state: PosState, body: Mapping[str, Any]) -> None:
    allowed = {"require_version", "rate_limit_next", "retry_after", "advance_clock_seconds",
               "reset_versions"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise SquareError("INVALID_VALUE", f"unknown control {unknown[0]!r}", unknown[0])
    if "require_version" in body:
        value = body["require_version"]
        if value is not None and not (isinstance(value, str)
                                      and SQUARE_VERSION.fullmatch(value)):
            raise SquareError("INVALID_VALUE", "require_version is YYYY-MM-DD or null",
                              "require_version")
        state.required_version = value
    for name in ("rate_limit_next", "retry_after", "advance_clock_seconds"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or value < 0):
            raise SquareError("INVALID_VALUE", f"{name} must be a number >= 0", name)
    if body.get("rate_limit_next") is not None:
        state.rate_limited = int(body["rate_limit_next"])
    if "retry_after" in body:
        state.retry_after = None if body["retry_after"] is None else int(body["retry_after"])
    if body.get("advance_clock_seconds") is not None:
        state.clock_offset += timedelta(seconds=float(body["advance_clock_seconds"]))
    if body.get("reset_versions"):
        state.square_versions.clear()
