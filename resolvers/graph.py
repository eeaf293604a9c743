"""The retail graph service: the connectors, the catalog that resolves identity, backend
health, and the per-request loaders it hands out (:mod:`resolvers.loaders`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from resolvers.abc import (
    NO_OBSERVER,
    Connector,
    GraphSettings,
    HeldUnits,
    Observer,
    StockCache,
)
from resolvers.access import OPEN, Principal
from resolvers.connectors.commerce import CommerceConnector
from resolvers.connectors.erp import ErpConnector
from resolvers.connectors.pos import PosConnector
from resolvers.connectors.wms import WmsConnector
from resolvers.errors import BackendError
from resolvers.identity import IdentityMap
from resolvers.loaders import Freshness, Loaders
from resolvers.types import (
    LocationRecord,
    LocationType,
    MasterItem,
    NativeLocation,
    OnlineListing,
    StockView,
    StoreListing,
    UnmappedIdentifier,
)

log = logging.getLogger("retailgraph.graph")
K = TypeVar("K")
V = TypeVar("V")


class BackendHealth:
    """Which backends failed their last call; their cached values are served as stale."""

    def __init__(self) -> None:
        self.down: dict[str, str] = {}

    def failed(self, backend: str, reason: str) -> None:
        if backend not in self.down:
            log.warning("backend %s is down: %s", backend, reason)
        self.down[backend] = reason

    def ok(self, backend: str) -> None:
        if self.down.pop(backend, None) is not None:
            log.info("backend %s is back", backend)


class CatalogNotReady(BackendError):
    """Identity could not be resolved yet because a catalog has never loaded."""

    code = "CATALOG_NOT_READY"


@dataclass(slots=True)
class Catalog:
    """Everything learned from the systems' catalogs; swapped whole on each refresh."""

    identity: IdentityMap
    items: list[MasterItem]
    locations: dict[str, LocationRecord]
    online: dict[str, OnlineListing]
    store: dict[str, StoreListing]
    loaded_at: datetime
    missing: tuple[str, ...] = ()  # backends whose catalog failed to load
    items_by_sku: dict[str, MasterItem] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.items_by_sku = {item.sku: item for item in self.items}


@dataclass(slots=True)
class Backends:
    """One connector per backend, each on its own long-lived HTTP client."""

    pos: PosConnector
    wms: WmsConnector
    erp: ErpConnector
    commerce: CommerceConnector

    @classmethod
    def from_settings(cls, settings: GraphSettings, identity: IdentityMap,
                      transport: httpx.AsyncBaseTransport | None = None,
                      observer: Observer = NO_OBSERVER) -> Backends:
        return cls(
            pos=PosConnector(settings.backend_for("square"), identity, transport, observer),
            wms=WmsConnector(settings.backend_for("epcis"), identity, transport, observer),
            erp=ErpConnector(settings.backend_for("erp"), identity, transport, observer),
            commerce=CommerceConnector(settings.backend_for("shopify"), identity, transport,
                                       observer),
        )

    def all(self) -> tuple[Connector, ...]:
        return (self.pos, self.wms, self.erp, self.commerce)

    def use_identity(self, identity: IdentityMap) -> None:
        for connector in self.all():
            connector.identity = identity

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.all()))


class RetailGraph:
    """Process-wide service behind the schema; cheap per-request state lives in Loaders."""

    def __init__(self, settings: GraphSettings, backends: Backends,
                 cache: StockCache | None = None, observer: Observer = NO_OBSERVER,
                 held: HeldUnits | None = None) -> None:
        self.settings = settings
        self.backends = backends
        self.cache = cache
        self.observer = observer
        # The units reservations hold (resolvers/store/reservations.py); None: no Redis.
        self.held = held
        self.catalog: Catalog | None = None
        self.health = BackendHealth()
        self._refresh_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: GraphSettings, cache: StockCache | None = None,
                      transport: httpx.AsyncBaseTransport | None = None,
                      observer: Observer = NO_OBSERVER,
                      held: HeldUnits | None = None) -> RetailGraph:
        return cls(settings, Backends.from_settings(settings, IdentityMap(), transport, observer),
                   cache, observer, held)

    async def aclose(self) -> None:
        await self.backends.aclose()

    # -- catalog -------------------------------------------------------------------------------

    async def refresh_catalog(self) -> Catalog:
        """Reload every catalog and rebuild identity; a failing backend keeps its last data."""
        async with self._refresh_lock:
            b = self.backends
            names = ("erp items", "erp locations", "commerce products", "pos catalog",
                     "commerce locations", "pos locations", "wms sites")
            # Every catalog is a list; seven awaitables are past gather's typed overloads.
            results: list[list[Any] | BaseException] = await asyncio.gather(
                b.erp.all_items(), b.erp.locations(), b.commerce.products(), b.pos.catalog(),
                b.commerce.locations(), b.pos.locations(), b.wms.sites(),
                return_exceptions=True)
            previous = self.catalog
            failed = [n for n, r in zip(names, results, strict=True) if isinstance(r, Exception)]
            for name, result in zip(names, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("catalog %s failed: %s", name, result)
            if ("erp items" in failed or "erp locations" in failed) and previous is None:
                err = next(r for r in results[:2] if isinstance(r, BaseException))
                raise CatalogNotReady(b.erp.name, f"item master not loaded yet: {err}")

            def pick(i: int, fallback: list[Any]) -> list[Any]:
                value = results[i]
                return fallback if isinstance(value, BaseException) else list(value)

            old = previous
            items: list[MasterItem] = pick(0, old.items if old else [])
            locations: list[LocationRecord] = pick(1, list(old.locations.values()) if old else [])
            online: list[OnlineListing] = pick(2, list(old.online.values()) if old else [])
            store: list[StoreListing] = pick(3, list(old.store.values()) if old else [])
            identity = IdentityMap()
            if self.settings.mapping_file:
                identity.load_mapping_file(self.settings.mapping_file)
            identity.learn_master(items, locations)
            identity.learn_online(online)
            identity.learn_store(store)
            natives: list[NativeLocation] = [*pick(4, []), *pick(5, []), *pick(6, [])]
            identity.check_locations(natives)
            catalog = Catalog(
                identity=identity, items=items,
                locations={loc.id: loc for loc in sorted(locations, key=lambda x: x.id)},
                online={x.sku: x for x in online if x.sku in identity.known_skus},
                store={x.sku: x for x in store if x.sku and x.sku in identity.known_skus},
                loaded_at=datetime.now(UTC), missing=tuple(failed))
            self.backends.use_identity(identity)
            self.catalog = catalog
            return catalog

    async def ready_catalog(self) -> Catalog:
        if self.catalog is None:
            return await self.refresh_catalog()
        return self.catalog

    async def probe(self, only_down: bool = False) -> None:
        """Ask each backend a cheap question, so health is known even while every read
        is served from the cache (cached values of a down backend are flagged stale)."""
        b = self.backends
        checks = {b.pos.name: b.pos.locations, b.wms.name: b.wms.sites,
                  b.erp.name: b.erp.locations, b.commerce.name: b.commerce.locations}
        names = [n for n in checks if not only_down or n in self.health.down]

        async def check(name: str) -> None:
            try:
                await checks[name]()
            except BackendError as exc:
                self.health.failed(name, str(exc))
            else:
                self.health.ok(name)

        await asyncio.gather(*(check(n) for n in names))

    def unmapped(self) -> list[UnmappedIdentifier]:
        if self.catalog is None:
            return []
        return sorted(self.catalog.identity.unmapped.values(),
                      key=lambda u: (u.namespace, u.kind, u.value))

    def system_of_record(self, location_id: str) -> str | None:
        """Backend name that is the system of record for stock at a location."""
        catalog = self.catalog
        location = catalog.locations.get(location_id) if catalog else None
        if location is None:
            return None
        backend = self.backends.pos if location.type is LocationType.STORE else self.backends.wms
        return str(backend.name)

    async def current_view(self, sku: str, location_id: str) -> StockView | None:
        """The system of record's complete view of one cell, read through the cache."""
        catalog = await self.ready_catalog()
        location = catalog.locations.get(location_id)
        if location is None:
            return None
        loaders = self.loaders()
        loader = (loaders.store_stock if location.type is LocationType.STORE
                  else loaders.warehouse_stock)
        views = await loader.load(sku)
        return next((v for v in views if v.location_id == location_id), None)

    def master_item(self, sku: str) -> MasterItem | None:
        return self.catalog.items_by_sku.get(sku) if self.catalog else None

    def location_ids(self, location_type: LocationType | None) -> list[str]:
        """Ids of the locations of a type (None: all), ordered by id."""
        assert self.catalog is not None
        return [lid for lid, loc in self.catalog.locations.items()
                if location_type is None or loc.type is location_type]

    def loaders(self, freshness: Freshness | None = None,
                principal: Principal = OPEN) -> Loaders:
        return Loaders(self, freshness or Freshness(), principal)
