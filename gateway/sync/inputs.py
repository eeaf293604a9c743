"""What the sync rules read: the system of record's view and the item master through the
cache (read through to the backends where it has no copy: the same values every query sees),
and what the cache holds of the shop's level (its webhooks keep it current; where it holds
none the executor asks the shop itself)."""

from __future__ import annotations

from typing import Any

from resolvers.graph import RetailGraph
from resolvers.store.cache import parse_views
from resolvers.store.keys import views_key


class CachedInputs:
    """:class:`gateway.sync.executor.StockInputs` over the graph's loaders and cache."""

    def __init__(self, graph: RetailGraph, redis: Any) -> None:
        self.graph = graph
        self.redis = redis

    async def record_available(self, sku: str, location_id: str) -> int | None:
        view = await self.graph.current_view(sku, location_id)
        return None if view is None else view.quantities.available

    async def safety_stock(self, sku: str) -> int:
        master = await self.graph.loaders().master.load(sku)
        return master.safety_stock if master is not None else 0

    async def online_available(self, sku: str, location_id: str) -> int | None:
        """The cached shop level, never read through: a read of the shop's level would
        cache its on-hand and committed too, which its webhooks never update."""
        source = self.graph.backends.commerce.name
        raw = await self.redis.hgetall(views_key(sku, source))
        view = parse_views(sku, source, raw, [location_id])[1].get(location_id)
        return None if view is None else view.quantities.available
