"""ERP simulator: the master-data system (items, locations, purchase orders, nightly stock).

JSON REST under ``/api/v1`` with camelCase fields and ``Authorization: Bearer <token>``.
Errors are ``{"error": {"code", "message", "field"?}}`` (401 ``unauthorized``, 400
``invalid_request``, 404 ``not_found``, 422 ``invalid_value``); a rejected request changes nothing.

Endpoints:
- ``GET  /api/v1/items?limit=1..1000&after=<sku>&skus=a,b`` -> ``{"items": [Item], "nextCursor"}``,
  ordered by sku; ``skus`` (<= 1000) narrows the listing, unknown skus are ignored.
- ``GET  /api/v1/items/{sku}`` -> Item.
- ``PATCH /api/v1/items/{sku}`` ``{listPrice?, description?, safetyStock?, category?}`` -> Item.
- ``GET  /api/v1/locations`` -> ``{"locations": [Location]}`` with ``externalIds`` holding the POS
  and web-shop location ids (the ERP owns these cross-references).
- ``GET  /api/v1/purchase-orders?status=open|received|all&skus=&locations=&limit=&after=``
  -> ``{"purchaseOrders": [PO], "nextCursor"}`` ordered by poNumber.
- ``GET  /api/v1/purchase-orders/{poNumber}`` -> PO.
- ``POST /api/v1/purchase-orders/{poNumber}/receipts``
  ``{"lines": [{"lineNumber"|"sku", "quantity"}], "receivedAt"?}`` -> PO.
- ``GET  /api/v1/stock-snapshots/latest?skus=&locations=&limit=&after=``
  -> ``{"snapshotId", "asOf", "rows": [{itemNumber, sku, locationCode, onHand}], "nextCursor"}``,
  ordered by (sku, locationCode); rows are computed per page, never materialised.
- ``POST /api/v1/stock-snapshots`` ``{"asOf"?, "rows": [{sku, locationCode, onHand}]}`` -> 201
  ``{"snapshotId", "asOf", "rowCount"}``: a new nightly snapshot; cells not given carry over.
- ``POST /api/v1/stock-adjustments`` ``{"sku", "locationCode", "onHand", "reason"}`` -> 201
  the cell: a back-office correction of one cell of the latest snapshot.

Webhooks (Standard Webhooks: ``webhook-id`` = event id, stable across retries;
``webhook-timestamp`` per attempt; ``webhook-signature: v1,<base64 HMAC-SHA256>``), body
``{"id": "evt_...", "type", "occurredAt", "sequence", "data"}`` where ``sequence`` grows by one per
event across all types (a receiver can detect gaps):
- ``item.updated``: data = the Item.
- ``purchase_order.received``: data = the PO after the receipt.
- ``stock.snapshot.completed``: data = ``{snapshotId, asOf, previousSnapshotId, rowCount}``.
- ``stock.adjusted``: data = ``{snapshotId, itemNumber, sku, locationCode, onHand,
  previousOnHand, reason, adjustedAt}``.

A goods receipt does not touch the snapshot: the ERP learns stock from the nightly snapshot.
"""

from __future__ import annotations

import os
import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.intake.signatures import standard_sign
from gateway.simulators.base import bearer_check, simulator_app
from gateway.simulators.webhooks import DeliveryOptions, WebhookSender
from gateway.simulators.world import CITIES, EPOCH, World, mix
from resolvers.settings import BackendSettings

MAX_PAGE = 1000
MAX_FILTER = 1000
MAX_SNAPSHOT_ROWS = 100_000
CURRENCY = "NOK"
SUPPLIERS = ("Nordic Textiles AS", "Fjord Goods AB", "Baltic Home Oy", "Atlantic Footwear Ltd",
             "Oslo Paper Co", "Viking Outdoor GmbH")
PRICE_RE = re.compile(r"^\d{1,9}(\.\d{1,2})?$")
PO_STATUS = {"open": ("OPEN", "PARTIALLY_RECEIVED"), "received": ("RECEIVED",),
             "all": ("OPEN", "PARTIALLY_RECEIVED", "RECEIVED")}

Json = dict[str, Any]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC)


class ApiError(Exception):
    """Answered as the ERP's error body; raised before any state is touched."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> Response:
        body: Json = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return json_response({"error": body}, self.status)


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", message, field)


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_value", message, field)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@dataclass(frozen=True, slots=True)
class PurchaseOrder:
    """An opening PO from the World (one line each); receipts live in the state."""

    number: str
    item: int
    location: int
    quantity: int
    expected: datetime


class ErpState:
    """Overrides on top of the World: only what the API changed is stored."""

    def __init__(self, world: World, sender: WebhookSender) -> None:
        self.world = world
        self.sender = sender
        self.item_changes: dict[int, Json] = {}
        self.received: dict[str, int] = {}
        self.po_updated: dict[str, datetime] = {}
        self.cells: dict[tuple[int, int], int] = {}
        self.snapshot_number = 1
        self.snapshot_as_of = world.snapshot_as_of
        self.sequence = 0
        # In every event id: a restarted ERP starts its sequence again, and must not repeat
        # ids a gateway with a persistent dedupe store has already seen.
        self.boot = os.urandom(6).hex()
        self._sku_index: dict[str, int] = {}
        self.locations_by_code = {loc.code: loc for loc in world.locations}
        self.location_order = sorted(world.locations, key=lambda loc: loc.code)

    # -- items -------------------------------------------------------------------------------

    def sku_at(self, i: int) -> str:
        return self.world.item(i).sku

    def index_of(self, sku: str) -> int | None:
        """Item index of ``sku`` (items are ordered by sku), memoised."""
        found = self._sku_index.get(sku)
        if found is None:
            j = bisect_left(range(self.world.n_skus), sku, key=self.sku_at)
            if j == self.world.n_skus or self.sku_at(j) != sku:
                return None
            found = self._sku_index[sku] = j
        return found

    def require_item(self, sku: str, field: str | None = None) -> int:
        i = self.index_of(sku)
        if i is None:
            if field is None:
                raise ApiError(404, "not_found", f"item {sku!r} does not exist")
            raise invalid(field, f"item {sku!r} does not exist")
        return i

    def item_json(self, i: int) -> Json:
        item, changes = self.world.item(i), self.item_changes.get(i, {})
        updated = EPOCH + timedelta(seconds=mix(self.world.seed, 20, i) % (365 * 86400))
        return {
            "itemNumber": item.item_number, "sku": item.sku, "gtin": item.gtin13,
            "description": changes.get("description", item.name),
            "category": changes.get("category", item.category),
            "listPrice": str(changes.get("listPrice", item.list_price)),
            "cost": str(item.cost), "currency": CURRENCY,
            "safetyStock": changes.get("safetyStock", item.safety_stock), "status": "ACTIVE",
            "updatedAt": rfc3339(changes.get("updatedAt", updated)),
        }

    # -- purchase orders -----------------------------------------------------------------------

    @cached_property
    def purchase_orders(self) -> dict[str, PurchaseOrder]:
        """Materialised on first use only: at 100k SKUs x 10 warehouses this takes seconds."""
        pos = [PurchaseOrder(*po) for po in self.world.purchase_orders()]
        return {po.number: po for po in sorted(pos, key=lambda po: po.number)}

    @cached_property
    def po_numbers(self) -> list[str]:
        return list(self.purchase_orders)

    @cached_property
    def pos_by_item(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for po in self.purchase_orders.values():
            out.setdefault(po.item, []).append(po.number)
        return out

    def po_status(self, po: PurchaseOrder) -> str:
        received = self.received.get(po.number, 0)
        if received == 0:
            return "OPEN"
        return "RECEIVED" if received >= po.quantity else "PARTIALLY_RECEIVED"

    def po_json(self, po: PurchaseOrder) -> Json:
        item, loc = self.world.item(po.item), self.world.locations[po.location]
        h = mix(self.world.seed, 21, po.item, po.location)
        ordered = po.expected - timedelta(days=14 + h % 21)
        return {
            "poNumber": po.number, "supplier": SUPPLIERS[(h >> 8) % len(SUPPLIERS)],
            "locationCode": loc.code, "status": self.po_status(po),
            "orderDate": ordered.date().isoformat(), "expectedDate": po.expected.date().isoformat(),
            "lines": [{"lineNumber": 1, "itemNumber": item.item_number, "sku": item.sku,
                       "gtin": item.gtin13, "quantityOrdered": po.quantity,
                       "quantityReceived": self.received.get(po.number, 0)}],
            "updatedAt": rfc3339(self.po_updated.get(po.number, ordered)),
        }

    # -- stock ------------------------------------------------------------------------------------

    @property
    def snapshot_id(self) -> str:
        return f"snap_{self.world.seed}_{self.snapshot_number:06d}"

    def on_hand(self, i: int, loc: int) -> int:
        found = self.cells.get((i, loc))
        return self.world.erp_snapshot_on_hand(i, loc) if found is None else found

    def row_json(self, i: int, loc: int) -> Json:
        item = self.world.item(i)
        return {"itemNumber": item.item_number, "sku": item.sku,
                "locationCode": self.world.locations[loc].code, "onHand": self.on_hand(i, loc)}

    # -- events -----------------------------------------------------------------------------------

    def emit(self, kind: str, data: Json) -> None:
        """Number the event and queue it; a dropped delivery still consumes its sequence."""
        self.sequence += 1
        event_id = f"evt_{self.world.seed}_{self.boot}_{self.sequence:010d}"
        self.sender.send(kind, event_id, {"id": event_id, "type": kind,
                                          "occurredAt": rfc3339(now()),
                                          "sequence": self.sequence, "data": data})


# -- request parsing ---------------------------------------------------------------------------

def parse_limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise bad("limit", f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


def parse_list(request: Request, name: str) -> list[str] | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if len(values) > MAX_FILTER:
        raise bad(name, f"at most {MAX_FILTER} values per request")
    return values


async def parse_body(request: Request) -> Json:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise bad("body", "body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise bad("body", "body must be a JSON object")
    return body


def parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise bad(field, "must be an RFC 3339 timestamp string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise invalid(field, "must be an RFC 3339 timestamp") from exc
    if moment.tzinfo is None:
        raise invalid(field, "timestamp needs a UTC offset")
    return moment.astimezone(UTC)


def parse_int(value: Any, field: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(field, "must be an integer")
    if value < minimum:
        raise invalid(field, f"must be at least {minimum}")
    return value


def parse_text(value: Any, field: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise bad(field, "must be a string")
    if not value.strip() or len(value) > max_len:
        raise invalid(field, f"must be 1 to {max_len} characters")
    return value


def parse_price(value: Any, field: str) -> Decimal:
    if not isinstance(value, str):
        raise bad(field, "must be a decimal string such as \"96.99\"")
    try:
        price = Decimal(value)
    except InvalidOperation as exc:
        raise invalid(field, "must be a decimal string") from exc
    if not PRICE_RE.match(value) or price <= 0:
        raise invalid(field, "must be positive with at most two decimals")
    return price.quantize(Decimal("0.01"))


def page_of(size: int, key: Callable[[int], Any], after: Any, limit: int,
            cursor: Callable[[int], str]) -> tuple[range, str | None]:
    """Positions of one page of a virtual sorted sequence, and the cursor after it."""
    start = 0 if after is None else bisect_right(range(size), after, key=key)
    end = min(size, start + limit)
    return range(start, end), cursor(end - 1) if end < size else None


# -- handlers ------------------------------------------------------------------------------------

Handler = Callable[[Request, ErpState], Awaitable[Response]]


def endpoint(state: ErpState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        try:
            return await handler(request, state)
        except ApiError as exc:
            return exc.response()
    return run


async def list_items(request: Request, state: ErpState) -> Response:
    limit, skus = parse_limit(request), parse_list(request, "skus")
    if skus is None:
        indices: Sequence[int] = range(state.world.n_skus)
    else:
        indices = sorted({i for i in map(state.index_of, skus) if i is not None})
    page, cursor = page_of(len(indices), lambda p: state.sku_at(indices[p]),
                           request.query_params.get("after"), limit,
                           lambda p: state.sku_at(indices[p]))
    return json_response({"items": [state.item_json(indices[p]) for p in page],
                          "nextCursor": cursor})


async def get_item(request: Request, state: ErpState) -> Response:
    return json_response(state.item_json(state.require_item(request.path_params["sku"])))


PATCHABLE: dict[str, Callable[[Any], Any]] = {
    "listPrice": lambda v: parse_price(v, "listPrice"),
    "description": lambda v: parse_text(v, "description", 200),
    "category": lambda v: parse_text(v, "category", 60),
    "safetyStock": lambda v: parse_int(v, "safetyStock", 0),
}


async def patch_item(request: Request, state: ErpState) -> Response:
    i = state.require_item(request.path_params["sku"])
    body = await parse_body(request)
    unknown = sorted(set(body) - set(PATCHABLE))
    if unknown:
        raise bad(unknown[0], f"{unknown[0]} cannot be updated")
    if not body:
        raise bad("body", f"give at least one of {', '.join(PATCHABLE)}")
    changes = {key: PATCHABLE[key](value) for key, value in body.items()}
    state.item_changes.setdefault(i, {}).update(changes, updatedAt=now())
    item = state.item_json(i)
    state.emit("item.updated", item)
    return json_response(item)


def location_json(state: ErpState, code: str) -> Json:
    loc = state.locations_by_code[code]
    city = CITIES[loc.index % len(CITIES)] if loc.type == "STORE" else CITIES[
        (3 * loc.index) % len(CITIES)]
    return {
        "code": loc.code, "name": loc.name, "type": loc.type, "gln": loc.gln,
        "externalIds": {"squareLocationId": loc.square_id,
                        "shopifyLocationId": None if loc.shopify_id is None
                        else str(loc.shopify_id)},
        "address": {"line1": f"Storgata {loc.index + 1}", "postalCode": f"{1000 + loc.index:04d}",
                    "city": city, "country": "NO"},
        "updatedAt": rfc3339(EPOCH),
    }


async def list_locations(request: Request, state: ErpState) -> Response:
    return json_response({"locations": [location_json(state, loc.code)
                                        for loc in state.location_order]})


async def list_purchase_orders(request: Request, state: ErpState) -> Response:
    limit = parse_limit(request)
    status = request.query_params.get("status", "open")
    if status not in PO_STATUS:
        raise bad("status", "status must be open, received or all")
    skus, codes = parse_list(request, "skus"), parse_list(request, "locations")
    if skus is None:
        numbers = state.po_numbers
    else:
        found = (state.index_of(s) for s in skus)
        numbers = sorted({n for i in found if i is not None for n in state.pos_by_item.get(i, [])})
    wanted_locations = None if codes is None else set(codes)
    selected = [po for po in map(state.purchase_orders.__getitem__, numbers)
                if state.po_status(po) in PO_STATUS[status]
                and (wanted_locations is None
                     or state.world.locations[po.location].code in wanted_locations)]
    page, cursor = page_of(len(selected), lambda p: selected[p].number,
                           request.query_params.get("after"), limit, lambda p: selected[p].number)
    return json_response({"purchaseOrders": [state.po_json(selected[p]) for p in page],
                          "nextCursor": cursor})


def require_po(state: ErpState, number: str) -> PurchaseOrder:
    po = state.purchase_orders.get(number)
    if po is None:
        raise ApiError(404, "not_found", f"purchase order {number!r} does not exist")
    return po


async def get_purchase_order(request: Request, state: ErpState) -> Response:
    return json_response(state.po_json(require_po(state, request.path_params["poNumber"])))


def receipt_quantity(po: PurchaseOrder, sku: str, lines: Any) -> int:
    """Total quantity a receipt body puts on the PO's single line, validated."""
    if not isinstance(lines, list) or not lines:
        raise bad("lines", "lines must be a non-empty array")
    total = 0
    for n, line in enumerate(lines):
        where = f"lines[{n}]"
        if not isinstance(line, dict):
            raise bad(where, "each line must be an object")
        if ("lineNumber" in line) == ("sku" in line):
            raise bad(where, "give exactly one of lineNumber or sku")
        if "lineNumber" in line:
            parse_int(line["lineNumber"], f"{where}.lineNumber", 1)
            if line["lineNumber"] != 1:
                raise invalid(f"{where}.lineNumber", f"PO has no line {line['lineNumber']}")
        elif line["sku"] != sku:
            raise invalid(f"{where}.sku", f"PO has no line for {line['sku']!r}")
        total += parse_int(line.get("quantity"), f"{where}.quantity", 1)
    return total


async def receive_purchase_order(request: Request, state: ErpState) -> Response:
    po = require_po(state, request.path_params["poNumber"])
    body = await parse_body(request)
    quantity = receipt_quantity(po, state.sku_at(po.item), body.get("lines"))
    received_at = parse_time(body["receivedAt"], "receivedAt") if "receivedAt" in body else now()
    already = state.received.get(po.number, 0)
    if already + quantity > po.quantity:
        raise invalid("lines", f"over-receipt: {already} of {po.quantity} already received, "
                               f"{quantity} more is too many")
    state.received[po.number] = already + quantity
    state.po_updated[po.number] = received_at
    result = state.po_json(po)
    state.emit("purchase_order.received", result)
    return json_response(result)


def parse_cell_cursor(after: str | None) -> tuple[str, str] | None:
    if after is None:
        return None
    sku, sep, code = after.rpartition("|")
    if not sep:
        raise bad("after", "not a cursor this endpoint returned")
    return sku, code


async def latest_snapshot(request: Request, state: ErpState) -> Response:
    limit, skus = parse_limit(request), parse_list(request, "skus")
    codes = parse_list(request, "locations")
    if skus is None:
        items: Sequence[int] = range(state.world.n_skus)
    else:
        items = sorted({i for i in map(state.index_of, skus) if i is not None})
    locs = [loc.index for loc in state.location_order if codes is None or loc.code in codes]
    width = len(locs)

    def key(p: int) -> tuple[str, str]:
        return state.sku_at(items[p // width]), state.world.locations[locs[p % width]].code

    page, cursor = page_of(len(items) * width, key,
                           parse_cell_cursor(request.query_params.get("after")), limit,
                           lambda p: "|".join(key(p)))
    rows = [state.row_json(items[p // width], locs[p % width]) for p in page]
    return json_response({"snapshotId": state.snapshot_id, "asOf": rfc3339(state.snapshot_as_of),
                          "rows": rows, "nextCursor": cursor})


def parse_cell(state: ErpState, row: Any, prefix: str = "") -> tuple[int, int, int]:
    """(item index, location index, onHand) of a ``{sku, locationCode, onHand}`` object."""
    if not isinstance(row, dict):
        raise bad(prefix.rstrip("."), "must be an object")
    sku = parse_text(row.get("sku"), f"{prefix}sku", 100)
    code = parse_text(row.get("locationCode"), f"{prefix}locationCode", 100)
    on_hand = parse_int(row.get("onHand"), f"{prefix}onHand", 0)
    loc = state.locations_by_code.get(code)
    if loc is None:
        raise invalid(f"{prefix}locationCode", f"location {code!r} does not exist")
    return state.require_item(sku, f"{prefix}sku"), loc.index, on_hand


async def record_snapshot(request: Request, state: ErpState) -> Response:
    body = await parse_body(request)
    rows = body.get("rows")
    if not isinstance(rows, list) or len(rows) > MAX_SNAPSHOT_ROWS:
        raise bad("rows", f"rows must be an array of at most {MAX_SNAPSHOT_ROWS} rows")
    as_of = parse_time(body["asOf"], "asOf") if "asOf" in body else now()
    if as_of < state.snapshot_as_of:
        raise invalid("asOf", "a snapshot cannot be older than the latest one")
    cells: dict[tuple[int, int], int] = {}
    for n, row in enumerate(rows):
        i, loc, on_hand = parse_cell(state, row, f"rows[{n}].")
        if (i, loc) in cells:
            raise invalid(f"rows[{n}]", "the same sku and location appear twice")
        cells[i, loc] = on_hand
    previous = state.snapshot_id
    state.cells.update(cells)
    state.snapshot_number += 1
    state.snapshot_as_of = as_of
    result = {"snapshotId": state.snapshot_id, "asOf": rfc3339(as_of), "rowCount": len(cells)}
    state.emit("stock.snapshot.completed", {**result, "previousSnapshotId": previous})
    return json_response(result, 201)


async def adjust_stock(request: Request, state: ErpState) -> Response:
    body = await parse_body(request)
    i, loc, on_hand = parse_cell(state, body)
    reason = parse_text(body.get("reason"), "reason", 200)
    previous = state.on_hand(i, loc)
    state.cells[i, loc] = on_hand
    cell = {"snapshotId": state.snapshot_id, **state.row_json(i, loc),
            "previousOnHand": previous, "reason": reason, "adjustedAt": rfc3339(now())}
    state.emit("stock.adjusted", cell)
    return json_response(cell, 201)


# -- app ------------------------------------------------------------------------------------------

def unauthorized() -> Response:
    response = json_response({"error": {"code": "unauthorized",
                                        "message": "missing or invalid bearer token"}}, 401)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def signer(secret: str) -> Callable[[bytes, int, str], dict[str, str]]:
    """Standard Webhooks headers; the timestamp (and so the signature) is fresh per attempt."""
    def sign(body: bytes, attempt: int, delivery_id: str) -> dict[str, str]:
        timestamp = int(time.time())
        return {"webhook-id": delivery_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": standard_sign(secret, delivery_id, timestamp, body)}
    return sign


def create_app(world: World, settings: BackendSettings, webhook_url: str,
               options: DeliveryOptions | None = None) -> Starlette:
    sender = WebhookSender(webhook_url, signer(settings.webhook_secret), options, seed=world.seed)
    state = ErpState(world, sender)

    def route(path: str, handler: Handler, method: str = "GET") -> Route:
        return Route(f"/api/v1{path}", endpoint(state, handler), methods=[method])

    routes = [
        route("/items", list_items),
        route("/items/{sku}", get_item),
        route("/items/{sku}", patch_item, "PATCH"),
        route("/locations", list_locations),
        route("/purchase-orders", list_purchase_orders),
        route("/purchase-orders/{poNumber}", get_purchase_order),
        route("/purchase-orders/{poNumber}/receipts", receive_purchase_order, "POST"),
        route("/stock-snapshots/latest", latest_snapshot),
        route("/stock-snapshots", record_snapshot, "POST"),
        route("/stock-adjustments", adjust_stock, "POST"),
    ]
    return simulator_app(settings.name, routes, sender, bearer_check(settings.token),
                         unauthorized, state)
