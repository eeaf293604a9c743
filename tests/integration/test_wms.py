"""WMS simulator and connector over real HTTP: balances, EPCIS capture, webhooks, errors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.wms import WmsState, create_app, epc_class
from gateway.simulators.world import EPOCH, World
from resolvers.connectors.wms import WmsConnector, balance_to_view, parse_object_event
from resolvers.errors import BackendProtocolError, BackendStatusError
from resolvers.identity import GLN, GTIN, IdentityMap, gtin_from_epc
from resolvers.settings import BackendSettings
from resolvers.types import Quantities
from tests.support import ServerThread, serve

TOKEN = "wms-token"
SECRET = "wms-webhook-secret"
WORLD = World(seed=7, skus=30, stores=3, warehouses=2)
WH1, WH2 = WORLD.warehouses
STORE = WORLD.stores[0]


@dataclass
class Receiver:
    """Records every webhook attempt; answers 500 to the first attempt of listed ids."""

    url: str = ""
    calls: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    fail_first: set[str] = field(default_factory=set)

    async def hook(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.calls.append((await request.body(), headers))
        if headers.get("webhook-id") in self.fail_first:
            self.fail_first.discard(headers["webhook-id"])
            return Response(status_code=500)
        return Response(status_code=204)

    def documents(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for body, _ in self.calls]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    with serve(Starlette(routes=[Route("/hook", rec.hook, methods=["POST"])])) as server:
        rec.url = server.url + "/hook"
        yield rec


def settings(url: str = "http://unused", token: str = TOKEN) -> BackendSettings:
    return BackendSettings(name="wms", format="epcis", base_url=url, token=token,
                           webhook_secret=SECRET, retries=0)


def start(receiver: Receiver, **options: Any) -> Any:
    opts = DeliveryOptions(backoff=0.01, **options)
    return serve(create_app(WORLD, settings(), receiver.url, opts))


@pytest.fixture
def sim(receiver: Receiver) -> Iterator[ServerThread]:
    with start(receiver) as server:
        yield server


def identity() -> IdentityMap:
    ids = IdentityMap()
    for item in WORLD.items:
        ids.add_sku(GTIN, item.gtin14, item.sku)
    for loc in WORLD.locations:
        ids.add_location(GLN, loc.gln, loc.code)
    return ids


@pytest.fixture
async def wms(sim: ServerThread) -> Any:
    connector = WmsConnector(settings(sim.url), identity())
    yield connector
    await connector.aclose()


def event(step: str, item: int, site: Any = WH1, qty: int = 5, action: str = "ADD",
          **extra: Any) -> dict[str, Any]:
    return {"type": "ObjectEvent", "eventTime": "2025-03-01T10:00:00.000+01:00",
            "eventTimeZoneOffset": "+01:00", "action": action, "bizStep": step,
            "quantityList": [{"epcClass": epc_class(WORLD.item(item).gtin14), "quantity": qty,
                              "uom": "EA"}],
            "bizLocation": {"id": site.sgln}, **extra}


PO: dict[str, Any] = {
    "bizTransactionList": [{"type": "po", "bizTransaction": "urn:epcglobal:cbv:bt:PO-1"}]}


def document(*events: dict[str, Any]) -> dict[str, Any]:
    return {"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
            "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2025-03-01T09:00:00Z", "epcisBody": {"eventList": list(events)}}


async def post(server: ServerThread, path: str, body: Any, token: str = TOKEN) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return await http.post(path, content=orjson.dumps(body),
                               headers={"Authorization": f"Bearer {token}"})


async def drain(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post("/_sim/webhooks/drain")).json() == {"pending": 0}


async def request_count(server: ServerThread, key: str) -> int:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return int((await http.get("/_sim/stats")).json()["requests"].get(key, 0))


def verify(body: bytes, headers: dict[str, str]) -> None:
    """Standard Webhooks signature, recomputed without gateway.intake.signatures."""
    msg = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(SECRET.encode(), msg, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-id"].startswith("msg_")


def opening(item: int, site: Any) -> Quantities:
    b = WORLD.warehouse_balance(item, site.index)
    return Quantities(on_hand=b.on_hand, available=b.available, committed=b.allocated,
                      incoming=b.incoming, quality_control=b.quality_control, damaged=b.damaged)


# -- identifiers -------------------------------------------------------------------------------


def test_epc_class_is_the_gs1_encoding_identity_parses() -> None:
    assert WORLD.item(0).gtin14 == "07012340000001"
    assert epc_class(WORLD.item(0).gtin14) == "urn:epc:idpat:sgtin:701234.0000000.*"
    for item in WORLD.items:
        assert gtin_from_epc(epc_class(item.gtin14)) == item.gtin14


def test_event_ids_are_unique_per_boot() -> None:
    # Two boots of the same seed (a restart) must not repeat ids a gateway already deduped.
    a, b = WmsState(WORLD), WmsState(WORLD)
    ids = [a.next_event_id() for _ in range(3)]
    assert len(set(ids)) == 3
    assert ids[0].startswith("urn:uuid:")
    assert not set(ids) & {b.next_event_id() for _ in range(3)}


# -- connector reads ---------------------------------------------------------------------------


async def test_sites(wms: WmsConnector) -> None:
    sites = await wms.sites()
    assert [(s.namespace, s.native_id, s.name) for s in sites] == [
        ("epcis", WH1.gln, WH1.name), ("epcis", WH2.gln, WH2.name)]


async def test_balances_are_the_world_opening_stock(wms: WmsConnector) -> None:
    views = await wms.balances([i.sku for i in WORLD.items], [WH1.code, WH2.code, STORE.code])
    assert len(views) == 60  # the store is not a WMS site
    by_cell = {(v.sku, v.location_id): v for v in views}
    for item in WORLD.items:
        for site in (WH1, WH2):
            view = by_cell[(item.sku, site.code)]
            assert view.quantities == opening(item.index, site)
            assert (view.source, view.version, view.as_of) == ("wms", "0", EPOCH)
    some = [v.quantities for v in views]
    assert any(q.incoming for q in some)
    assert any(q.damaged for q in some)


async def test_balances_skip_skus_without_gtin_and_report_unknown_rows(
        wms: WmsConnector) -> None:
    assert await wms.balances(["SKU-999999"], [WH1.code]) == []
    assert await wms.balances([WORLD.item(0).sku], ["NOWHERE"]) == []
    views = await wms.balances([WORLD.item(3).sku, "SKU-999999"], [WH2.code])
    assert [(v.sku, v.location_id) for v in views] == [(WORLD.item(3).sku, WH2.code)]
    row = {"gtin": "00000000000017", "gln": WH1.gln, "onHand": 1, "allocated": 0,
           "qualityControl": 0, "damaged": 0, "incoming": 0, "available": 1,
           "updatedAt": "2025-01-01T00:00:00Z", "sequence": 0}
    assert balance_to_view(row, wms.identity, "wms") is None
    unmapped = wms.identity.unmapped[("gs1", "gtin", "00000000000017")]
    assert unmapped.seen_in == "wms"


async def test_balances_chunk_gtins_and_follow_cursors(wms: WmsConnector,
                                                      sim: ServerThread) -> None:
    wms.gtins_per_call, wms.page_size = 7, 5
    views = await wms.balances([i.sku for i in WORLD.items], [WH1.code, WH2.code])
    assert len({(v.sku, v.location_id) for v in views}) == 60
    # 4 chunks of 7 GTINs x 2 sites = 14 rows = 3 pages each, then 2 x 2 rows = 1 page
    assert await request_count(sim, "POST /api/v1/balances/query") == 13


def test_balance_row_that_is_malformed_raises_protocol_error() -> None:
    row = {"gtin": WORLD.item(0).gtin14, "gln": WH1.gln, "onHand": "7"}
    with pytest.raises(BackendProtocolError, match="onHand"):
        balance_to_view(row, identity(), "wms")


async def test_unauthorized(sim: ServerThread) -> None:
    response = await post(sim, "/api/v1/events", document(event("arriving", 0)), token="nope")
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    connector = WmsConnector(settings(sim.url, token="nope"), identity())
    with pytest.raises(BackendStatusError) as err:
        await connector.sites()
    await connector.aclose()
    assert err.value.status == 401


def test_large_world_is_lazy() -> None:
    started = time.monotonic()
    world = World(seed=1, skus=100_000, stores=40, warehouses=10)
    create_app(world, settings(), "")
    state = WmsState(world)
    assert state.item_index(world.item(99_999).gtin14) == 99_999
    assert state.item_index(WORLD.item(0).gtin14[:-1] + "9") is None
    assert time.monotonic() - started < 3


# -- capture, webhooks and movements -----------------------------------------------------------


async def test_each_biz_step_changes_balance_and_fires_a_signed_webhook(
        wms: WmsConnector, sim: ServerThread, receiver: Receiver) -> None:
    item = next(i for i in range(30) if WORLD.warehouse_balance(i, WH1.index).incoming)
    sku, start_ = WORLD.item(item).sku, WORLD.warehouse_balance(item, WH1.index)
    steps = [
        event("receiving", item, qty=10, **PO),
        event("https://ref.gs1.org/cbv/BizStep-storing", item, qty=10),
        event("picking", item, qty=3),
        event("shipping", item, qty=4, action="OBSERVE",
              destinationList=[{"type": "location", "destination": WH2.sgln}]),
        event("arriving", item, site=WH2, qty=4),
        event("cycle_counting", item, qty=200, action="OBSERVE"),
    ]
    response = await post(sim, "/api/v1/events", document(*steps))
    assert response.status_code == 202
    ids = response.json()["eventIDs"]
    assert len(ids) == 6
    assert len(set(ids)) == 6
    await drain(sim)

    on_hand = start_.on_hand + 10 - 4
    allocated = start_.allocated + 3 - min(start_.allocated + 3, 4)
    expected_wh1 = Quantities(
        on_hand=200, committed=allocated,
        quality_control=start_.quality_control, damaged=start_.damaged,
        incoming=start_.incoming - min(10, start_.incoming),
        available=max(0, 200 - allocated - start_.quality_control - start_.damaged))
    views = {v.location_id: v for v in await wms.balances([sku], [WH1.code, WH2.code])}
    assert views[WH1.code].quantities == expected_wh1
    assert views[WH1.code].version == "5"
    assert views[WH2.code].version == "1"
    wh2_start = WORLD.warehouse_balance(item, WH2.index).on_hand
    assert views[WH2.code].quantities.on_hand == wh2_start + 4

    assert len(receiver.calls) == 6
    movements = []
    for (body, headers), event_id in zip(receiver.calls, ids, strict=True):
        verify(body, headers)
        doc = orjson.loads(body)
        assert doc["type"] == "EPCISDocument"
        assert doc["schemaVersion"] == "2.0"
        assert {"wms": "https://wms.retailgraph.dev/epcis/"} in doc["@context"]
        (ev,) = doc["epcisBody"]["eventList"]
        assert ev["eventID"] == event_id
        assert "recordTime" in ev
        movements.append(parse_object_event(ev))
    assert [m.biz_step for m in movements] == [
        "receiving", "storing", "picking", "shipping", "arriving", "cycle_counting"]
    assert [m.sequence for m in movements] == [1, 2, 3, 4, 1, 5]
    assert movements[0].documents == [{"type": "po", "id": "urn:epcglobal:cbv:bt:PO-1"}]
    assert movements[0].balance is not None
    assert movements[0].balance["qualityControl"] == start_.quality_control + 10
    assert movements[2].balance is not None
    assert movements[2].balance["allocated"] == start_.allocated + 3
    assert movements[3].balance is not None
    assert movements[3].balance["onHand"] == on_hand
    assert (movements[5].gtin14, movements[5].sgln, movements[5].quantity) == (
        WORLD.item(item).gtin14, WH1.sgln, 200)
    # the webhook's balance normalises to exactly what the balances query returns
    row = movements[5].balance_row()
    assert row is not None
    assert balance_to_view(row, wms.identity, "wms") == views[WH1.code]


async def test_single_object_event_and_movements_query(
        wms: WmsConnector, sim: ServerThread) -> None:
    for n in range(4):
        response = await post(sim, "/api/v1/events",
                              event("arriving", 2, qty=n + 1, eventID=f"urn:uuid:test-{n}"))
        assert response.status_code == 202
        assert response.json() == {"eventIDs": [f"urn:uuid:test-{n}"]}
    assert (await post(sim, "/api/v1/events", event("arriving", 2, site=WH2))).status_code == 202
    wms.page_size = 2
    moves = await wms.movements(WORLD.item(2).sku, WH1.code, after=1)
    assert [(m.event_id, m.sequence, m.quantity) for m in moves] == [
        ("urn:uuid:test-1", 2, 2), ("urn:uuid:test-2", 3, 3), ("urn:uuid:test-3", 4, 4)]
    assert await request_count(sim, "GET /api/v1/events") == 2
    assert await wms.movements(WORLD.item(5).sku, WH1.code) == []
    again = await post(sim, "/api/v1/events", event("arriving", 2, eventID="urn:uuid:test-0"))
    assert again.status_code == 400
    assert "already captured" in again.json()["detail"]


BAD = [
    (document(), "eventList"),
    ({"type": "Nonsense"}, "type"),
    (document({k: v for k, v in event("arriving", 0).items() if k != "eventTime"}),
     "eventTime"),
    (document(event("arriving", 0, eventTime="yesterday")), "eventTime"),
    (document({k: v for k, v in event("arriving", 0).items() if k != "bizLocation"}),
     "bizLocation"),
    (document(event("teleporting", 0)), "bizStep"),
    (document(event("arriving", 0, action="MOVE")), "action"),
    (document(event("arriving", 0, site=STORE)), "bizLocation.id"),
    (document(event("arriving", 0, quantityList=[
        {"epcClass": "urn:epc:idpat:sgtin:701234.0999999.*", "quantity": 1, "uom": "EA"}])),
     "epcClass"),
    (document(event("arriving", 0, qty=-1)), "quantity"),
    (document(event("arriving", 0, quantityList=[
        {"epcClass": epc_class(WORLD.item(0).gtin14), "quantity": 1, "uom": "KGM"}])), "uom"),
    (document(event("receiving", 0)), "po"),
    (document(event("cycle_counting", 0, qty=3)), "OBSERVE"),
    (document(event("storing", 0, qty=10_000)), "quality control"),
    (document(event("picking", 0, qty=10_000)), "available"),
    (document(event("shipping", 0, qty=10_000)), "unrestricted"),
    # the first event is fine; the second fails; nothing may be applied
    (document(event("arriving", 0, qty=5), event("storing", 0, qty=10_000)), "eventList[1]"),
]


@pytest.mark.parametrize(("body", "named"), BAD)
async def test_bad_capture_is_rejected_without_changes(
        body: dict[str, Any], named: str, wms: WmsConnector, sim: ServerThread,
        receiver: Receiver) -> None:
    before = await wms.balances([WORLD.item(0).sku], [WH1.code])
    response = await post(sim, "/api/v1/events", body)
    assert response.status_code == 400
    problem = response.json()
    assert problem["type"] == "epcisException:ValidationException"
    assert named in problem["detail"]
    assert await wms.balances([WORLD.item(0).sku], [WH1.code]) == before
    assert await wms.movements(WORLD.item(0).sku, WH1.code) == []
    await drain(sim)
    assert receiver.calls == []


async def test_bad_queries(sim: ServerThread) -> None:
    for body in ({"limit": 1001}, {"cursor": "bogus"}, {"gtins": "0701234"}, [1]):
        response = await post(sim, "/api/v1/balances/query", body)
        assert response.status_code == 400, body
    async with httpx.AsyncClient(base_url=sim.url,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert (await http.get("/api/v1/events", params={"after": "x"})).status_code == 400
        page = (await http.get("/api/v1/events")).json()
    assert page["type"] == "EPCISQueryDocument"
    assert page["nextCursor"] is None


def test_parse_object_event_names_the_bad_field() -> None:
    good = {**event("arriving", 0), "eventID": "urn:uuid:1"}
    assert parse_object_event(good).gtin14 == WORLD.item(0).gtin14
    for key in ("eventID", "eventTime", "action", "bizStep", "quantityList", "bizLocation"):
        with pytest.raises(ValueError, match=key):
            parse_object_event({k: v for k, v in good.items() if k != key})
    with pytest.raises(ValueError, match="wms:balance"):
        parse_object_event({**good, "wms:balance": {"onHand": -1}})
    with pytest.raises(ValueError, match="epcClass"):
        parse_object_event({**good, "quantityList": [{"epcClass": "x", "quantity": 1}]})


# -- delivery behaviour ------------------------------------------------------------------------


async def test_failed_webhook_is_retried_with_the_same_id(receiver: Receiver) -> None:
    msg_id = receiver_msg_id("urn:uuid:r2")
    receiver.fail_first.add(msg_id)
    with start(receiver) as sim:
        response = await post(sim, "/api/v1/events", event("arriving", 1, eventID="urn:uuid:r2"))
        assert response.status_code == 202
        await drain(sim)
    assert len(receiver.calls) == 2
    (body1, h1), (body2, h2) = receiver.calls
    assert body1 == body2
    assert h1["webhook-id"] == h2["webhook-id"] == msg_id
    verify(body1, h1)
    verify(body2, h2)


def receiver_msg_id(event_id: str) -> str:
    return "msg_" + hashlib.sha256(event_id.encode()).hexdigest()[:32]


async def test_duplicates_knob_redelivers_the_same_message(receiver: Receiver) -> None:
    with start(receiver, duplicate_rate=1.0) as sim:
        response = await post(sim, "/api/v1/events", document(
            event("arriving", 4, qty=1), event("arriving", 5, qty=2)))
        assert response.status_code == 202
        await drain(sim)
        async with httpx.AsyncClient(base_url=sim.url) as http:
            deliveries = (await http.get("/_sim/webhooks")).json()["deliveries"]
    assert len(receiver.calls) == 4
    ids = [h["webhook-id"] for _, h in receiver.calls]
    assert len(set(ids)) == 2
    assert all(ids.count(i) == 2 for i in ids)
    for body, headers in receiver.calls:
        verify(body, headers)
    assert sorted(d["duplicate"] for d in deliveries) == [False, False, True, True]
    assert {d["topic"] for d in deliveries} == {"epcis/arriving"}
    events = [doc["epcisBody"]["eventList"][0]["eventID"] for doc in receiver.documents()]
    assert len(set(events)) == 2
