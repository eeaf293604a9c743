"""Applies logged events to the cache, in the one order that keeps reads current:

1. write the cache entry (versioned compare-and-set: older events never win);
2. invalidate cached responses that contain the entity;
3. publish the change (once per log entry) for subscribers.

The webhook intake applies each delivery inline before acknowledging it (read-after-ack);
a consumer group on the log applies every entry again — a no-op when the inline apply
happened — so an event logged by a gateway that crashed before applying it is applied by
any replica (pending entries of a dead consumer are claimed after ``claim_idle_ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

import orjson
from redis.exceptions import RedisError, ResponseError

from gateway.cache import Cache, ResponseCache
from gateway.events import LOG_KEY, Envelope, EventKind
from resolvers.types import StockView

log = logging.getLogger("retailgraph.applier")

GROUP = "appliers"
Publisher = Callable[[str, Envelope], Awaitable[None]]


def tags_for(envelope: Envelope) -> list[str]:
    """Response-cache tags an event invalidates."""
    tags = []
    if envelope.sku:
        tags.append(f"sku:{envelope.sku}")
    if envelope.kind is EventKind.MASTER_UPDATE:
        tags.append("products")
    return tags


class Applier:
    """Turns envelopes into cache writes; shared by the intake and the log consumer."""

    def __init__(self, cache: Cache, responses: ResponseCache,
                 publish: Publisher | None = None) -> None:
        self.cache = cache
        self.responses = responses
        self.publish = publish

    async def apply(self, entry_id: str, envelope: Envelope) -> None:
        e = envelope
        if e.kind in (EventKind.LEVEL_SNAPSHOT, EventKind.MOVEMENT) and e.quantities is not None:
            assert e.sku is not None
            assert e.location_id is not None
            view = StockView(sku=e.sku, location_id=e.location_id, source=e.source,
                             quantities=e.quantities, as_of=e.occurred_at,
                             version=str(e.source_version))
            await self.cache.apply_view(view, full=e.full)
        elif e.kind is EventKind.MASTER_UPDATE and e.sku and e.data is not None:
            await self.cache.apply_master(e.sku, orjson.dumps(e.data), e.source_version)
        elif e.kind is EventKind.INVALIDATE and e.sku:
            await self.cache.invalidate_views(e.sku, e.source)
        await self.responses.invalidate(tags_for(e))
        if self.publish is not None:
            await self.publish(entry_id, e)

    async def apply_all(self, entries: Sequence[tuple[str, Envelope]]) -> None:
        for entry_id, envelope in entries:
            await self.apply(entry_id, envelope)


class LogConsumer:
    """This replica's member of the log's consumer group: applies what the intake may not have."""

    def __init__(self, redis: object, applier: Applier, claim_idle_ms: int = 5000,
                 block_ms: int = 1000) -> None:
        self.redis = redis
        self.applier = applier
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self.running = False

    async def ensure_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(LOG_KEY, GROUP, id="0", mkstream=True)  # type: ignore[attr-defined]

    async def run(self) -> None:
        """Apply entries until cancelled; survives Redis outages by retrying."""
        while True:
            try:
                await self.ensure_group()
                self.running = True
                while True:
                    await self._claim_stale()
                    await self._read_new()
            except asyncio.CancelledError:
                self.running = False
                raise
            except (RedisError, OSError) as exc:
                self.running = False
                log.warning("event log consumer paused: %s", exc)
                await asyncio.sleep(1.0)

    async def _handle(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        r = self.redis
        for entry_id, fields in entries:
            if not fields:  # deleted by trimming
                await r.xack(LOG_KEY, GROUP, entry_id)  # type: ignore[attr-defined]
                continue
            await self.applier.apply(entry_id.decode(), Envelope.decode(fields[b"e"]))
            await r.xack(LOG_KEY, GROUP, entry_id)  # type: ignore[attr-defined]

    async def _read_new(self) -> None:
        streams = await self.redis.xreadgroup(  # type: ignore[attr-defined]
            GROUP, self.name, {LOG_KEY: ">"}, count=500, block=self.block_ms)
        for _stream, entries in streams or []:
            await self._handle(entries)

    async def _claim_stale(self) -> None:
        result = await self.redis.xautoclaim(  # type: ignore[attr-defined]
            LOG_KEY, GROUP, self.name, min_idle_time=self.claim_idle_ms, start_id="0-0",
            count=500)
        entries = result[1] if len(result) > 1 else []
        if entries:
            log.info("claimed %d unapplied events from a stopped consumer", len(entries))
            await self._handle(entries)
