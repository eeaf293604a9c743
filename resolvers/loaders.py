"""Per-request state: the DataLoaders that batch every field's needs into the backends'
batch endpoints (one batched call per backend per kind of data, however many products and
locations a query touches: no N+1), what a response is made of (:class:`Freshness`), and what
every resolver gets as ``info.context`` (:class:`RequestContext`). The process-wide service
they read through is :class:`resolvers.graph.RetailGraph`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from redis.exceptions import RedisError
from strawberry.dataloader import DataLoader

from resolvers import merge
from resolvers.abc import CacheUnavailable, ChangeFeed, Reconciliation, SyncControl
from resolvers.access import OPEN, Principal
from resolvers.connectors import erp as erp_connector
from resolvers.discrepancies import Role
from resolvers.errors import BackendError
from resolvers.identity import IdentityMap
from resolvers.reservations import Reservations
from resolvers.store.client import optional
from resolvers.types import (
    LocationRecord,
    LocationType,
    MasterItem,
    PurchaseOrderLine,
    StockView,
)

if TYPE_CHECKING:
    from resolvers.graph import RetailGraph

log = logging.getLogger("retailgraph.graph")

V = TypeVar("V")


@dataclass(slots=True)
class SourceFreshness:
    newest: datetime | None = None
    oldest: datetime | None = None
    served_from: set[str] = field(default_factory=set)  # "cache" | "backend"
    stale: bool = False

    def see(self, as_of: datetime, origin: str) -> None:
        self.newest = as_of if self.newest is None else max(self.newest, as_of)
        self.oldest = as_of if self.oldest is None else min(self.oldest, as_of)
        self.served_from.add(origin)


@dataclass(slots=True)
class Freshness:
    """What a response is made of: per source, the age range of its values and their origin.

    ``tags`` name the entities read (``sku:<sku>``, ``locations``, ``products``); the
    response cache is invalidated through them. ``consulted`` names every backend the
    response depends on, whether or not it had values for it: a cached copy of the response
    is not served while one of them is down.
    """

    sources: dict[str, SourceFreshness] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    consulted: set[str] = field(default_factory=set)
    cache: str = "off"  # "on" | "off" | "unavailable"
    # Set by what must never be answered from the response cache (mutations, reservations).
    uncacheable: bool = False

    def see(self, source: str, as_of: datetime, origin: str) -> None:
        self.sources.setdefault(source, SourceFreshness()).see(as_of, origin)

    @property
    def stale(self) -> bool:
        return any(s.stale for s in self.sources.values())

    def summary(self) -> dict[str, Any]:
        return {"cache": self.cache, "sources": {
            name: {"newest": s.newest.isoformat() if s.newest else None,
                   "oldest": s.oldest.isoformat() if s.oldest else None,
                   "servedFrom": sorted(s.served_from), "stale": s.stale}
            for name, s in sorted(self.sources.items())}}


def _group(views: Sequence[StockView]) -> dict[str, list[StockView]]:
    out: dict[str, list[StockView]] = defaultdict(list)
    for view in views:
        out[view.sku].append(view)
    return out


class SourceReading(NamedTuple):
    """One system's view of a cell, what it is for, and the system's format."""

    view: StockView
    role: Role
    system: str


@dataclass
class Loaders:
    """Per-request DataLoaders, one per kind of backend data, reading through the cache.

    Each is built when first used: every subscription event renews its context's loaders,
    and most events (a shared payload, schema/events.py) read none."""

    graph: RetailGraph
    freshness: Freshness
    # Who is asking: every read below is limited to the principal's locations.
    principal: Principal = OPEN

    @cached_property
    def master(self) -> DataLoader[str, MasterItem | None]:
        return DataLoader(load_fn=self._load_master, max_batch_size=1000)

    @cached_property
    def store_stock(self) -> DataLoader[str, list[StockView]]:
        pos = self.graph.backends.pos
        return DataLoader(load_fn=lambda skus: self._load_views(
            pos.name, pos.counts, LocationType.STORE, skus), max_batch_size=1000)

    @cached_property
    def warehouse_stock(self) -> DataLoader[str, list[StockView]]:
        wms = self.graph.backends.wms
        return DataLoader(load_fn=lambda skus: self._load_views(
            wms.name, wms.balances, LocationType.WAREHOUSE, skus), max_batch_size=1000)

    @cached_property
    def purchase_orders(self) -> DataLoader[str, list[PurchaseOrderLine]]:
        return DataLoader(load_fn=self._load_purchase_orders, max_batch_size=1000)

    # The other systems' views, for discrepancies (Shopify: warehouses; ERP snapshot: all).
    @cached_property
    def online_stock(self) -> DataLoader[str, list[StockView]]:
        commerce = self.graph.backends.commerce
        return DataLoader(load_fn=lambda skus: self._load_views(
            commerce.name, commerce.levels, LocationType.WAREHOUSE, skus),
            max_batch_size=1000)

    @cached_property
    def erp_snapshot(self) -> DataLoader[str, list[StockView]]:
        erp = self.graph.backends.erp
        return DataLoader(load_fn=lambda skus: self._load_views(
            erp.name, erp.snapshot, None, skus), max_batch_size=1000)

    # Units held by reservations, per location, of each SKU.
    @cached_property
    def reserved(self) -> DataLoader[str, dict[str, int]]:
        return DataLoader(load_fn=self._load_reserved, max_batch_size=1000)

    async def _load_reserved(self, skus: list[str]) -> list[dict[str, int]]:
        units = self.graph.held
        if units is None:
            return [{} for _ in skus]
        try:
            with optional():  # a read does without them (the read deadline; none while sick)
                held = await units.held(skus)
        except (RedisError, OSError) as exc:
            log.debug("reservations not read (%s): stock shown without holds", exc)
            return [{} for _ in skus]
        return [held.get(sku, {}) for sku in skus]

    async def _backend(self, name: str, call: Awaitable[V]) -> V:
        """Await a backend call, keeping the backend's health current."""
        try:
            result = await call
        except BackendError as exc:
            self.graph.health.failed(name, str(exc))
            raise
        self.graph.health.ok(name)
        return result

    async def _load_views(self, source: str,
                          fetch: Callable[[Sequence[str], Sequence[str]],
                                          Awaitable[list[StockView]]],
                          location_type: LocationType | None,
                          skus: list[str]) -> list[list[StockView] | BaseException]:
        await self.graph.ready_catalog()
        location_ids = self.graph.location_ids(location_type)
        self.freshness.tags.update(f"sku:{s}" for s in skus)
        self.freshness.consulted.add(source)

        async def from_backend(missing: list[str]) -> list[StockView]:
            return await self._backend(source, fetch(missing, location_ids))

        with self.graph.observer.cache_lookup(source, len(skus)) as lookup:
            try:
                grouped, cached = await self._through_cache(source, skus, location_ids,
                                                            from_backend)
            except BackendError as exc:
                return [exc] * len(skus)
            lookup.hits(len(cached))
        stale = source in self.graph.health.down
        sees = self.principal.sees
        for sku, views in grouped.items():
            origin = "cache" if sku in cached else "backend"
            for view in views:
                # extensions.freshness tells only about locations the caller may read.
                if sees(view.location_id):
                    self.freshness.see(source, view.as_of, origin)
        if stale and cached:
            self.freshness.sources.setdefault(source, SourceFreshness()).stale = True
        return [grouped.get(s, []) for s in skus]

    async def _through_cache(self, source: str, skus: list[str], location_ids: list[str],
                             fetch: Callable[[list[str]], Awaitable[list[StockView]]],
                             ) -> tuple[dict[str, list[StockView]], set[str]]:
        cache = self.graph.cache
        if cache is None:
            return _group(await fetch(skus)), set()
        try:
            result = await cache.views(source, skus, location_ids, fetch)
        except CacheUnavailable:
            self.freshness.cache = "unavailable"
            return await cache.shared(source, skus, fetch), set()
        self.freshness.cache = "on"
        return result.views, result.from_cache

    async def _load_master(self, skus: list[str]) -> list[MasterItem | BaseException | None]:
        erp = self.graph.backends.erp
        self.freshness.tags.update(f"sku:{s}" for s in skus)
        self.freshness.consulted.add(erp.name)

        async def from_backend(missing: list[str]) -> dict[str, dict[str, Any]]:
            found = await self._backend(erp.name, erp.items(missing))
            return {sku: erp_connector.item_resource(item) for sku, item in found.items()}

        cache = self.graph.cache
        try:
            if cache is not None:
                try:
                    with self.graph.observer.cache_lookup(erp.name, len(skus),
                                                          "master") as lookup:
                        records, cached = await cache.masters(skus, from_backend)
                        lookup.hits(len(cached))
                    self.freshness.cache = "on"
                except CacheUnavailable:
                    self.freshness.cache = "unavailable"
                    records, cached = await cache.shared_masters(skus, from_backend), set()
            else:
                records, cached = await from_backend(skus), set()
        except BackendError as exc:
            return [exc] * len(skus)
        out: list[MasterItem | BaseException | None] = []
        for sku in skus:
            record = records.get(sku)
            if record is None:
                out.append(None)
                continue
            item = erp_connector.parse_item(erp_connector.Payload(erp.name, "cache", record),
                                            self.graph.catalog.identity if self.graph.catalog
                                            else IdentityMap())
            self.freshness.see(erp.name, item.as_of, "cache" if sku in cached else "backend")
            out.append(item)
        return out

    async def _load_purchase_orders(self, skus: list[str]
                                    ) -> list[list[PurchaseOrderLine] | BaseException]:
        erp = self.graph.backends.erp
        self.freshness.consulted.add(erp.name)
        try:
            lines = await self._backend(erp.name, erp.purchase_orders(skus))
        except BackendError as exc:
            return [exc] * len(skus)
        out: dict[str, list[PurchaseOrderLine]] = defaultdict(list)
        for line in lines:
            if self.principal.sees(line.location_id):
                out[line.sku].append(line)
        return [out.get(s, []) for s in skus]

    async def stock(self, sku: str, location_ids: Sequence[str] | None = None,
                    location_type: LocationType | None = None) -> list[merge.StockLevelRecord]:
        """Merged levels of a SKU from each location type's system of record."""
        catalog = await self.graph.ready_catalog()
        if self.principal.locations is not None:  # only the principal's locations, silently
            location_ids = self.principal.visible(
                catalog.locations if location_ids is None else location_ids)
        types = [location_type] if location_type else list(LocationType)
        if location_ids is not None:
            wanted = {catalog.locations[x].type for x in location_ids if x in catalog.locations}
            types = [t for t in types if t in wanted]
        loaders = {LocationType.STORE: self.store_stock,
                   LocationType.WAREHOUSE: self.warehouse_stock}
        master, chunks, reserved = await asyncio.gather(
            self.master.load(sku), asyncio.gather(*(loaders[t].load(sku) for t in types)),
            self.reserved.load(sku))
        views = [v for chunk in chunks for v in chunk]
        safety = master.safety_stock if master else 0
        stale = set(self.graph.health.down) if self.graph.cache is not None else set()
        return merge.levels_for(views, catalog.locations, safety, location_ids, stale,
                                reserved)

    async def locations(self) -> list[LocationRecord]:
        """The locations this request's principal may see, ordered by id."""
        catalog = await self.graph.ready_catalog()
        return [r for r in catalog.locations.values() if self.principal.sees(r.id)]

    async def source_views(self, sku: str, location_id: str) -> list[SourceReading]:
        """Every system's view of one cell: the system of record first, then the shop (at
        warehouses), the ERP's snapshot. A system that cannot be read is left out."""
        catalog = await self.graph.ready_catalog()
        location = catalog.locations.get(location_id)
        if location is None:
            return []
        store = location.type is LocationType.STORE
        wanted = [(self.store_stock if store else self.warehouse_stock, Role.SYSTEM_OF_RECORD)]
        if not store:
            wanted.append((self.online_stock, Role.ONLINE))
        wanted.append((self.erp_snapshot, Role.ERP_SNAPSHOT))
        out = []
        for loader, role in wanted:
            try:
                views = await loader.load(sku)
            except BackendError:
                continue  # that system is down: the others are still worth showing
            for view in views:
                if view.location_id == location_id:
                    system = self.graph.settings.backends[view.source].format
                    out.append(SourceReading(view, role, system))
        return out

    async def location(self, location_id: str) -> LocationRecord | None:
        """One location; :class:`~resolvers.access.Forbidden` outside the principal's locations."""
        self.principal.require_location(location_id)
        catalog = await self.graph.ready_catalog()
        return catalog.locations.get(location_id)


@dataclass(slots=True)
class RequestContext:
    """What every resolver gets as ``info.context``: the service and this request's loaders."""

    graph: RetailGraph
    loaders: Loaders
    # The replica's live stock changes and its reconciliation (None: Redis not connected).
    feed: ChangeFeed | None = None
    reconciliation: Reconciliation | None = None
    # Sync's audit trail and controls, and the reservations service (None: not running).
    sync: SyncControl | None = None
    reservations: Reservations | None = None
    request: Any = None
    response: Any = None
    # WebSocket connection_init payload (credentials live here, see gateway/http/auth.py).
    connection_params: dict[str, Any] | None = None
    # FORBIDDEN errors of list fields that resolved to [] (schema.permissions.ForbiddenErrors).
    errors: list[Any] = field(default_factory=list)

    @property
    def principal(self) -> Principal:
        return self.loaders.principal

    @property
    def client(self) -> str:
        """Who this request counts against (rate limit, subscription limit): the caller, or
        its address when it is not authenticated (resolvers.access.Principal.client_key)."""
        return self.principal.client_key(getattr(self.request, "scope", {}).get("client"))

    def for_operation(self) -> RequestContext:
        """A context for one more operation on the same connection (a WebSocket carries
        many): the same caller, fresh loaders (nothing read by an earlier operation is
        answered from memory), its own errors."""
        return replace(self, loaders=self.graph.loaders(None, self.principal), errors=[])

    def renew_loaders(self) -> None:
        """Fresh loaders for the next event of a subscription: each event is resolved from
        what is current, like a query of its own."""
        self.loaders = self.graph.loaders(None, self.principal)
