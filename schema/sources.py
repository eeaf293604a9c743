"""Every system's view of a stock level, next to the system of record's (``StockLevel.views``,
and the sides of a discrepancy)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum

import strawberry

from resolvers.discrepancies import derived_on_hand
from resolvers.types import StockView, saturate
from schema.context import Ctx


@strawberry.enum(description="What a system's view of a stock level is for.")
class SourceRole(Enum):
    SYSTEM_OF_RECORD = "SYSTEM_OF_RECORD"
    ONLINE = "ONLINE"
    ERP_SNAPSHOT = "ERP_SNAPSHOT"


def age_seconds(moment: datetime) -> float:
    return round(max(0.0, (datetime.now(UTC) - moment).total_seconds()), 3)


@strawberry.type(description="One system's view of a stock level, next to the system of "
                             "record's. Quantities the system does not report are null.")
class SourceView:
    source: str = strawberry.field(description="Backend name.")
    system: str = strawberry.field(description="Its format: square, epcis, erp or shopify.")
    role: SourceRole = strawberry.field(description="SYSTEM_OF_RECORD (POS at stores, WMS at "
                                                    "warehouses), ONLINE (the web shop) or "
                                                    "ERP_SNAPSHOT (last night's ERP stock).")
    on_hand: int | None = strawberry.field(description="On hand (derived for the POS).")
    available: int | None = strawberry.field(description="Available to sell.")
    committed: int | None = strawberry.field(description="Committed to orders.")
    incoming: int | None = strawberry.field(description="On its way.")
    quality_control: int | None = strawberry.field(description="In quality control.")
    damaged: int | None = strawberry.field(description="Damaged.")
    as_of: datetime = strawberry.field(description="When this system last changed the value.")
    age_seconds: float = strawberry.field(description="Seconds since asOf.")

    @classmethod
    def of(cls, view: StockView, role: SourceRole, system: str) -> SourceView:
        q = view.quantities
        on_hand = derived_on_hand(q) if role is not SourceRole.ONLINE else q.on_hand
        return cls(source=view.source, system=system, role=role,
                   on_hand=None if on_hand is None else saturate(on_hand),
                   available=q.available, committed=q.committed, incoming=q.incoming,
                   quality_control=q.quality_control, damaged=q.damaged, as_of=view.as_of,
                   age_seconds=age_seconds(view.as_of))


async def source_views(info: Ctx, sku: str, location_id: str) -> list[SourceView]:
    """Every system's view of one cell: the system of record first, then the shop, the ERP."""
    readings = await info.context.loaders.source_views(sku, location_id)
    return [SourceView.of(r.view, SourceRole(r.role.value), r.system) for r in readings]


__all__ = ["SourceRole", "SourceView", "age_seconds", "source_views"]
