"""Warehouse management system simulator: balances over JSON, movements as EPCIS 2.0.

Locations are the World's warehouses (GLN / SGLN), items are GTIN-14s whose EPC class is
``urn:epc:idpat:sgtin:<company prefix>.<indicator + item ref>.*``. Every request needs
``Authorization: Bearer <token>``; otherwise 401 ``{"error": "unauthorized"}``.

Endpoints:
- ``GET /api/v1/sites`` -> ``{"sites": [{gln, sgln, name, type: "WAREHOUSE"}]}``
- ``POST /api/v1/balances/query`` ``{gtins?, glns?, limit? (1..1000, default 1000), cursor?}``
  -> ``{"balances": [{gtin, epcClass, gln, sgln, onHand, allocated, qualityControl, damaged,
  incoming, available, updatedAt, sequence}], "nextCursor": str | null}``; unknown GTINs/GLNs
  are ignored; rows are item-major in request order (all items / all sites when omitted).
- ``POST /api/v1/events`` EPCIS capture: an ``EPCISDocument`` (or one ``ObjectEvent``), each
  event with eventTime, eventTimeZoneOffset, action, bizStep, one quantityList element
  ``{epcClass, quantity, uom: "EA"}`` and ``bizLocation.id`` (a warehouse SGLN). The document
  is applied all or nothing -> 202 ``{"eventIDs": [...]}``, else 400
  ``{"type": "epcisException:ValidationException", "title", "status", "detail"}``.
  bizStep semantics on the (GTIN, warehouse) cell:
  receiving (needs a ``po`` bizTransaction): incoming -= min(q, incoming), onHand += q,
  qualityControl += q; storing: qualityControl -= q; picking: allocated += q (needs available);
  shipping: onHand -= q (needs unrestricted stock), allocated -= min(allocated, q);
  arriving: onHand += q; cycle_counting (OBSERVE): onHand := q.
- ``GET /api/v1/events?gtin=&gln=&after=&limit=&cursor=`` -> an ``EPCISQueryDocument`` of the
  recorded events (``after`` = per-cell ``wms:sequence``), plus ``nextCursor``.

Webhooks (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
topic ``epcis/<bizStep>``: one ``EPCISDocument`` per applied event carrying that ObjectEvent
with ``wms:sequence`` (the cell's version after it) and ``wms:balance`` (the cell afterwards).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.intake.signatures import standard_sign
from gateway.simulators.base import bearer_check, simulator_app
from gateway.simulators.webhooks import DeliveryOptions, WebhookSender
from gateway.simulators.world import COMPANY_PREFIX, EPOCH, World, gs1_check_digit
from resolvers.settings import BackendSettings

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
WMS_NAMESPACE = "https://wms.retailgraph.dev/epcis/"
CONTEXT: list[Any] = [EPCIS_CONTEXT, {"wms": WMS_NAMESPACE}]
MAX_PAGE = 1000
MAX_EVENTS_PER_CAPTURE = 1000
BIZ_STEPS = ("receiving", "storing", "picking", "shipping", "arriving", "cycle_counting")
ACTIONS = ("ADD", "OBSERVE", "DELETE")
OFFSET_RE = re.compile(r"^[+-]\d{2}:\d{2}$")
Cell = tuple[int, int]  # (item index, location index)


class Invalid(ValueError):
    """Input the WMS refuses; the message is the exception's ``detail``."""


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short_code(value: str, *prefixes: str) -> str:
    """CBV values arrive as short names or full URIs; compare them by short name."""
    for prefix in prefixes:
        if value.startswith(prefix):
            return value.removeprefix(prefix)
    return value


def epc_class(gtin14: str) -> str:
    """EPC class pattern of a GTIN-14 whose company prefix is the World's."""
    cp = len(COMPANY_PREFIX)
    return f"urn:epc:idpat:sgtin:{gtin14[1:1 + cp]}.{gtin14[0]}{gtin14[1 + cp:13]}.*"


@dataclass(slots=True)
class Balance:
    """One (GTIN, warehouse) cell; only cells that changed are stored."""

    on_hand: int
    allocated: int
    quality_control: int
    damaged: int
    incoming: int
    sequence: int = 0
    updated_at: str = field(default_factory=lambda: rfc3339(EPOCH))

    @property
    def available(self) -> int:
        return max(0, self.on_hand - self.allocated - self.quality_control - self.damaged)

    def as_json(self) -> dict[str, int]:
        return {"onHand": self.on_hand, "allocated": self.allocated,
                "qualityControl": self.quality_control, "damaged": self.damaged,
                "incoming": self.incoming, "available": self.available}


@dataclass(slots=True)
class Captured:
    """A validated event waiting to be applied."""

    event: dict[str, Any]
    cell: Cell
    biz_step: str
    quantity: int


class WmsState:
    """Balances (lazy overrides over the World) and the recorded event log."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.cells: dict[Cell, Balance] = {}
        self.events: list[dict[str, Any]] = []
        self.event_ids: set[str] = set()
        self.counter = 0
        # Mixed into generated event ids: a restarted WMS must not repeat ids (and so
        # webhook-ids) that a gateway with a persistent dedupe store has already seen.
        self.boot = os.urandom(8).hex()
        self.sites = {w.gln: w for w in world.warehouses}
        self.sites_by_sgln = {w.sgln: w for w in world.warehouses}

    def balance(self, cell: Cell) -> Balance:
        found = self.cells.get(cell)
        if found is not None:
            return found
        b = self.world.warehouse_balance(*cell)
        return Balance(b.on_hand, b.allocated, b.quality_control, b.damaged, b.incoming)

    def item_index(self, gtin: str) -> int | None:
        """Index of the World item with this GTIN-14, without materialising the catalog."""
        prefix = "0" + COMPANY_PREFIX
        if len(gtin) != 14 or not gtin.isdigit() or not gtin.startswith(prefix):
            return None
        if gs1_check_digit(gtin[:13]) != gtin[13]:
            return None
        index = int(gtin[len(prefix):13])
        return index if index < self.world.n_skus else None

    def next_event_id(self) -> str:
        self.counter += 1
        seed = f"wms:{self.world.seed}:{self.boot}:{self.counter}"
        digest = hashlib.sha256(seed.encode()).digest()
        return f"urn:uuid:{uuid.UUID(bytes=digest[:16], version=4)}"


# -- validation --------------------------------------------------------------------------------


def _require(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise Invalid(f"{where}: {key} is required")
    return obj[key]


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = _require(obj, key, where)
    if not isinstance(value, str) or not value:
        raise Invalid(f"{where}: {key} must be a non-empty string")
    return value


def _time(obj: dict[str, Any], key: str, where: str) -> None:
    value = _string(obj, key, where)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise Invalid(f"{where}: {key} {value!r} is not an RFC 3339 date-time") from exc
    if moment.tzinfo is None:
        raise Invalid(f"{where}: {key} {value!r} needs a UTC offset")


def _typed_list(obj: dict[str, Any], key: str, value_key: str, where: str) -> None:
    entries = obj.get(key)
    if entries is None:
        return
    if not isinstance(entries, list):
        raise Invalid(f"{where}: {key} must be a list")
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise Invalid(f"{where}: {key}[{n}] must be an object")
        _string(entry, value_key, f"{where}.{key}[{n}]")
        if "type" in entry:
            _string(entry, "type", f"{where}.{key}[{n}]")


def _quantity(state: WmsState, event: dict[str, Any], where: str) -> tuple[int, int]:
    """(item index, quantity) of the event's single quantityList element."""
    lines = _require(event, "quantityList", where)
    if not isinstance(lines, list) or len(lines) != 1 or not isinstance(lines[0], dict):
        raise Invalid(f"{where}: quantityList must hold exactly one element")
    line, at = lines[0], f"{where}.quantityList[0]"
    epc = _string(line, "epcClass", at)
    gtin = _gtin_from_idpat(epc)
    item = state.item_index(gtin) if gtin else None
    if item is None:
        raise Invalid(f"{at}: epcClass {epc!r} is not a GTIN this WMS stocks")
    qty = _require(line, "quantity", at)
    if isinstance(qty, float) and qty.is_integer():
        qty = int(qty)
    if not isinstance(qty, int) or isinstance(qty, bool) or qty < 0:
        raise Invalid(f"{at}: quantity must be a non-negative integer")
    if _string(line, "uom", at) != "EA":
        raise Invalid(f"{at}: uom must be 'EA' (eaches)")
    return item, qty


def _gtin_from_idpat(epc: str) -> str | None:
    """GTIN-14 from an sgtin pattern/id or an lgtin class (lot and serial are ignored)."""
    for prefix in ("urn:epc:idpat:sgtin:", "urn:epc:class:lgtin:", "urn:epc:id:sgtin:"):
        if epc.startswith(prefix):
            parts = epc.removeprefix(prefix).split(".")
            if len(parts) < 2 or not (parts[0] + parts[1]).isdigit():
                return None
            body = parts[1][:1] + parts[0] + parts[1][1:]
            return body + gs1_check_digit(body) if len(body) == 13 else None
    return None


def _location(state: WmsState, event: dict[str, Any], where: str) -> int:
    loc = _require(event, "bizLocation", where)
    if not isinstance(loc, dict):
        raise Invalid(f"{where}: bizLocation must be an object with an id")
    sgln = _string(loc, "id", f"{where}.bizLocation")
    site = state.sites_by_sgln.get(sgln)
    if site is None:
        raise Invalid(f"{where}: bizLocation.id {sgln!r} is not a warehouse of this WMS")
    return site.index


def _biz_step(event: dict[str, Any], where: str) -> str:
    raw = _string(event, "bizStep", where)
    step = short_code(raw, "https://ref.gs1.org/cbv/BizStep-", "urn:epcglobal:cbv:bizstep:")
    if step not in BIZ_STEPS:
        raise Invalid(f"{where}: bizStep {raw!r} is not one of {', '.join(BIZ_STEPS)}")
    return step


def _has_po(event: dict[str, Any]) -> bool:
    return any(short_code(str(t.get("type", "")), "https://ref.gs1.org/cbv/BTT-",
                          "urn:epcglobal:cbv:btt:") == "po"
               for t in event.get("bizTransactionList") or [])


def validate_event(state: WmsState, event: Any, where: str) -> Captured:
    """Check one ObjectEvent against EPCIS 2.0 and this WMS; raise :class:`Invalid`."""
    if not isinstance(event, dict):
        raise Invalid(f"{where} must be an object")
    if event.get("type") != "ObjectEvent":
        raise Invalid(f"{where}: type must be 'ObjectEvent'")
    _time(event, "eventTime", where)
    if not OFFSET_RE.match(str(_string(event, "eventTimeZoneOffset", where))):
        raise Invalid(f"{where}: eventTimeZoneOffset must look like '+02:00'")
    action = _string(event, "action", where)
    if action not in ACTIONS:
        raise Invalid(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}")
    step = _biz_step(event, where)
    if step == "cycle_counting" and action != "OBSERVE":
        raise Invalid(f"{where}: cycle_counting needs action OBSERVE")
    for key, value_key in (("bizTransactionList", "bizTransaction"),
                           ("sourceList", "source"), ("destinationList", "destination")):
        _typed_list(event, key, value_key, where)
    if step == "receiving" and not _has_po(event):
        raise Invalid(f"{where}: receiving needs a bizTransactionList entry of type 'po'")
    for key in ("readPoint", "bizLocation"):
        if key in event and not isinstance(event[key], dict):
            raise Invalid(f"{where}: {key} must be an object with an id")
    if "eventID" in event:
        _string(event, "eventID", where)
    item, qty = _quantity(state, event, where)
    if qty == 0 and step != "cycle_counting":
        raise Invalid(f"{where}.quantityList[0]: quantity must be positive for {step}")
    return Captured(event, (item, _location(state, event, where)), step, qty)


def apply(balance: Balance, step: str, qty: int, where: str) -> None:
    """The bizStep's effect on one cell, refusing anything that would go negative."""
    if step == "receiving":
        balance.incoming -= min(qty, balance.incoming)
        balance.on_hand += qty
        balance.quality_control += qty
    elif step == "storing":
        if qty > balance.quality_control:
            raise Invalid(f"{where}: storing {qty} but only {balance.quality_control} in "
                          "quality control")
        balance.quality_control -= qty
    elif step == "picking":
        if qty > balance.available:
            raise Invalid(f"{where}: picking {qty} but only {balance.available} available")
        balance.allocated += qty
    elif step == "shipping":
        unrestricted = balance.on_hand - balance.quality_control - balance.damaged
        if qty > unrestricted:
            raise Invalid(f"{where}: shipping {qty} but only {max(0, unrestricted)} unrestricted "
                          "on hand")
        balance.on_hand -= qty
        balance.allocated -= min(balance.allocated, qty)
    elif step == "arriving":
        balance.on_hand += qty
    else:  # cycle_counting: the count is the new on-hand
        balance.on_hand = qty


# -- HTTP --------------------------------------------------------------------------------------


def invalid(detail: str, title: str = "Invalid EPCIS document") -> JSONResponse:
    return JSONResponse({"type": "epcisException:ValidationException", "title": title,
                         "status": 400, "detail": detail}, status_code=400)


def encode_cursor(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode()


def decode_cursor(kind: str, cursor: Any) -> int:
    if cursor is None:
        return 0
    try:
        found, offset = base64.urlsafe_b64decode(str(cursor)).decode().split(":")
        if found == kind and int(offset) >= 0:
            return int(offset)
    except ValueError:
        pass
    raise Invalid(f"cursor {cursor!r} is not one this WMS issued")


def page_limit(value: Any) -> int:
    if value is None:
        return MAX_PAGE
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if isinstance(value, bool | float) or not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be an integer from 1 to {MAX_PAGE}")
    return limit


def _string_list(body: dict[str, Any], key: str) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"{key} must be a list of strings")
    return list(dict.fromkeys(value))


class WmsApi:
    """The vendor routes over one :class:`WmsState`."""

    def __init__(self, state: WmsState, sender: WebhookSender) -> None:
        self.state = state
        self.sender = sender

    async def sites(self, request: Request) -> Response:
        return JSONResponse({"sites": [
            {"gln": w.gln, "sgln": w.sgln, "name": w.name, "type": w.type}
            for w in self.state.world.warehouses]})

    async def balances(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            if not isinstance(body, dict):
                raise Invalid("the body must be a JSON object")
            return JSONResponse(self._balance_page(body))
        except orjson.JSONDecodeError:
            return invalid("the body is not JSON", "Invalid query")
        except Invalid as exc:
            return invalid(str(exc), "Invalid query")

    def _balance_page(self, body: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        gtins = _string_list(body, "gtins")
        glns = _string_list(body, "glns")
        items: list[int] | range = range(state.world.n_skus) if gtins is None else [
            i for i in map(state.item_index, gtins) if i is not None]
        sites = state.world.warehouses if glns is None else [
            state.sites[g] for g in glns if g in state.sites]
        limit, offset = page_limit(body.get("limit")), decode_cursor("b", body.get("cursor"))
        total = len(items) * len(sites)
        rows = []
        for n in range(offset, min(total, offset + limit)):
            item, site = items[n // len(sites)], sites[n % len(sites)]
            gtin = state.world.item(item).gtin14
            b = state.balance((item, site.index))
            rows.append({"gtin": gtin, "epcClass": epc_class(gtin), "gln": site.gln,
                         "sgln": site.sgln, **b.as_json(), "updatedAt": b.updated_at,
                         "sequence": b.sequence})
        more = offset + limit < total
        return {"balances": rows, "nextCursor": encode_cursor("b", offset + limit) if more
                else None}

    async def capture(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            captured = self._validate_document(body)
            ids = self._apply(captured)
        except orjson.JSONDecodeError:
            return invalid("the body is not JSON")
        except Invalid as exc:
            return invalid(str(exc))
        return JSONResponse({"eventIDs": ids}, status_code=202)

    def _validate_document(self, body: Any) -> list[Captured]:
        if isinstance(body, dict) and body.get("type") == "ObjectEvent":
            events: Any = [body]
        elif isinstance(body, dict) and body.get("type") == "EPCISDocument":
            epcis_body = body.get("epcisBody")
            events = epcis_body.get("eventList") if isinstance(epcis_body, dict) else None
            if not isinstance(events, list) or not events:
                raise Invalid("epcisBody.eventList must be a non-empty list")
        else:
            raise Invalid("type must be 'EPCISDocument' or 'ObjectEvent'")
        if len(events) > MAX_EVENTS_PER_CAPTURE:
            raise Invalid(f"at most {MAX_EVENTS_PER_CAPTURE} events per capture")
        captured = [validate_event(self.state, e, f"eventList[{n}]")
                    for n, e in enumerate(events)]
        seen = set(self.state.event_ids)
        for n, c in enumerate(captured):
            event_id = c.event.get("eventID")
            if event_id in seen:
                raise Invalid(f"eventList[{n}]: eventID {event_id!r} was already captured")
            if event_id:
                seen.add(event_id)
        return captured

    def _apply(self, captured: list[Captured]) -> list[str]:
        """Apply the whole document to scratch copies, then commit and notify."""
        state, now = self.state, rfc3339(datetime.now(UTC))
        scratch: dict[Cell, Balance] = {}
        results = []
        for n, c in enumerate(captured):
            balance = scratch.get(c.cell) or replace(state.balance(c.cell))
            apply(balance, c.biz_step, c.quantity, f"eventList[{n}]")
            balance.sequence += 1
            balance.updated_at = now
            scratch[c.cell] = balance
            results.append((c, balance.sequence, balance.as_json()))
        state.cells.update(scratch)
        ids = []
        for c, sequence, snapshot in results:
            event = self._record(c.event, now, sequence, snapshot)
            ids.append(event["eventID"])
            self.sender.send(f"epcis/{c.biz_step}", delivery_id(event["eventID"]), {
                "@context": CONTEXT, "type": "EPCISDocument", "schemaVersion": "2.0",
                "creationDate": now, "epcisBody": {"eventList": [event]}})
        return ids

    def _record(self, captured: dict[str, Any], now: str, sequence: int,
                snapshot: dict[str, int]) -> dict[str, Any]:
        keys = ("eventTime", "eventTimeZoneOffset", "action", "bizStep", "disposition",
                "readPoint", "bizLocation", "quantityList", "bizTransactionList", "sourceList",
                "destinationList")
        event: dict[str, Any] = {"type": "ObjectEvent",
                                 "eventID": captured.get("eventID") or self.state.next_event_id(),
                                 "recordTime": now}
        event.update({k: captured[k] for k in keys if k in captured})
        event["wms:sequence"] = sequence
        event["wms:balance"] = snapshot
        self.state.events.append(event)
        self.state.event_ids.add(event["eventID"])
        return event

    async def query(self, request: Request) -> Response:
        params = request.query_params
        try:
            after = int(params.get("after", "0"))
            limit = page_limit(params.get("limit"))
            offset = decode_cursor("e", params.get("cursor"))
        except ValueError as exc:
            detail = str(exc) if isinstance(exc, Invalid) else "after must be an integer"
            return invalid(detail, "Invalid query")
        gtin, gln = params.get("gtin"), params.get("gln")
        site = self.state.sites.get(gln) if gln is not None else None
        sgln = None if gln is None else site.sgln if site else ""  # "" matches nothing
        found: list[dict[str, Any]] = []
        position = offset
        events = self.state.events
        while position < len(events) and len(found) < limit:
            event = events[position]
            position += 1
            if (event["wms:sequence"] > after
                    and (gtin is None or _event_gtin(event) == gtin)
                    and (sgln is None or event["bizLocation"]["id"] == sgln)):
                found.append(event)
        more = position < len(events)
        return JSONResponse({
            "@context": CONTEXT, "type": "EPCISQueryDocument", "schemaVersion": "2.0",
            "creationDate": rfc3339(datetime.now(UTC)),
            "epcisBody": {"queryResults": {"queryName": "SimpleEventQuery",
                                           "resultsBody": {"eventList": found}}},
            "nextCursor": encode_cursor("e", position) if more else None})


def _event_gtin(event: dict[str, Any]) -> str | None:
    return _gtin_from_idpat(event["quantityList"][0]["epcClass"])


def delivery_id(event_id: str) -> str:
    """Stable across retries and duplicates of the same event's webhook."""
    return "msg_" + hashlib.sha256(event_id.encode()).hexdigest()[:32]


def create_app(world: World, settings: BackendSettings, webhook_url: str,
               options: DeliveryOptions | None = None) -> Starlette:
    def sign(body: bytes, attempt: int, msg_id: str) -> dict[str, str]:
        ts = int(time.time())
        return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
                "webhook-signature": standard_sign(settings.webhook_secret, msg_id, ts, body)}

    sender = WebhookSender(webhook_url, sign, options, seed=world.seed)
    state = WmsState(world)
    api = WmsApi(state, sender)
    routes = [
        Route("/api/v1/sites", api.sites, methods=["GET"]),
        Route("/api/v1/balances/query", api.balances, methods=["POST"]),
        Route("/api/v1/events", api.capture, methods=["POST"]),
        Route("/api/v1/events", api.query, methods=["GET"]),
    ]
    return simulator_app(settings.name, routes, sender, bearer_check(settings.token),
                         lambda: JSONResponse({"error": "unauthorized"}, status_code=401), state)
