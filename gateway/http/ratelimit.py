"""Rate limiting per client: a token bucket in Redis, shared by every replica.

Each client (its API key or JWT subject; its IP address when auth is off) has a bucket of
``rate_limit_per_minute`` tokens that refills continuously at that rate; a GraphQL request
takes one. The bucket lives in one Redis hash, updated by a Lua script with the server's
clock, so replicas agree and clock skew between them does not matter.

Every answer carries ``RateLimit-Limit`` (bucket size), ``RateLimit-Remaining`` (whole tokens
left) and ``RateLimit-Reset`` (seconds until the bucket is full again); a refused request
gets ``429`` with ``Retry-After`` (seconds until one token is back) and a GraphQL error with
``extensions.code = "RATE_LIMITED"`` (and ``extensions.retryAfter``). Over a WebSocket,
``connection_init`` takes a token (refused: close 1013, "try again later") and so does each
operation (refused: the protocol's ``error`` message with that error). If Redis is unreachable
or slow (past the read deadline, ``redis_read_timeout_ms``; at once while Redis is known not
to answer) the request is let through (logged): the limiter must not take the gateway down
with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import telemetry
from gateway.http.asgi import PREFETCH_STATE, read_body, replay
from gateway.http.auth import PRINCIPAL_STATE
from gateway.http.operations import OperationRefused
from resolvers.abc import RedisClient
from resolvers.access import NOBODY, Principal
from resolvers.store.client import optional
from resolvers.store.keys import RATE_LIMIT_PREFIX as KEY_PREFIX

log = logging.getLogger("retailgraph.ratelimit")

# KEYS[1] bucket; ARGV: capacity, refill per millisecond, cost.
# Returns {allowed, tokens left (string), ms until one more token, ms until full}.
TOKEN_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
local full_ms = math.ceil((capacity - tokens) / rate)
redis.call('PEXPIRE', KEYS[1], full_ms + 1000)
local retry_ms = 0
if allowed == 0 then retry_ms = math.ceil((cost - tokens) / rate) end
return {allowed, tostring(tokens), retry_ms, full_ms}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [(b"ratelimit-limit", str(self.limit).encode()),
               (b"ratelimit-remaining", str(self.remaining).encode()),
               (b"ratelimit-reset", str(self.reset_seconds).encode()),
               (b"ratelimit-policy", f"{self.limit};w=60".encode())]
        if not self.allowed:
            out.append((b"retry-after", str(self.retry_after_seconds).encode()))
        return out


class TokenBucket:
    """``per_minute`` requests a minute per client, in bursts of up to ``per_minute``."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = per_minute
        self.rate_per_ms = per_minute / 60_000
        self._script: Any = None
        self._client: Any = None

    async def take(self, redis: Any, client: str, cost: int = 1) -> Decision:
        """Take ``cost`` tokens of ``client``'s."""
        return (await self.take_with(redis, client, cost, None))[0]

    async def take_with(self, redis: Any, client: str, cost: int,
                        also: Sequence[Any] | None) -> tuple[Decision, Any]:
        """:meth:`take`; with ``also`` (a command's arguments), that command goes in the same
        round trip (a pipeline: the bucket's script, then it) and its reply is returned next
        to the decision (else None)."""
        if self._script is None or self._client is not redis:
            self._script = redis.register_script(TOKEN_BUCKET_LUA)
            self._client = redis
        key = KEY_PREFIX + hashlib.sha256(client.encode()).hexdigest()[:32]
        args = [self.capacity, repr(self.rate_per_ms), cost]
        extra = None
        with optional():  # read deadline; skipped at once while Redis is not answering
            if also is None:
                reply = await self._script(keys=[key], args=args)
            else:
                reply, extra = await self._pipelined(redis, key, args, also)
        allowed, tokens, retry_ms, full_ms = reply
        left = float(tokens.decode() if isinstance(tokens, bytes) else tokens)
        return Decision(allowed=bool(allowed), limit=self.capacity,
                        remaining=max(0, math.floor(left)),
                        reset_seconds=math.ceil(int(full_ms) / 1000),
                        retry_after_seconds=max(1, math.ceil(int(retry_ms) / 1000))), extra

    async def _pipelined(self, redis: Any, key: str, args: list[Any],
                         also: Sequence[Any]) -> tuple[Any, Any]:
        """EVALSHA of the bucket and ``also`` in one pipeline (no MULTI: nothing needs to be
        atomic across the two). redis-py's Script in a pipeline asks SCRIPT EXISTS first, a
        round trip of its own every time; the script is loaded here only when Redis does not
        know it (after a restart or a SCRIPT FLUSH), then the pipeline runs again."""
        for attempt in range(2):
            pipe = redis.pipeline(transaction=False)
            pipe.evalsha(self._script.sha, 1, key, *args)
            pipe.execute_command(*also)
            bucket, extra = await pipe.execute(raise_on_error=False)
            if isinstance(bucket, NoScriptError) and attempt == 0:
                await redis.script_load(TOKEN_BUCKET_LUA)
                continue
            for reply in (bucket, extra):
                if isinstance(reply, Exception):
                    raise reply
            return bucket, extra
        raise AssertionError("unreachable")


def client_of(scope: Scope) -> str:
    """Who to count a request against: the authenticated caller, else its address."""
    principal = scope.get("state", {}).get(PRINCIPAL_STATE)
    return (principal if isinstance(principal, Principal) else NOBODY).client_key(
        scope.get("client"))


class RateLimited(OperationRefused):
    """Over the rate limit: HTTP 429 with ``Retry-After``; ``extensions.retryAfter`` (seconds)
    says the same on transports without headers."""

    code = "RATE_LIMITED"

    def __init__(self, decision: Decision) -> None:
        super().__init__(
            f"rate limit of {decision.limit} requests per minute exceeded; "
            f"retry after {decision.retry_after_seconds}s",
            status=429, extensions={"retryAfter": decision.retry_after_seconds},
            headers=decision.headers())
        self.decision = decision


class RateLimiter:
    """The bucket of every client, in the runtime's Redis; one per app, shared by the HTTP
    middleware and the per-operation checks (:class:`gateway.http.operations.OperationGuard`)."""

    def __init__(self, redis: RedisClient, per_minute: int) -> None:
        self.redis = redis
        self.bucket = TokenBucket(per_minute) if per_minute > 0 else None
        self._warned_at = -1e9

    async def take(self, client: str) -> Decision | None:
        """Take one token of ``client``'s; :class:`RateLimited` when there is none left.

        None when the limiter is off, or Redis does not answer in time (logged once in a
        while): the limiter must not take the gateway down with it.
        """
        return (await self.take_with(client, None))[0]

    async def take_with(self, client: str, also: Sequence[Any] | None
                        ) -> tuple[Decision | None, Any]:
        """:meth:`take`, with ``also`` (a command's arguments) sent in the same round trip;
        its reply comes back next to the decision, or :data:`NOT_SENT` when it was not sent
        or did not come back (the limiter is off, Redis failed)."""
        if self.bucket is None:
            return None, NOT_SENT
        try:
            decision, extra = await self.bucket.take_with(self.redis, client, 1, also)
        except (RedisError, OSError) as exc:
            if time.monotonic() - self._warned_at > 30:  # once in a while, not per request
                self._warned_at = time.monotonic()
                log.warning("rate limiter unavailable, letting requests through: %r", exc)
            return None, NOT_SENT
        if not decision.allowed:
            telemetry.current().m.rate_limited.add(1)
            raise RateLimited(decision)
        return decision, extra if also is not None else NOT_SENT


# The reply of a command that was not sent along (gateway/http/cached_responses.py reads the
# one it asked for from PREFETCH_STATE).
NOT_SENT: Any = object()
# What a route's next stage would read from Redis first, given the request and its body
# (None: nothing): it is sent in the bucket's round trip.
Lookahead = Callable[[Scope, bytes], Sequence[Any] | None]


class RateLimitMiddleware:
    """Applies the bucket to every HTTP request of its route (``/graphql``); runs after
    authentication. (A WebSocket takes a token at ``connection_init`` and one per operation:
    gateway/http/graphql.py.)

    ``lookahead``: the command a later stage will send first for this request (the response
    cache's lookup). It goes in the bucket's round trip, and its reply is left in
    ``scope["state"][PREFETCH_STATE]`` as ``(command, reply)``: a cache hit costs one Redis
    round trip in all. The stage uses the reply only if it would send that very command (a
    persisted query's body is rewritten in between: it then sends its own)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter,
                 lookahead: Lookahead | None = None) -> None:
        self.app = app
        self.limiter = limiter
        self.lookahead = lookahead

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        also: Sequence[Any] | None = None
        if self.lookahead is not None and self.limiter.bucket is not None \
                and scope["method"] == "POST":
            body = await read_body(receive) or b""
            receive = replay(body, receive)
            also = self.lookahead(scope, body)
        try:
            decision, extra = await self.limiter.take_with(client_of(scope), also)
        except RateLimited as refused:
            body = refused.body()
            await send({"type": "http.response.start", "status": refused.status, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), *refused.headers]})
            await send({"type": "http.response.body", "body": body})
            return
        if extra is not NOT_SENT:
            scope.setdefault("state", {})[PREFETCH_STATE] = (also, extra)
        if decision is None:
            await self.app(scope, receive, send)
            return
        extra_headers = decision.headers()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()),
                                                  *extra_headers]}
            await send(message)

        await self.app(scope, receive, with_headers)


__all__ = ["NOT_SENT", "Decision", "Lookahead", "RateLimitMiddleware", "RateLimited",
           "RateLimiter", "TokenBucket", "client_of"]
