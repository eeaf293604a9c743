"""The outbox: sync actions in Redis, durable, ordered per target cell, leased for execution.

An action is what one applied event asks of one *target cell* (a target system and what it
holds: ``commerce|STOCK|SKU-1|WH01``, ``pos|ITEM|SKU-1|``). Recording it is one Lua script,
run by the applier before the event leaves the pending set (``rg:{ev}:pending``): a gateway
killed at any moment either finished recording (the action exists) or left the event pending,
and the sweeper that re-applies it records the action then; the script records each
(event, cell) once, so re-applying never records twice.

Keys (resolvers/store/keys.py; one hash slot, ``{out}``):

    a:ID        one action (hash; ID from ``seq``, increasing)
    all         every action id by ID (sorted set): the audit trail, newest last
    q:CELL      the cell's actions not yet finished, in order (list)
    due         cells with work, by when it is due (ms; sorted set)
    chk:CELL    a drift check asked for by the target's own change (hash)
    c:CELL      what was last written to the cell (echo recognition)
    lease:CELL  the replica working on the cell (expires)
    paused      paused targets (set)
    dlq         dead actions by when they died (sorted set)
    lat:TARGET  recent push latencies (list of "at_ms:latency_ms")
    n:TARGET    counters per target (hash: done, failed, dead, superseded, ...)
    feed        finished actions (stream; every replica's subscribers tail it)

The rules that decide what an action is live in ``gateway/sync/rules.py``; this module only
stores and leases them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from resolvers.store.keys import OUTBOX_ALL_KEY as ALL_KEY
from resolvers.store.keys import OUTBOX_DLQ_KEY as DLQ_KEY
from resolvers.store.keys import OUTBOX_DUE_KEY as DUE_KEY
from resolvers.store.keys import OUTBOX_FEED_KEY as FEED_KEY
from resolvers.store.keys import OUTBOX_PAUSED_KEY as PAUSED_KEY
from resolvers.store.keys import OUTBOX_PREFIX as PREFIX
from resolvers.store.keys import OUTBOX_SEQ_KEY as SEQ_KEY


class ActionKind(StrEnum):
    STOCK = "STOCK"  # set a target's available at one location
    ITEM = "ITEM"  # update a target's catalog item (name, price)


class Status(StrEnum):
    PENDING = "PENDING"  # recorded, not yet written
    FAILED = "FAILED"  # the last attempt failed; retried after a backoff
    DONE = "DONE"  # the target holds the desired value
    DEAD = "DEAD"  # gave up after sync.max_attempts (or nothing to write to): dead letters
    SUPERSEDED = "SUPERSEDED"  # a newer action on the same target cell replaced it

    @property
    def final(self) -> bool:
        return self in (Status.DONE, Status.DEAD, Status.SUPERSEDED)


FEED_MAXLEN = 10_000
ONCE_TTL = 7 * 24 * 3600
KEPT_ACTIONS = 200_000  # the audit trail keeps this many finished actions
LATENCIES_KEPT = 2000
EARLIER_WRITES_TTL = 24 * 3600  # an echo later than this is the target's own change


def action_key(action_id: str) -> str:
    return f"{PREFIX}a:{action_id}"


def cell_id(target: str, kind: ActionKind, sku: str, location_id: str = "") -> str:
    return f"{target}|{kind.value}|{sku}|{location_id}"


def parse_cell(cell: str) -> tuple[str, ActionKind, str, str]:
    target, kind, sku, loc = cell.split("|", 3)
    return target, ActionKind(kind), sku, loc


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# KEYS: seq, once, queue, due, all. ARGV: once ttl, cell, then field/value pairs.
RECORD_LUA = """
local seen = redis.call('GET', KEYS[2])
if seen then return seen end
local seq = redis.call('INCR', KEYS[1])
local id = tostring(seq)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = '@PREFIX@a:' .. id
redis.call('HSET', key, 'id', id, 'cell', ARGV[2], 'status', 'PENDING', 'attempts', 0,
           'created', now)
for i = 3, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
redis.call('RPUSH', KEYS[3], id)
redis.call('ZADD', KEYS[4], 'NX', now, ARGV[2])
redis.call('ZADD', KEYS[5], seq, id)
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return id
""".replace("@PREFIX@", PREFIX)

# The target's own change of a cell. KEYS: cell state, check, due, earlier writes.
# ARGV: cell, reported value, then cause field/value pairs.
# Returns {1, action id} for our own write coming back (the echo: confirmed, nothing else),
# the same for the echo of an earlier write of ours that was on its way while a later one
# was made (only that action is confirmed: the later write's echo is still to come; {1, ''}
# when already confirmed), {0, ''} when a drift check was scheduled.
OBSERVE_LUA = """
local written = redis.call('HGET', KEYS[1], 'written')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if written and written == ARGV[2] then
  local action = redis.call('HGET', KEYS[1], 'action') or ''
  redis.call('DEL', KEYS[4])
  if action ~= '' and redis.call('HGET', KEYS[1], 'confirmed') ~= action then
    redis.call('HSET', KEYS[1], 'confirmed', action)
    local key = '@PREFIX@a:' .. action
    if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'confirmedAt', now) end
    return {1, action}
  end
  return {1, ''}
end
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[2]) == 1 then
  local earlier = redis.call('HGET', KEYS[4], ARGV[2])
  local key = '@PREFIX@a:' .. earlier
  if redis.call('EXISTS', key) == 1 and redis.call('HEXISTS', key, 'confirmedAt') == 0 then
    redis.call('HSET', key, 'confirmedAt', now)
    return {1, earlier}
  end
  return {1, ''}
end
-- The target changed by itself: the cache's copy of it is now at least as new as our write.
local last = redis.call('HGET', KEYS[1], 'action')
if last and ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'confirmed', last) end
redis.call('HINCRBY', KEYS[2], 'n', 1)
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[3], 'NX', now, ARGV[1])
return {0, ''}
""".replace("@PREFIX@", PREFIX)

# About to write a cell. KEYS: cell state, earlier writes. ARGV: value, action, TTL (s).
# The write before it, if its echo has not come back, joins the earlier writes.
WRITING_LUA = """
local last = redis.call('HMGET', KEYS[1], 'written', 'action', 'confirmed')
if last[1] and last[2] and last[2] ~= last[3] then
  redis.call('HSET', KEYS[2], last[1], last[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
redis.call('HSET', KEYS[1], 'written', ARGV[1], 'action', ARGV[2])
return 1
"""

# Claim due cells: KEYS: due, paused. ARGV: how many, lease ms, token, scan limit.
CLAIM_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, cell in ipairs(due) do
  if #out >= tonumber(ARGV[1]) then break end
  local target = string.match(cell, '^([^|]*)|')
  if redis.call('SISMEMBER', KEYS[2], target) == 0 then
    if redis.call('SET', '@PREFIX@lease:' .. cell, ARGV[3], 'NX', 'PX', ARGV[2]) then
      out[#out + 1] = cell
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = tonumber(nxt[2]) - now end
return {wait, out}
""".replace("@PREFIX@", PREFIX)

# Finish a turn on a cell. KEYS: queue, check, due, lease.
# ARGV: cell, actions done with (taken off the queue's head), check generation handled ('' for
# none), retry at (ms from now; '' = as soon as there is more), token.
FINISH_LUA = """
local n = tonumber(ARGV[2])
if n > 0 then redis.call('LTRIM', KEYS[1], n, -1) end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[2], 'n') == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
elseif redis.call('LLEN', KEYS[1]) > 0 or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZADD', KEYS[3], now, ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
return 1
"""

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Action:
    """One sync action as the audit trail shows it."""

    id: str
    target: str
    kind: ActionKind
    sku: str
    location_id: str | None
    status: Status
    attempts: int
    desired: Any  # int for STOCK; {"name": ..., "listPrice": ...} for ITEM; None: not computed
    previous: Any
    event_id: str | None
    source: str | None
    created_ms: int
    received_ms: int | None
    completed_ms: int | None
    confirmed_ms: int | None
    error: str | None
    note: str | None
    key_seq: int
    key_input: str | None
    awaits_echo: bool = False  # DONE by a write whose echo (the target's webhook) confirms it

    @property
    def cell(self) -> str:
        return cell_id(self.target, self.kind, self.sku, self.location_id or "")

    @property
    def written_ms(self) -> int | None:
        """DONE: from the triggering event's receipt (or the action's creation) to the
        target's answer."""
        if self.completed_ms is None or self.status is not Status.DONE:
            return None
        return max(0, self.completed_ms - (self.received_ms or self.created_ms))

    @property
    def latency_ms(self) -> int | None:
        """DONE: from the triggering event's receipt to the target's confirmation: the
        echo of a write that has one (the shop's ``inventory_levels/update``; None until it
        comes), else the target's answer (an item update; a cell that already held it)."""
        if self.written_ms is None:
            return None
        if not self.awaits_echo:
            return self.written_ms
        if self.confirmed_ms is None:
            return None
        return max(0, self.confirmed_ms - (self.received_ms or self.created_ms))

    @property
    def idempotency_key(self) -> str:
        return f"rg-sync-{self.id}-{self.key_seq}"

    @classmethod
    def decode(cls, raw: dict[Any, Any]) -> Action:
        d = {_s(k): _s(v) for k, v in raw.items()}
        target, kind, sku, loc = parse_cell(d["cell"])

        def num(name: str) -> int | None:
            value = d.get(name)
            return int(value) if value not in (None, "") else None

        def js(name: str) -> Any:
            value = d.get(name)
            return orjson.loads(value) if value not in (None, "") else None

        return cls(id=d["id"], target=target, kind=kind, sku=sku, location_id=loc or None,
                   status=Status(d["status"]), attempts=int(d.get("attempts", 0)),
                   desired=js("desired"), previous=js("previous"),
                   event_id=d.get("event") or None, source=d.get("source") or None,
                   created_ms=int(d["created"]), received_ms=num("received"),
                   completed_ms=num("completed"), confirmed_ms=num("confirmedAt"),
                   error=d.get("error") or None, note=d.get("note") or None,
                   key_seq=int(d.get("keySeq", 0)), key_input=d.get("keyInput") or None,
                   awaits_echo=d.get("echo") == "1")


@dataclass(frozen=True, slots=True)
class Finished:
    """An action reached a final status (an entry of the outbox's ``feed``)."""

    cursor: str
    action: Action

    def key(self) -> str:
        return self.action.cell


def decode_finished(entry_id: str, fields: dict[bytes, bytes]) -> Finished:
    return Finished(entry_id, Action.decode(orjson.loads(fields[b"a"])))


@dataclass(frozen=True, slots=True)
class Cause:
    """The event an action derives from."""

    entry_id: str  # the event log entry (once per entry and cell)
    event_id: str  # the envelope id shown in the audit trail
    source: str
    received_ms: int

    def fields(self) -> list[Any]:
        return ["event", self.event_id, "source", self.source, "received", self.received_ms,
                "entry", self.entry_id]


@dataclass(frozen=True, slots=True)
class Turn:
    """What a claimed cell has to do: its unfinished actions (oldest first) and any drift
    check its target's own change asked for."""

    cell: str
    actions: list[Action]
    check: Cause | None
    check_generation: str


class Outbox:
    """The Redis store of sync actions (no rules, no targets: gateway/sync/executor.py)."""

    def __init__(self, redis: Any, token: str) -> None:
        self.redis = redis
        self.token = token
        self._record = redis.register_script(RECORD_LUA)
        self._observe = redis.register_script(OBSERVE_LUA)
        self._writing = redis.register_script(WRITING_LUA)
        self._claim = redis.register_script(CLAIM_LUA)
        self._finish = redis.register_script(FINISH_LUA)
        self._renew = redis.register_script(RENEW_LUA)

    # -- recording (on the event path) -----------------------------------------------------

    async def record(self, cell: str, cause: Cause, desired: Any = None) -> str:
        """Record an action on ``cell`` caused by ``cause`` (once per event and cell)."""
        once = f"{PREFIX}once:{cause.entry_id}:{cell}"
        args: list[Any] = [ONCE_TTL, cell, *cause.fields()]
        if desired is not None:
            args += ["desired", orjson.dumps(desired)]
        return _s(await self._record(keys=[SEQ_KEY, once, f"{PREFIX}q:{cell}", DUE_KEY,
                                           ALL_KEY], args=args))

    async def observe(self, cell: str, reported: int, cause: Cause) -> str | None:
        """The target's own level changed to ``reported``: our write coming back (returns the
        action it confirms, '' when already confirmed) or a drift check scheduled (None)."""
        echo, action = await self._observe(
            keys=[f"{PREFIX}c:{cell}", f"{PREFIX}chk:{cell}", DUE_KEY, f"{PREFIX}w:{cell}"],
            args=[cell, str(reported), *cause.fields()])
        return _s(action) if int(echo) else None

    async def request_check(self, cell: str, cause: Cause) -> None:
        """A drift check of ``cell`` (a discrepancy found by a re-check or a run)."""
        await self._observe(keys=[f"{PREFIX}c:{cell}", f"{PREFIX}chk:{cell}", DUE_KEY,
                                  f"{PREFIX}w:{cell}"],
                            args=[cell, "", *cause.fields()])

    # -- executing -------------------------------------------------------------------------

    async def claim(self, count: int, lease_ms: int) -> tuple[list[str], float | None]:
        """Lease up to ``count`` due cells of unpaused targets; also how long (s) until the
        next cell is due (None: nothing scheduled)."""
        wait, cells = await self._claim(keys=[DUE_KEY, PAUSED_KEY],
                                        args=[count, lease_ms, self.token, 4 * count + 50])
        wait = int(wait)
        return [_s(c) for c in cells], (None if wait < 0 else max(0.0, wait / 1000))

    async def renew(self, cell: str, lease_ms: int) -> bool:
        return bool(await self._renew(keys=[f"{PREFIX}lease:{cell}"],
                                      args=[self.token, lease_ms]))

    async def turn(self, cell: str) -> Turn:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(f"{PREFIX}q:{cell}", 0, 499)
            pipe.hgetall(f"{PREFIX}chk:{cell}")
            ids, check = await pipe.execute()
        actions = await self.get([_s(i) for i in ids])
        chk = {_s(k): _s(v) for k, v in check.items()}
        cause = None
        if chk.get("event"):
            cause = Cause(entry_id=chk.get("entry", ""), event_id=chk["event"],
                          source=chk.get("source", ""),
                          received_ms=int(chk.get("received") or 0))
        return Turn(cell, [a for a in actions if a is not None], cause, chk.get("n", ""))

    async def finish(self, cell: str, taken: int, check_generation: str,
                     retry_in: float | None = None) -> None:
        await self._finish(
            keys=[f"{PREFIX}q:{cell}", f"{PREFIX}chk:{cell}", DUE_KEY, f"{PREFIX}lease:{cell}"],
            args=[cell, taken, check_generation,
                  "" if retry_in is None else int(retry_in * 1000), self.token])

    async def update(self, action_id: str, **fields: Any) -> None:
        flat: dict[str, Any] = {}
        for name, value in fields.items():
            if name in ("desired", "previous"):
                value = orjson.dumps(value)
            elif isinstance(value, Status):
                value = value.value
            flat[name] = "" if value is None else value
        await self.redis.hset(action_key(action_id), mapping=flat)

    async def writing(self, cell: str, action_id: str, value: int) -> None:
        """About to write ``value``: the target's webhook reporting it is our own echo.

        The values written before it whose echoes have not come back are kept too (until
        the last write's echo): an earlier write's echo arriving after a later write was
        made is ours as well, not the target changing by itself."""
        await self._writing(keys=[f"{PREFIX}c:{cell}", f"{PREFIX}w:{cell}"],
                            args=[str(value), action_id, EARLIER_WRITES_TTL])

    async def unconfirmed_write(self, cell: str) -> int | None:
        """The value last written to ``cell`` (the target said done) while its echo has not
        come back yet (the cache's copy of the target is older than that write), else None."""
        written, action, confirmed, done = await self.redis.hmget(
            f"{PREFIX}c:{cell}", ["written", "action", "confirmed", "done"])
        if written is None or action is None or action == confirmed or done != action:
            return None
        return int(written)

    async def written(self, cell: str, action_id: str) -> None:
        """The target answered done to the write of ``action_id``."""
        await self.redis.hset(f"{PREFIX}c:{cell}", "done", action_id)

    async def completed(self, action: Action, status: Status, *, echo: bool = False,
                        **fields: Any) -> Action:
        """A final status for ``action``; counters, dead letters and the feed follow.
        ``echo``: DONE by a write whose echo is still to confirm it (:attr:`Action.
        latency_ms`); the push latency is taken by :meth:`settle_latency`. Returns the
        action as recorded now."""
        now = int(time.time() * 1000)
        if echo:
            fields["echo"] = "1"
        await self.update(action.id, status=status, completed=now, **fields)
        raw = await self.redis.hgetall(action_key(action.id))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(FEED_KEY, {"a": orjson.dumps({_s(k): _s(v) for k, v in raw.items()})},
                      maxlen=FEED_MAXLEN, approximate=True)
            pipe.hincrby(f"{PREFIX}n:{action.target}", status.value.lower(), 1)
            if status is Status.DEAD:
                pipe.zadd(DLQ_KEY, {action.id: now})
            await pipe.execute()
        return Action.decode(raw)

    async def superseded(self, actions: Sequence[Action], by: str) -> None:
        """``actions`` SUPERSEDED by action ``by`` (a burst coalescing into its newest), in
        two round trips whatever their number (:meth:`completed` for each, in effect)."""
        if not actions:
            return
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for action in actions:
                pipe.hset(action_key(action.id), mapping={
                    "status": Status.SUPERSEDED.value, "completed": now,
                    "note": f"superseded by {by}"})
                pipe.hgetall(action_key(action.id))
            replies = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw in replies[1::2]:
                pipe.xadd(FEED_KEY, {"a": orjson.dumps({_s(k): _s(v) for k, v in raw.items()})},
                          maxlen=FEED_MAXLEN, approximate=True)
            pipe.hincrby(f"{PREFIX}n:{actions[0].target}", Status.SUPERSEDED.value.lower(),
                         len(actions))
            await pipe.execute()

    async def settle_latency(self, action_id: str,
                             record: Action | None = None) -> Action | None:
        """The action, once, when its push latency is known (DONE, and confirmed if it
        awaits an echo: its answer and its echo can come in either order); the latency joins
        the target's recent ones (``syncStatus``). None otherwise, or when taken already.
        ``record``: the action as just read (else it is read)."""
        found = record if record is not None else (await self.get([action_id]))[0]
        if found is None or found.latency_ms is None:
            return None
        if not await self.redis.hsetnx(action_key(action_id), "latencyTaken", 1):
            return None
        at = found.confirmed_ms if found.awaits_echo else found.completed_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(f"{PREFIX}lat:{found.target}", f"{at}:{found.latency_ms}")
            pipe.ltrim(f"{PREFIX}lat:{found.target}", 0, LATENCIES_KEPT - 1)
            await pipe.execute()
        return found

    async def count(self, target: str, what: str, n: int = 1) -> None:
        await self.redis.hincrby(f"{PREFIX}n:{target}", what, n)

    # -- reading ---------------------------------------------------------------------------

    async def get(self, ids: Sequence[str]) -> list[Action | None]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for action_id in ids:
                pipe.hgetall(action_key(action_id))
            raws = await pipe.execute()
        return [Action.decode(raw) if raw else None for raw in raws]

    async def newest(self, before: int | None, count: int) -> list[str]:
        """Action ids, newest first, with ids below ``before`` (None: from the newest)."""
        top = f"({before}" if before is not None else "+inf"
        ids = await self.redis.zrevrangebyscore(ALL_KEY, top, "-inf", start=0, num=count)
        return [_s(i) for i in ids]

    async def dead(self, count: int = 1000) -> list[Action]:
        ids = [_s(i) for i in await self.redis.zrange(DLQ_KEY, 0, count - 1)]
        return [a for a in await self.get(ids) if a is not None]

    async def replay(self, action: Action) -> None:
        """A dead action back in its cell's queue, with fresh attempts."""
        await self.update(action.id, status=Status.PENDING, attempts=0, error=None,
                          completed=None)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(DLQ_KEY, action.id)
            pipe.rpush(f"{PREFIX}q:{action.cell}", action.id)
            pipe.zadd(DUE_KEY, {action.cell: 0})
            await pipe.execute()

    async def pause(self, target: str) -> None:
        await self.redis.sadd(PAUSED_KEY, target)

    async def resume(self, target: str) -> None:
        await self.redis.srem(PAUSED_KEY, target)

    async def paused(self) -> set[str]:
        return {_s(x) for x in await self.redis.smembers(PAUSED_KEY)}

    async def pending_by_target(self) -> dict[str, tuple[int, int | None]]:
        """Per target: cells with work, and the oldest unfinished action's creation (ms)."""
        cells = [_s(c) for c in await self.redis.zrange(DUE_KEY, 0, 9999)]
        out: dict[str, list[Any]] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for cell in cells:
                pipe.lindex(f"{PREFIX}q:{cell}", 0)
                pipe.llen(f"{PREFIX}q:{cell}")
            flat = await pipe.execute()
        firsts = [_s(x) for x in flat[::2] if x is not None]
        created = {a.id: a.created_ms for a in await self.get(firsts) if a is not None}
        for cell, first, length in zip(cells, flat[::2], flat[1::2], strict=True):
            target = cell.split("|", 1)[0]
            entry = out.setdefault(target, [0, None])
            entry[0] += int(length)
            if first is not None and _s(first) in created:
                at = created[_s(first)]
                entry[1] = at if entry[1] is None else min(entry[1], at)
        return {t: (n, oldest) for t, (n, oldest) in out.items()}

    async def latencies(self, target: str, since_ms: int) -> list[int]:
        out = []
        for raw in await self.redis.lrange(f"{PREFIX}lat:{target}", 0, LATENCIES_KEPT - 1):
            at, latency = _s(raw).split(":")
            if int(at) >= since_ms:
                out.append(int(latency))
        return out

    async def counters(self, target: str) -> dict[str, int]:
        raw = await self.redis.hgetall(f"{PREFIX}n:{target}")
        return {_s(k): int(v) for k, v in raw.items()}

    async def dead_count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for action in await self.dead(10_000):
            out[action.target] = out.get(action.target, 0) + 1
        return out

    async def trim(self) -> None:
        """Forget the oldest finished actions beyond KEPT_ACTIONS."""
        total = int(await self.redis.zcard(ALL_KEY))
        if total <= KEPT_ACTIONS:
            return
        old = [_s(i) for i in await self.redis.zrange(ALL_KEY, 0, total - KEPT_ACTIONS - 1)]
        actions = await self.get(old)
        gone = [a.id for a in actions if a is not None and a.status.final
                and a.status is not Status.DEAD]
        if gone:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(ALL_KEY, *gone)
                for action_id in gone:
                    pipe.delete(action_key(action_id))
                await pipe.execute()
