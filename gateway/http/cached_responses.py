"""Pure ASGI middleware serving repeated GraphQL queries from Redis without executing them.

The key is the query document, variables, operation name and the caller's scope. A hit is
one Redis round trip (the lookup, an MGET of the entry and the invalidation epoch, travels in
the rate limit's pipeline: :func:`response_lookahead`) and the stored bytes; only
``extensions.freshness.responseCache`` is rewritten to say ``hit``. A miss executes
normally and stores the response, tagged with the entities it read, unless it has errors,
stale values, or an event touched one of its entities while it was being computed (see
:class:`resolvers.store.responses.ResponseStore`).

A hit carries the same freshness truth as an execution: a stored response was fresh when it
was stored (stale ones are never stored), and each entry names the backends it depends on
(``Freshness.consulted``); while one of them is known to be down, the entry is not served
(an execution flags its values ``stale: true``, or names the backend in an error), and the
request executes instead.

Streamed requests (SSE, multipart subscriptions: gateway/http/streams.py) pass straight through:
their answer is a stream, never stored, never buffered, and a stored JSON answer is no answer
to them. Each lookup (one per operation of a batch) counts as a hit or a miss in
``retailgraph_cache_lookups_total{layer="response"}``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import telemetry
from gateway.http.asgi import (
    PREFETCH_STATE,
    is_stream,
    is_stream_response,
    read_body,
    replay,
)
from resolvers.graph import BackendHealth
from resolvers.loaders import Freshness
from resolvers.store.responses import CachedResponse, ResponseStore

log = logging.getLogger("retailgraph.response_cache")

MISS_MARKER = b'"responseCache":"miss"'
HIT_MARKER = b'"responseCache":"hit"'
FRESHNESS_STATE = "retailgraph_freshness"
SCOPE_STATE = "retailgraph_scope"


def servable(hit: CachedResponse | None, health: BackendHealth) -> bytes | None:
    """The stored body, if it says what an execution would: none of the backends it depends
    on is down now (then an execution would flag their values stale, or fail them)."""
    if hit is None or not hit.sources.isdisjoint(health.down):
        return None
    return hit.body


def cache_key(body: bytes, caller_scope: str) -> str | None:
    """Digest of what determines a response, or None when the request is not cacheable.

    The raw body is hashed as sent (no parse on the hit path): clients repeat their requests
    byte for byte; a differently spelled request is only a miss, never a wrong answer.
    """
    if b'"mutation' in body or b"subscription" in body or b'"query"' not in body:
        return None
    return hashlib.blake2b(body + b"\x00" + caller_scope.encode(), digest_size=20).hexdigest()


class CachedResponses:
    def __init__(self, app: ASGIApp, responses: ResponseStore, health: BackendHealth,
                 enabled: bool = True) -> None:
        self.app = app
        self.responses = responses
        self.health = health
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        responses = self.responses
        if (scope["type"] != "http" or scope["method"] != "POST" or not self.enabled
                or is_stream(scope)):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive) or b""
        state: dict[str, Any] = scope.setdefault("state", {})
        freshness = Freshness()
        state[FRESHNESS_STATE] = freshness
        digest = cache_key(body, str(state.get(SCOPE_STATE, "public")))
        epoch: int | None = None
        if digest is not None:
            try:
                hit, epoch = await self._lookup(state, digest)
                served = servable(hit, self.health)
                if served is not None:
                    _count("hit")
                    await _send_hit(send, served)
                    return
            except (RedisError, OSError) as exc:
                log.debug("response cache unavailable: %s", exc)
                digest = None
        if digest is None:
            await self.app(scope, replay(body, receive), send)
            return
        _count("miss")
        status = 0
        chunks: list[bytes] | None = []

        async def capture(message: Message) -> None:
            nonlocal status, chunks
            if message["type"] == "http.response.start":
                status = message["status"]
                if is_stream_response(message.get("headers", ())):
                    chunks = None  # not an answer to store: never hold on to it
            elif message["type"] == "http.response.body" and chunks is not None:
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, replay(body, receive), capture)
        if epoch is None or status != 200 or chunks is None:
            return
        encoded = b"".join(chunks)
        if (freshness.tags and not freshness.stale and freshness.cache == "on"
                and not freshness.uncacheable and b'"errors"' not in encoded):
            try:
                await responses.put(digest, encoded, freshness.tags, epoch,
                                    freshness.consulted | set(freshness.sources))
            except (RedisError, OSError) as exc:
                log.debug("response cache put failed: %s", exc)


    async def _lookup(self, state: dict[str, Any], digest: str
                      ) -> tuple[CachedResponse | None, int]:
        """The entry and the epoch: from the rate limit's round trip when it sent this very
        lookup along (:func:`response_lookahead`), else in one round trip of its own."""
        command = self.responses.lookup_command(digest)
        prefetched = state.pop(PREFETCH_STATE, None)
        if prefetched is not None and tuple(prefetched[0]) == command:
            return self.responses.parse_lookup(prefetched[1])
        return await self.responses.lookup(digest)



def response_lookahead(responses: ResponseStore, enabled: bool = True
                       ) -> Callable[[Scope, bytes], tuple[str, ...] | None]:
    """The lookup :class:`CachedResponses` will send for a request with ``body``, as seen
    before the persisted queries (which may rewrite it): for the rate limit to send it in
    its round trip (gateway/http/ratelimit.py ``RateLimitMiddleware``)."""

    def lookahead(scope: Scope, body: bytes) -> tuple[str, ...] | None:
        if not enabled or scope["method"] != "POST" or is_stream(scope):
            return None
        digest = cache_key(body, str(scope.get("state", {}).get(SCOPE_STATE, "public")))
        return None if digest is None else responses.lookup_command(digest)

    return lookahead


def _count(result: str) -> None:
    telemetry.current().m.cache_lookups.add(1, {"layer": "response", "source": "gateway",
                                                "result": result})


async def _send_hit(send: Send, stored: bytes) -> None:
    at = stored.rfind(MISS_MARKER)
    body = stored if at < 0 else stored[:at] + HIT_MARKER + stored[at + len(MISS_MARKER):]
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-retailgraph-cache", b"hit")]})
    await send({"type": "http.response.body", "body": body})
