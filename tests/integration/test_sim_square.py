"""The POS simulator's Square 2026-09-16 write and gap-healing APIs, over real HTTP.

Square-Version, batch changes by idempotency key and by the clients' occurred_at, catalog
upserts with optimistic concurrency, the Events API (28 days, cursor-paged) and the 429 knob;
the official SDK is in tests/integration/test_sim_vendor_sdks.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.simulators.pos import PosState, create_app
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import World
from resolvers.settings import BackendSettings
from tests.support import serve

WORLD = World(seed=11, skus=20, stores=3, warehouses=1)
TOKEN = "square-sim-token"
VERSION = {"Square-Version": "2026-09-16"}
CREATE = "/v2/inventory/changes/batch-create"
COUNTS = "/v2/inventory/counts/batch-retrieve"
STORE = WORLD.stores[0]


@dataclass
class Sim:
    http: httpx.Client
    state: PosState
    hooks: list[dict[str, Any]]

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return self.http.post(path, json=body, headers={**VERSION, **headers})

    def in_stock(self, item: int, store: int = 0) -> str:
        found = self.post(COUNTS, {"catalog_object_ids": [WORLD.item(item).square_variation_id],
                                   "location_ids": [WORLD.stores[store].square_id],
                                   "states": ["IN_STOCK"]}).json()["counts"]
        quantity: str = found[0]["quantity"]
        return quantity

    def drain(self) -> None:
        assert self.http.post("/_sim/webhooks/drain").json() == {"pending": 0}


@pytest.fixture
def sim() -> Iterator[Sim]:
    hooks: list[dict[str, Any]] = []

    async def receive(request: Request) -> Response:
        hooks.append(orjson.loads(await request.body()))
        return Response(status_code=200)

    with serve(Starlette(routes=[Route("/hooks", receive, methods=["POST"])])) as receiver:
        settings = BackendSettings(name="pos", format="square", base_url="", token=TOKEN,
                                   webhook_secret="square-secret")
        app = create_app(WORLD, settings, receiver.url + "/hooks",
                         DeliveryOptions(backoff=0.01))
        with serve(app) as server, httpx.Client(base_url=server.url, timeout=10, headers={
                "Authorization": f"Bearer {TOKEN}"}) as http:
            yield Sim(http, app.state.sim, hooks)


def at(minutes_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()


def count(item: int, quantity: int, occurred: str | None) -> dict[str, Any]:
    change: dict[str, Any] = {"catalog_object_id": WORLD.item(item).square_variation_id,
                              "state": "IN_STOCK", "location_id": STORE.square_id,
                              "quantity": str(quantity)}
    if occurred is not None:
        change["occurred_at"] = occurred
    return {"type": "PHYSICAL_COUNT", "physical_count": change}


def sale(item: int, quantity: int, occurred: str | None) -> dict[str, Any]:
    change: dict[str, Any] = {"catalog_object_id": WORLD.item(item).square_variation_id,
                              "from_state": "IN_STOCK", "to_state": "SOLD",
                              "location_id": STORE.square_id, "quantity": str(quantity)}
    if occurred is not None:
        change["occurred_at"] = occurred
    return {"type": "ADJUSTMENT", "adjustment": change}


def error(response: httpx.Response) -> dict[str, Any]:
    [found] = response.json()["errors"]
    assert set(found) <= {"category", "code", "detail", "field"}
    assert isinstance(found["detail"], str)
    return dict(found)


# -- Square-Version ------------------------------------------------------------------------------

def test_square_version_is_recorded_checked_and_can_be_required(sim: Sim) -> None:
    assert sim.post("/v2/locations", None).status_code == 405
    assert sim.http.get("/v2/locations", headers=VERSION).status_code == 200
    assert sim.http.get("/v2/locations").status_code == 200  # the app's default version
    bad = sim.http.get("/v2/locations", headers={"Square-Version": "latest"})
    assert bad.status_code == 400
    assert error(bad)["code"] == "INVALID_SQUARE_VERSION_FORMAT"
    seen = sim.http.post("/_sim/square", json={"require_version": "2026-09-16"}).json()
    assert seen["square_versions"] == {"2026-09-16": 1, "missing": 1, "latest": 1}
    missing = sim.http.get("/v2/locations")
    assert missing.status_code == 400
    assert error(missing)["code"] == "API_VERSION_INCOMPATIBLE"
    older = sim.http.get("/v2/locations", headers={"Square-Version": "2025-01-23"})
    assert error(older)["code"] == "API_VERSION_INCOMPATIBLE"
    assert sim.http.get("/v2/locations", headers=VERSION).status_code == 200


# -- batch-create --------------------------------------------------------------------------------

def test_batch_create_is_idempotent_by_key(sim: Sim) -> None:
    before = int(sim.in_stock(1))
    body = {"idempotency_key": "sale-1", "changes": [sale(1, 1, at(1))]}
    first = sim.post(CREATE, body)
    assert first.status_code == 200
    again = sim.post(CREATE, body)
    assert again.json() == first.json()
    assert int(sim.in_stock(1)) == before - 1
    sim.drain()
    assert len(sim.hooks) == 1
    history = sim.post("/v2/inventory/changes/batch-retrieve", {"types": ["ADJUSTMENT"]})
    assert len(history.json()["changes"]) == 1
    reused = sim.post(CREATE, {"idempotency_key": "sale-1", "changes": [sale(1, 2, at(1))]})
    assert reused.status_code == 400
    assert error(reused)["code"] == "IDEMPOTENCY_KEY_REUSED"
    keyless = sim.post(CREATE, {"changes": [sale(1, 1, None)]})
    assert error(keyless) == {"category": "INVALID_REQUEST_ERROR",
                              "code": "MISSING_REQUIRED_PARAMETER",
                              "detail": "idempotency_key (1..128 characters) is required",
                              "field": "idempotency_key"}
    too_many = sim.post(CREATE, {"idempotency_key": "big",
                                 "changes": [count(2, n, None) for n in range(101)]})
    assert error(too_many)["code"] == "INVALID_ARRAY_LENGTH"
    assert int(sim.in_stock(1)) == before - 1


def test_changes_apply_by_their_client_timestamps(sim: Sim) -> None:
    def post(key: str, *changes: dict[str, Any]) -> None:
        response = sim.post(CREATE, {"idempotency_key": key, "changes": list(changes)})
        assert response.status_code == 200, response.text

    post("count-50", count(3, 50, at(10)))
    assert sim.in_stock(3) == "50"
    post("sale-before-count", sale(3, 4, at(20)))  # already in the count taken after it
    assert sim.in_stock(3) == "50"
    post("sale-after-count", sale(3, 2, at(5)))
    assert sim.in_stock(3) == "48"
    post("older-count", count(3, 7, at(30)))  # a later count exists: no effect now
    assert sim.in_stock(3) == "48"
    post("newer-count", count(3, 40, at(1)))
    assert sim.in_stock(3) == "40"
    post("late-sale", sale(3, 3, at(3)))  # arrived late, occurred before the newest count
    assert sim.in_stock(3) == "40"
    post("count-then-sale", count(3, 30, at(0.5)), sale(3, 1, at(0.5)))  # ties: in order
    assert sim.in_stock(3) == "29"
    for key, change in (("future", count(3, 1, (datetime.now(UTC) + timedelta(minutes=5))
                                         .isoformat())),
                        ("ancient", sale(3, 1, at(25 * 60)))):
        refused = sim.post(CREATE, {"idempotency_key": key, "changes": [change]})
        assert refused.status_code == 400
        assert error(refused)["code"] == "INVALID_VALUE"
        assert error(refused)["field"].endswith("occurred_at")
    assert sim.in_stock(3) == "29"
    changes = sim.post("/v2/inventory/changes/batch-retrieve", {
        "catalog_object_ids": [WORLD.item(3).square_variation_id]}).json()["changes"]
    assert len(changes) == 8  # every accepted change is in the history, effective or not


# -- catalog -------------------------------------------------------------------------------------

def test_catalog_upsert_needs_the_current_version(sim: Sim) -> None:
    vid = WORLD.item(4).square_variation_id
    current = sim.http.get(f"/v2/catalog/object/{vid}", headers=VERSION).json()["object"]
    data = current["item_variation_data"]
    edited = {**current, "item_variation_data": {
        **data, "name": "Renamed Candle", "price_money": {"amount": 12345,
                                                          "currency": "NOK"}}}
    body = {"idempotency_key": "rename-1", "object": edited}
    done = sim.post("/v2/catalog/object", body)
    assert done.status_code == 200, done.text
    updated = done.json()["catalog_object"]
    assert updated["version"] > current["version"]
    assert updated["item_variation_data"]["name"] == "Renamed Candle"
    assert sim.post("/v2/catalog/object", body).json() == done.json()  # replay: same answer
    listed = sim.http.get("/v2/catalog/list", headers=VERSION).json()["objects"]
    assert next(o for o in listed if o["id"] == vid) == updated
    for version in (current["version"], None):  # stale, or left out
        stale = {**edited, "version": version} if version else {
            k: v for k, v in edited.items() if k != "version"}
        refused = sim.post("/v2/catalog/object", {"idempotency_key": f"stale-{version}",
                                                  "object": stale})
        assert refused.status_code == 400
        assert error(refused) == {"category": "INVALID_REQUEST_ERROR",
                                  "code": "VERSION_MISMATCH",
                                  "detail": "Object version does not match latest database "
                                            "version.", "field": "object.version"}
    unknown = sim.http.get("/v2/catalog/object/NOPE", headers=VERSION)
    assert unknown.status_code == 404
    assert error(unknown)["code"] == "NOT_FOUND"
    sim.drain()
    assert [h["type"] for h in sim.hooks] == ["catalog.version.updated"]
    assert sim.hooks[0]["data"]["object"]["catalog_version"]["updated_at"] == \
        updated["updated_at"]


# -- Events API ----------------------------------------------------------------------------------

def test_events_search_filters_pages_and_forgets_after_28_days(sim: Sim) -> None:
    for n in range(5):
        change = count(5, 20, at(2)) if n == 0 else sale(5, 1, at(1))
        assert sim.post(CREATE, {"idempotency_key": f"e-{n}",
                                 "changes": [change]}).status_code == 200
    vid = WORLD.item(6).square_variation_id
    version = sim.http.get(f"/v2/catalog/object/{vid}", headers=VERSION).json()["object"]
    sim.post("/v2/catalog/object", {"idempotency_key": "cat", "object": version})
    sim.drain()
    query = {"filter": {"event_types": ["inventory.count.updated"],
                        "location_ids": [STORE.square_id],
                        "created_at": {"start_at": at(60)}}}
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        body: dict[str, Any] = {"limit": 2, "query": query}
        if cursor:
            body["cursor"] = cursor
        page = sim.post("/v2/events", body).json()
        pages.append(page)
        cursor = page.get("cursor")
        if not cursor:
            break
    events = [e for p in pages for e in p["events"]]
    assert [len(p["events"]) for p in pages] == [2, 2, 1]
    webhooks = [h for h in sim.hooks if h["type"] == "inventory.count.updated"]
    assert [e["event_id"] for e in events] == [h["event_id"] for h in reversed(webhooks)]
    assert events == list(reversed(webhooks))  # the same objects the webhooks carried
    assert pages[0]["metadata"][0] == {"event_id": events[0]["event_id"],
                                       "api_version": "2026-09-16"}
    ascending = sim.post("/v2/events", {"query": {"sort": {"order": "ASC"}}}).json()
    assert [e["type"] for e in ascending["events"]] == ["inventory.count.updated"] * 5 + [
        "catalog.version.updated"]
    other_store = sim.post("/v2/events", {"query": {"filter": {
        "location_ids": [WORLD.stores[1].square_id]}}}).json()
    assert other_store["events"] == []
    wrong = sim.post("/v2/events", {"cursor": pages[0]["cursor"], "query": {}})
    assert error(wrong)["code"] == "INVALID_CURSOR"
    assert error(sim.post("/v2/events", {"cursor": "garbage"}))["code"] == "INVALID_CURSOR"
    assert error(sim.post("/v2/events", {"limit": 101}))["code"] == "INVALID_VALUE"
    sim.http.post("/_sim/square", json={"advance_clock_seconds": 29 * 86400})
    assert sim.post("/v2/events", {}).json()["events"] == []


# -- rate limits and outages ---------------------------------------------------------------------

def test_rate_limited_requests_get_429_and_change_nothing(sim: Sim) -> None:
    before = sim.in_stock(7)
    sim.http.post("/_sim/square", json={"rate_limit_next": 2, "retry_after": 1})
    for _ in range(2):
        limited = sim.post(CREATE, {"idempotency_key": "rl", "changes": [sale(7, 1, None)]})
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert error(limited)["category"] == "RATE_LIMIT_ERROR"
        assert error(limited)["code"] == "RATE_LIMITED"
    assert sim.in_stock(7) == before
    assert sim.post(CREATE, {"idempotency_key": "rl",
                             "changes": [sale(7, 1, None)]}).status_code == 200
    bad = sim.http.post("/_sim/square", json={"rate_limit_next": -1})
    assert bad.status_code == 400
    assert sim.http.post("/_sim/square", json={"nope": 1}).status_code == 400


def test_an_outage_takes_the_pos_down_too(sim: Sim) -> None:
    sim.http.post("/_sim/outage", json={"seconds": 0.3})
    assert sim.http.get("/v2/locations", headers=VERSION).status_code == 503
