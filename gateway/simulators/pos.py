"""Square POS simulator: the subset of Square's Locations, Catalog and Inventory APIs we read.

Stores of the :class:`World` are the Square locations (``loc.square_id``); every item is an
``ITEM_VARIATION`` (``item.square_variation_id``) plus one "Gift wrapping" variation that
maps to no ERP item (no SKU, no UPC, not inventory-tracked). Currency NOK. Opening counts
come from ``World.store_counts``; only changed (variation, location, state) cells are stored.

Endpoints (``Authorization: Bearer <token>``; 401 is Square's ``{"errors": [...]}``):

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
  ids, bad quantities or a count going negative reject all of it with 400.
- ``POST /v2/inventory/changes/batch-retrieve`` ``{catalog_object_ids?, location_ids?, types?,
  states?, updated_after?, updated_before?, cursor?, limit?}`` -> ``{"changes": [...],
  "cursor"?}``, oldest first.

Webhook: ``inventory.count.updated`` after every accepted batch, carrying the new count of
every counted state that changed (at most 100 counts per notification), signed with
``x-square-hmacsha256-signature = base64(HMAC-SHA256(secret, notification_url + body))``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
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

from gateway.config import BackendSettings
from gateway.signatures import square_sign
from gateway.simulators.base import bearer_check, simulator_app
from gateway.simulators.webhooks import DeliveryOptions, WebhookSender
from gateway.simulators.world import EPOCH, SQUARE_ALPHABET, World, mix

CURRENCY = "NOK"
TOPIC = "inventory.count.updated"
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

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.field = code, detail, field

    def response(self) -> JSONResponse:
        error: dict[str, str] = {"category": "INVALID_REQUEST_ERROR", "code": self.code,
                                 "detail": self.detail}
        if self.field:
            error["field"] = self.field
        return JSONResponse({"errors": [error]}, status_code=400)


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


@dataclass
class PosState:
    """Counts as overrides over the World's opening counts, plus history and idempotency."""

    world: World
    overrides: dict[Key, tuple[Decimal, str]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
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

    def now(self) -> datetime:
        """Strictly increasing, so ``calculated_at`` orders every change."""
        self.last_time = max(datetime.now(UTC), self.last_time + timedelta(microseconds=1))
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
    """Catalog object ``n``: an item's variation, or the gift wrapping after the last item."""
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


# -- batch change -------------------------------------------------------------------------------

@dataclass
class Batch:
    """One BatchChangeInventory applied to a scratch copy; committed only if all of it is valid."""

    state: PosState
    ignore_unchanged: bool
    scratch: dict[Key, Decimal] = field(default_factory=dict)
    changed: dict[Key, None] = field(default_factory=dict)
    cells: dict[Cell, None] = field(default_factory=dict)
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def value(self, key: Key) -> Decimal:
        return self.scratch[key] if key in self.scratch else self.state.quantity(key)

    def put(self, key: Key, q: Decimal, where: str) -> None:
        self.cells[key[0], key[1]] = None
        if key[2] not in COUNTED:
            return  # stock came from, or left to, outside the store
        if q < 0:
            raise SquareError("INSUFFICIENT_INVENTORY", f"{where}: {key[2]} would become "
                              f"{fmt_quantity(q)} at the location", where)
        self.scratch[key] = q
        self.changed[key] = None

    def move(self, key: Key, delta: Decimal, where: str) -> None:
        self.put(key, self.value(key) + delta, where)

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
        if obj.get("occurred_at") is not None:
            record["occurred_at"] = ts(parse_time(obj["occurred_at"], f"{where}.occurred_at"))
        i = self.item(obj, f"{where}.catalog_object_id")
        getattr(self, kind)(i, obj, where, record)

    def adjustment(self, i: int, obj: Mapping[str, Any], where: str,
                   record: dict[str, Any]) -> None:
        loc = self.location(obj, "location_id", f"{where}.location_id")
        states = [self.enum(obj, k, COUNTED + OUTSIDE, where) for k in ("from_state",
                                                                         "to_state")]
        if states[0] == states[1] or all(s in OUTSIDE for s in states):
            raise SquareError("INVALID_VALUE", f"{where}: an adjustment must move stock "
                              "between two different states, one of them at the location",
                              f"{where}.to_state")
        q = parse_quantity(obj.get("quantity"), f"{where}.quantity", positive=True)
        self.move((i, loc, states[0]), -q, where)
        self.move((i, loc, states[1]), q, where)
        self.records.append(("ADJUSTMENT", record | {
            "from_state": states[0], "to_state": states[1], "location_id": obj["location_id"],
            "quantity": fmt_quantity(q)}))

    def physical_count(self, i: int, obj: Mapping[str, Any], where: str,
                       record: dict[str, Any]) -> None:
        loc = self.location(obj, "location_id", f"{where}.location_id")
        state = self.enum(obj, "state", COUNTED, where)
        q = parse_quantity(obj.get("quantity"), f"{where}.quantity", positive=False)
        if self.ignore_unchanged and self.value((i, loc, state)) == q:
            return
        self.put((i, loc, state), q, where)
        self.records.append(("PHYSICAL_COUNT", record | {
            "state": state, "location_id": obj["location_id"], "quantity": fmt_quantity(q)}))

    def transfer(self, i: int, obj: Mapping[str, Any], where: str,
                 record: dict[str, Any]) -> None:
        src = self.location(obj, "from_location_id", f"{where}.from_location_id")
        dst = self.location(obj, "to_location_id", f"{where}.to_location_id")
        if src == dst:
            raise SquareError("INVALID_VALUE", f"{where}: from and to locations are the same",
                              f"{where}.to_location_id")
        state = self.enum(obj, "state", COUNTED, where)
        q = parse_quantity(obj.get("quantity"), f"{where}.quantity", positive=True)
        self.move((i, src, state), -q, where)
        self.move((i, dst, state), q, where)
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
        for key in self.changed:
            state.overrides[key] = (self.scratch[key], at)
        changes = []
        for kind, record in self.records:
            obj = {"id": state.next_change_id(), **record, "created_at": at,
                   "source": SOURCE}
            obj.setdefault("occurred_at", at)
            changes.append({"type": kind, kind.lower(): obj})
        state.history.extend(changes)
        counts = [c for cell in self.cells for c in state.cell_counts(*cell)]
        changed = [c for key in self.changed if (c := state.count(*key)) is not None]
        return {"counts": counts, "changes": changes}, changed


def batch_change(state: PosState, body: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    key = body.get("idempotency_key")
    if not isinstance(key, str) or not 1 <= len(key) <= 128:
        raise SquareError("MISSING_REQUIRED_PARAMETER", "idempotency_key (1..128 characters) "
                          "is required", "idempotency_key")
    fingerprint = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    if key in state.idempotency:
        seen, response = state.idempotency[key]
        if seen != fingerprint:
            raise SquareError("IDEMPOTENCY_KEY_REUSED", "idempotency_key was used for a "
                              "different request", "idempotency_key")
        return response, []
    changes = body.get("changes")
    if not isinstance(changes, list) or not 1 <= len(changes) <= MAX_CHANGES:
        raise SquareError("INVALID_ARRAY_LENGTH", f"changes must hold 1..{MAX_CHANGES} "
                          "changes", "changes")
    batch = Batch(state, ignore_unchanged=body.get("ignore_unchanged_counts", True) is not False)
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
        sender.send(TOPIC, event_id, {
            "merchant_id": state.merchant_id, "type": TOPIC, "event_id": event_id,
            "created_at": created,
            "data": {"type": "inventory_counts", "id": state.next_uuid(),
                     "object": {"inventory_counts": counts[start:start + NOTIFICATION_COUNTS]}}})


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

    async def locations(request: Request) -> Response:
        return JSONResponse({"locations": [location_json(state, loc.index)
                                           for loc in world.stores]})

    async def catalog(request: Request) -> Response:
        try:
            return JSONResponse(list_catalog(state, request.query_params))
        except SquareError as exc:
            return exc.response()

    async def counts(request: Request) -> Response:
        try:
            return JSONResponse(retrieve_counts(state, await json_body(request)))
        except SquareError as exc:
            return exc.response()

    async def change(request: Request) -> Response:
        try:
            response, changed = batch_change(state, await json_body(request))
        except SquareError as exc:
            return exc.response()
        notify(state, sender, changed)
        return JSONResponse(response)

    async def history(request: Request) -> Response:
        try:
            return JSONResponse(retrieve_changes(state, await json_body(request)))
        except SquareError as exc:
            return exc.response()

    routes = [
        Route("/v2/locations", locations, methods=["GET"]),
        Route("/v2/catalog/list", catalog, methods=["GET"]),
        Route("/v2/inventory/counts/batch-retrieve", counts, methods=["POST"]),
        Route("/v2/inventory/changes/batch-create", change, methods=["POST"]),
        Route("/v2/inventory/changes/batch-retrieve", history, methods=["POST"]),
    ]
    return simulator_app(settings.name, routes, sender, bearer_check(settings.token),
                         unauthorized, state)
