"""Applies logged events to the cache, in the one order that keeps reads current:

1. write the cache entry (versioned compare-and-set: older events never win);
2. invalidate cached responses that contain the entity;
3. publish the change (once per log entry) for subscribers, and mark the entry done.

The webhook intake applies each delivery inline before acknowledging it (read-after-ack).
Appending an entry also lists it in ``rg:{ev}:pending``; finishing it removes it. If a
gateway dies between logging and finishing, the entry stays pending and any replica's
:class:`PendingSweeper` applies it after ``grace_ms`` (applying is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import orjson
from redis.exceptions import RedisError

from gateway.events.envelope import Envelope, EventKind, MovementType
from gateway.events.log import EventLog
from resolvers.store.cache import Cache
from resolvers.store.client import Backoff
from resolvers.store.keys import PENDING_KEY
from resolvers.store.responses import ResponseStore
from resolvers.types import StockView

log = logging.getLogger("retailgraph.applier")


# (log entry id, envelope, the cell after the write if the cache holds all of it)
Publisher = Callable[[str, Envelope, StockView | None], Awaitable[None]]


class ApplierObserver(Protocol):
    """Sees every event the applier applies: around the apply, around the publish of a stock
    change, and once it is published (the observer's own failures to record are its own
    business: they never fail the apply)."""

    def applying(self, entry_id: str, envelope: Envelope) -> AbstractContextManager[None]: ...

    def publishing(self, entry_id: str) -> AbstractContextManager[None]: ...

    async def published(self, entry_id: str, envelope: Envelope,
                        cell: StockView | None) -> None: ...


class ApplierObserverBase:
    """An :class:`ApplierObserver` that sees nothing: subclasses override what they watch."""

    def applying(self, entry_id: str, envelope: Envelope) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def publishing(self, entry_id: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def published(self, entry_id: str, envelope: Envelope,
                        cell: StockView | None) -> None:
        pass


def tags_for(envelope: Envelope) -> list[str]:
    """Response-cache tags an event invalidates."""
    tags = []
    if envelope.sku:
        tags.append(f"sku:{envelope.sku}")
    if envelope.kind is EventKind.MASTER_UPDATE:
        tags.append("products")
    return tags


class Applier:
    """Turns envelopes into cache writes; shared by the intake and the sweeper."""

    def __init__(self, cache: Cache, responses: ResponseStore,
                 publish: Publisher | None = None,
                 observers: Sequence[ApplierObserver] = ()) -> None:
        self.cache = cache
        self.redis = cache.redis
        self.responses = responses
        self.publish = publish
        self.observers = tuple(observers)

    async def apply(self, entry_id: str, envelope: Envelope) -> None:
        with contextlib.ExitStack() as around:
            for observer in self.observers:
                around.enter_context(observer.applying(entry_id, envelope))
            await self._apply(entry_id, envelope)

    async def _apply(self, entry_id: str, envelope: Envelope) -> None:
        e = envelope
        cell: StockView | None = None
        if e.kind in (EventKind.LEVEL_SNAPSHOT, EventKind.MOVEMENT) and e.quantities is not None:
            assert e.sku is not None
            assert e.location_id is not None
            view = StockView(sku=e.sku, location_id=e.location_id, source=e.source,
                             quantities=e.quantities, as_of=e.occurred_at,
                             version=str(e.source_version))
            if e.movement is not None and e.movement.type is MovementType.REPAIR:
                # A reconciliation repair (gateway/reconcile/runner.py): the backend's own answer
                # replaces the drifted cell unless an event touched it since it was compared
                # (over a cached version from the future, whatever the versions).
                _, cell = await self.cache.repair_view(view, int(e.extra.get("gen", -1)),
                                                       replace=bool(e.extra.get("replace")))
            else:
                _, cell = await self.cache.apply_view(view, full=e.full)
        elif e.kind is EventKind.MASTER_UPDATE and e.sku and e.data is not None:
            await self.cache.apply_master(e.sku, orjson.dumps(e.data), e.source_version)
        elif e.kind is EventKind.INVALIDATE and e.sku:
            await self.cache.invalidate_views(e.sku, e.source)
        await self.responses.invalidate(tags_for(e))
        if self.publish is not None and e.sku and e.location_id and e.quantities is not None:
            # Publishing also takes the entry off the pending set, in the same script.
            with contextlib.ExitStack() as around:
                for observer in self.observers:
                    around.enter_context(observer.publishing(entry_id))
                await self.publish(entry_id, e, cell)
                for observer in self.observers:
                    await observer.published(entry_id, e, cell)
        else:
            await self.redis.zrem(PENDING_KEY, entry_id)

    async def apply_all(self, entries: Sequence[tuple[str, Envelope]]) -> None:
        for entry_id, envelope in entries:
            await self.apply(entry_id, envelope)


class PendingSweeper:
    """Applies log entries left pending by a gateway that stopped before finishing them."""

    def __init__(self, events: EventLog, applier: Applier, grace_ms: int = 5000,
                 interval: float = 1.0) -> None:
        self.events = events
        self.applier = applier
        self.grace_ms = grace_ms
        self.interval = interval
        self.running = False

    async def sweep(self) -> int:
        """Apply every entry pending for longer than the grace period; return how many."""
        redis = self.events.redis
        now_s, now_us = await redis.time()
        cutoff = int(now_s) * 1000 + int(now_us) // 1000 - self.grace_ms
        stuck = [x.decode() if isinstance(x, bytes) else str(x) for x in
                 await redis.zrangebyscore(PENDING_KEY, "-inf", cutoff, start=0, num=500)]
        for entry_id in stuck:
            found = await self.events.read_range(entry_id, entry_id)
            if found:
                await self.applier.apply(*found[0])
            else:  # trimmed away long ago: nothing left to apply
                await redis.zrem(PENDING_KEY, entry_id)
        if stuck:
            log.info("applied %d events a stopped gateway had logged but not finished",
                     len(stuck))
        return len(stuck)

    async def run(self) -> None:
        backoff = Backoff("pending sweeper")
        while True:
            delay = self.interval
            try:
                self.running = True
                while await self.sweep() == 500:
                    pass
                backoff.succeeded()
            except asyncio.CancelledError:
                self.running = False
                raise
            except (RedisError, OSError) as exc:
                self.running = False
                delay = max(delay, backoff.failed(exc))
            await asyncio.sleep(delay)
