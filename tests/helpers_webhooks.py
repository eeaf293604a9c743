"""Signed webhook deliveries in each vendor's format, built and signed independently of the
gateway (plain hmac/hashlib/base64, not ``gateway.intake.signatures``), and Redis state snapshots.

A test builds a :class:`Delivery` (path segment, raw body, headers, dedupe id), posts it to a
gateway with :func:`post`, and compares :func:`redis_state` before and after to prove that a
rejected delivery changed nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import redis

from gateway.config import Settings
from gateway.simulators.world import COMPANY_PREFIX, World
from tests.support import stream_entries

LOG = "rg:{ev}:log"
DLQ = "rg:{ev}:dlq"

STOCK_LEVEL = """query($sku: ID!, $loc: ID!) {
  stockLevel(sku: $sku, locationId: $loc) { onHand available committed source asOf }
}"""


# -- signing (the vendors' documented schemes) --------------------------------------------------

def _hmac_b64(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def shopify_signature(secret: str, body: bytes) -> str:
    """``X-Shopify-Hmac-Sha256``: base64(HMAC-SHA256(secret, raw body))."""
    return _hmac_b64(secret.encode(), body)


def square_signature(secret: str, notification_url: str, body: bytes) -> str:
    """``x-square-hmacsha256-signature``: base64(HMAC-SHA256(key, notification URL + body))."""
    return _hmac_b64(secret.encode(), notification_url.encode() + body)


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks ``webhook-signature``: ``v1,`` + base64 HMAC of ``id.timestamp.body``;
    ``whsec_`` secrets are base64 keys."""
    key = (base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_")
           else secret.encode())
    return "v1," + _hmac_b64(key, f"{msg_id}.{timestamp}.".encode() + body)


# -- deliveries --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Delivery:
    """One webhook request: ``POST /webhooks/<backend>`` with ``body`` and ``headers``."""

    backend: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    dedupe: str = ""

    def without(self, header: str) -> Delivery:
        return replace(self, headers={k: v for k, v in self.headers.items()
                                      if k.lower() != header.lower()})

    def with_headers(self, **headers: str) -> Delivery:
        return replace(self, headers={**self.headers, **{k.replace("_", "-"): v
                                                         for k, v in headers.items()}})


def post(gateway_url: str, delivery: Delivery, client: httpx.Client | None = None
         ) -> httpx.Response:
    url = f"{gateway_url}/webhooks/{delivery.backend}"
    headers = {"content-type": "application/json", **delivery.headers}
    if client is not None:
        return client.post(url, content=delivery.body, headers=headers)
    return httpx.post(url, content=delivery.body, headers=headers, timeout=30)


async def apost(client: httpx.AsyncClient, gateway_url: str, delivery: Delivery
                ) -> httpx.Response:
    return await client.post(f"{gateway_url}/webhooks/{delivery.backend}", content=delivery.body,
                             headers={"content-type": "application/json", **delivery.headers})


def rfc3339(moment: datetime) -> str:
    """Fixed-width UTC microseconds, as the simulators write them."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Signer:
    """Builds correctly signed deliveries for the backends of ``settings``."""

    settings: Settings
    world: World

    def secret(self, backend: str) -> str:
        return self.settings.backends[backend].webhook_secret

    # Square (pos) ---------------------------------------------------------------------------

    def square_count(self, sku_index: int, store_index: int, quantity: int,
                     calculated_at: datetime, state: str = "IN_STOCK") -> dict[str, Any]:
        return {"catalog_object_id": self.world.items[sku_index].square_variation_id,
                "catalog_object_type": "ITEM_VARIATION", "state": state,
                "location_id": self.world.stores[store_index].square_id,
                "quantity": str(quantity), "calculated_at": rfc3339(calculated_at)}

    def square(self, notification_url: str, counts: list[dict[str, Any]],
               event_id: str | None = None, secret: str | None = None,
               payload: Any = None) -> Delivery:
        event_id = event_id or new_id()
        if payload is None:
            payload = {"merchant_id": "MLSIMULATOR01", "type": "inventory.count.updated",
                       "event_id": event_id, "created_at": rfc3339(now()),
                       "data": {"type": "inventory_counts", "id": new_id(),
                                "object": {"inventory_counts": counts}}}
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        sig = square_signature(secret or self.secret("pos"), notification_url, body)
        return Delivery("pos", body, {"x-square-hmacsha256-signature": sig,
                                      "square-environment": "Production"}, event_id)

    # Shopify (commerce) ---------------------------------------------------------------------

    def shopify_level(self, sku_index: int, warehouse_index: int, available: int,
                      updated_at: datetime, inventory_item_id: int | None = None
                      ) -> dict[str, Any]:
        item_id = inventory_item_id or self.world.items[sku_index].shopify_inventory_item_id
        loc = self.world.warehouses[warehouse_index].shopify_id
        return {"inventory_item_id": item_id, "location_id": loc, "available": available,
                "updated_at": rfc3339(updated_at),
                "admin_graphql_api_id": f"gid://shopify/InventoryLevel/{loc}"
                                        f"?inventory_item_id={item_id}"}

    def shopify(self, payload: Any, topic: str = "inventory_levels/update",
                webhook_id: str | None = None, event_id: str | None = None,
                secret: str | None = None) -> Delivery:
        webhook_id = webhook_id or new_id()
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        headers = {"X-Shopify-Topic": topic,
                   "X-Shopify-Hmac-Sha256": shopify_signature(secret or self.secret("commerce"),
                                                              body),
                   "X-Shopify-Shop-Domain": "retailgraph-demo.myshopify.com",
                   "X-Shopify-API-Version": "2025-01",
                   "X-Shopify-Webhook-Id": webhook_id,
                   "X-Shopify-Event-Id": event_id or new_id(),
                   "X-Shopify-Triggered-At": rfc3339(now())}
        return Delivery("commerce", body, headers, webhook_id)

    # Standard Webhooks (wms, erp) -----------------------------------------------------------

    def standard(self, backend: str, payload: Any, msg_id: str | None = None,
                 timestamp: int | None = None, secret: str | None = None) -> Delivery:
        msg_id = msg_id or "msg_" + uuid.uuid4().hex
        stamp = int(time.time()) if timestamp is None else timestamp
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        sig = standard_signature(secret or self.secret(backend), msg_id, stamp, body)
        return Delivery(backend, body, {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
                                        "webhook-signature": sig}, msg_id)

    def epcis_event(self, sku_index: int, warehouse_index: int, on_hand: int, sequence: int,
                    gtin14: str | None = None, allocated: int = 0,
                    event_id: str | None = None) -> dict[str, Any]:
        """A WMS cycle count (onHand := on_hand) with the ``wms:`` balance extension."""
        gtin = gtin14 or self.world.items[sku_index].gtin14
        cp = len(COMPANY_PREFIX)
        epc = f"urn:epc:idpat:sgtin:{gtin[1:1 + cp]}.{gtin[0]}{gtin[1 + cp:13]}.*"
        stamp = now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"type": "ObjectEvent", "eventID": event_id or f"urn:uuid:{uuid.uuid4()}",
                "recordTime": stamp, "eventTime": stamp, "eventTimeZoneOffset": "+00:00",
                "action": "OBSERVE", "bizStep": "cycle_counting",
                "disposition": "sellable_accessible",
                "bizLocation": {"id": self.world.warehouses[warehouse_index].sgln},
                "quantityList": [{"epcClass": epc, "quantity": on_hand, "uom": "EA"}],
                "wms:sequence": sequence,
                "wms:balance": {"onHand": on_hand, "allocated": allocated, "qualityControl": 0,
                                "damaged": 0, "incoming": 0,
                                "available": max(0, on_hand - allocated)}}

    def epcis(self, events: list[dict[str, Any]], msg_id: str | None = None,
              timestamp: int | None = None, secret: str | None = None) -> Delivery:
        doc = {"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
               "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": rfc3339(now()),
               "epcisBody": {"eventList": events}}
        return self.standard("wms", doc, msg_id, timestamp, secret)

    def erp_event(self, kind: str, sequence: int, data: dict[str, Any],
                  event_id: str | None = None) -> dict[str, Any]:
        return {"id": event_id or f"evt_test_{uuid.uuid4().hex}", "type": kind,
                "occurredAt": rfc3339(now()), "sequence": sequence, "data": data}

    def erp_stock(self, sku_index: int, location_code: str, on_hand: int, sequence: int,
                  event_id: str | None = None, at: datetime | None = None) -> dict[str, Any]:
        """``stock.adjusted``; the cell's version is ``adjustedAt`` (``at``, default now)."""
        item = self.world.items[sku_index]
        return self.erp_event("stock.adjusted", sequence, {
            "snapshotId": "snap_test", "itemNumber": item.item_number, "sku": item.sku,
            "locationCode": location_code, "onHand": on_hand, "previousOnHand": 0,
            "reason": "count", "adjustedAt": rfc3339(at or now())}, event_id)

    def erp(self, payload: Any, msg_id: str | None = None, timestamp: int | None = None,
            secret: str | None = None) -> Delivery:
        if msg_id is None and isinstance(payload, dict) and isinstance(payload.get("id"), str):
            msg_id = payload["id"]  # the ERP uses its event id as webhook-id
        return self.standard("erp", payload, msg_id, timestamp, secret)


# -- state -------------------------------------------------------------------------------------

def redis_state(url: str) -> dict[str, Any]:
    """Every key's contents (streams by length and last entry id; their consumer-group
    bookkeeping changes with every background read and is not state a webhook may change)."""
    client = redis.Redis.from_url(url)
    out: dict[str, Any] = {}
    try:
        for key in client.scan_iter("*", count=1000):
            kind = client.type(key)
            if kind == b"string":
                out[key.decode()] = client.get(key)
            elif kind == b"hash":
                out[key.decode()] = client.hgetall(key)
            elif kind == b"set":
                out[key.decode()] = client.smembers(key)
            elif kind == b"stream":
                last = client.xrevrange(key, count=1)
                out[key.decode()] = (client.xlen(key), last[0][0] if last else None)
            elif kind != b"none":
                out[key.decode()] = kind
    finally:
        client.close()
    return out


def stream(url: str, key: str = LOG) -> list[dict[str, Any]]:
    """Decoded entries of the event log (envelopes) or the DLQ (letters), oldest first."""
    client = redis.Redis.from_url(url)
    try:
        return [orjson.loads(fields[b"e"]) for _, fields in stream_entries(client.xrange(key))]
    finally:
        client.close()


def hash_of(url: str, key: str) -> dict[str, str]:
    client = redis.Redis.from_url(url)
    try:
        fields = {}
        for name, value in client.hgetall(key).items():
            assert isinstance(name, bytes), name
            assert isinstance(value, bytes), (name, value)
            fields[name.decode()] = value.decode()
        return fields
    finally:
        client.close()


def stock_level(gateway_url: str, sku: str, location: str,
                client: httpx.Client | None = None) -> httpx.Response:
    body = {"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": location}}
    if client is not None:
        return client.post(f"{gateway_url}/graphql", json=body)
    return httpx.post(f"{gateway_url}/graphql", json=body, timeout=30)


def level_data(response: httpx.Response) -> dict[str, Any]:
    """``data.stockLevel`` of a response, asserting it has no errors."""
    body = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body["errors"]
    level: dict[str, Any] = body["data"]["stockLevel"]
    return level
