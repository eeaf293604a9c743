"""The outbox (resolvers/store/outbox.py) and executor (gateway/sync/executor.py) over a real
Redis server.

The target here is an in-memory store behind the StockTarget port, so each outcome
(stale compare-and-set, throttling, failures, a lost answer) can be forced exactly; the
end-to-end tests against the shop simulator are in tests/e2e/test_sync.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from gateway.config import SyncSettings
from gateway.events.envelope import Envelope, EventKind
from gateway.sync.executor import Executor, Recorder, Targets
from gateway.sync.rules import Rules
from resolvers.store.keys import OUTBOX_DUE_KEY as DUE_KEY
from resolvers.store.outbox import ActionKind, Cause, Outbox, Status, cell_id
from resolvers.types import LocationRecord, LocationType, Quantities
from resolvers.writes import ItemWrite, Outcome, StockWrite, WriteResult

CELL = cell_id("commerce", ActionKind.STOCK, "SKU-1", "WH01")


@dataclass
class Shop:
    """A StockTarget: compare-and-set and idempotency keys like the real shop's API."""

    name: str = "commerce"
    levels: dict[tuple[str, str], int] = field(default_factory=dict)
    effective: Counter[str] = field(default_factory=Counter)
    calls: list[StockWrite] = field(default_factory=list)
    answers: list[WriteResult] = field(default_factory=list)  # forced answers, in order
    seen: dict[str, WriteResult] = field(default_factory=dict)
    gate: asyncio.Event | None = None

    async def read_available(self, sku: str, location_id: str) -> int | None:
        return self.levels.get((sku, location_id))

    async def set_available(self, write: StockWrite) -> WriteResult:
        self.calls.append(write)
        if self.gate is not None:
            await self.gate.wait()
        if self.answers:
            return self.answers.pop(0)
        if write.idempotency_key in self.seen:
            return self.seen[write.idempotency_key]
        cell = (write.sku, write.location_id)
        holds = self.levels.get(cell)
        if write.expected is not None and holds != write.expected:
            return WriteResult(Outcome.STALE, actual=holds)
        self.levels[cell] = write.available
        self.effective[write.idempotency_key] += 1
        self.seen[write.idempotency_key] = WriteResult(Outcome.DONE, actual=write.available)
        return self.seen[write.idempotency_key]

    async def update_item(self, write: ItemWrite) -> WriteResult:
        return WriteResult(Outcome.DONE)


@dataclass
class Inputs:
    """StockInputs from dicts (the executor's only view of the cache)."""

    record: dict[tuple[str, str], int] = field(default_factory=dict)
    safety: dict[str, int] = field(default_factory=dict)
    online: dict[tuple[str, str], int] = field(default_factory=dict)

    async def record_available(self, sku: str, location_id: str) -> int | None:
        return self.record.get((sku, location_id))

    async def safety_stock(self, sku: str) -> int:
        return self.safety.get(sku, 0)

    async def online_available(self, sku: str, location_id: str) -> int | None:
        return self.online.get((sku, location_id))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


def cause(n: int, source: str = "wms") -> Cause:
    return Cause(entry_id=f"{n}-0", event_id=f"ev{n}", source=source, received_ms=1)


def build(client: aioredis.Redis, shop: Shop, inputs: Inputs, token: str = "a",
          **settings: float) -> Executor:
    sync = SyncSettings(enabled=True, retry_base_seconds=0.01, retry_cap_seconds=0.05,
                        **settings)  # type: ignore[arg-type]
    targets = Targets(stock={"commerce": shop}, items={"commerce": shop},
                      formats={"commerce": "shopify"}, shop="commerce")
    return Executor(Outbox(client, token), sync, Rules(), targets, inputs,
                    random_=lambda: 0.5)


async def drain(executor: Executor, client: aioredis.Redis, limit: float = 10) -> None:
    async with asyncio.timeout(limit):
        while await client.zcard(DUE_KEY):
            cells, _ = await executor.outbox.claim(10, executor.lease_ms)
            for cell in cells:
                await executor.execute(cell)
            await asyncio.sleep(0.01)


async def test_a_burst_on_one_cell_coalesces_into_one_write_of_the_newest(
        client: aioredis.Redis) -> None:
    shop, inputs = Shop(levels={("SKU-1", "WH01"): 50}), Inputs(
        record={("SKU-1", "WH01"): 40}, safety={"SKU-1": 2}, online={("SKU-1", "WH01"): 50})
    executor = build(client, shop, inputs)
    ids = [await executor.outbox.record(CELL, cause(n)) for n in range(100)]
    assert await executor.outbox.record(CELL, cause(5)) == ids[5]  # once per event and cell
    await drain(executor, client)
    assert [(w.available, w.expected) for w in shop.calls] == [(38, 50)]
    actions = await executor.outbox.get(ids)
    assert [a.status for a in actions if a] == [Status.SUPERSEDED] * 99 + [Status.DONE]
    done = actions[-1]
    assert done is not None
    assert (done.desired, done.previous, done.attempts) == (38, 50, 1)


async def test_a_stale_compare_and_set_is_resolved_by_re_reading(client: aioredis.Redis) -> None:
    # The cache believes the shop holds 50; an order committed 3 meanwhile: it holds 47.
    shop = Shop(levels={("SKU-1", "WH01"): 47})
    inputs = Inputs(record={("SKU-1", "WH01"): 30}, online={("SKU-1", "WH01"): 50})
    executor = build(client, shop, inputs)
    action_id = await executor.outbox.record(CELL, cause(1))
    await drain(executor, client)
    assert [(w.available, w.expected) for w in shop.calls] == [(30, 50), (30, 47)]
    assert shop.levels[("SKU-1", "WH01")] == 30
    assert shop.calls[0].idempotency_key != shop.calls[1].idempotency_key
    (action,) = await executor.outbox.get([action_id])
    assert action is not None
    assert (action.status, action.previous) == (Status.DONE, 47)


async def test_retries_back_off_honour_throttling_then_dead_letter(
        client: aioredis.Redis) -> None:
    shop = Shop(answers=[WriteResult(Outcome.THROTTLED, retry_after=0.3)]
                + [WriteResult(Outcome.FAILED, error="503 from the shop")] * 2)
    inputs = Inputs(record={("SKU-1", "WH01"): 9})
    executor = build(client, shop, inputs, max_attempts=3)
    action_id = await executor.outbox.record(CELL, cause(1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await drain(executor, client)
    assert loop.time() - started >= 0.3  # waited what the shop asked
    keys = {w.idempotency_key for w in shop.calls}
    assert len(shop.calls) == 3
    assert len(keys) == 1
    (action,) = await executor.outbox.get([action_id])
    assert action is not None
    assert (action.status, action.attempts, action.error) == (Status.DEAD, 3,
                                                               "503 from the shop")
    assert [a.id for a in await executor.outbox.dead()] == [action_id]
    await executor.outbox.replay(action)
    await drain(executor, client)
    (action,) = await executor.outbox.get([action_id])
    assert action is not None
    assert action.status is Status.DONE
    assert shop.levels[("SKU-1", "WH01")] == 9
    assert await executor.outbox.dead() == []


async def test_a_throttling_target_is_waited_for_never_dead_lettered(
        client: aioredis.Redis) -> None:
    shop = Shop(answers=[WriteResult(Outcome.THROTTLED, retry_after=0.02)] * 4)
    executor = build(client, shop, Inputs(record={("SKU-1", "WH01"): 9}), max_attempts=2)
    action_id = await executor.outbox.record(CELL, cause(1))
    await drain(executor, client)
    (action,) = await executor.outbox.get([action_id])
    assert action is not None
    assert (action.status, action.attempts) == (Status.DONE, 5)
    assert shop.levels[("SKU-1", "WH01")] == 9
    assert await executor.outbox.dead() == []


async def test_a_lost_answer_retried_by_another_replica_takes_effect_once(
        client: aioredis.Redis) -> None:
    shop = Shop(levels={("SKU-1", "WH01"): 5}, gate=asyncio.Event())
    inputs = Inputs(record={("SKU-1", "WH01"): 8}, online={("SKU-1", "WH01"): 5})
    first = build(client, shop, inputs, token="first", lease_seconds=0.3)
    second = build(client, shop, inputs, token="second", lease_seconds=0.3)
    await first.outbox.record(CELL, cause(1))
    cells, _ = await first.outbox.claim(1, first.lease_ms)
    crashed = asyncio.create_task(first.execute(cells[0]))
    async with asyncio.timeout(5):
        while not shop.calls:  # noqa: ASYNC110 (the write is under way)
            await asyncio.sleep(0.01)
    assert (await second.outbox.claim(1, second.lease_ms))[0] == []  # leased by the first
    await asyncio.sleep(0.4)  # the first replica is gone; its lease expires
    crashed.cancel()
    assert shop.gate is not None
    shop.gate.set()  # the first write reaches the shop after all; its answer is lost
    await drain(second, client)
    assert len(shop.calls) == 2
    assert shop.calls[0].idempotency_key == shop.calls[1].idempotency_key
    assert list(shop.effective.values()) == [1]
    assert shop.levels[("SKU-1", "WH01")] == 8


async def test_paused_targets_keep_their_work_in_order(client: aioredis.Redis) -> None:
    shop, inputs = Shop(), Inputs(record={("SKU-1", "WH01"): 3})
    executor = build(client, shop, inputs)
    await executor.outbox.pause("commerce")
    await executor.outbox.record(CELL, cause(1))
    assert (await executor.outbox.claim(5, 1000))[0] == []
    assert (await executor.outbox.pending_by_target())["commerce"][0] == 1
    await executor.outbox.resume("commerce")
    await drain(executor, client)
    assert shop.levels == {("SKU-1", "WH01"): 3}


async def test_echo_is_recognised_and_drift_is_pushed_back(client: aioredis.Redis) -> None:
    shop = Shop(levels={("SKU-1", "WH01"): 20})
    inputs = Inputs(record={("SKU-1", "WH01"): 12}, online={("SKU-1", "WH01"): 20})
    executor = build(client, shop, inputs)
    wh01 = LocationRecord(id="WH01", name="WH01", type=LocationType.WAREHOUSE, gln=None,
                          refs=(), source="erp", as_of=datetime(2026, 1, 1, tzinfo=UTC))

    async def locations() -> dict[str, LocationRecord]:
        return {"WH01": wh01}

    recorder = Recorder(executor.outbox, Rules(), executor.targets, locations,
                        lambda loc: "wms", erp="erp")

    def event(n: int, source: str, available: int) -> Envelope:
        now = datetime.now(UTC)
        return Envelope(id=f"ev{n}", kind=EventKind.LEVEL_SNAPSHOT, source=source,
                        system=source, topic="t", source_event_id=str(n), delivery_id=str(n),
                        occurred_at=now, received_at=now, source_version=n, sku="SKU-1",
                        location_id="WH01", quantities=Quantities(available=available))

    await recorder("1-0", event(1, "wms", 12), None)
    await drain(executor, client)
    assert shop.levels[("SKU-1", "WH01")] == 12
    inputs.online[("SKU-1", "WH01")] = 12
    # The shop's webhook reports what we wrote: confirmed, nothing new to do.
    await recorder("2-0", event(2, "commerce", 12), None)
    assert await client.zcard(DUE_KEY) == 0
    (action,) = [a for a in await executor.outbox.get(["1"]) if a]
    assert action.confirmed_ms is not None
    # An order lowers the shop: left alone (a check that finds nothing to do).
    await recorder("3-0", event(3, "commerce", 11), None)
    inputs.online[("SKU-1", "WH01")] = 11
    await drain(executor, client)
    assert len(shop.calls) == 1
    # Someone types 40 in the shop's admin: the truth wins at once.
    shop.levels[("SKU-1", "WH01")] = 40
    inputs.online[("SKU-1", "WH01")] = 40
    await recorder("4-0", event(4, "commerce", 40), None)
    await drain(executor, client)
    assert shop.levels[("SKU-1", "WH01")] == 12
    assert [(w.available, w.expected) for w in shop.calls[1:]] == [(12, 40)]
    newest = (await executor.outbox.newest(None, 1))[0]
    (drift,) = [a for a in await executor.outbox.get([newest]) if a]
    assert (drift.event_id, drift.source, drift.status) == ("ev4", "commerce", Status.DONE)


async def test_an_earlier_writes_echo_arriving_after_a_later_write_is_ours(
        client: aioredis.Redis) -> None:
    """Two writes of one cell before the first one's echo is back: the first echo is ours
    too (no drift check; what the shop holds is still the later write), and the later
    write's echo confirms it."""
    shop = Shop(levels={("SKU-1", "WH01"): 5})
    inputs = Inputs(record={("SKU-1", "WH01"): 10}, online={("SKU-1", "WH01"): 5})
    executor = build(client, shop, inputs)
    outbox = executor.outbox
    first = await outbox.record(CELL, cause(1))
    await drain(executor, client)
    inputs.record[("SKU-1", "WH01")] = 12
    second = await outbox.record(CELL, cause(2))
    await drain(executor, client)
    assert [(w.available, w.expected) for w in shop.calls] == [(10, 5), (12, 10)]
    # The first write's echo reaches the cache now: ours, nothing to check.
    inputs.online[("SKU-1", "WH01")] = 10
    assert await outbox.observe(CELL, 10, cause(3, "commerce")) == first
    assert await outbox.observe(CELL, 10, cause(3, "commerce")) == ""  # a duplicate
    assert await client.zcard(DUE_KEY) == 0
    assert await outbox.unconfirmed_write(CELL) == 12  # still the belief to write against
    # The second write's echo confirms it.
    inputs.online[("SKU-1", "WH01")] = 12
    assert await outbox.observe(CELL, 12, cause(4, "commerce")) == second
    assert await outbox.unconfirmed_write(CELL) is None
    found = {a.id: a for a in await outbox.get([first, second]) if a}
    assert found[first].confirmed_ms is not None
    assert found[second].confirmed_ms is not None
    # A value no write of ours had is the shop changing by itself: a drift check.
    assert await outbox.observe(CELL, 10, cause(5, "commerce")) is None
    assert await client.zcard(DUE_KEY) == 1


async def test_a_pushs_latency_runs_to_the_shops_echo_and_is_taken_once(
        client: aioredis.Redis) -> None:
    from gateway.sync.executor import pushed

    shop = Shop(levels={("SKU-1", "WH01"): 5})
    executor = build(client, shop, Inputs(record={("SKU-1", "WH01"): 10},
                                          online={("SKU-1", "WH01"): 5}))
    outbox = executor.outbox
    action_id = await outbox.record(CELL, Cause(entry_id="1-0", event_id="ev1", source="wms",
                                                received_ms=int(time.time() * 1000)))
    await drain(executor, client)
    (answered,) = await outbox.get([action_id])
    assert answered is not None
    assert answered.status is Status.DONE
    assert answered.awaits_echo
    assert answered.written_ms is not None
    assert answered.latency_ms is None  # not confirmed yet
    assert await outbox.latencies("commerce", 0) == []
    await asyncio.sleep(0.05)
    assert await outbox.observe(CELL, 10, cause(2, "commerce")) == action_id
    await pushed(outbox, action_id)
    await pushed(outbox, action_id)  # a duplicate echo: taken once
    (confirmed,) = await outbox.get([action_id])
    assert confirmed is not None
    assert confirmed.latency_ms is not None
    assert confirmed.latency_ms >= answered.written_ms + 50
    assert await outbox.latencies("commerce", 0) == [confirmed.latency_ms]
