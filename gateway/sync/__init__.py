"""Sync: the systems of record's truth pushed back to the channels (issue 13).

- :mod:`gateway.sync.rules`: what is pushed where (pure functions, the ``[sync]`` settings);
- :mod:`resolvers.store.outbox`: the Redis store of actions (durable, ordered, leased);
- :mod:`gateway.sync.executor`: deriving actions from applied events (:class:`Recorder`, on
  the applier's path) and executing them (:class:`Executor`, on every replica);
- :mod:`gateway.sync.inputs`: what the rules read (the cache, read through).

:func:`build` puts them together for one replica.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from ulid import ULID

from gateway.config import Settings
from gateway.events.fanout import KeyedFeed
from gateway.sync.executor import Executor, Recorder, Reservations, Targets
from gateway.sync.inputs import CachedInputs
from gateway.sync.rules import Rules
from resolvers.graph import RetailGraph
from resolvers.store.keys import OUTBOX_FEED_KEY
from resolvers.store.outbox import Finished, Outbox, decode_finished
from resolvers.types import LocationRecord, MasterItem


@dataclass(frozen=True, slots=True)
class Sync:
    """Everything sync adds to one gateway replica."""

    rules: Rules
    outbox: Outbox
    recorder: Recorder
    executor: Executor
    targets: Targets
    feed: KeyedFeed[Finished]  # Subscription.syncActionCompleted

    # -- resolvers.abc.SyncControl (what the schema sees) --------------------------------

    @property
    def enabled(self) -> bool:
        return self.rules.enabled

    def pushes_to(self, source: str) -> bool:
        return source in self.targets.stock or source in self.targets.items

    async def now(self, skus: Sequence[str], locations: set[str] | None,
                  targets: frozenset[str] | None, items: bool) -> list[str]:
        return await self.recorder.now(skus, locations, targets, items)

    def finished(self, accept: Callable[[Finished], bool]) -> AsyncGenerator[Finished, None]:
        return self.feed.subscribe(accept)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return [self.feed.run(), *([self.executor.run()] if self.rules.enabled else [])]

    def close(self) -> None:
        self.feed.close_all()


def targets_of(graph: RetailGraph) -> Targets:
    """The connectors' write side (resolvers/writes.py): the shop takes available-to-sell and
    item names, the POS catalog item names (and list prices: ``sync.pos_price_from_erp``)."""
    b = graph.backends
    return Targets(stock={b.commerce.name: b.commerce},
                   items={b.commerce.name: b.commerce, b.pos.name: b.pos},
                   formats={b.commerce.name: "shopify", b.pos.name: "square"},
                   shop=b.commerce.name)


def build(settings: Settings, graph: RetailGraph, redis: Any,
          reservations: Reservations | None = None) -> Sync:
    rules = Rules.of(settings.sync)
    targets = targets_of(graph)
    outbox = Outbox(redis, token=str(ULID()))
    executor = Executor(outbox, settings.sync, rules, targets, CachedInputs(graph, redis),
                        reservations)

    async def locations() -> dict[str, LocationRecord]:
        return (await graph.ready_catalog()).locations

    async def master(sku: str) -> MasterItem | None:
        return await graph.loaders().master.load(sku)

    recorder = Recorder(outbox, rules, targets, locations, graph.system_of_record,
                        erp=graph.backends.erp.name, wake=executor.wake, master=master)
    feed = KeyedFeed(redis, OUTBOX_FEED_KEY, decode_finished, "sync feed",
                     settings.subscriber_buffer)
    return Sync(rules, outbox, recorder, executor, targets, feed)
