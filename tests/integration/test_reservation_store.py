"""The reservations' Redis part alone (resolvers/store/reservations.py), on the test Redis:
the atomic check, idempotent records, release, commit and how a committed hold ends, expiry
by the sweep, and the publish port. The cell's ``available`` is written into the event
cache's views hash the way the applier writes it (resolvers/store/cache.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from resolvers.reservations import HeldUnits
from resolvers.store.cache import Cache
from resolvers.store.keys import RESERVATIONS_DUE, holds_key
from resolvers.store.reservations import (
    CellMissing,
    HoldChange,
    HoldEnd,
    Reservation,
    ReservationStatus,
    ReservationStore,
    Reserved,
    parse_reservation_id,
    reservation_id,
)
from resolvers.types import Quantities, StockView

SKU, LOC = "SKU-1", "ST001"


class Published:
    def __init__(self) -> None:
        self.changes: list[HoldChange] = []

    async def __call__(self, change: HoldChange) -> None:
        self.changes.append(change)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
        redis_url, max_connections=50))
    try:
        yield c
    finally:
        await c.aclose()


async def put_cell(client: aioredis.Redis, available: int, committed: int = 0,
                   version: int = 1, sku: str = SKU, loc: str = LOC) -> None:
    view = StockView(sku=sku, location_id=loc, source="pos",
                     quantities=Quantities(available=available, committed=committed),
                     as_of=datetime.now(UTC), version=str(version))
    await Cache(client).apply_view(view, full=True)


def store(client: aioredis.Redis, published: Published | None = None, *,
          grace_ms: int = 5000, commit_hold_seconds: int = 3600,
          retention_seconds: int = 7 * 86_400) -> ReservationStore:
    return ReservationStore(client, lambda loc: "pos", published, grace_ms=grace_ms,
                            commit_hold_seconds=commit_hold_seconds,
                            retention_seconds=retention_seconds)


async def reserve(s: ReservationStore, key: str, quantity: int, ttl_ms: int = 60_000,
                  safety: int = 0, reference: str | None = None, sku: str = SKU,
                  loc: str = LOC) -> Reserved:
    rid = reservation_id("caller", key, sku, loc)
    return await s.reserve(rid, sku, loc, quantity, ttl_ms, safety, reference, "fp")


async def hold(s: ReservationStore, key: str, quantity: int, ttl_ms: int = 60_000) -> Reservation:
    """:func:`reserve` where there is stock for it: the reservation made."""
    made = await reserve(s, key, quantity, ttl_ms)
    assert made.reservation is not None, made
    return made.reservation


async def test_exactly_what_is_available_is_held(client: aioredis.Redis) -> None:
    await put_cell(client, 50)
    s = store(client)
    results = await asyncio.gather(*(reserve(s, f"k{i}", 1) for i in range(200)))
    made = [r for r in results if r.reservation is not None]
    refused = [r for r in results if r.reservation is None]
    assert len(made) == 50
    assert len(refused) == 150
    assert all(r.available_to_sell == 0 for r in refused)
    assert (await s.held([SKU]))[SKU] == {LOC: 50}
    assert await HeldUnits(s).held(SKU, LOC) == 50  # what the sync rules read
    assert await HeldUnits(s).held(SKU, "ST009") == 0


async def test_safety_stock_and_existing_holds_count(client: aioredis.Redis) -> None:
    await put_cell(client, 10)
    s = store(client)
    assert (await reserve(s, "a", 4, safety=3)).reservation is not None
    refused = await reserve(s, "b", 4, safety=3)
    assert refused.reservation is None
    assert refused.available_to_sell == 3
    assert (await reserve(s, "c", 3, safety=3)).reservation is not None


async def test_the_same_id_is_one_reservation(client: aioredis.Redis) -> None:
    await put_cell(client, 5)
    published = Published()
    s = store(client, published)
    first, *again = await asyncio.gather(*(reserve(s, "same", 2) for _ in range(20)))
    records = {r.reservation for r in [first, *again]}
    assert len(records) == 1
    assert sum(r.created for r in [first, *again]) == 1
    assert (await s.held([SKU]))[SKU] == {LOC: 2}
    assert len(published.changes) == 1
    assert published.changes[0].held == 2
    assert published.changes[0].quantities == Quantities(available=5, committed=0)


async def test_a_cell_the_cache_lacks_needs_the_backend_value(client: aioredis.Redis) -> None:
    s = store(client)
    rid = reservation_id("caller", "k", SKU, LOC)
    with pytest.raises(CellMissing) as missing:
        await s.reserve(rid, SKU, LOC, 1, 60_000, 0, None, "fp")
    made = await s.reserve(rid, SKU, LOC, 1, 60_000, 0, None, "fp",
                           fallback=(3, missing.value.generation))
    assert made.reservation is not None
    # A fallback read before an event touched the entry is not used.
    other = reservation_id("caller", "k2", SKU, "ST002")
    with pytest.raises(CellMissing) as missing:
        await s.reserve(other, SKU, "ST002", 1, 60_000, 0, None, "fp")
    await put_cell(client, 0, loc="ST003")  # an event on the SKU's entry: a new generation
    with pytest.raises(CellMissing):
        await s.reserve(other, SKU, "ST002", 1, 60_000, 0, None, "fp",
                        fallback=(3, missing.value.generation))


async def test_release_frees_the_units_once(client: aioredis.Redis) -> None:
    await put_cell(client, 3)
    published = Published()
    s = store(client, published)
    rid = (await hold(s, "r", 3)).id
    released = await s.release(rid)
    assert released.reservation is not None
    assert released.reservation.status is ReservationStatus.RELEASED
    again = await s.release(rid)
    assert not again.refused
    assert (await s.held([SKU]))[SKU] == {}
    assert [c.held for c in published.changes] == [3, 0]
    assert (await s.commit(rid, "ORDER-1")).refused
    assert (await s.release(reservation_id("caller", "nope", SKU, LOC))).reservation is None
    assert (await s.release("not-an-id")).reservation is None
    assert parse_reservation_id("not-an-id") is None


async def test_a_commit_holds_until_the_system_of_record_shows_it(
        client: aioredis.Redis) -> None:
    await put_cell(client, 10, committed=2)
    s = store(client)
    a = await hold(s, "a", 1)
    b = await hold(s, "b", 2)
    assert not (await s.commit(a.id, "ORDER-A")).refused
    committed_b = await s.commit(b.id, "ORDER-B")
    assert committed_b.reservation is not None
    assert committed_b.reservation.status is ReservationStatus.COMMITTED
    assert not (await s.commit(b.id, "ORDER-B")).refused  # a retry
    assert (await s.commit(b.id, "ORDER-X")).refused
    assert (await s.release(b.id)).refused
    # The first order reaches the system of record: committed 2 -> 3; only A's hold ends.
    held, ended = await s.observe(SKU, LOC, 3)
    assert held == 2
    assert [r.id for r in ended] == [a.id]
    assert ended[0].ended_by is HoldEnd.SYSTEM_OF_RECORD
    assert ended[0].status is ReservationStatus.COMMITTED
    # An event without the second order changes nothing; one naming it ends B's hold.
    assert await s.observe(SKU, LOC, 3) == (2, [])
    held, ended = await s.observe(SKU, LOC, None, ["ORDER-B"])
    assert held == 0
    assert [r.id for r in ended] == [b.id]
    raw = await client.hgetall(holds_key(SKU))
    assert raw == {}


async def test_expiry_by_the_sweep(client: aioredis.Redis) -> None:
    await put_cell(client, 4)
    published = Published()
    s = store(client, published, grace_ms=0)
    short = await hold(s, "short", 2, ttl_ms=200)
    long = await hold(s, "long", 1, ttl_ms=60_000)
    committed = await hold(s, "c", 1, ttl_ms=60_000)
    await s.commit(committed.id, "O-1")
    await asyncio.sleep(0.3)
    # Two sweepers at once (two replicas): each step happens once.
    await asyncio.gather(s.sweep(), store(client, published, grace_ms=0).sweep())
    expired = await s.get(short.id)
    assert expired is not None
    assert expired.status is ReservationStatus.EXPIRED
    kept = await s.get(long.id)
    assert kept is not None
    assert kept.status is ReservationStatus.ACTIVE
    assert (await s.held([SKU]))[SKU] == {LOC: 2}
    expiring = [c for c in published.changes if c.reservation.id == short.id]
    assert {c.reservation.seq for c in expiring} == {1, 2}
    assert expiring[-1].held == 2
    # Next due: the long one at its expiry, the expired one at the end of its retention.
    scores = {}
    for entry in await client.zrange(RESERVATIONS_DUE, 0, -1, withscores=True):
        assert isinstance(entry, tuple), entry  # withscores: (member, score)
        scores[entry[0]] = entry[1]
    assert scores[long.id.encode()] == pytest.approx(
        long.expires_at.timestamp() * 1000, abs=2)


async def test_a_committed_hold_ends_at_its_expiry(client: aioredis.Redis) -> None:
    await put_cell(client, 4)
    s = store(client, grace_ms=0, commit_hold_seconds=0)
    r = await hold(s, "c", 2, ttl_ms=200)
    await s.commit(r.id, "O-1")
    await asyncio.sleep(0.3)
    await s.sweep()
    ended = await s.get(r.id)
    assert ended is not None
    assert ended.status is ReservationStatus.COMMITTED
    assert ended.ended_by is HoldEnd.EXPIRY
    assert not ended.holding
    assert (await s.held([SKU]))[SKU] == {}


async def test_records_are_deleted_after_the_retention(client: aioredis.Redis) -> None:
    await put_cell(client, 4)
    s = store(client, grace_ms=0, retention_seconds=0)
    r = await hold(s, "x", 1)
    await s.release(r.id)
    await s.sweep()
    await s.sweep()
    assert await s.get(r.id) is None
    assert await client.zcard(RESERVATIONS_DUE) == 0


async def test_paging(client: aioredis.Redis) -> None:
    await put_cell(client, 100)
    s = store(client)
    ids = []
    for i in range(7):
        rid = reservation_id("caller", f"p{i}", SKU, LOC)
        claim = await s.claim("caller", f"p{i}", "fp", SKU, LOC)
        assert claim.new
        made = await s.reserve(rid, SKU, LOC, 1, 60_000, 0, f"cart-{i % 2}", "fp")
        assert made.reservation is not None
        ids.append(made.reservation.id)
        await asyncio.sleep(0.003)
    page, more = await s.page(lambda r: True, None, 3)
    assert [r.id for r in page] == ids[:3]
    assert more
    last = page[-1]
    rest, more = await s.page(lambda r: True,
                              (int(last.created_at.timestamp() * 1000), last.id), 10)
    assert [r.id for r in rest] == ids[3:]
    assert not more
    carts, _ = await s.page(lambda r: r.reference == "cart-1", None, 10)
    assert [r.id for r in carts] == ids[1::2]
