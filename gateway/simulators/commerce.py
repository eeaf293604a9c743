"""Shopify (REST Admin 2025-01 and GraphQL Admin 2026-10): the demo retailer's web shop.

The GraphQL Admin API (reads by quantity name, ``inventorySetQuantities`` with
``changeFromQuantity`` and ``@idempotent``, product/variant writes, the cost-based rate limit)
is in :mod:`gateway.simulators.shopify_graphql` and the shop's state in
:mod:`gateway.simulators.shop`; this module holds the REST endpoints and the app. Every
change, whichever API or the admin made it, goes through
:meth:`Shop.change_level` and fires the same ``inventory_levels/update``.

The shop's locations are the World's warehouses (they fulfil online orders). Every World item
is one product with one variant; one extra product, "Gift Card" (SKU ``GIFTCARD-500``), is not
in the ERP, so identity resolution has something to report. Its ids are the World's id scheme
at index ``n_skus`` (one past the last item).

REST endpoints, under ``/admin/api/2025-01/`` and ``/admin/api/2026-10/`` (REST is legacy
but still served; merchants' tools call it), with ``X-Shopify-Access-Token``:

- ``GET shop.json`` -> ``{"shop": {id, name, myshopify_domain, currency: "NOK", ...}}``
- ``GET products.json?limit=1..250 (50)&page_info=`` -> ``{"products": [...]}``; cursor
  pagination in the ``Link`` header (``<...page_info=...>; rel="previous", <...>; rel="next"``).
- ``GET locations.json`` -> ``{"locations": [...]}``
- ``GET inventory_levels.json?inventory_item_ids=&location_ids=&limit=`` (at least one id list,
  at most 50 ids each) -> ``{"inventory_levels": [{inventory_item_id, location_id, available,
  updated_at, admin_graphql_api_id}]}`` + ``Link`` pagination.
- ``POST inventory_levels/set.json {location_id, inventory_item_id, available}`` and
  ``POST inventory_levels/adjust.json {location_id, inventory_item_id, available_adjustment}``
  -> ``{"inventory_level": {...}}``.
- ``POST orders.json {"order": {"line_items": [{variant_id, quantity}], "email"?,
  "location_id"?}}`` -> 201 ``{"order": {...}}``; commits stock at the fulfilment location
  (available -= q, committed += q); 422 when a line cannot be reserved (policy ``deny``).
- ``POST orders/{id}/fulfillments.json {"fulfillment": {"location_id"?}}`` -> 201
  ``{"fulfillment": {...}}``; ships the whole order (committed -= q).

Errors use Shopify's shapes: 400 ``{"errors": {field: "Required parameter missing or
invalid"}}`` for missing or unreadable parameters, 422 ``{"errors": {field: [msg]}}`` for
invalid values, 404 ``{"errors": "Not Found"}`` for unknown ids, 401 for a bad token.

Webhooks (body = the REST resource; headers ``X-Shopify-Topic``, ``-Hmac-Sha256``,
``-Shop-Domain``, ``-API-Version``, ``-Webhook-Id`` (per delivery, same across retries),
``-Event-Id`` (per merchant action), ``-Triggered-At``):
``inventory_levels/update`` (one per changed level), ``orders/create``, ``orders/fulfilled``.

Simulator controls (``/_sim/``, beside the shared ones of :mod:`gateway.simulators.base`,
``/_sim/outage`` among them):

- ``GET /_sim/shop/writes`` -> ``{"byKey": {idempotency key: effective writes},
  "writes": [{key, mutation, at, changes}]}``: GraphQL writes that changed the shop (a replay
  of a key, a stale or failed write counts nothing); ``DELETE`` clears.
- ``GET|POST /_sim/shop/throttle {restoreRate?, maximumAvailable?, currentlyAvailable?}``:
  the cost bucket (default 2,000 points, restoring 100/s).
- ``GET /_sim/shop/bulk/N.jsonl?signature=``: a completed bulk operation's result (the
  ``url`` it reports; signed, no access token).
- ``POST /_sim/shop/admin-edit {sku | inventory_item_id, location_id?, available | delta}``:
  a merchant editing ``available`` in the admin; fires the webhook, not an API write.

Timestamps are RFC 3339 UTC with fixed-width milliseconds and strictly increase, so a level's
``updated_at`` orders its versions both as a time and as a string.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.simulators.base import simulator_app
from gateway.simulators.shop import (
    CURRENCY,
    DEFAULT_LIMIT,
    FULFILLMENT_ID_BASE,
    MAX_IDS,
    MAX_LIMIT,
    NOT_FOUND,
    ORDER_ID_BASE,
    REST_VERSIONS,
    UNAUTHORIZED,
    VENDOR,
    ApiError,
    Shop,
    Variant,
    as_int,
    invalid,
    level_json,
    location_json,
    missing,
    product_json,
    stamp,
)
from gateway.simulators.shopify_graphql import BULK_PATH, GRAPHQL_PATH, ShopifyAdmin
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import EPOCH, World
from resolvers.settings import BackendSettings

# -- cursor pagination ------------------------------------------------------------------------


def encode_cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def decode_cursor(page_info: str) -> dict[str, Any]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(page_info + "=" * (-len(page_info) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, {"page_info": "Invalid value."}) from exc
    if not isinstance(data, dict) or data.get("direction") not in ("next", "prev") \
            or not isinstance(data.get("last_position"), int):
        raise ApiError(400, {"page_info": "Invalid value."})
    return data


def cursor_ids(cursor: dict[str, Any], name: str) -> list[int] | None:
    """The id filter a level cursor carries (Shopify forbids filters next to page_info)."""
    ids = cursor.get(name)
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise ApiError(400, {"page_info": "Invalid value."})
    return ids


def page_limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    limit = as_int(raw)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, {"limit": "Invalid value."})
    return limit


def page_window(cursor: dict[str, Any] | None, limit: int, total: int) -> range:
    """Positions of the page: after ``last_position`` (next) or before it (prev)."""
    if cursor is None:
        start = 0
    elif cursor["direction"] == "next":
        start = cursor["last_position"]
    else:
        start = max(0, cursor["last_position"] - limit)
    start = min(max(0, start), total)
    stop = cursor["last_position"] if cursor and cursor["direction"] == "prev" else start + limit
    return range(start, min(max(start, stop), total))


def link_header(request: Request, limit: int, window: range, total: int,
                extra: dict[str, Any]) -> dict[str, str]:
    """Shopify's ``Link`` header, pointing at the request's own base URL."""
    base = f"{request.url.scheme}://{request.url.netloc}{request.url.path}?limit={limit}"
    links = []
    if window.start > 0:
        cursor = encode_cursor({**extra, "direction": "prev", "last_position": window.start})
        links.append(f'<{base}&page_info={cursor}>; rel="previous"')
    if window.stop < total:
        cursor = encode_cursor({**extra, "direction": "next", "last_position": window.stop})
        links.append(f'<{base}&page_info={cursor}>; rel="next"')
    return {"Link": ", ".join(links)} if links else {}


# -- request handling -------------------------------------------------------------------------


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


async def read_body(request: Request, root: str) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise missing(root)
    return body


def parse_ids(request: Request, name: str) -> list[int] | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    ids = [as_int(part) for part in raw.split(",")]
    if any(i is None for i in ids):
        raise ApiError(400, {name: "Invalid value."})
    if len(ids) > MAX_IDS:
        raise invalid(name, f"must contain at most {MAX_IDS} ids")
    return sorted({i for i in ids if i is not None})


class CommerceApi:
    """Route handlers over one :class:`Shop`."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    async def shop_info(self, request: Request) -> Response:
        shop = self.shop
        return reply({"shop": {
            "id": 60_000_000_000 + shop.world.seed % 1_000_000_000,
            "name": "RetailGraph Demo", "domain": shop.domain,
            "myshopify_domain": shop.domain, "currency": CURRENCY,
            "enabled_presentment_currencies": [CURRENCY], "money_format": "{{amount}} kr",
            "country_code": "NO", "iana_timezone": "Europe/Oslo", "created_at": stamp(EPOCH),
        }})

    async def products(self, request: Request) -> Response:
        limit = page_limit(request)
        page_info = request.query_params.get("page_info")
        cursor = decode_cursor(page_info) if page_info else None
        total = self.shop.n_variants
        window = page_window(cursor, limit, total)
        products = [product_json(self.shop, self.shop.variant(i)) for i in window]
        return reply({"products": products},
                     headers=link_header(request, limit, window, total, {}))

    async def locations(self, request: Request) -> Response:
        shop = self.shop
        return reply({"locations": [location_json(shop.locations[i], shop.opened_at)
                                    for i in shop.location_ids]})

    async def inventory_levels(self, request: Request) -> Response:
        limit = page_limit(request)
        page_info = request.query_params.get("page_info")
        if page_info:
            cursor: dict[str, Any] | None = decode_cursor(page_info)
            assert cursor is not None
            items = cursor_ids(cursor, "inventory_item_ids")
            locs = cursor_ids(cursor, "location_ids")
        else:
            cursor = None
            items = parse_ids(request, "inventory_item_ids")
            locs = parse_ids(request, "location_ids")
            if items is None and locs is None:
                raise invalid("base", "inventory_item_ids or location_ids is required")
        variants = self._variants(items)
        location_ids = [i for i in (locs or self.shop.location_ids) if i in self.shop.locations]
        total = len(variants) * len(location_ids)
        window = page_window(cursor, limit, total)
        levels = []
        for position in window:
            variant = variants[position // len(location_ids)]
            loc = location_ids[position % len(location_ids)]
            levels.append(level_json(variant.inventory_item_id, loc,
                                     self.shop.level(variant, loc)))
        extra = {"inventory_item_ids": items, "location_ids": locs}
        return reply({"inventory_levels": levels},
                     headers=link_header(request, limit, window, total, extra))

    def _variants(self, inventory_item_ids: list[int] | None) -> _VariantAxis:
        if inventory_item_ids is None:
            return _VariantAxis(self.shop, None)
        found = [self.shop.by_inventory_item_id(i) for i in inventory_item_ids]
        return _VariantAxis(self.shop, [v for v in found if v is not None])

    async def set_level(self, request: Request) -> Response:
        return await self._change(request, "available", absolute=True)

    async def adjust_level(self, request: Request) -> Response:
        return await self._change(request, "available_adjustment", absolute=False)

    async def _change(self, request: Request, field: str, absolute: bool) -> Response:
        body = await read_body(request, field)
        values = {}
        for name in ("location_id", "inventory_item_id", field):
            if body.get(name) is None:
                raise missing(name)
            value = as_int(body[name])
            if value is None:
                raise invalid(name, "must be an integer")
            values[name] = value
        variant = self.shop.by_inventory_item_id(values["inventory_item_id"])
        location_id = values["location_id"]
        if variant is None or location_id not in self.shop.locations:
            raise NOT_FOUND
        level = self.shop.level(variant, location_id)
        target = values[field] if absolute else level.available + values[field]
        level = self.shop.change_level(variant, location_id, available=target)
        return reply({"inventory_level": level_json(variant.inventory_item_id, location_id,
                                                    level)})

    async def create_order(self, request: Request) -> Response:
        body = await read_body(request, "order")
        order = body.get("order")
        if not isinstance(order, dict):
            raise missing("order")
        location_id = self._order_location(order.get("location_id"))
        email = order.get("email")
        if email is not None and not isinstance(email, str):
            raise invalid("email", "is invalid")
        lines = self._order_lines(order.get("line_items"))
        self._reserve_check(lines, location_id)
        return reply({"order": self._place(lines, location_id, email)}, 201)

    def _order_location(self, raw: Any) -> int:
        if raw is None:
            return self.shop.location_ids[0]
        location_id = as_int(raw)
        if location_id is None or location_id not in self.shop.locations:
            raise invalid("location_id", "is not a location of this shop")
        return location_id

    def _order_lines(self, raw: Any) -> list[tuple[Variant, int]]:
        if not isinstance(raw, list) or not raw:
            raise invalid("line_items", "must have at least one line item")
        lines = []
        for line in raw:
            if not isinstance(line, dict):
                raise invalid("line_items", "is invalid")
            variant_id, quantity = as_int(line.get("variant_id")), as_int(line.get("quantity"))
            variant = None if variant_id is None else self.shop.by_variant_id(variant_id)
            if variant is None:
                raise invalid("line_items", f"variant {line.get('variant_id')!r} does not exist")
            if quantity is None or quantity < 1:
                raise invalid("line_items", "quantity must be greater than or equal to 1")
            lines.append((variant, quantity))
        return lines

    def _reserve_check(self, lines: list[tuple[Variant, int]], location_id: int) -> None:
        wanted: dict[int, int] = {}
        for variant, quantity in lines:
            wanted[variant.index] = wanted.get(variant.index, 0) + quantity
        for variant, _ in lines:
            available = self.shop.level(variant, location_id).available
            if wanted[variant.index] > available:
                raise invalid("line_items", f"{variant.title} has only {max(0, available)} "
                              "available at this location")

    def _place(self, lines: list[tuple[Variant, int]], location_id: int,
               email: str | None) -> dict[str, Any]:
        shop = self.shop
        at = shop.now()
        number = 1001 + len(shop.orders)
        order_id = ORDER_ID_BASE + number
        line_items = [self._line_json(v, q) for v, q in lines]
        total = sum((v.price * q for v, q in lines), Decimal(0)).quantize(Decimal("0.01"))
        order = {
            "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "name": f"#{number}", "order_number": number, "email": email,
            "created_at": at, "updated_at": at, "processed_at": at, "closed_at": None,
            "cancelled_at": None, "financial_status": "paid", "fulfillment_status": None,
            "currency": CURRENCY, "presentment_currency": CURRENCY,
            "subtotal_price": str(total), "total_price": str(total), "total_tax": "0.00",
            "location_id": location_id, "line_items": line_items, "fulfillments": [],
        }
        shop.orders[order_id] = order
        changed: dict[int, Variant] = {}
        for variant, quantity in lines:
            level = shop.level(variant, location_id)
            shop.store(variant, location_id, replace(
                level, available=level.available - quantity,
                committed=level.committed + quantity, updated_at=at))
            changed[variant.index] = variant
        updates = [("inventory_levels/update",
                    level_json(v.inventory_item_id, location_id, shop.level(v, location_id)))
                   for v in changed.values()]
        shop.emit(at, [("orders/create", order), *updates])
        return order

    def _line_json(self, v: Variant, quantity: int) -> dict[str, Any]:
        line_id = self.shop.next_line_item_id()
        return {"id": line_id, "admin_graphql_api_id": f"gid://shopify/LineItem/{line_id}",
                "variant_id": v.variant_id, "product_id": v.product_id, "sku": v.sku,
                "quantity": quantity, "fulfillable_quantity": quantity,
                "fulfillment_status": None, "price": str(v.price), "title": v.title,
                "name": v.title, "variant_title": None, "vendor": VENDOR,
                "gift_card": v.item is None, "requires_shipping": v.item is not None}

    async def fulfil_order(self, request: Request) -> Response:
        order_id = as_int(request.path_params["order_id"])
        order = self.shop.orders.get(order_id) if order_id is not None else None
        if order is None:
            raise NOT_FOUND
        body = await read_body(request, "fulfillment")
        fulfillment = body.get("fulfillment")
        if not isinstance(fulfillment, dict):
            raise missing("fulfillment")
        raw_location = fulfillment.get("location_id")
        if raw_location is not None and as_int(raw_location) != order["location_id"]:
            raise invalid("location_id", "must be the location the order is assigned to")
        if order["fulfillment_status"] == "fulfilled":
            raise invalid("base", "Line items are already fulfilled")
        return reply({"fulfillment": self._ship(order)}, 201)

    def _ship(self, order: dict[str, Any]) -> dict[str, Any]:
        shop = self.shop
        at = shop.now()
        location_id = order["location_id"]
        for line in order["line_items"]:
            variant = shop.by_variant_id(line["variant_id"])
            assert variant is not None
            level = shop.level(variant, location_id)
            shop.store(variant, location_id,
                       replace(level, committed=level.committed - line["quantity"]))
            line["fulfillable_quantity"] = 0
            line["fulfillment_status"] = "fulfilled"
        fulfillment_id = FULFILLMENT_ID_BASE + order["order_number"]
        fulfillment = {
            "id": fulfillment_id, "order_id": order["id"], "status": "success",
            "name": f"{order['name']}.1", "location_id": location_id, "created_at": at,
            "updated_at": at, "line_items": [dict(line) for line in order["line_items"]],
            "admin_graphql_api_id": f"gid://shopify/Fulfillment/{fulfillment_id}",
        }
        order.update(fulfillment_status="fulfilled", updated_at=at, fulfillments=[fulfillment])
        shop.emit(at, [("orders/fulfilled", order)])
        return fulfillment


class _VariantAxis:
    """The variants of a level listing: the requested ones, or every variant (lazily)."""

    def __init__(self, shop: Shop, variants: list[Variant] | None) -> None:
        self.shop = shop
        self.variants = variants

    def __len__(self) -> int:
        return self.shop.n_variants if self.variants is None else len(self.variants)

    def __getitem__(self, position: int) -> Variant:
        return self.shop.variant(position) if self.variants is None else self.variants[position]


Endpoint = Callable[[Request], Awaitable[Response]]


def _handler(fn: Endpoint) -> Endpoint:
    """Turn :class:`ApiError` into Shopify's ``{"errors": ...}`` response."""

    async def handle(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as exc:
            return reply({"errors": exc.errors}, exc.status)
    return handle


class SimControls:
    """``/_sim/shop/*``: what tests and the demo see and steer beyond the vendor API."""

    def __init__(self, shop: Shop, admin: ShopifyAdmin) -> None:
        self.shop = shop
        self.admin = admin

    async def writes(self, request: Request) -> Response:
        """Effective GraphQL writes, counted per idempotency key (``DELETE`` clears)."""
        if request.method == "DELETE":
            self.admin.writes.clear()
            self.admin.writes_by_key.clear()
        return reply(self.admin.writes_json())

    async def throttle(self, request: Request) -> Response:
        """``{"restoreRate"?, "maximumAvailable"?, "currentlyAvailable"?}``: the cost bucket."""
        bucket = self.admin.bucket
        if request.method == "POST":
            body = await read_body(request, "throttle")
            fields = {"restoreRate": "restore_rate", "maximumAvailable": "maximum",
                      "currentlyAvailable": "available"}
            unknown = sorted(set(body) - set(fields))
            if unknown:
                raise invalid(unknown[0], "is not a throttle setting")
            for key, attr in fields.items():
                if key in body:
                    value = body[key]
                    if isinstance(value, bool) or not isinstance(value, int | float) \
                            or value < 0:
                        raise invalid(key, "must be a number >= 0")
                    bucket.refill()
                    setattr(bucket, attr, float(value))
            bucket.available = min(bucket.available, bucket.maximum)
        return reply(bucket.status())

    async def admin_edit(self, request: Request) -> Response:
        """A merchant changing a quantity in the Shopify admin: ``{sku | inventory_item_id,
        location_id, available | delta}``; it fires ``inventory_levels/update`` like any
        change and is not counted as an API write."""
        body = await read_body(request, "available")
        variant = None
        if body.get("sku") is not None:
            found = self.admin.search(f'sku:"{body["sku"]}"')
            variant = self.shop.variant(found[0]) if found else None
        elif body.get("inventory_item_id") is not None:
            item_id = as_int(body["inventory_item_id"])
            variant = None if item_id is None else self.shop.by_inventory_item_id(item_id)
        location_id = as_int(body.get("location_id", self.shop.location_ids[0]))
        if variant is None or location_id not in self.shop.locations:
            raise NOT_FOUND
        level = self.shop.level(variant, location_id)
        if body.get("available") is not None:
            target = as_int(body["available"])
        elif body.get("delta") is not None:
            delta = as_int(body["delta"])
            target = None if delta is None else level.available + delta
        else:
            raise missing("available")
        if target is None:
            raise invalid("available", "must be an integer")
        level = self.shop.change_level(variant, location_id, available=target)
        return reply({"inventory_level": level_json(variant.inventory_item_id, location_id,
                                                    level)})


def rest_routes(api: CommerceApi, prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/shop.json", _handler(api.shop_info)),
        Route(f"{prefix}/products.json", _handler(api.products)),
        Route(f"{prefix}/locations.json", _handler(api.locations)),
        Route(f"{prefix}/inventory_levels.json", _handler(api.inventory_levels)),
        Route(f"{prefix}/inventory_levels/set.json", _handler(api.set_level),
              methods=["POST"]),
        Route(f"{prefix}/inventory_levels/adjust.json", _handler(api.adjust_level),
              methods=["POST"]),
        Route(f"{prefix}/orders.json", _handler(api.create_order), methods=["POST"]),
        Route(f"{prefix}/orders/{{order_id}}/fulfillments.json", _handler(api.fulfil_order),
              methods=["POST"]),
    ]


def create_app(world: World, settings: BackendSettings, webhook_url: str,
               options: DeliveryOptions | None = None) -> Starlette:
    shop = Shop(world, settings, webhook_url, options)
    api = CommerceApi(shop)
    admin = ShopifyAdmin(shop)
    controls = SimControls(shop, admin)
    routes = [
        Route(GRAPHQL_PATH, admin.endpoint, methods=["POST"]),
        Route(f"{BULK_PATH}/{{name}}.jsonl", admin.bulk_result, methods=["GET"]),
        Route("/_sim/shop/writes", controls.writes, methods=["GET", "DELETE"]),
        Route("/_sim/shop/throttle", _handler(controls.throttle), methods=["GET", "POST"]),
        Route("/_sim/shop/admin-edit", _handler(controls.admin_edit), methods=["POST"]),
        *(route for version in REST_VERSIONS for route in rest_routes(
            api, f"/admin/api/{version}")),
    ]

    def auth(headers: dict[str, str]) -> bool:
        return not settings.token or headers.get("x-shopify-access-token") == settings.token

    def unauthorized() -> Response:
        return reply({"errors": UNAUTHORIZED}, 401)

    app = simulator_app(settings.name, routes, shop.sender, auth, unauthorized, shop)
    app.state.admin = admin
    return app
