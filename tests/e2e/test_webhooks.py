"""Webhook intake over real HTTP: every bad input is refused without changing any state, good
deliveries are applied exactly once, and an acknowledged event is visible on every replica.

One stack (four simulators, two gateway replicas sharing the test Redis) serves the module;
each test works on its own SKUs. Deliveries are signed here with hmac/hashlib/base64
(``tests/helpers_webhooks.py``), independently of ``gateway.intake.signatures``. "No state changed"
means: every Redis key (cache entries, dedupe keys, the event log and the dead-letter stream
by length and last id, response-cache entries) is exactly as before, and a freshly executed
query answers the same.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.helpers_webhooks import (
    DLQ,
    STOCK_LEVEL,
    Delivery,
    Signer,
    hash_of,
    level_data,
    new_id,
    now,
    post,
    redis_state,
    rfc3339,
    stock_level,
    stream,
)
from tests.support import Stack

MAX_BODY = 64 * 1024
TOLERANCE = 300
PREVIOUS = "previous-{}-secret"
FORMATS = ("pos", "commerce", "wms", "erp")


@dataclass
class Hub:
    """The module's stack and what tests need to drive it."""

    stack: Stack
    redis_url: str
    signer: Signer
    skus: Iterator[int]
    client: httpx.Client

    @property
    def g0(self) -> str:
        return self.stack.gateways[0].url

    @property
    def g1(self) -> str:
        return self.stack.gateways[1].url

    def sku(self) -> int:
        """A SKU index no other test of this module touches."""
        return next(self.skus)


@pytest.fixture(scope="module")
def hub(redis_server_url: str) -> Iterator[Hub]:
    flusher = redis.Redis.from_url(redis_server_url)
    flusher.flushdb()
    flusher.close()
    stack = Stack(redis_server_url, replicas=2, skus=120)
    stack.settings.max_body_bytes = MAX_BODY
    stack.settings.webhook_tolerance_seconds = TOLERANCE
    for backend in stack.settings.backends.values():
        backend.webhook_previous_secret = PREVIOUS.format(backend.name)
    with stack, httpx.Client(timeout=30) as client:
        yield Hub(stack, redis_server_url, Signer(stack.settings, stack.world),
                  itertools.count(1), client)


# -- what each format's delivery changes, and how to look at it ------------------------------

WITH_VIEWS = """query($sku: ID!, $loc: ID!) {
  stockLevel(sku: $sku, locationId: $loc) {
    onHand available committed source asOf
    views { source role onHand available asOf }
  }
}"""


@dataclass
class Target:
    """A cell a delivery of one backend would change, primed in the cache beforehand."""

    backend: str
    sku_index: int
    location: str
    hub: Hub

    @property
    def sku(self) -> str:
        return self.hub.stack.world.items[self.sku_index].sku

    def entry(self) -> dict[str, str]:
        """This backend's cache entry for the SKU."""
        return hash_of(self.hub.redis_url, f"rg:{{s:{self.sku}}}:views:{self.backend}")

    def query(self, url: str | None = None) -> dict[str, Any]:
        """The stock level, executed (a unique comment defeats the response cache)."""
        body = {"query": WITH_VIEWS + f"\n# {uuid.uuid4()}",
                "variables": {"sku": self.sku, "loc": self.location}}
        return level_data(self.hub.client.post(f"{url or self.hub.g0}/graphql", json=body))


def target(hub: Hub, backend: str) -> Target:
    location = "ST001" if backend == "pos" else "WH01"
    t = Target(backend, hub.sku(), location, hub)
    t.query()  # primes the cache entries of the cell's system of record
    level_data(stock_level(hub.g0, t.sku, location, hub.client))  # and the response cache
    return t


def changing(hub: Hub, t: Target, value: int, **kw: Any) -> Delivery:
    """A correctly signed delivery that sets ``t``'s cell to ``value`` (newest version)."""
    s = hub.signer
    if t.backend == "pos":
        return s.square(kw.pop("url", f"{hub.g0}/webhooks/pos"),
                        [s.square_count(t.sku_index, 0, value, now())], **kw)
    if t.backend == "commerce":
        return s.shopify(s.shopify_level(t.sku_index, 0, value, now()), **kw)
    if t.backend == "wms":
        return s.epcis([s.epcis_event(t.sku_index, 0, value, 1000 + value)], **kw)
    return s.erp(s.erp_stock(t.sku_index, t.location, value, 1000 + value), **kw)


def view_of(level: dict[str, Any], role: str) -> dict[str, Any]:
    """One system's view in ``stockLevel.views``."""
    found = [v for v in level["views"] if v["role"] == role]
    assert len(found) == 1, level["views"]
    view: dict[str, Any] = found[0]
    return view


def changed_value(t: Target, url: str | None = None) -> int:
    """The cell's value where this backend's delivery lands, as a query shows it: the level
    for the systems of record of stock, its ``views`` for the web shop and the ERP."""
    return value_in(t, t.query(url))


def value_in(t: Target, level: dict[str, Any]) -> int:
    if t.backend == "pos":
        return int(level["available"])
    if t.backend == "wms":
        return int(level["onHand"])
    if t.backend == "commerce":
        return int(view_of(level, "ONLINE")["available"])
    return int(view_of(level, "ERP_SNAPSHOT")["onHand"])


def state(hub: Hub) -> dict[str, Any]:
    """All of Redis but cached responses and their tag sets: a query stores those after it
    has answered, so one may land at any moment; the invalidation sequence and markers,
    which only events move, are kept (and :func:`assert_refused` checks the primed
    response is still served). Sync-health counters (a refusal counts its reason) and the
    discrepancy index (re-judged in the background after earlier events) are bookkeeping."""
    return {k: v for k, v in redis_state(hub.redis_url).items()
            if not k.startswith(("rg:{rc}:r:", "rg:{rc}:t:", "rg:{sync}:", "rg:{disc}:"))}


def still_cached(hub: Hub, t: Target) -> bool:
    response = stock_level(hub.g0, t.sku, t.location, hub.client)
    return bool(response.headers.get("x-retailgraph-cache") == "hit")


def cache_response(hub: Hub, t: Target) -> None:
    """Make sure the target's stock-level response is in the response cache (it is stored
    just after the miss that computed it has answered)."""
    for _ in range(100):
        if still_cached(hub, t):
            return
        time.sleep(0.01)
    raise AssertionError("the stock-level response never reached the response cache")


def assert_refused(hub: Hub, t: Target, delivery: Delivery, status: int, *words: str,
                   url: str | None = None) -> dict[str, Any]:
    """Post ``delivery``; expect ``status`` with an error naming ``words``, and no change."""
    before_level = t.query()
    cache_response(hub, t)
    before = state(hub)
    response = post(url or hub.g0, delivery, hub.client)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    message = body["error"]
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    assert state(hub) == before
    assert still_cached(hub, t)
    assert t.query() == before_level
    return body


# -- a valid delivery changes state (so the refusals below are meaningful) --------------------


@pytest.mark.parametrize("backend", FORMATS)
def test_a_valid_delivery_is_logged_and_applied(hub: Hub, backend: str) -> None:
    t = target(hub, backend)
    log_before = len(stream(hub.redis_url))
    response = post(hub.g0, changing(hub, t, 71), hub.client)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    assert len(stream(hub.redis_url)) == log_before + 1
    assert changed_value(t) == 71


def test_unknown_backend_is_404(hub: Hub) -> None:
    t = target(hub, "pos")
    delivery = replace(changing(hub, t, 5, url=f"{hub.g0}/webhooks/nosuch"), backend="nosuch")
    assert_refused(hub, t, delivery, 404, "unknown backend", "nosuch")


# -- signatures ---------------------------------------------------------------------------------

SIGNATURE_HEADERS = [("pos", "x-square-hmacsha256-signature"),
                     ("commerce", "X-Shopify-Hmac-Sha256"),
                     ("wms", "webhook-signature"), ("wms", "webhook-id"),
                     ("wms", "webhook-timestamp"),
                     ("erp", "webhook-signature"), ("erp", "webhook-id"),
                     ("erp", "webhook-timestamp")]


@pytest.mark.parametrize(("backend", "header"), SIGNATURE_HEADERS)
def test_missing_signature_header_is_401(hub: Hub, backend: str, header: str) -> None:
    t = target(hub, backend)
    delivery = changing(hub, t, 90).without(header)
    body = assert_refused(hub, t, delivery, 401, header)
    assert body["reason"] == "missing_signature"


def _tampered(delivery: Delivery) -> Delivery:
    """Same headers, different body: a signature made for other bytes."""
    return replace(delivery, body=delivery.body.replace(b"9", b"8", 1))


WRONG_SIGNATURES: dict[str, Callable[[Hub, Target], Delivery]] = {
    "wrong secret": lambda hub, t: changing(hub, t, 91, secret="not-the-secret"),
    "body changed after signing": lambda hub, t: _tampered(changing(hub, t, 92)),
    "garbage": lambda hub, t: _garbage(changing(hub, t, 93)),
}


def _garbage(delivery: Delivery) -> Delivery:
    headers = {k: ("v1,AAAA" if k.lower() == "webhook-signature" else "AAAA")
               if ("signature" in k.lower() or "hmac" in k.lower()) else v
               for k, v in delivery.headers.items()}
    return replace(delivery, headers=headers)


@pytest.mark.parametrize("backend", FORMATS)
@pytest.mark.parametrize("how", list(WRONG_SIGNATURES))
def test_wrong_signature_is_401(hub: Hub, backend: str, how: str) -> None:
    t = target(hub, backend)
    body = assert_refused(hub, t, WRONG_SIGNATURES[how](hub, t), 401, "signature")
    assert body["reason"] == "bad_signature"


def test_square_signature_covers_the_notification_url(hub: Hub) -> None:
    t = target(hub, "pos")
    elsewhere = changing(hub, t, 94, url="https://example.com/webhooks/pos")
    assert_refused(hub, t, elsewhere, 401, "signature")
    # Signed for replica 0's URL, sent to replica 1: not the URL it was signed for.
    assert_refused(hub, t, changing(hub, t, 95), 401, "signature", url=hub.g1)


@pytest.mark.parametrize("backend", ["wms", "erp"])
@pytest.mark.parametrize("skew", [-(TOLERANCE + 60), TOLERANCE + 60, -10 * TOLERANCE])
def test_timestamp_outside_tolerance_is_401(hub: Hub, backend: str, skew: int) -> None:
    t = target(hub, backend)
    delivery = changing(hub, t, 96, timestamp=int(time.time()) + skew)
    body = assert_refused(hub, t, delivery, 401, "webhook-timestamp")
    assert body["reason"] == "replay"


@pytest.mark.parametrize("backend", ["wms", "erp"])
def test_timestamp_that_is_not_a_number_is_401(hub: Hub, backend: str) -> None:
    t = target(hub, backend)
    delivery = changing(hub, t, 97).with_headers(webhook_timestamp="yesterday")
    assert_refused(hub, t, delivery, 401, "webhook-timestamp")


@pytest.mark.parametrize("backend", ["wms", "erp"])
def test_timestamp_within_tolerance_is_accepted(hub: Hub, backend: str) -> None:
    t = target(hub, backend)
    delivery = changing(hub, t, 98, timestamp=int(time.time()) - TOLERANCE + 30)
    assert post(hub.g0, delivery, hub.client).status_code == 200
    assert changed_value(t) == 98


@pytest.mark.parametrize("backend", FORMATS)
def test_previous_secret_is_accepted_during_rotation(hub: Hub, backend: str) -> None:
    t = target(hub, backend)
    old = hub.stack.settings.backends[backend].webhook_previous_secret
    assert old == PREVIOUS.format(backend)
    response = post(hub.g0, changing(hub, t, 61, secret=old), hub.client)
    assert response.status_code == 200, response.text
    assert changed_value(t) == 61
    # A secret that is neither the current nor the previous one still is not.
    body = assert_refused(hub, t, changing(hub, t, 62, secret="rotated-out"), 401, "signature")
    assert body["reason"] == "bad_signature"


# -- body size ------------------------------------------------------------------------------------


def _padded(hub: Hub, t: Target, value: int, size: int) -> Delivery:
    """A correctly signed Square delivery whose body is exactly ``size`` bytes."""
    s = hub.signer
    payload = orjson.loads(changing(hub, t, value).body)
    raw = orjson.dumps(payload)
    return s.square(f"{hub.g0}/webhooks/pos", [], payload=raw + b" " * (size - len(raw)))


def test_body_over_the_limit_is_413(hub: Hub) -> None:
    t = target(hub, "pos")
    assert_refused(hub, t, _padded(hub, t, 81, MAX_BODY + 1), 413, "limit", str(MAX_BODY))


def test_streamed_body_over_the_limit_is_413(hub: Hub) -> None:
    """No Content-Length (chunked): the limit is enforced while reading."""
    t = target(hub, "pos")
    delivery = _padded(hub, t, 82, MAX_BODY + 1)
    before_level = t.query()
    cache_response(hub, t)
    before = state(hub)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(delivery.body), 4096):
            yield delivery.body[start:start + 4096]

    response = hub.client.post(f"{hub.g0}/webhooks/pos", content=chunks(),
                               headers={"content-type": "application/json", **delivery.headers})
    assert response.status_code == 413, response.text
    assert "limit" in response.json()["error"]
    assert state(hub) == before
    assert still_cached(hub, t)
    assert t.query() == before_level


def test_body_at_the_limit_is_accepted(hub: Hub) -> None:
    t = target(hub, "pos")
    response = post(hub.g0, _padded(hub, t, 83, MAX_BODY), hub.client)
    assert response.status_code == 200, response.text
    assert changed_value(t) == 83


# -- malformed payloads -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", FORMATS)
def test_invalid_json_is_400(hub: Hub, backend: str) -> None:
    t = target(hub, backend)
    s, body = hub.signer, b'{"event_id": "x", '
    delivery = {"pos": lambda: s.square(f"{hub.g0}/webhooks/pos", [], payload=body),
                "commerce": lambda: s.shopify(body),
                "wms": lambda: s.standard("wms", body),
                "erp": lambda: s.standard("erp", body)}[backend]()
    assert_refused(hub, t, delivery, 400, "not valid JSON")


def _square_payload(hub: Hub, t: Target, **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = orjson.loads(changing(hub, t, 50).body)
    payload.update(changes)
    return payload


def _square_count(hub: Hub, t: Target, **changes: Any) -> list[dict[str, Any]]:
    return [hub.signer.square_count(t.sku_index, 0, 50, now()) | changes]


def _epcis(hub: Hub, t: Target, drop: tuple[str, ...] = (), **changes: Any) -> Delivery:
    """A cycle count with ``changes`` applied to the event and the keys in ``drop`` removed."""
    event = hub.signer.epcis_event(t.sku_index, 0, 50, 2000) | changes
    return hub.signer.epcis([{k: v for k, v in event.items() if k not in drop}])


def _erp(hub: Hub, t: Target, drop: tuple[str, ...] = (), **changes: Any) -> Delivery:
    event = hub.signer.erp_stock(t.sku_index, "WH01", 50, 2000) | changes
    return hub.signer.erp({k: v for k, v in event.items() if k not in drop})


def _erp_data(hub: Hub, t: Target, **changes: Any) -> Delivery:
    event = hub.signer.erp_stock(t.sku_index, "WH01", 50, 2000)
    event["data"] = event["data"] | changes
    return hub.signer.erp(event)


def _erp_item(hub: Hub, t: Target) -> dict[str, Any]:
    item = hub.stack.world.items[t.sku_index]
    return {"itemNumber": item.item_number, "sku": item.sku, "gtin": item.gtin13,
            "description": "Renamed", "category": item.category,
            "listPrice": "10.00", "cost": "4.50", "currency": "NOK",
            "safetyStock": 1, "status": "ACTIVE", "updatedAt": rfc3339(now())}


SHAPES: dict[str, tuple[str, Callable[[Hub, Target], Delivery], tuple[str, ...]]] = {
    "square body is a list": (
        "pos", lambda h, t: h.signer.square(f"{h.g0}/webhooks/pos", [], payload=[1]),
        ("body", "object")),
    "square without event_id": (
        "pos", lambda h, t: h.signer.square(f"{h.g0}/webhooks/pos", [], payload={
            k: v for k, v in _square_payload(h, t).items() if k != "event_id"}),
        ("event_id",)),
    "square created_at not a time": (
        "pos", lambda h, t: h.signer.square(f"{h.g0}/webhooks/pos", [], payload=_square_payload(
            h, t, created_at="last tuesday")), ("created_at",)),
    "square without counts": (
        "pos", lambda h, t: h.signer.square(f"{h.g0}/webhooks/pos", []),
        ("inventory_counts",)),
    "square quantity not a number": (
        "pos", lambda h, t: h.signer.square(f"{h.g0}/webhooks/pos",
                                            _square_count(h, t, quantity="lots")),
        ("quantity",)),
    "square count without state": (
        "pos", lambda h, t: h.signer.square(f"{h.g0}/webhooks/pos",
                                            _square_count(h, t, state=None)),
        ("state",)),
    "shopify without topic header": (
        "commerce", lambda h, t: changing(h, t, 50).without("X-Shopify-Topic"),
        ("X-Shopify-Topic",)),
    "shopify without webhook id header": (
        "commerce", lambda h, t: changing(h, t, 50).without("X-Shopify-Webhook-Id"),
        ("X-Shopify-Webhook-Id",)),
    "shopify available not an integer": (
        "commerce", lambda h, t: h.signer.shopify(
            h.signer.shopify_level(t.sku_index, 0, 50, now()) | {"available": "ten"}),
        ("available",)),
    "shopify order lines not a list": (
        "commerce", lambda h, t: h.signer.shopify({"id": 1, "line_items": "many"},
                                                  topic="orders/create"),
        ("line_items",)),
    "shopify order line without quantity": (
        "commerce", lambda h, t: h.signer.shopify(
            {"id": 1, "line_items": [{"variant_id": h.stack.world.items[t.sku_index]
                                      .shopify_variant_id, "quantity": 0}]},
            topic="orders/create"), ("line_items[0].quantity",)),
    "epcis empty event list": (
        "wms", lambda h, t: h.signer.epcis([]), ("eventList",)),
    "epcis without wms:balance": (
        "wms", lambda h, t: _epcis(h, t, drop=("wms:balance",)), ("wms:balance",)),
    "epcis negative balance field": (
        "wms", lambda h, t: _epcis(h, t, (), **{"wms:balance": {
            "onHand": -1, "allocated": 0, "qualityControl": 0, "damaged": 0, "incoming": 0,
            "available": 0}}), ("onHand",)),
    "epcis location not an sgln": (
        "wms", lambda h, t: _epcis(h, t, bizLocation={"id": "WH01"}), ("bizLocation",)),
    "epcis without eventTime": (
        "wms", lambda h, t: _epcis(h, t, drop=("eventTime",)), ("eventTime",)),
    "epcis two quantity elements": (
        "wms", lambda h, t: _epcis(h, t, quantityList=[{}, {}]), ("quantityList",)),
    "erp sequence not an integer": (
        "erp", lambda h, t: _erp(h, t, sequence="7"), ("sequence",)),
    "erp without occurredAt": (
        "erp", lambda h, t: _erp(h, t, drop=("occurredAt",)), ("occurredAt",)),
    "erp data not an object": (
        "erp", lambda h, t: _erp(h, t, data=[]), ("data",)),
    "erp onHand not an integer": (
        "erp", lambda h, t: _erp_data(h, t, onHand="12"), ("onHand",)),
    "erp item update without price": (
        "erp", lambda h, t: h.signer.erp(h.signer.erp_event("item.updated", 2000, {
            k: v for k, v in _erp_item(h, t).items() if k != "listPrice"})),
        ("listPrice",)),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_wrong_shape_is_400_naming_the_field(hub: Hub, case: str) -> None:
    backend, build, words = SHAPES[case]
    t = target(hub, backend)
    body = assert_refused(hub, t, build(hub, t), 400, *words)
    assert body["reason"] == "malformed"


# -- idempotency and dead letters ---------------------------------------------------------------


def _without_response_cache(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith("rg:{rc}:")}


@pytest.mark.parametrize("backend", FORMATS)
def test_same_delivery_twice_is_applied_once(hub: Hub, backend: str) -> None:
    t = target(hub, backend)
    delivery = changing(hub, t, 44)
    log_before = len(stream(hub.redis_url))
    first = post(hub.g0, delivery, hub.client)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "accepted"
    after_first = state(hub)
    for url in (hub.g0, hub.g1):  # a retry may reach any replica (Square: same URL signed)
        if backend == "pos" and url == hub.g1:
            again = post(url, changing(hub, t, 44, url=f"{hub.g1}/webhooks/pos",
                                       event_id=delivery.dedupe), hub.client)
        else:
            again = post(url, delivery, hub.client)
        assert again.status_code == 200, again.text
        assert again.json() == {"status": "duplicate", "events": first.json()["events"]}
    entries = [e for e in stream(hub.redis_url)
               if delivery.dedupe in (e["source_event_id"], e["delivery_id"])]
    assert len(entries) == 1
    assert len(stream(hub.redis_url)) == log_before + 1
    # Re-applying a duplicate may only re-invalidate cached responses; nothing else moves.
    assert _without_response_cache(state(hub)) == _without_response_cache(after_first)
    assert changed_value(t) == 44


def test_same_source_event_under_another_delivery_id_is_logged_once(hub: Hub) -> None:
    """Standard Webhooks dedupe on webhook-id, but one EPCIS event can reach the gateway
    under two (a resend with a new id, or gap healing that fetched it first): one entry.
    Likewise a Shopify event delivered to two subscriptions (same X-Shopify-Event-Id)."""
    s = hub.signer
    wms = target(hub, "wms")
    event = s.epcis_event(wms.sku_index, 0, 4321, 4000)
    shop = target(hub, "commerce")
    level, shopify_event = s.shopify_level(shop.sku_index, 0, 87, now()), new_id()
    for first, second in ((s.epcis([event]), s.epcis([event])),
                          (s.shopify(level, event_id=shopify_event),
                           s.shopify(level, event_id=shopify_event))):
        assert first.dedupe != second.dedupe
        log_before = len(stream(hub.redis_url))
        one = post(hub.g0, first, hub.client)
        other = post(hub.g1, second, hub.client)
        assert one.status_code == other.status_code == 200, (one.text, other.text)
        assert one.json()["events"] == other.json()["events"]
        assert len(stream(hub.redis_url)) == log_before + 1
    assert changed_value(wms) == 4321
    assert changed_value(shop) == 87


UNMAPPABLE: dict[str, tuple[str, Callable[[Hub, Target], Delivery], str]] = {
    "shopify level of the gift card": (
        "commerce", lambda h, t: h.signer.shopify(h.signer.shopify_level(
            t.sku_index, 0, 9, now(),
            inventory_item_id=47_000_000_000_000 + h.stack.world.n_skus)),
        "unmapped item"),
    "epcis event for an unknown gtin": (
        "wms", lambda h, t: h.signer.epcis([h.signer.epcis_event(
            t.sku_index, 0, 9, 3000, gtin14="07012349999986")]), "unmapped GTIN 07012349999986"),
    "square count of an unknown variation": (
        "pos", lambda h, t: h.signer.square(f"{h.g0}/webhooks/pos", _square_count(
            h, t, catalog_object_id="NOTAVARIATIONWEKNOW00000")), "unmapped catalog object"),
    "erp adjustment of an unknown sku": (
        "erp", lambda h, t: _erp_data(h, t, sku="SKU-999999"), "unmapped SKU SKU-999999"),
    "erp adjustment to a negative on-hand": (
        "erp", lambda h, t: _erp_data(h, t, onHand=-3), "impossible quantity"),
}


@pytest.mark.parametrize("case", list(UNMAPPABLE))
def test_unmappable_event_is_dead_lettered(hub: Hub, case: str) -> None:
    backend, build, reason = UNMAPPABLE[case]
    t = target(hub, backend)
    delivery = build(hub, t)
    before_level = t.query()
    before = state(hub)
    dlq_before = stream(hub.redis_url, DLQ)
    response = post(hub.g0, delivery, hub.client)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "dead-lettered"
    assert reason in response.json()["reason"]
    letters = stream(hub.redis_url, DLQ)
    assert len(letters) == len(dlq_before) + 1
    letter = letters[-1]
    assert letter["source"] == backend
    assert reason in letter["reason"]
    assert letter["body"].encode() == delivery.body  # kept whole, for replay
    assert not any("signature" in k or "hmac" in k for k in letter["headers"])
    # Nothing was logged or applied; only the DLQ (and its dedupe key) changed.
    after = state(hub)
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    assert all(k == DLQ or k.startswith("rg:{ev}:dlqseen:") for k in changed), changed
    assert t.query() == before_level
    # The sender retries: still 202, kept once.
    assert post(hub.g0, delivery, hub.client).status_code == 202
    assert len(stream(hub.redis_url, DLQ)) == len(letters)


# -- Square behind a proxy ------------------------------------------------------------------------


def test_square_signed_for_the_configured_notification_url(redis_server_url: str) -> None:
    """Behind a proxy the URL Square signs is the public one, not the one the request
    arrived on; with ``notification_url`` configured, that is what is verified."""
    public = "https://retail.example.com/hooks/square"
    stack = Stack(redis_server_url, stores=1, warehouses=1, skus=5)
    stack.settings.backends["pos"].notification_url = public
    with stack, httpx.Client(timeout=30) as client:
        hub = Hub(stack, redis_server_url, Signer(stack.settings, stack.world),
                  itertools.count(0), client)
        t = target(hub, "pos")
        assert_refused(hub, t, changing(hub, t, 33), 401, "signature")  # the arrival URL
        response = post(hub.g0, changing(hub, t, 34, url=public), hub.client)
        assert response.status_code == 200, response.text
        assert changed_value(t) == 34
        # The simulator, configured with the same public URL, gets its webhooks accepted.
        item = stack.world.items[t.sku_index]
        with stack.sim("pos") as pos:
            change = pos.post("/v2/inventory/changes/batch-create", json={
                "idempotency_key": new_id(), "changes": [{"type": "PHYSICAL_COUNT",
                                                          "physical_count": {
                    "catalog_object_id": item.square_variation_id, "state": "IN_STOCK",
                    "location_id": stack.world.stores[0].square_id, "quantity": "17",
                    "occurred_at": rfc3339(now())}}]})
            assert change.status_code == 200, change.text
            stack.drain_webhooks()
            deliveries = pos.get("/_sim/webhooks").json()["deliveries"]
        assert [d["status"] for d in deliveries] == [200]
        assert changed_value(t) == 17


# -- read after ack, across replicas ------------------------------------------------------------

PRODUCT = """query($sku: ID!) { product(sku: $sku) {
  name price { amount } stock(locationIds: ["WH01"]) { onHand } } }"""


def _prime_everywhere(hub: Hub, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """Run ``query`` on both replicas until each serves it from the response cache (a miss
    stores its response just after answering)."""
    data: dict[str, Any] | None = None
    for url in (hub.g0, hub.g1):
        for _ in range(100):
            response = hub.client.post(f"{url}/graphql", json={"query": query,
                                                                "variables": variables})
            assert "errors" not in response.json(), response.text
            data = response.json()["data"]
            if response.headers.get("x-retailgraph-cache") == "hit":
                break
            time.sleep(0.01)
        assert response.headers.get("x-retailgraph-cache") == "hit"
    assert data is not None
    return data


def _now_on(hub: Hub, url: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = hub.client.post(f"{url}/graphql", json={"query": query, "variables": variables})
    body = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def _delivered(hub: Hub, name: str, topic_part: str) -> list[dict[str, Any]]:
    hub.stack.drain_webhooks()
    with hub.stack.sim(name) as sim:
        found: list[dict[str, Any]] = sim.get("/_sim/webhooks").json()["deliveries"]
    return [d for d in found if topic_part in str(d["topic"])]


def test_read_after_ack_square_sale(hub: Hub) -> None:
    world = hub.stack.world
    i = next(n for n in iter(hub.sku, None) if world.store_counts(n, 0)[0] >= 2)
    item, store = world.items[i], world.stores[0]
    variables = {"sku": item.sku, "loc": store.code}
    before = _prime_everywhere(hub, STOCK_LEVEL, variables)["stockLevel"]
    with hub.stack.sim("pos") as pos:
        sale = pos.post("/v2/inventory/changes/batch-create", json={
            "idempotency_key": new_id(), "changes": [{"type": "ADJUSTMENT", "adjustment": {
                "catalog_object_id": item.square_variation_id, "location_id": store.square_id,
                "from_state": "IN_STOCK", "to_state": "SOLD", "quantity": "2"}}]})
        assert sale.status_code == 200, sale.text
    sent = [d for d in _delivered(hub, "pos", "inventory") if item.square_variation_id
            in d["body"]]
    assert sent
    assert all(d["status"] == 200 for d in sent)
    for url in (hub.g1, hub.g0):
        level = _now_on(hub, url, STOCK_LEVEL, variables)["stockLevel"]
        assert level["available"] == before["available"] - 2
        assert level["onHand"] == before["onHand"] - 2


def test_read_after_ack_wms_event(hub: Hub) -> None:
    world = hub.stack.world
    i = hub.sku()
    item, warehouse = world.items[i], world.warehouses[0]
    variables = {"sku": item.sku, "loc": warehouse.code}
    before = _prime_everywhere(hub, STOCK_LEVEL, variables)["stockLevel"]
    gtin = item.gtin14
    epc = f"urn:epc:idpat:sgtin:{gtin[1:7]}.{gtin[0]}{gtin[7:13]}.*"
    stamp = now().isoformat(timespec="milliseconds")
    with hub.stack.sim("wms") as wms:
        captured = wms.post("/api/v1/events", json={
            "type": "ObjectEvent", "eventTime": stamp, "eventTimeZoneOffset": "+00:00",
            "action": "OBSERVE", "bizStep": "cycle_counting",
            "bizLocation": {"id": warehouse.sgln},
            "quantityList": [{"epcClass": epc, "quantity": before["onHand"] + 7, "uom": "EA"}]})
        assert captured.status_code == 202, captured.text
    sent = _delivered(hub, "wms", "cycle_counting")
    assert sent
    assert all(d["status"] == 200 for d in sent)
    for url in (hub.g1, hub.g0):
        assert _now_on(hub, url, STOCK_LEVEL, variables)["stockLevel"]["onHand"] == \
            before["onHand"] + 7


def test_read_after_ack_erp_item_update(hub: Hub) -> None:
    item = hub.stack.world.items[hub.sku()]
    variables = {"sku": item.sku}
    before = _prime_everywhere(hub, PRODUCT, variables)["product"]
    assert before["name"] == item.name
    with hub.stack.sim("erp") as erp:
        patched = erp.patch(f"/api/v1/items/{item.sku}",
                            json={"description": "Renamed Mug", "listPrice": "123.45"})
        assert patched.status_code == 200, patched.text
    sent = _delivered(hub, "erp", "item.updated")
    assert sent
    assert all(d["status"] == 200 for d in sent)
    for url in (hub.g1, hub.g0):
        product = _now_on(hub, url, PRODUCT, variables)["product"]
        assert product["name"] == "Renamed Mug"
        assert product["price"]["amount"] == "123.45"
        assert product["stock"] == before["stock"]


def test_read_after_ack_shopify_level(hub: Hub) -> None:
    """The web shop's level is in ``stockLevel.views`` (role ONLINE)."""
    i = hub.sku()
    item, warehouse = hub.stack.world.items[i], hub.stack.world.warehouses[0]
    t = Target("commerce", i, warehouse.code, hub)
    variables = {"sku": item.sku, "loc": warehouse.code}
    before = _prime_everywhere(hub, WITH_VIEWS, variables)["stockLevel"]
    assert view_of(before, "ONLINE")["available"] != 1234
    with hub.stack.sim("commerce") as shop:
        response = shop.post("/admin/api/2025-01/inventory_levels/set.json", json={
            "location_id": warehouse.shopify_id, "inventory_item_id":
                item.shopify_inventory_item_id, "available": 1234})
        assert response.status_code == 200, response.text
        updated_at = response.json()["inventory_level"]["updated_at"]
    sent = _delivered(hub, "commerce", "inventory_levels")
    assert sent
    assert all(d["status"] == 200 for d in sent)
    for url in (hub.g1, hub.g0):
        level = _now_on(hub, url, WITH_VIEWS, variables)["stockLevel"]
        assert view_of(level, "ONLINE")["available"] == 1234
        assert level["onHand"] == before["onHand"]  # the system of record did not move
    entry = t.entry()
    assert entry[f"{warehouse.code}/available"] == "1234"
    assert entry[f"{warehouse.code}/_full"] == "1"
    logged = [e for e in stream(hub.redis_url) if e["source"] == "commerce"
              and e["sku"] == item.sku]
    assert [e["quantities"]["available"] for e in logged] == [1234]
    assert logged[0]["occurred_at"].startswith(updated_at[:19])


def test_read_after_ack_erp_stock_adjustment(hub: Hub) -> None:
    i = hub.sku()
    item = hub.stack.world.items[i]
    t = Target("erp", i, "WH01", hub)
    variables = {"sku": item.sku, "loc": "WH01"}
    before = _prime_everywhere(hub, WITH_VIEWS, variables)["stockLevel"]
    assert view_of(before, "ERP_SNAPSHOT")["onHand"] != 4321
    with hub.stack.sim("erp") as erp:
        response = erp.post("/api/v1/stock-adjustments", json={
            "sku": item.sku, "locationCode": "WH01", "onHand": 4321, "reason": "count"})
        assert response.status_code == 201, response.text
    sent = _delivered(hub, "erp", "stock.adjusted")
    assert sent
    assert all(d["status"] == 200 for d in sent)
    for url in (hub.g1, hub.g0):
        assert view_of(_now_on(hub, url, WITH_VIEWS, variables)["stockLevel"],
                       "ERP_SNAPSHOT")["onHand"] == 4321
    assert t.entry()["WH01/on_hand"] == "4321"


@pytest.mark.parametrize("backend", FORMATS)
def test_signed_webhook_to_one_replica_is_read_on_the_other(hub: Hub, backend: str) -> None:
    """Each acknowledged delivery is visible on replica 1 the moment replica 0 answers,
    whether replica 1 had the cell and the response cached or not."""
    t = target(hub, backend)
    variables = {"sku": t.sku, "loc": t.location}
    for value in range(200, 230):
        if value % 3 == 0:
            _prime_everywhere(hub, WITH_VIEWS, variables)
        assert post(hub.g0, changing(hub, t, value), hub.client).status_code == 200
        for url in (hub.g1, hub.g0):  # the primed query itself, then a fresh one
            assert value_in(t, _now_on(hub, url, WITH_VIEWS, variables)["stockLevel"]) == value
            assert changed_value(t, url) == value


def test_signed_webhook_for_an_uncached_cell_is_read_on_the_other_replica(hub: Hub) -> None:
    """The first event for a SKU nobody has read yet: the replica that reads it must not
    serve the backend's older value over the acknowledged event."""
    s = hub.signer
    for _ in range(3):
        i = hub.sku()
        sku = hub.stack.world.items[i].sku
        assert post(hub.g0, s.epcis([s.epcis_event(i, 0, 777, 5)]), hub.client).status_code == 200
        assert level_data(stock_level(hub.g1, sku, "WH01", hub.client))["onHand"] == 777
        assert post(hub.g0, s.square(f"{hub.g0}/webhooks/pos",
                                     [s.square_count(i, 0, 66, now())]),
                    hub.client).status_code == 200
        assert level_data(stock_level(hub.g1, sku, "ST001", hub.client))["available"] == 66
