"""The durable event log (a Redis Stream).

Every accepted webhook, whatever its format, becomes one or more :class:`Envelope` s (one per
SKU x location it touches) appended to ``rg:{ev}:log`` *before* the sender gets its 2xx, and
listed in ``rg:{ev}:pending`` until fully applied (see ``gateway/events/applier.py``).
Appending is one Lua script that also records the delivery's dedupe key, so a delivery is
logged exactly once however often it is retried; events that cannot be applied go to the
dead-letter stream ``rg:{ev}:dlq`` with the reason and the raw body, for replay.

The envelope itself: ``gateway/events/envelope.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from gateway.events.envelope import Envelope
from resolvers.store.keys import (
    DLQ_KEY,
    LOG_KEY,
    PENDING_KEY,
    dead_letter_seen_key,
    dedupe_key,
    once_key,
)

DEDUPE_TTL = 7 * 24 * 3600


APPEND_LUA = """
local seen = redis.call('GET', KEYS[1])
if seen then return {0, seen} end
local ids = {}
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 3, #ARGV, 2 do
  local once = ARGV[i]
  local id = false
  if once ~= '' then id = redis.call('GET', once) end
  if not id then
    id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i + 1])
    if KEYS[3] ~= KEYS[2] then redis.call('ZADD', KEYS[3], ms, id) end
    if once ~= '' then redis.call('SET', once, id, 'EX', ARGV[1]) end
  end
  ids[#ids + 1] = id
end
local joined = table.concat(ids, ',')
redis.call('SET', KEYS[1], joined, 'EX', ARGV[1])
return {1, joined}
"""


@dataclass(frozen=True, slots=True)
class Appended:
    """Result of logging a delivery: ``new`` is False for a duplicate delivery."""

    new: bool
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    source: str
    reason: str
    topic: str
    received_at: str
    body: bytes
    headers: dict[str, str]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class EventLog:
    """Append-only log of envelopes in a Redis Stream, with dedupe and a dead-letter stream."""

    def __init__(self, redis: Any, max_len: int = 1_000_000) -> None:
        self.redis = redis
        self.max_len = max_len
        self._append = redis.register_script(APPEND_LUA)

    async def append(self, source: str, dedupe_id: str, envelopes: list[Envelope]) -> Appended:
        """Log a delivery's envelopes atomically, once per ``(source, dedupe_id)``, and each
        envelope once per source event (its ``source_event_id`` at its SKU and location)."""
        key = dedupe_key(source, dedupe_id)
        args: list[Any] = [DEDUPE_TTL, self.max_len]
        repeats: dict[str, int] = {}
        for e in envelopes:
            once = ""
            if e.source_event_id:
                once = once_key(source, e.source_event_id, e.sku or "", e.location_id or "")
                repeats[once] = repeats.get(once, 0) + 1
                once += f"#{repeats[once]}"  # e.g. two order lines of one variant
            args += [once, e.encode()]
        new, joined = await self._append(keys=[key, LOG_KEY, PENDING_KEY], args=args)
        ids = tuple(x for x in _s(joined).split(",") if x)
        return Appended(bool(new), ids)

    async def dead_letter(self, source: str, dedupe_id: str, reason: str, topic: str,
                          received_at: datetime, body: bytes, headers: dict[str, str]) -> Appended:
        """Keep a delivery we cannot apply, with why, once per ``(source, dedupe_id)``."""
        letter = orjson.dumps({"source": source, "reason": reason, "topic": topic,
                               "received_at": received_at.isoformat(),
                               "body": body.decode("utf-8", "replace"), "headers": headers,
                               "dedupe_id": dedupe_id})
        key = dead_letter_seen_key(source, dedupe_id)
        new, joined = await self._append(keys=[key, DLQ_KEY, DLQ_KEY],
                                         args=[DEDUPE_TTL, self.max_len, "", letter])
        return Appended(bool(new), tuple(_s(joined).split(",")))

    async def dead_letters(self, count: int = 1000) -> list[DeadLetter]:
        out = []
        for entry_id, fields in await self.redis.xrange(DLQ_KEY, count=count):
            d = orjson.loads(fields[b"e"])
            out.append(DeadLetter(id=_s(entry_id), source=d["source"], reason=d["reason"],
                                  topic=d["topic"], received_at=d["received_at"],
                                  body=d["body"].encode(), headers=d["headers"]))
        return out

    async def forget_dead_letter(self, letter: DeadLetter) -> None:
        await self.redis.xdel(DLQ_KEY, letter.id)

    async def read(self, after: str = "0-0", count: int = 1000) -> list[tuple[str, Envelope]]:
        """Envelopes logged after stream id ``after``, oldest first."""
        entries = await self.redis.xrange(LOG_KEY, min=f"({after}", count=count)
        return [(_s(i), Envelope.decode(f[b"e"])) for i, f in entries]

    async def read_range(self, first: str, last: str) -> list[tuple[str, Envelope]]:
        entries = await self.redis.xrange(LOG_KEY, min=first, max=last)
        return [(_s(i), Envelope.decode(f[b"e"])) for i, f in entries]

    async def length(self) -> int:
        return int(await self.redis.xlen(LOG_KEY))
