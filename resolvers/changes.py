"""What a client asks of the stock change stream: which cells, from where, and the errors of
its cursors. The stream itself is the gateway's (``gateway.events.changes.ChangeFeed``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from resolvers.errors import BadUserInput

# A filter names at most this many SKUs, and as many locations (BAD_USER_INPUT beyond).
MAX_FILTER_IDS = 1000


class Cell(Protocol):
    """A change at one cell, from one source."""

    @property
    def sku(self) -> str: ...

    @property
    def location_id(self) -> str: ...

    @property
    def source(self) -> str: ...


class InvalidCursor(BadUserInput, ValueError):
    """A cursor that is not one of ours (BAD_USER_INPUT)."""


@dataclass(frozen=True, slots=True)
class CellFilter:
    """Which changes a client asked for: SKUs, locations (None: all) and, per location,
    which sources count. ChangeFeed.history reads the indexes of the SKUs or locations
    named, so its cost follows what matches, not the length of the stream."""

    skus: frozenset[str] | None
    locations: frozenset[str] | None
    sources: Callable[[str, str], bool] | None = None  # (location_id, source)

    def cell(self, sku: str, location_id: str, source: str) -> bool:
        return ((self.skus is None or sku in self.skus)
                and (self.locations is None or location_id in self.locations)
                and (self.sources is None or self.sources(location_id, source)))

    def __call__(self, change: Cell) -> bool:
        return self.cell(change.sku, change.location_id, change.source)


def make_filter(skus: Iterable[str] | None, location_ids: Iterable[str] | None,
                sources: Callable[[str, str], bool] | None = None) -> CellFilter:
    return CellFilter(frozenset(skus) if skus is not None else None,
                      frozenset(location_ids) if location_ids is not None else None, sources)


__all__ = ["MAX_FILTER_IDS", "Cell", "CellFilter", "InvalidCursor",
           "make_filter"]
