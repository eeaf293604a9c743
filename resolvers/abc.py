"""The ports of the resolvers layer: what it needs from outside, as ``typing.Protocol``s.

The gateway (``gateway.app``) builds the implementations and hands them in:

- :class:`Connector`: one backend (``resolvers/connectors/``, on a shared base);
- :class:`GraphSettings`: the gateway-wide settings the graph reads (``gateway.config.Settings``);
- :class:`StockCache`: the read-through stock and item-master cache
  (``resolvers.store.cache.Cache``, Redis);
- :class:`Observer`: traces and metrics of cache lookups and backend calls
  (``gateway.telemetry.ResolverTelemetry``; :data:`NO_OBSERVER` records nothing);
- :class:`ChangeFeed`: this replica's live stock changes and their history
  (``gateway.events.changes.ChangeFeed``);
- :class:`Reconciliation`: discrepancies, their live transitions and the sync status
  (``gateway.reconcile.runner.ReconcileStage``: :class:`DiscrepancyIndex`,
  :class:`DiscrepancyFeed`, :class:`SyncStatus`);
- :class:`SyncControl`: what the schema reads and steers of sync (``gateway.sync.Sync``);
- :class:`HeldUnits`: the units reservations hold, which the graph's loaders read
  (``resolvers.store.reservations.HoldsStore``);
- :data:`RedisClient`: the Redis client every store is given (single server or Cluster).

The schema reaches the change feed, reconciliation, sync and reservations through the
request's context (``resolvers.loaders.RequestContext``), each given to it at construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Hashable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import httpx
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from resolvers.discrepancies import DiscrepancyEvent, DiscrepancyFilter, Page
from resolvers.errors import ServiceUnavailable
from resolvers.identity import IdentityMap
from resolvers.settings import BackendFormat, BackendSettings
from resolvers.store.outbox import Finished, Outbox
from resolvers.syncstatus import SourceStatus
from resolvers.types import StockView

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"


class Connector(Protocol):
    """One backend system, read through its own long-lived HTTP client."""

    name: str
    identity: IdentityMap  # swapped whole when the catalogs are reloaded

    async def aclose(self) -> None: ...


class GraphSettings(Protocol):
    """What :class:`resolvers.graph.RetailGraph` and the schema read of the settings."""

    @property
    def backends(self) -> Mapping[str, BackendSettings]: ...

    @property
    def mapping_file(self) -> str: ...

    @property
    def max_page_size(self) -> int: ...

    def backend_for(self, fmt: BackendFormat) -> BackendSettings: ...


# -- the cache ----------------------------------------------------------------------------------

class CacheUnavailable(ServiceUnavailable):
    """Redis cannot be reached; callers fall back to the backends."""


@dataclass(slots=True)
class ViewsResult:
    """Views of SKUs from one source, and whether they came from the cache."""

    views: dict[str, list[StockView]]
    from_cache: set[str]
    from_backend: set[str]


Fetch = Callable[[list[str]], Awaitable[list[StockView]]]
MasterFetch = Callable[[list[str]], Awaitable[dict[str, dict[str, Any]]]]


class StockCache(Protocol):
    """Read-through cache of stock views and item masters, one backend read per SKU at a time.

    :meth:`views` and :meth:`masters` raise :class:`CacheUnavailable` when the cache cannot be
    read; :meth:`shared` and :meth:`shared_masters` then still share one backend read between
    concurrent requests."""

    async def views(self, source: str, skus: Sequence[str], location_ids: Sequence[str],
                    fetch: Fetch) -> ViewsResult: ...

    async def shared(self, source: str, skus: Sequence[str],
                     fetch: Fetch) -> dict[str, list[StockView]]: ...

    async def masters(self, skus: Sequence[str], fetch: MasterFetch,
                      ) -> tuple[dict[str, dict[str, Any]], set[str]]: ...

    async def shared_masters(self, skus: Sequence[str], fetch: MasterFetch,
                             ) -> dict[str, dict[str, Any]]: ...


# -- live changes and reconciliation -----------------------------------------------------------

class SubscriptionQuota(Protocol):
    """Live subscriptions per caller on this replica."""

    def check(self, owner: str) -> None: ...

    def hold(self, owner: str) -> contextlib.AbstractContextManager[None]: ...


class Deliveries(Protocol):
    """Turns for computing subscription events (webhook intake goes first)."""

    async def turn(self) -> None: ...

    def delivered(self) -> None: ...


class ChangeFeed(Protocol):
    """Stock changes: live (``subscribe``) and past (``history``), by cursor. The changes are
    the feed's records (``sku``, ``location_id``, ``source``, ``cursor``, ``quantities``,
    ``previous``, ``movement``, ``occurred_at``, ``conflated``)."""

    @property
    def quota(self) -> SubscriptionQuota: ...

    @property
    def deliveries(self) -> Deliveries: ...

    def subscribe(self, accept: Callable[[Any], bool],
                  after: str | None) -> AsyncGenerator[Any, None]: ...

    async def history(self, accept: Callable[[Any], bool], after: str | None,
                      first: int) -> Any: ...

    async def check_cursor(self, after: str) -> None: ...

    async def shared(self, change: Any, what: Hashable,
                     compute: Callable[[], Awaitable[Any]]) -> Any: ...


class DiscrepancyIndex(Protocol):
    """The current discrepancies."""

    async def page(self, query: DiscrepancyFilter, first: int, after: str | None) -> Page: ...

    async def total(self, query: DiscrepancyFilter) -> int: ...


class DiscrepancyFeed(Protocol):
    """Discrepancies appearing, changing and resolving, live."""

    def subscribe(self, accept: Callable[[DiscrepancyEvent], bool]
                  ) -> AsyncGenerator[DiscrepancyEvent, None]: ...


class SyncStatus(Protocol):
    """How current the gateway is with each source system."""

    async def statuses(self, recent: int = 10) -> list[SourceStatus]: ...


class Reconciliation(Protocol):
    """What the schema reads of reconciliation."""

    @property
    def index(self) -> DiscrepancyIndex: ...

    @property
    def feed(self) -> DiscrepancyFeed: ...

    @property
    def health(self) -> SyncStatus: ...

    async def mark_volatile(self) -> None:
        """Make sure no cached response holds what is being read (it changes without an
        event on any SKU a response shows)."""
        ...


# -- telemetry ----------------------------------------------------------------------------------

class Lookup(Protocol):
    """One cache lookup under way: :meth:`hits` says how many of the SKUs were cached."""

    def hits(self, hits: int) -> None: ...


class Observer(Protocol):
    """Sees the resolvers' cache lookups and backend calls (traces, metrics)."""

    def cache_lookup(self, source: str, requested: int,
                     layer: str = "stock") -> contextlib.AbstractContextManager[Lookup]: ...

    def backend_transport(self, inner: httpx.AsyncBaseTransport,
                          backend: str) -> httpx.AsyncBaseTransport: ...


class SyncControl(Protocol):
    """What the schema reads and steers of sync: the audit trail, each target's push health,
    ``syncNow`` and the finished actions' feed (``gateway.sync.Sync``)."""

    @property
    def outbox(self) -> Outbox: ...

    @property
    def enabled(self) -> bool: ...

    def pushes_to(self, source: str) -> bool:
        """Whether sync writes to this backend (stock or items)."""
        ...

    async def now(self, skus: Sequence[str], locations: set[str] | None,
                  targets: frozenset[str] | None, items: bool) -> list[str]:
        """``Mutation.syncNow``: the ids of the actions recorded."""
        ...

    def finished(self, accept: Callable[[Finished], bool]) -> AsyncGenerator[Finished, None]:
        """The finished actions ``accept`` takes, on every replica."""
        ...


class HeldUnits(Protocol):
    """The units held by reservations, per location, of each SKU."""

    async def held(self, skus: Sequence[str]) -> dict[str, dict[str, int]]: ...


class _NoLookup:
    def hits(self, hits: int) -> None:
        pass


class NullObserver:
    """Records nothing."""

    @contextlib.contextmanager
    def cache_lookup(self, source: str, requested: int,
                     layer: str = "stock") -> Iterator[Lookup]:
        yield _NoLookup()

    def backend_transport(self, inner: httpx.AsyncBaseTransport,
                          backend: str) -> httpx.AsyncBaseTransport:
        return inner


NO_OBSERVER: Observer = NullObserver()

__all__ = ["NO_OBSERVER", "CacheUnavailable", "ChangeFeed", "Connector", "Deliveries",
           "DiscrepancyFeed", "DiscrepancyIndex", "Fetch", "GraphSettings", "HeldUnits", "Lookup",
           "MasterFetch", "NullObserver", "Observer", "Reconciliation", "RedisClient", "StockCache",
           "SubscriptionQuota", "SyncControl", "SyncStatus", "ViewsResult"]
