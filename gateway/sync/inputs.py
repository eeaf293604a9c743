"""What the sync rules read, from the cache (read through to the backends where it has no
copy): the same values every query sees."""

from __future__ import annotations

from resolvers.graph import RetailGraph


class CachedInputs:
    """:class:`gateway.sync.executor.StockInputs` over the graph's loaders."""

    def __init__(self, graph: RetailGraph) -> None:
        self.graph = graph

    async def record_available(self, sku: str, location_id: str) -> int | None:
        view = await self.graph.current_view(sku, location_id)
        return None if view is None else view.quantities.available

    async def safety_stock(self, sku: str) -> int:
        master = await self.graph.loaders().master.load(sku)
        return master.safety_stock if master is not None else 0

    async def online_available(self, sku: str, location_id: str) -> int | None:
        views = await self.graph.loaders().online_stock.load(sku)
        view = next((v for v in views if v.location_id == location_id), None)
        return None if view is None else view.quantities.available
