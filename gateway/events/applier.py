"""Applies logged events to the cache, in the one order that keeps reads current:

1. write the cache entry (versioned compare-and-set: older events never win);
2. invalidate cached responses that contain the entity;
3. run the steps that must happen before the event counts as applied (the sync outbox
   records the actions the event asks for: gateway/sync/), then
4. publish the change (once per log entry) for subscribers, and mark the entry done.

The webhook intake applies each delivery inline before acknowledging it (read-after-ack).
Appending an entry also lists it in ``rg:{ev}:pending``; finishing it removes it. If a
gateway dies between logging and finishing, the entry stays pending and any replica's
:class:`PendingSweeper` applies it after ``grace_ms`` (applying is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from resolvers.store.reservations import HoldChange
from resolvers.store.responses import ResponseStore
from resolvers.types import StockView

log = logging.getLogger("retailgraph.applier")


# (log entry id, envelope, the cell after the write if the cache holds all of it)
Publisher = Callable[[str, Envelope, StockView | None], Awaitable[None]]


def tags_for(envelope: Envelope) -> list[str]:
    """Response-cache tags an event invalidates."""
    tags = []
    if envelope.sku:
        tags.append(f"sku:{envelope.sku}")
    if envelope.kind is EventKind.MASTER_UPDATE:
        tags.append("products")
    return tags


class ApplierObserver(Protocol):
    """Sees every event the applier applies: around the apply, around the publish of a stock
    change, and once it is published (the observer's own failures to record are its own
    business: they never fail the apply)."""

    def applying(self, entry_id: str, envelope: Envelope) -> AbstractContextManager[None]: ...

    def publishing(self, entry_id: str) -> AbstractContextManager[None]: ...

    async def published(self, entry_id: str, envelope: Envelope,
                        cell: StockView | None) -> None: ...


class HoldObserver(Protocol):
    """Reservations' side of a stock event (gateway/events/holds.py ``HoldSettlement``)."""

    async def observe(self, envelope: Envelope, cell: StockView | None,
                      ) -> tuple[int | None, list[HoldChange]]: ...


class HoldLog(Protocol):
    """A hold change as a logged ``HOLD`` envelope (gateway/events/holds.py ``HoldLog``);
    None when that change was logged already."""

    async def logged(self, change: HoldChange) -> tuple[str, Envelope] | None: ...


class Applier:
    """Turns envelopes into cache writes; shared by the intake and the sweeper."""

    def __init__(self, cache: Cache, responses: ResponseStore,
                 publish: Publisher | None = None, holds: HoldObserver | None = None,
                 hold_log: HoldLog | None = None,
                 observers: Sequence[ApplierObserver] = (),
                 before_done: Sequence[Publisher] = ()) -> None:
        self.cache = cache
        self.redis = cache.redis
        self.responses = responses
        self.publish = publish
        # Reservations: the units held at a cell go with its change; committed holds the
        # system of record now shows end (their changes are published after it).
        self.holds = holds
        self.hold_log = hold_log
        self.observers = tuple(observers)
        # Each runs after the cache write and before the entry leaves the pending set: what
        # it records is as durable as the event (a crash in between leaves the entry pending,
        # and the sweeper runs it again; each step must be idempotent per entry).
        self.before_done = tuple(before_done)

    async def apply(self, entry_id: str, envelope: Envelope) -> int:
        """Apply one logged event; returns the cache fields it wrote (-1: a repair not
        written because an event touched the cell after reconciliation read it)."""
        with contextlib.ExitStack() as around:
            for observer in self.observers:
                around.enter_context(observer.applying(entry_id, envelope))
            return await self._apply(entry_id, envelope)

    async def _apply(self, entry_id: str, envelope: Envelope) -> int:
        e = envelope
        cell: StockView | None = None
        written = 0
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
                written, cell = await self.cache.repair_view(
                    view, int(e.extra.get("gen", -1)), replace=bool(e.extra.get("replace")))
            else:
                written, cell = await self.cache.apply_view(view, full=e.full)
        elif e.kind is EventKind.MASTER_UPDATE and e.sku and e.data is not None:
            written = await self.cache.apply_master(e.sku, orjson.dumps(e.data),
                                                    e.source_version)
        elif e.kind is EventKind.INVALIDATE and e.sku:
            written = await self.cache.invalidate_views(e.sku, e.source)
        # A HOLD (a reservation's change) writes nothing here: the hold is in Redis already.
        ended: list[HoldChange] = []
        if (self.holds is not None and e.kind is not EventKind.HOLD
                and e.quantities is not None):
            held, ended = await self.holds.observe(e, cell)
            if held is not None:
                e = dataclasses.replace(e, extra={**e.extra, "reserved": held})
        await self.responses.invalidate(tags_for(e))
        for step in self.before_done:
            await step(entry_id, e, cell)
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
        for change in ended:
            await self.publish_hold(change)
        return written

    async def publish_hold(self, change: HoldChange) -> None:
        """A reservation's hold changed: its ``HOLD`` envelope is logged once and applied
        like any event (the reservations' store publishes through this:
        :class:`resolvers.store.reservations.HoldPublisher`)."""
        if self.hold_log is None:
            return
        logged = await self.hold_log.logged(change)
        if logged is not None:
            await self.apply(*logged)

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
