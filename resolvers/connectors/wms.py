"""Connector for the EPCIS 2.0 speaking warehouse management system.

Balances come from ``POST /api/v1/balances/query`` (GTIN x GLN cells, at most 1000 GTINs per
call, cursor-paginated); movements are EPCIS ObjectEvents, fetched from ``GET /api/v1/events``
or pushed as webhooks. The pure functions :func:`balance_to_view` and
:func:`parse_object_event` are shared with the gateway's webhook intake, so a balance row and
a webhook's ``wms:balance`` become the same :class:`StockView`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from resolvers.connectors.base import BackendConnector
from resolvers.errors import BackendProtocolError, OutOfRange, ValueOutOfRange
from resolvers.identity import GLN, GTIN, IdentityMap, gln_from_sgln, gtin_from_epc
from resolvers.types import INT_MAX, MAX_VERSION, NativeLocation, Quantities, StockView, bounded

NAMESPACE = "epcis"
ACTIONS = frozenset({"ADD", "OBSERVE", "DELETE"})
BIZ_STEP_PREFIXES = ("https://ref.gs1.org/cbv/BizStep-", "urn:epcglobal:cbv:bizstep:")
BTT_PREFIXES = ("https://ref.gs1.org/cbv/BTT-", "urn:epcglobal:cbv:btt:")
CBV_CODE = re.compile(r"^[a-z][a-z_]*$")
BALANCE_FIELDS = ("onHand", "allocated", "qualityControl", "damaged", "incoming", "available")


@dataclass(frozen=True, slots=True)
class Movement:
    """One EPCIS ObjectEvent of this WMS, reduced to what the gateway needs."""

    event_id: str
    biz_step: str  # CBV short name, e.g. "receiving"
    action: str
    gtin14: str
    sgln: str
    quantity: int
    occurred_at: datetime
    sequence: int | None  # the cell's version after the event (``wms:sequence``)
    balance: dict[str, int] | None  # the cell after the event (``wms:balance``)
    documents: list[dict[str, str]]  # [{"type": "po", "id": "urn:..."}]
    disposition: str | None = None
    recorded_at: datetime | None = None

    def balance_row(self) -> dict[str, Any] | None:
        """The event's ``wms:balance`` as a balances-query row, for :func:`balance_to_view`."""
        if self.balance is None or self.sequence is None or self.recorded_at is None:
            return None
        gln = gln_from_sgln(self.sgln)
        return {"gtin": self.gtin14, "gln": gln, **self.balance,
                "updatedAt": self.recorded_at.isoformat(), "sequence": self.sequence}


def _int(row: dict[str, Any], key: str, high: int = INT_MAX) -> int:
    """A non-negative integer up to ``high`` (quantities: GraphQL's Int; sequences: 2**53-1);
    ValueError if it is none, :class:`OutOfRange` if it is one too large."""
    value = row.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return bounded(value, key, 0, high)


def _timestamp(value: Any, key: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be an RFC 3339 string, got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{key} {value!r} is not an RFC 3339 date-time") from exc
    if moment.tzinfo is None:
        raise ValueError(f"{key} {value!r} has no UTC offset")
    return moment


def balance_to_view(row: dict[str, Any], identity: IdentityMap, source: str) -> StockView | None:
    """A balances row (or a webhook's balance row) as a StockView; None if it does not map.

    Raises :class:`BackendProtocolError` naming the field when the row is malformed.
    """
    try:
        gtin, gln = row.get("gtin"), row.get("gln")
        if not isinstance(gtin, str) or not isinstance(gln, str):
            raise ValueError(f"gtin and gln must be strings, got {gtin!r} and {gln!r}")
        quantities = Quantities(
            on_hand=_int(row, "onHand"), committed=_int(row, "allocated"),
            quality_control=_int(row, "qualityControl"), damaged=_int(row, "damaged"),
            incoming=_int(row, "incoming"), available=_int(row, "available"))
        as_of = _timestamp(row.get("updatedAt"), "updatedAt")
        version = str(_int(row, "sequence", MAX_VERSION))
    except OutOfRange as exc:
        raise ValueOutOfRange(source, f"balance row: {exc}") from exc
    except (ValueError, AttributeError) as exc:
        raise BackendProtocolError(source, f"balance row: {exc}") from exc
    sku = identity.sku(GTIN, gtin, seen_in=source)
    location = identity.location(GLN, gln, seen_in=source)
    if sku is None or location is None:
        return None
    return StockView(sku=sku, location_id=location, source=source, quantities=quantities,
                     as_of=as_of, version=version)


def _field(event: dict[str, Any], key: str) -> Any:
    if event.get(key) is None:
        raise ValueError(f"{key} is required")
    return event[key]


def _text(event: dict[str, Any], key: str) -> str:
    value = _field(event, key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _short(value: str, prefixes: tuple[str, ...], key: str) -> str:
    for prefix in prefixes:
        value = value.removeprefix(prefix)
    if not CBV_CODE.match(value):
        raise ValueError(f"{key} {value!r} is not a CBV code")
    return value


def _quantity_element(event: dict[str, Any]) -> tuple[str, int]:
    lines = _field(event, "quantityList")
    if not isinstance(lines, list) or len(lines) != 1 or not isinstance(lines[0], dict):
        raise ValueError("quantityList must hold exactly one element")
    epc = lines[0].get("epcClass")
    gtin = gtin_from_epc(epc) if isinstance(epc, str) else None
    if gtin is None:
        raise ValueError(f"quantityList[0].epcClass {epc!r} is not a GTIN class")
    quantity = lines[0].get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
        raise ValueError(f"quantityList[0].quantity {quantity!r} is not a whole count")
    return gtin, bounded(quantity, "quantityList[0].quantity", 0)


def _documents(event: dict[str, Any]) -> list[dict[str, str]]:
    entries = event.get("bizTransactionList") or []
    if not isinstance(entries, list):
        raise ValueError("bizTransactionList must be a list")
    out = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("bizTransaction"), str):
            raise ValueError(f"bizTransactionList[{n}].bizTransaction is required")
        kind = entry.get("type")
        out.append({"type": _short(kind, BTT_PREFIXES, f"bizTransactionList[{n}].type")
                    if isinstance(kind, str) else "", "id": entry["bizTransaction"]})
    return out


def _balance(event: dict[str, Any]) -> dict[str, int] | None:
    raw = event.get("wms:balance")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("wms:balance must be an object")
    try:
        return {key: _int(raw, key) for key in BALANCE_FIELDS}
    except OutOfRange as exc:
        raise OutOfRange(f"wms:balance.{exc}") from exc
    except ValueError as exc:
        raise ValueError(f"wms:balance.{exc}") from exc


def parse_object_event(event: dict[str, Any]) -> Movement:
    """Validate one EPCIS 2.0 ObjectEvent of this WMS; ValueError names the bad field."""
    if not isinstance(event, dict):
        raise ValueError("event must be an object")
    if event.get("type", "ObjectEvent") != "ObjectEvent":
        raise ValueError(f"type {event.get('type')!r} is not ObjectEvent")
    action = _text(event, "action")
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not ADD, OBSERVE or DELETE")
    _text(event, "eventTimeZoneOffset")
    location = _field(event, "bizLocation")
    sgln = location.get("id") if isinstance(location, dict) else None
    if not isinstance(sgln, str) or gln_from_sgln(sgln) is None:
        raise ValueError(f"bizLocation.id {sgln!r} is not an SGLN")
    gtin, quantity = _quantity_element(event)
    sequence = event.get("wms:sequence")
    if sequence is not None and (not isinstance(sequence, int) or isinstance(sequence, bool)):
        raise ValueError(f"wms:sequence {sequence!r} is not an integer")
    if sequence is not None:
        bounded(sequence, "wms:sequence", 0, MAX_VERSION)
    disposition = event.get("disposition")
    recorded = event.get("recordTime")
    return Movement(
        event_id=_text(event, "eventID"),
        biz_step=_short(_text(event, "bizStep"), BIZ_STEP_PREFIXES, "bizStep"),
        action=action, gtin14=gtin, sgln=sgln, quantity=quantity,
        occurred_at=_timestamp(_field(event, "eventTime"), "eventTime"),
        sequence=sequence, balance=_balance(event), documents=_documents(event),
        disposition=disposition if isinstance(disposition, str) else None,
        recorded_at=None if recorded is None else _timestamp(recorded, "recordTime"))


def _chunks(values: Sequence[str], size: int) -> list[Sequence[str]]:
    return [values[n:n + size] for n in range(0, len(values), size)]


class WmsConnector(BackendConnector):
    """Reads sites, balances and movements from the WMS."""

    gtins_per_call = 1000  # the WMS's batch limit
    page_size = 1000

    def _protocol(self, what: str) -> BackendProtocolError:
        return BackendProtocolError(self.name, what)

    async def sites(self) -> list[NativeLocation]:
        """The warehouses, as native locations keyed by GLN."""
        body = await self.client.json("GET", "/api/v1/sites")
        sites = body.get("sites") if isinstance(body, dict) else None
        if not isinstance(sites, list):
            raise self._protocol("GET /api/v1/sites: 'sites' is not a list")
        out = []
        for site in sites:
            if not isinstance(site, dict) or not isinstance(site.get("gln"), str):
                raise self._protocol(f"GET /api/v1/sites: site without a gln: {site!r}")
            out.append(NativeLocation(NAMESPACE, site["gln"], str(site.get("name", ""))))
        return out

    async def balances(self, skus: Sequence[str],
                       location_ids: Sequence[str]) -> list[StockView]:
        """Balances of SKUs x locations; SKUs without a GTIN and non-GS1 locations are skipped."""
        gtins = [g for g in dict.fromkeys(self.identity.native_sku(GTIN, s) for s in skus) if g]
        glns = [g for g in dict.fromkeys(self.identity.native_location(GLN, loc)
                                         for loc in location_ids) if g]
        if not gtins or not glns:
            return []
        pages = await asyncio.gather(*(self._balance_pages(chunk, glns)
                                       for chunk in _chunks(gtins, self.gtins_per_call)))
        return [view for page in pages for view in page]

    async def _balance_pages(self, gtins: Sequence[str], glns: list[str]) -> list[StockView]:
        views: list[StockView] = []
        cursor: str | None = None
        while True:
            body = await self.client.json(
                "POST", "/api/v1/balances/query", idempotent=True,
                json={"gtins": list(gtins), "glns": glns, "limit": self.page_size,
                      "cursor": cursor})
            rows = body.get("balances") if isinstance(body, dict) else None
            if not isinstance(rows, list):
                raise self._protocol("POST /api/v1/balances/query: 'balances' is not a list")
            for row in rows:
                if not isinstance(row, dict):
                    raise self._protocol(f"balance row is not an object: {row!r}")
                view = balance_to_view(row, self.identity, self.name)
                if view is not None:
                    views.append(view)
            cursor = self._cursor(body, "POST /api/v1/balances/query")
            if cursor is None:
                return views

    def _cursor(self, body: dict[str, Any], where: str) -> str | None:
        cursor = body.get("nextCursor")
        if not isinstance(cursor, str | None):
            raise self._protocol(f"{where}: nextCursor {cursor!r} is not a string or null")
        return cursor

    async def movements(self, sku: str, location_id: str, after: int = 0) -> list[Movement]:
        """Recorded events of one cell with ``wms:sequence`` > ``after`` (to fill webhook gaps)."""
        gtin = self.identity.native_sku(GTIN, sku)
        gln = self.identity.native_location(GLN, location_id)
        if gtin is None or gln is None:
            return []
        out: list[Movement] = []
        params: dict[str, Any] = {"gtin": gtin, "gln": gln, "after": after,
                                  "limit": self.page_size}
        while True:
            body = await self.client.json("GET", "/api/v1/events", params=params)
            try:
                events = body["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
                out.extend(parse_object_event(e) for e in events)
            except OutOfRange as exc:
                raise ValueOutOfRange(self.name, f"GET /api/v1/events: {exc}") from exc
            except (KeyError, TypeError, ValueError) as exc:
                raise self._protocol(f"GET /api/v1/events: {exc}") from exc
            cursor = self._cursor(body, "GET /api/v1/events")
            if cursor is None:
                return out
            params["cursor"] = cursor
