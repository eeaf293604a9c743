"""The response cache's store: whole encoded GraphQL responses in Redis, tagged by the
entities they contain and invalidated through those tags (the HTTP side is
``gateway.http.cached_responses.CachedResponses``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from resolvers.store.client import optional
from resolvers.store.keys import (
    RESPONSE_SEQ_KEY,
    RESPONSE_TAG_SET_PREFIX,
    RESPONSE_TAG_VERSION_PREFIX,
    response_key,
)

# -- responses ------------------------------------------------------------------------------
# All keys share the {rc} hash tag, so each script runs on one slot (node) of a Cluster.

RESPONSE_PUT_LUA = """
local epoch = tonumber(ARGV[2])
for i = 4, #ARGV do
  local tv = tonumber(redis.call('GET', '@TV@' .. ARGV[i]) or '0')
  if tv > epoch then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[1])
for i = 4, #ARGV do
  local tagset = '@T@' .. ARGV[i]
  redis.call('SADD', tagset, KEYS[1])
  redis.call('EXPIRE', tagset, ARGV[1])
end
return 1
""".replace("@TV@", RESPONSE_TAG_VERSION_PREFIX).replace("@T@", RESPONSE_TAG_SET_PREFIX)

RESPONSE_INVALIDATE_LUA = """
local seq = redis.call('INCR', KEYS[1])
local dropped = 0
for i = 1, #ARGV do
  redis.call('SET', '@TV@' .. ARGV[i], seq, 'EX', 86400)
  local tagset = '@T@' .. ARGV[i]
  local members = redis.call('SMEMBERS', tagset)
  if #members > 0 then dropped = dropped + redis.call('DEL', unpack(members)) end
  redis.call('DEL', tagset)
end
return dropped
""".replace("@TV@", RESPONSE_TAG_VERSION_PREFIX).replace("@T@", RESPONSE_TAG_SET_PREFIX)


RESPONSE_HEAD = b"rg1:"


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored response and the backends its values came from."""

    body: bytes
    sources: frozenset[str]


class ResponseStore:
    """Whole encoded GraphQL responses, tagged by the entities they contain.

    A miss reads the invalidation sequence *before* executing; the put succeeds only if no
    event touching one of the response's tags was applied since. So a response computed from
    pre-event data can never be stored after the event invalidated its tags.

    Each entry is stored as ``rg1:<source>,<source>...\n<body>``: the backends it depends
    on, so a hit can be refused while one of them is down (an execution would flag their
    values stale or fail them; the stored bytes say they are fresh). An entry without that
    head (written by an older version) is a miss.
    """

    def __init__(self, client: Any, ttl: int = 300) -> None:
        self.redis = client
        self.ttl = ttl
        self._put = client.register_script(RESPONSE_PUT_LUA)
        self._invalidate = client.register_script(RESPONSE_INVALIDATE_LUA)

    @staticmethod
    def lookup_command(digest: str) -> tuple[str, ...]:
        """The one command a lookup is: the entry and the invalidation sequence, read
        together (one slot: ``{rc}``), so a miss knows the epoch to store under without a
        second round trip. Another part may send it in its own round trip (the rate limit
        pipelines it with its bucket: gateway/http/ratelimit.py) and hand the reply to
        :meth:`parse_lookup`."""
        return ("MGET", response_key(digest), RESPONSE_SEQ_KEY)

    @staticmethod
    def parse_lookup(reply: Any) -> tuple[CachedResponse | None, int]:
        """The stored response (None: none, or written by an older version) and the epoch."""
        value, seq = reply
        epoch = int(seq or 0)
        if value is None or not bytes(value).startswith(RESPONSE_HEAD):
            return None, epoch
        head, _, body = bytes(value)[len(RESPONSE_HEAD):].partition(b"\n")
        return CachedResponse(body, frozenset(head.decode().split(",")) - {""}), epoch

    async def lookup(self, digest: str) -> tuple[CachedResponse | None, int]:
        """:meth:`lookup_command`, sent on its own."""
        with optional():  # a miss executes the query
            return self.parse_lookup(await self.redis.execute_command(
                *self.lookup_command(digest)))

    async def put(self, digest: str, body: bytes, tags: Iterable[str], epoch: int,
                  sources: Iterable[str] = ()) -> bool:
        stored = RESPONSE_HEAD + ",".join(sorted(set(sources))).encode() + b"\n" + body
        with optional():  # the response has been sent already
            return bool(await self._put(keys=[response_key(digest)],
                                        args=[self.ttl, epoch, stored, *sorted(set(tags))]))

    async def invalidate(self, tags: Iterable[str]) -> int:
        tags = sorted(set(tags))
        if not tags:
            return 0
        return int(await self._invalidate(keys=[RESPONSE_SEQ_KEY], args=tags))
