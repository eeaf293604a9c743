"""The connectors' write side (resolvers/writes.py) against the simulators, over real HTTP.

The web shop through Shopify's GraphQL Admin API 2026-10 (``inventorySetQuantities`` with
``changeFromQuantity`` and ``@idempotent``, ``productUpdate``, the cost bucket), the POS through
Square 2026-09-16 (catalog upsert with ``version``, ``inventory/changes/batch-create``). Each
outcome: done, stale compare-and-set resolved by a re-read, an idempotent retry taking effect
once (the simulator's effective writes per key show it), throttled with a wait.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.simulators.commerce import create_app
from gateway.simulators.pos import create_app as create_pos_app
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import World
from resolvers.connectors.commerce import GRAPHQL_PATH, CommerceConnector, Throttled, shop_key
from resolvers.connectors.pos import PosConnector
from resolvers.errors import BackendStatusError
from resolvers.settings import BackendSettings
from resolvers.writes import ItemTarget, ItemWrite, Outcome, StockTarget, StockWrite
from tests.integration.test_commerce import SECRET, TOKEN, WORLD, Receiver, master_identity
from tests.integration.test_pos import identity_for as pos_identity
from tests.support import serve

L1 = int(WORLD.warehouses[0].shopify_id or 0)
ITEM = WORLD.item(2)
RENAME = WORLD.item(5)
POS_TOKEN = "pos-writes-token"
POS_HEADERS = {"Authorization": f"Bearer {POS_TOKEN}", "Square-Version": "2026-09-16"}


@dataclass
class Shop:
    http: httpx.AsyncClient
    receiver: Receiver
    conn: CommerceConnector

    async def writes(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.http.get("/_sim/shop/writes")).json()
        return body

    async def available(self, sku: str = ITEM.sku) -> int:
        found = await self.conn.read_available(sku, "WH01")
        assert found is not None
        return found

    async def level_updates(self) -> list[dict[str, Any]]:
        assert (await self.http.post("/_sim/webhooks/drain")).json() == {"pending": 0}
        return [p for topic, p, _ in self.receiver.accepted()
                if topic == "inventory_levels/update"]

    async def graphql_requests(self) -> int:
        stats = (await self.http.get("/_sim/stats")).json()["requests"]
        return int(stats.get(f"POST {GRAPHQL_PATH}", 0))


class LoseFirstAnswers(httpx.AsyncBaseTransport):
    """Forwards every request, but drops the answer of the first ``n`` GraphQL mutations as
    a connection reset would: the shop applied them, the caller never heard."""

    def __init__(self, n: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.left = n

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if self.left and b"mutation" in request.content:
            self.left -= 1
            await response.aread()
            raise httpx.ReadError("connection reset after the request was sent")
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hooks", rec.handle, methods=["POST"])])
    with serve(app) as server:
        rec.url = server.url + "/hooks"
        yield rec


@pytest.fixture
async def shop(receiver: Receiver) -> AsyncIterator[Shop]:
    settings = BackendSettings(name="commerce", format="shopify", base_url="", token=TOKEN,
                               webhook_secret=SECRET)
    app = create_app(WORLD, settings, receiver.url, DeliveryOptions(backoff=0.01))
    with serve(app) as server:
        settings.base_url = server.url
        conn = CommerceConnector(settings, master_identity(WORLD))
        conn.identity.learn_online(await conn.products())
        async with httpx.AsyncClient(base_url=server.url,
                                     headers={"X-Shopify-Access-Token": TOKEN}) as http:
            yield Shop(http, receiver, conn)
        await conn.aclose()


# -- the web shop: stock ---------------------------------------------------------------------


async def test_the_connectors_are_write_targets(shop: Shop) -> None:
    stock: StockTarget = shop.conn
    items: ItemTarget = shop.conn
    assert stock.name == items.name == "commerce"


async def test_a_write_sets_available_once_and_the_shop_echoes_it(shop: Shop) -> None:
    before = await shop.available()
    write = StockWrite(ITEM.sku, "WH01", before - 4, before, "action-1")
    result = await shop.conn.set_available(write)
    assert (result.outcome, result.actual) == (Outcome.DONE, before - 4)
    assert await shop.available() == before - 4
    writes = await shop.writes()
    assert writes["byKey"] == {shop_key(write, before): 1}
    [logged] = writes["writes"]
    assert logged["mutation"] == "inventorySetQuantities"
    assert logged["changes"][0]["from"] == before
    assert logged["changes"][0]["to"] == before - 4
    [echo] = await shop.level_updates()  # the REST-shaped webhook the intake reads
    assert (echo["inventory_item_id"], echo["location_id"], echo["available"]) == (
        ITEM.shopify_inventory_item_id, L1, before - 4)

    again = await shop.conn.set_available(write)  # a retry of the same action
    assert (again.outcome, again.actual) == (Outcome.DONE, before - 4)
    assert (await shop.writes())["byKey"] == {shop_key(write, before): 1}
    assert len(await shop.level_updates()) == 1


async def test_a_lost_answer_is_retried_with_the_same_key_and_applies_once(
        receiver: Receiver) -> None:
    settings = BackendSettings(name="commerce", format="shopify", base_url="", token=TOKEN,
                               webhook_secret=SECRET)
    app = create_app(WORLD, settings, receiver.url, DeliveryOptions(backoff=0.01))
    with serve(app) as server:
        settings.base_url = server.url
        conn = CommerceConnector(settings, master_identity(WORLD), LoseFirstAnswers(1))
        conn.identity.learn_online(await conn.products())
        before = await conn.read_available(ITEM.sku, "WH01")
        assert before is not None
        write = StockWrite(ITEM.sku, "WH01", before + 9, before, "action-lost")
        result = await conn.set_available(write)
        await conn.aclose()
        async with httpx.AsyncClient(base_url=server.url) as http:
            writes = (await http.get("/_sim/shop/writes")).json()
            stats = (await http.get("/_sim/stats")).json()["requests"]
    assert (result.outcome, result.actual) == (Outcome.DONE, before + 9)
    assert writes["byKey"] == {shop_key(write, before): 1}  # sent twice, applied once
    assert stats[f"POST {GRAPHQL_PATH}"] >= 4  # variants + shop, read, the write twice


async def test_a_stale_belief_is_re_read_never_overwritten(shop: Shop) -> None:
    before = await shop.available()
    # An order (or a merchant) moves the shop's level after we last saw it.
    await shop.http.post("/_sim/shop/admin-edit", json={"sku": ITEM.sku, "location_id": L1,
                                                        "delta": -2})
    write = StockWrite(ITEM.sku, "WH01", before + 10, before, "action-stale")
    result = await shop.conn.set_available(write)
    assert (result.outcome, result.actual) == (Outcome.STALE, before - 2)
    assert "CHANGE_FROM_QUANTITY_STALE" in (result.error or "")
    assert await shop.available() == before - 2
    assert (await shop.writes())["byKey"] == {}

    # The caller recomputes from what the shop holds; the same action key is fine.
    recomputed = StockWrite(ITEM.sku, "WH01", before + 8, result.actual, "action-stale")
    done = await shop.conn.set_available(recomputed)
    assert (done.outcome, done.actual) == (Outcome.DONE, before + 8)
    assert (await shop.writes())["byKey"] == {shop_key(recomputed, before - 2): 1}

    # A stale belief about a level that already holds the desired value: nothing to do.
    same = await shop.conn.set_available(StockWrite(ITEM.sku, "WH01", before + 8, before,
                                                    "action-late"))
    assert (same.outcome, same.actual) == (Outcome.DONE, before + 8)
    assert len((await shop.writes())["writes"]) == 1


async def test_an_unknown_belief_reads_first_and_compares_with_that(shop: Shop) -> None:
    before = await shop.available()
    write = StockWrite(ITEM.sku, "WH01", before + 1, None, "action-unknown")
    result = await shop.conn.set_available(write)
    assert (result.outcome, result.actual) == (Outcome.DONE, before + 1)
    assert (await shop.writes())["byKey"] == {shop_key(write, before): 1}
    unchanged = await shop.conn.set_available(StockWrite(ITEM.sku, "WH01", before + 1, None,
                                                         "action-noop"))
    assert (unchanged.outcome, unchanged.actual) == (Outcome.DONE, before + 1)
    assert len((await shop.writes())["writes"]) == 1
    # Believing the shop already holds the value is checked, not taken on trust.
    wrong = await shop.conn.set_available(StockWrite(ITEM.sku, "WH01", before, before,
                                                     "action-believed"))
    assert (wrong.outcome, wrong.actual) == (Outcome.STALE, before + 1)
    assert len((await shop.writes())["writes"]) == 1


async def test_concurrent_writes_share_calls_and_each_applies_once(shop: Shop) -> None:
    import asyncio

    items = [WORLD.item(i) for i in range(6, 30)]
    before = {item.sku: await shop.conn.read_available(item.sku, "WH01") for item in items}
    calls = await shop.graphql_requests()
    writes = [StockWrite(item.sku, "WH01", (before[item.sku] or 0) + 5, before[item.sku],
                         f"batch-{n}") for n, item in enumerate(items)]
    results = await asyncio.gather(*(shop.conn.set_available(w) for w in writes))
    assert [(r.outcome, r.actual) for r in results] == [
        (Outcome.DONE, w.available) for w in writes]
    # 24 writes in a handful of calls (the first goes alone, the rest queue behind it).
    assert await shop.graphql_requests() - calls <= 3
    log = await shop.writes()
    assert all(n == 1 for n in log["byKey"].values())
    assert sorted(c["sku"] for w in log["writes"] for c in w["changes"]) == sorted(
        i.sku for i in items)
    assert len(await shop.level_updates()) >= 24  # one echo per level, as Shopify sends


async def test_a_stale_write_in_a_batch_holds_back_only_itself(shop: Shop) -> None:
    import asyncio

    items = [WORLD.item(i) for i in range(10, 16)]
    before = {item.sku: await shop.conn.read_available(item.sku, "WH01") for item in items}
    stale = items[2]
    await shop.http.post("/_sim/shop/admin-edit", json={
        "sku": stale.sku, "location_id": L1, "delta": -1})
    writes = [StockWrite(item.sku, "WH01", (before[item.sku] or 0) + 3, before[item.sku],
                         f"held-{n}") for n, item in enumerate(items)]
    results = await asyncio.gather(*(shop.conn.set_available(w) for w in writes))
    for write, result in zip(writes, results, strict=True):
        if write.sku == stale.sku:  # re-read, never overwritten
            assert (result.outcome, result.actual) == (Outcome.STALE,
                                                       (before[stale.sku] or 0) - 1)
        else:
            assert (result.outcome, result.actual) == (Outcome.DONE, write.available)
    assert await shop.conn.read_available(stale.sku, "WH01") == (before[stale.sku] or 0) - 1
    log = await shop.writes()
    assert sorted(c["sku"] for w in log["writes"] for c in w["changes"]) == sorted(
        i.sku for i in items if i is not stale)
    assert all(n == 1 for n in log["byKey"].values())


async def test_unmapped_cells_are_not_written(shop: Shop) -> None:
    for sku, loc in (("SKU-NOT-THERE", "WH01"), (ITEM.sku, "ST001"), (ITEM.sku, "WH99")):
        result = await shop.conn.set_available(StockWrite(sku, loc, 5, 4, "action-x"))
        assert result.outcome is Outcome.UNMAPPED, (sku, loc)
        assert await shop.conn.read_available(sku, loc) is None
    assert (await shop.writes())["writes"] == []


async def test_a_throttled_write_says_how_long_to_wait_and_writes_nothing(shop: Shop) -> None:
    before = await shop.available()
    await shop.http.post("/_sim/shop/throttle", json={"currentlyAvailable": 0,
                                                      "restoreRate": 20})
    result = await shop.conn.set_available(StockWrite(ITEM.sku, "WH01", before + 3, before,
                                                      "action-throttled"))
    assert result.outcome is Outcome.THROTTLED
    assert result.retry_after is not None
    assert 0 < result.retry_after <= 10 / 20 + 0.1  # a mutation costs 10 points
    assert (await shop.writes())["writes"] == []


async def test_a_throttled_read_waits_for_the_bucket_then_succeeds(shop: Shop) -> None:
    before = await shop.available()
    await shop.http.post("/_sim/shop/throttle", json={"currentlyAvailable": 0,
                                                      "restoreRate": 20})
    requests = await shop.graphql_requests()
    assert await shop.available() == before  # refused once, retried after the delay
    assert await shop.graphql_requests() - requests == 2
    # The bucket is modelled: with what the query cost known, the next one waits first
    # instead of being refused.
    await shop.http.post("/_sim/shop/throttle", json={"currentlyAvailable": 0})
    shop.conn.bucket.update((await shop.http.get("/_sim/shop/throttle")).json())
    requests = await shop.graphql_requests()
    assert await shop.available() == before
    assert await shop.graphql_requests() - requests == 1


async def test_a_read_throttled_past_its_budget_fails_with_429(shop: Shop) -> None:
    await shop.http.post("/_sim/shop/throttle", json={"currentlyAvailable": 0,
                                                      "restoreRate": 0.5})
    shop.conn.throttle_budget = 0.5
    with pytest.raises(Throttled) as err:
        await shop.conn.read_available(ITEM.sku, "WH01")
    assert err.value.status == 429
    assert err.value.retry_after is not None
    assert err.value.retry_after > 0.5


async def test_a_shop_that_is_down_is_a_failed_write_to_retry(shop: Shop) -> None:
    before = await shop.available()
    await shop.http.post("/_sim/outage", json={"seconds": 30, "retry_after": 7})
    result = await shop.conn.set_available(StockWrite(ITEM.sku, "WH01", before + 1, before,
                                                      "action-down"))
    assert result.outcome is Outcome.FAILED
    assert result.retry_after == 7
    assert "503" in (result.error or "")
    await shop.http.post("/_sim/outage", json={"seconds": 0})
    assert (await shop.writes())["writes"] == []


# -- the web shop: the item master -----------------------------------------------------------


async def test_the_shop_takes_the_name_as_title_and_never_the_price(shop: Shop) -> None:
    query = """query($id: ID!) { productVariant(id: $id) { price compareAtPrice
               product { title } } }"""
    variant = f"gid://shopify/ProductVariant/{RENAME.shopify_variant_id}"

    async def shown() -> dict[str, Any]:
        body = await shop.conn.query("Q", query.replace("query(", "query Q("), {"id": variant})
        found: dict[str, Any] = body["productVariant"]
        return found

    before = await shown()
    result = await shop.conn.update_item(ItemWrite(RENAME.sku, "Renamed Hoodie",
                                                   Decimal("999.00"), "item-1"))
    assert result.outcome is Outcome.DONE
    after = await shown()
    assert after["product"]["title"] == "Renamed Hoodie"
    assert (after["price"], after["compareAtPrice"]) == (before["price"],
                                                         before["compareAtPrice"])
    writes = await shop.writes()
    assert writes["byKey"] == {}  # productUpdate is idempotent by nature: no key
    assert [w["mutation"] for w in writes["writes"]] == ["productUpdate"]

    again = await shop.conn.update_item(ItemWrite(RENAME.sku, "Renamed Hoodie", None,
                                                  "item-2"))
    price_only = await shop.conn.update_item(ItemWrite(RENAME.sku, None, Decimal("1.00"),
                                                       "item-3"))
    assert again.outcome is price_only.outcome is Outcome.DONE
    assert len((await shop.writes())["writes"]) == 1  # neither wrote anything
    missing = await shop.conn.update_item(ItemWrite("SKU-NOT-THERE", "X", None, "item-4"))
    assert missing.outcome is Outcome.UNMAPPED


# -- the POS (Square 2026-09-16) -------------------------------------------------------------

POS_WORLD = World(seed=7, skus=40, stores=3, warehouses=2)
STORE = POS_WORLD.stores[0]
POS_ITEM = POS_WORLD.item(4)


@dataclass
class Pos:
    http: httpx.AsyncClient
    conn: PosConnector

    async def variation(self, item: int = 4) -> dict[str, Any]:
        vid = POS_WORLD.item(item).square_variation_id
        found: dict[str, Any] = (await self.http.get(f"/v2/catalog/object/{vid}")).json()
        return dict(found["object"])

    async def counts_written(self) -> list[dict[str, Any]]:
        body = (await self.http.post("/v2/inventory/changes/batch-retrieve", json={
            "types": ["PHYSICAL_COUNT"]})).json()
        return list(body.get("changes", []))


class UpsertFirst(httpx.AsyncBaseTransport):
    """Before forwarding each of the first ``n`` catalog upserts, someone else upserts the
    same object (a merchant in the Square dashboard): the version we read is then stale."""

    def __init__(self, n: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.left = n

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.left and request.method == "POST" and request.url.path == "/v2/catalog/object":
            self.left -= 1
            obj = orjson.loads(request.content)["object"]
            base = f"{request.url.scheme}://{request.url.netloc.decode()}"
            async with httpx.AsyncClient(base_url=base, headers=POS_HEADERS) as other:
                current = (await other.get(f"/v2/catalog/object/{obj['id']}")).json()["object"]
                data = {**current["item_variation_data"], "name": f"Edited {self.left}"}
                answer = await other.post("/v2/catalog/object", json={
                    "idempotency_key": f"dashboard-{self.left}",
                    "object": {**current, "item_variation_data": data}})
                assert answer.status_code == 200, answer.text
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def pos_settings(url: str) -> BackendSettings:
    return BackendSettings(name="pos", format="square", base_url=url, token=POS_TOKEN,
                           webhook_secret="pos-secret", retries=2)


@contextlib.asynccontextmanager
async def pos_sim(transport: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[Pos]:
    app = create_pos_app(POS_WORLD, pos_settings(""), "", DeliveryOptions(backoff=0.01))
    with serve(app) as server:
        conn = PosConnector(pos_settings(server.url), pos_identity(POS_WORLD), transport)
        conn.identity.learn_store(await conn.catalog())
        async with httpx.AsyncClient(base_url=server.url, headers=POS_HEADERS) as http:
            await http.post("/_sim/square", json={"require_version": "2026-09-16",
                                                  "reset_versions": True})
            yield Pos(http, conn)
        await conn.aclose()


@pytest.fixture
async def pos() -> AsyncIterator[Pos]:
    async with pos_sim() as found:
        yield found


async def test_the_pos_takes_name_and_list_price_by_version(pos: Pos) -> None:
    target: ItemTarget = pos.conn
    before = await pos.variation()
    result = await target.update_item(ItemWrite(POS_ITEM.sku, "Hoodie, renamed",
                                                Decimal("649.50"), "item-pos-1"))
    assert result.outcome is Outcome.DONE
    after = await pos.variation()
    assert after["item_variation_data"]["name"] == "Hoodie, renamed"
    assert after["item_variation_data"]["price_money"] == {"amount": 64950, "currency": "NOK"}
    assert after["version"] > before["version"]
    assert after["item_variation_data"]["sku"] == POS_ITEM.sku  # the rest of it kept
    same = await pos.conn.update_item(ItemWrite(POS_ITEM.sku, "Hoodie, renamed",
                                                Decimal("649.5"), "item-pos-2"))
    assert same.outcome is Outcome.DONE
    assert (await pos.variation())["version"] == after["version"]  # nothing to write
    versions = (await pos.http.get("/_sim/square")).json()["square_versions"]
    assert set(versions) == {"2026-09-16"}  # on every call (others would be refused)
    missing = await pos.conn.update_item(ItemWrite("SKU-NOT-THERE", "x", None, "item-pos-3"))
    assert missing.outcome is Outcome.UNMAPPED


async def test_a_version_mismatch_is_re_read_and_retried_once_then_stale() -> None:
    async with pos_sim(UpsertFirst(1)) as pos:
        once = await pos.conn.update_item(ItemWrite(POS_ITEM.sku, "Ours", None, "item-v1"))
        assert once.outcome is Outcome.DONE
        assert (await pos.variation())["item_variation_data"]["name"] == "Ours"
    async with pos_sim(UpsertFirst(2)) as pos:
        twice = await pos.conn.update_item(ItemWrite(POS_ITEM.sku, "Ours", None, "item-v2"))
        assert twice.outcome is Outcome.STALE
        assert "VERSION_MISMATCH" in (twice.error or "")
        assert (await pos.variation())["item_variation_data"]["name"] == "Edited 0"


async def test_a_rate_limited_pos_is_throttled_with_its_retry_after(pos: Pos) -> None:
    await pos.http.post("/_sim/square", json={"rate_limit_next": 10, "retry_after": 3})
    result = await pos.conn.update_item(ItemWrite(POS_ITEM.sku, "Later", None, "item-429"))
    assert (result.outcome, result.retry_after) == (Outcome.THROTTLED, 3)
    await pos.http.post("/_sim/square", json={"rate_limit_next": 0})
    assert (await pos.variation())["item_variation_data"]["name"] == POS_ITEM.name


async def test_store_counts_are_set_by_physical_count_compared_first(pos: Pos) -> None:
    target: StockTarget = pos.conn
    before = await target.read_available(POS_ITEM.sku, STORE.code)
    assert before is not None
    write = StockWrite(POS_ITEM.sku, STORE.code, before + 6, before, "count-1")
    done = await target.set_available(write)
    assert (done.outcome, done.actual) == (Outcome.DONE, before + 6)
    assert await target.read_available(POS_ITEM.sku, STORE.code) == before + 6
    again = await target.set_available(write)  # a retry: already there, nothing sent
    assert (again.outcome, again.actual) == (Outcome.DONE, before + 6)
    [count] = await pos.counts_written()
    assert count["physical_count"]["quantity"] == str(before + 6)
    assert count["physical_count"]["reference_id"] == "count-1"

    stale = await target.set_available(StockWrite(POS_ITEM.sku, STORE.code, 1, before,
                                                  "count-2"))
    assert (stale.outcome, stale.actual) == (Outcome.STALE, before + 6)
    assert len(await pos.counts_written()) == 1
    unmapped = await target.set_available(StockWrite(POS_ITEM.sku, "WH01", 1, 0, "count-3"))
    assert unmapped.outcome is Outcome.UNMAPPED


async def test_many_store_counts_go_in_batches_of_a_hundred(pos: Pos) -> None:
    stores = [s.code for s in POS_WORLD.stores]
    skus = [i.sku for i in POS_WORLD.items]
    held = {(v.sku, v.location_id): v.quantities.available or 0
            for v in await pos.conn.counts(skus, stores)}
    writes = [StockWrite(sku, loc, held[sku, loc] + 1, held[sku, loc], f"bulk-{sku}-{loc}")
              for sku in skus for loc in stores]
    assert len(writes) == 120
    await pos.http.delete("/_sim/stats")
    results = await pos.conn.set_available_many(writes)
    stats = (await pos.http.get("/_sim/stats")).json()["requests"]
    assert stats["POST /v2/inventory/changes/batch-create"] == 2  # 100 + 20 changes
    assert [(r.outcome, r.actual) for r in results] == [
        (Outcome.DONE, w.available) for w in writes]
    after = {(v.sku, v.location_id): v.quantities.available
             for v in await pos.conn.counts(skus, stores)}
    assert after == {k: v + 1 for k, v in held.items()}


async def test_a_short_retry_after_is_waited_for_a_long_one_answered_at_once(pos: Pos) -> None:
    counts = "POST /v2/inventory/counts/batch-retrieve"
    await pos.http.post("/_sim/square", json={"rate_limit_next": 1, "retry_after": 1})
    await pos.http.delete("/_sim/stats")
    assert await pos.conn.read_available(POS_ITEM.sku, STORE.code) is not None
    assert (await pos.http.get("/_sim/stats")).json()["requests"][counts] == 2

    await pos.http.post("/_sim/square", json={"rate_limit_next": 3, "retry_after": 30})
    await pos.http.delete("/_sim/stats")
    with pytest.raises(BackendStatusError) as err:
        await pos.conn.read_available(POS_ITEM.sku, STORE.code)
    assert (err.value.status, err.value.retry_after) == (429, 30)
    assert (await pos.http.get("/_sim/stats")).json()["requests"][counts] == 1
    await pos.http.post("/_sim/square", json={"rate_limit_next": 0})
