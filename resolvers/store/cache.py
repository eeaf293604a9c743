"""The event cache: Redis holds what the resolvers read, kept current by events.

One module owns Redis for the gateway: the client (single server or Cluster), the atomic Lua
scripts, the key layout, the stock/master entries and the response cache. aiocache provides
the serialisation and the in-process layer; redis-py does streams and scripts.

Key layout: ``resolvers/store/keys.py`` (every script touches one key, so one hash slot; hash
tags keep it Cluster-ready).

Races are closed in the scripts:

- An event applies a field only if its version is newer than the stored one, so duplicated
  or reordered deliveries converge to the newest state.
- A read-through fill remembers ``_gen`` when it read the entry and writes only if no event
  has touched the entry since: a backend read that started before an event can never write
  its older result over the event's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiocache.serializers import BaseSerializer
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from resolvers.abc import CacheUnavailable, Fetch, MasterFetch, ViewsResult
from resolvers.store.client import optional
from resolvers.store.keys import (
    master_key,
    views_key,
)
from resolvers.types import Quantities, StockView
from resolvers.values import version_number

log = logging.getLogger("retailgraph.cache")

QUANTITY_FIELDS = tuple(f.name for f in fields(Quantities))
DEFAULT_TTL = 24 * 3600  # a safety net only: events keep entries current

APPLY_LUA = """
local applied = 0
for i = 3, #ARGV, 3 do
  local f, ver = ARGV[i], tonumber(ARGV[i + 2])
  local cur = tonumber(redis.call('HGET', KEYS[1], f .. '#v') or '-1')
  if ver > cur then
    redis.call('HSET', KEYS[1], f, ARGV[i + 1], f .. '#v', ARGV[i + 2])
    applied = applied + 1
  end
end
if applied > 0 then redis.call('HINCRBY', KEYS[1], '_gen', 1) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local cell = {}
local prefix = ARGV[2]
if prefix ~= '' then
  local all = redis.call('HGETALL', KEYS[1])
  for j = 1, #all, 2 do
    if string.sub(all[j], 1, #prefix) == prefix then
      cell[#cell + 1] = all[j]
      cell[#cell + 1] = all[j + 1]
    end
  end
end
return {applied, cell}
"""

FILL_LUA = """
local gen = tonumber(redis.call('HGET', KEYS[1], '_gen') or '0')
if gen ~= tonumber(ARGV[2]) then return -1 end
local applied = 0
for i = 3, #ARGV, 3 do
  local f, ver = ARGV[i], tonumber(ARGV[i + 2])
  local cur = tonumber(redis.call('HGET', KEYS[1], f .. '#v') or '-1')
  if ver >= cur then
    redis.call('HSET', KEYS[1], f, ARGV[i + 1], f .. '#v', ARGV[i + 2])
    applied = applied + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return applied
"""

# A reconciliation repair of a cell whose cached version lies in the future (it would win
# over every genuine event): under the same generation check as FILL_LUA, the cell's fields
# (prefix ARGV[3]) are replaced by the backend's, whatever their versions.
REPLACE_LUA = """
local gen = tonumber(redis.call('HGET', KEYS[1], '_gen') or '0')
if gen ~= tonumber(ARGV[2]) then return -1 end
local prefix = ARGV[3]
local drop = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then drop[#drop + 1] = f end
end
if #drop > 0 then redis.call('HDEL', KEYS[1], unpack(drop)) end
local applied = 0
for i = 4, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1], ARGV[i] .. '#v', ARGV[i + 2])
  applied = applied + 1
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return applied
"""

INVALIDATE_LUA = """
redis.call('HINCRBY', KEYS[1], '_gen', 1)
local keep = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f ~= '_gen' then table.insert(keep, f) end
end
if #keep > 0 then redis.call('HDEL', KEYS[1], unpack(keep)) end
return #keep
"""


class OrjsonSerializer(BaseSerializer):  # type: ignore[misc]  # aiocache is untyped (Any)
    """aiocache serializer for cache payloads (orjson: fast, handles datetimes)."""

    DEFAULT_ENCODING = None

    def dumps(self, value: Any) -> bytes:
        return orjson.dumps(value)

    def loads(self, value: bytes | str | None) -> Any:
        return None if value is None else orjson.loads(value)


SERIALIZER = OrjsonSerializer()


def view_fields(view: StockView, full: bool) -> list[str]:
    """Flatten a view into (field, value, version) triples for the scripts."""
    ver = str(version_number(view.version, view.as_of))
    loc = view.location_id
    out: list[str] = []
    for name in QUANTITY_FIELDS:
        value = getattr(view.quantities, name)
        if value is not None:
            out += [f"{loc}/{name}", str(value), ver]
    out += [f"{loc}/_as_of", view.as_of.isoformat(), ver]
    if full:
        out += [f"{loc}/_full", "1", ver]
    return out


def parse_views(sku: str, source: str, raw: dict[bytes, bytes],
                location_ids: Iterable[str] | None = None) -> tuple[int, dict[str, StockView]]:
    """The entry's ``_gen`` and its complete cells as views."""
    data = {k.decode(): v.decode() for k, v in raw.items()}
    gen = int(data.get("_gen", "0"))
    locs = location_ids if location_ids is not None else {
        k.split("/", 1)[0] for k in data if k.endswith("/_full")}
    out: dict[str, StockView] = {}
    for loc in locs:
        if f"{loc}/_full" not in data:
            continue
        quantities = Quantities(**{
            name: int(data[f"{loc}/{name}"]) for name in QUANTITY_FIELDS
            if f"{loc}/{name}" in data})
        versions = [int(v) for k, v in data.items() if k.startswith(f"{loc}/") and k.endswith("#v")]
        out[loc] = StockView(sku=sku, location_id=loc, source=source, quantities=quantities,
                             as_of=datetime.fromisoformat(data[f"{loc}/_as_of"]),
                             version=str(max(versions, default=0)))
    return gen, out


def overlay(view: StockView, raw: dict[bytes, bytes]) -> StockView:
    """``view`` with the fields the cache entry ``raw`` holds in a newer version."""
    fetched = version_number(view.version, view.as_of)
    loc = view.location_id
    newer: dict[str, int] = {}
    newest = fetched
    for name in QUANTITY_FIELDS:
        held = raw.get(f"{loc}/{name}#v".encode())
        if held is not None and int(held) > fetched:
            newer[name] = int(raw[f"{loc}/{name}".encode()])
            newest = max(newest, int(held))
    if not newer:
        return view
    as_of = view.as_of
    held_as_of = raw.get(f"{loc}/_as_of".encode())
    if held_as_of is not None and int(raw.get(f"{loc}/_as_of#v".encode(), b"-1")) > fetched:
        as_of = max(as_of, datetime.fromisoformat(held_as_of.decode()))
    return dataclasses.replace(view, quantities=dataclasses.replace(view.quantities, **newer),
                               as_of=as_of, version=str(newest))


MASTER_FLIGHT = "\0item-master"  # single-flight space of item master reads (no backend name)


def _complete(fetch: MasterFetch) -> Callable[[list[str]], Awaitable[dict[str, Any]]]:
    """``fetch`` answering every SKU asked for (None: the backend has no such item)."""
    async def every(skus: list[str]) -> dict[str, Any]:
        found = await fetch(skus)
        return {sku: found.get(sku) for sku in skus}
    return every


class Cache:
    """Redis-backed entries with versioned, race-free updates."""

    def __init__(self, client: aioredis.Redis | RedisCluster, ttl: int = DEFAULT_TTL) -> None:
        self.redis = client
        self.ttl = ttl
        self._apply = client.register_script(APPLY_LUA)
        self._fill = client.register_script(FILL_LUA)
        self._replace = client.register_script(REPLACE_LUA)
        self._invalidate = client.register_script(INVALIDATE_LUA)
        # Backend reads in flight in this process, by (source or MASTER_FLIGHT, SKU).
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}
        # Test hook: awaited between a backend read and the cache fill, to force interleavings.
        self.before_fill: Callable[[], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            with optional():  # readiness answers at once while Redis is not answering
                return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    # -- event path ------------------------------------------------------------------------------

    async def apply_view(self, view: StockView, full: bool) -> tuple[int, StockView | None]:
        """Apply an event's view of a cell; fields older than the cache's are ignored.

        Returns how many fields changed and the cell as the cache now holds it (None while
        the cache knows only part of it), in the same round trip.
        """
        loc = view.location_id
        applied, flat = await self._apply(keys=[views_key(view.sku, view.source)],
                                          args=[self.ttl, f"{loc}/", *view_fields(view, full)])
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        _, cells = parse_views(view.sku, view.source, raw, [loc])
        return int(applied), cells.get(loc)

    async def apply_master(self, sku: str, payload: bytes, version: int) -> int:
        applied, _ = await self._apply(keys=[master_key(sku)],
                                       args=[self.ttl, "", "item", payload, version])
        return int(applied)

    async def invalidate_views(self, sku: str, source: str) -> int:
        return int(await self._invalidate(keys=[views_key(sku, source)]))

    async def repair_view(self, view: StockView, gen: int,
                          replace: bool = False) -> tuple[int, StockView | None]:
        """Write a backend's own answer over a drifted cell (reconciliation repairs): fields
        of the same or a newer version than held are written (``replace``: the cell is
        replaced whatever its versions, for one whose version lies in the future), unless an
        event touched the entry since generation ``gen`` was read (-1: nothing written).
        Returns the cell."""
        key = views_key(view.sku, view.source)
        fields = view_fields(view, full=True)
        if replace:
            applied = int(await self._replace(
                keys=[key], args=[self.ttl, gen, f"{view.location_id}/", *fields]))
        else:
            applied = int(await self._fill(keys=[key], args=[self.ttl, gen, *fields]))
        if applied > 0:  # read-throughs that started before the repair must not undo it
            await self.redis.hincrby(key, "_gen", 1)
        raw: dict[bytes, bytes] = await self.redis.hgetall(key)  # type: ignore[assignment]
        _, cells = parse_views(view.sku, view.source, raw, [view.location_id])
        return applied, cells.get(view.location_id)

    # -- read path -------------------------------------------------------------------------------

    async def views(self, source: str, skus: Sequence[str], location_ids: Sequence[str],
                    fetch: Fetch) -> ViewsResult:
        """Views of ``skus`` at ``location_ids``: cached cells, the rest read through.

        Concurrent misses on the same SKU in this process share one backend call.
        """
        try:
            with optional():  # the backends answer without it
                async with self.redis.pipeline(transaction=False) as pipe:
                    for sku in skus:
                        pipe.hgetall(views_key(sku, source))
                    raws: list[dict[bytes, bytes]] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc
        result = ViewsResult(views={}, from_cache=set(), from_backend=set())
        gens: dict[str, int] = {}
        missing: dict[str, dict[bytes, bytes]] = {}
        for sku, raw in zip(skus, raws, strict=True):
            gen, cells = parse_views(sku, source, raw, location_ids)
            if len(cells) == len(location_ids):
                result.views[sku] = [cells[loc] for loc in location_ids]
                result.from_cache.add(sku)
            else:
                gens[sku] = gen
                missing[sku] = raw
        if missing:
            fetched = await self._read_through(source, list(missing), gens, fetch)
            for sku, raw in missing.items():
                # A backend read (ours, or one started before this query) may be older than
                # events the cache already held when this query began: those fields win.
                result.views[sku] = [overlay(view, raw) for view in fetched.get(sku, [])]
                result.from_backend.add(sku)
        return result

    async def shared(self, source: str, skus: Sequence[str],
                     fetch: Fetch) -> dict[str, list[StockView]]:
        """Backend views of ``skus`` while Redis cannot be used, by the same single-flight
        as misses: a sick Redis must not multiply the load on the backends."""
        return await self._read_through(source, list(skus), {}, fetch, store=False)

    async def shared_masters(self, skus: Sequence[str], fetch: MasterFetch,
                             ) -> dict[str, dict[str, Any]]:
        """Item master records while Redis cannot be used, shared like :meth:`shared`."""
        fetched = await self._single_flight(MASTER_FLIGHT, list(skus), _complete(fetch))
        return {sku: record for sku, record in fetched.items() if record is not None}

    async def _read_through(self, source: str, skus: list[str], gens: dict[str, int],
                            fetch: Fetch, store: bool = True) -> dict[str, list[StockView]]:
        async def grouped(mine: list[str]) -> dict[str, Any]:
            out: dict[str, Any] = {s: [] for s in mine}
            for view in await fetch(mine):
                out.setdefault(view.sku, []).append(view)
            return out

        async def fill(fetched: dict[str, Any]) -> None:
            await self._store(source, fetched, gens)

        return await self._single_flight(source, skus, grouped, fill if store else None)

    async def _single_flight(self, space: str, keys: list[str],
                             fetch: Callable[[list[str]], Awaitable[dict[str, Any]]],
                             then: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                             ) -> dict[str, Any]:
        """``fetch`` the keys no call in this process is fetching already, and wait for
        those that are; ``then`` (a cache fill) runs on what this call fetched, while later
        calls for the same keys still share its result."""
        loop = asyncio.get_running_loop()
        waiting = {k: self._inflight[(space, k)] for k in keys if (space, k) in self._inflight}
        mine = [k for k in keys if k not in waiting]
        futures = {k: loop.create_future() for k in mine}
        for key, fut in futures.items():
            self._inflight[(space, key)] = fut
        out: dict[str, Any] = {}
        try:
            if mine:
                fetched = await fetch(mine)
                for key, fut in futures.items():
                    fut.set_result(fetched.get(key))
                out.update(fetched)
                if then is not None:
                    await then(fetched)
        except BaseException as exc:
            for fut in futures.values():
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            for key in mine:
                self._inflight.pop((space, key), None)
        for key, fut in waiting.items():
            out[key] = await asyncio.shield(fut)
        return out

    async def masters(self, skus: Sequence[str], fetch: MasterFetch,
                      ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Item master records by SKU (as ERP item resources) and which came from the cache.

        Misses are read through ``fetch`` (concurrent misses share one call) and filled
        under the same generation check as stock views, so an ``item.updated`` event
        applied meanwhile is never overwritten.
        """
        try:
            with optional():
                async with self.redis.pipeline(transaction=False) as pipe:
                    for sku in skus:
                        pipe.hmget(master_key(sku), ["item", "_gen"])
                    rows: list[list[bytes | None]] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc
        found: dict[str, dict[str, Any]] = {}
        gens: dict[str, int] = {}
        for sku, (item, gen) in zip(skus, rows, strict=True):
            if item is not None:
                found[sku] = SERIALIZER.loads(item)
            else:
                gens[sku] = int(gen or 0)
        cached = set(found)

        async def fill(fetched: dict[str, Any]) -> None:
            try:
                with optional():
                    await self._run_scripts(self._fill, [
                        ([master_key(sku)], [self.ttl, gens[sku], "item",
                                             SERIALIZER.dumps(record),
                                             version_number(str(record.get("updatedAt", "")),
                                                            datetime.now(UTC))])
                        for sku, record in fetched.items() if record is not None])
            except (RedisError, OSError) as exc:
                log.warning("cache fill for the item master failed: %s", exc)

        if gens:
            fetched = await self._single_flight(MASTER_FLIGHT, list(gens), _complete(fetch),
                                                fill)
            found.update({sku: r for sku, r in fetched.items() if r is not None})
        return found, cached

    async def _store(self, source: str, grouped: dict[str, list[StockView]],
                     gens: dict[str, int]) -> None:
        if self.before_fill is not None:
            await self.before_fill()
        calls: list[tuple[list[str], list[Any]]] = []
        for sku, views in grouped.items():
            if not views:
                continue
            args: list[Any] = [self.ttl, gens.get(sku, 0)]
            for view in views:
                args += view_fields(view, full=True)
            calls.append(([views_key(sku, source)], args))
        try:
            with optional():  # the read is answered either way
                await self._run_scripts(self._fill, calls)
        except (RedisError, OSError) as exc:
            log.warning("cache fill for %s failed: %s", source, exc)

    async def _run_scripts(self, script: Any,
                           calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per (keys, args): in one pipeline on a single server; on a
        Cluster (redis-py refuses scripts in cluster pipelines) concurrently, each call on
        the node owning its key's slot."""
        if not calls:
            return []
        if isinstance(self.redis, RedisCluster):
            return list(await asyncio.gather(*(script(keys=keys, args=args)
                                               for keys, args in calls)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())
