"""The write side of the connectors: what the sync layer asks a target system to become.

The sync layer (``gateway/sync``) derives actions from applied events and executes each one
through a target implementing :class:`StockTarget` or :class:`ItemTarget`; the connectors
(``resolvers/connectors/commerce.py`` for the web shop, ``resolvers/connectors/pos.py`` for the
POS) implement them in their vendor's current write API. Identifiers are unified (``sku``,
``location_id``), as everywhere in ``resolvers/``; the target maps them onto its own ids and answers
:attr:`Outcome.UNMAPPED` for one it does not know.

A write never raises for what the target answered: every answer is a :class:`WriteResult`.
Compare-and-set is the rule for stock: ``expected`` is what the caller believes the target holds
now; a target that holds something else answers :attr:`Outcome.STALE` with what it holds
(``actual``, re-read), and the caller recomputes. It never overwrites a value it did not
expect. The ``idempotency_key`` stays the same on every retry of one action, so a retry after a
lost answer takes effect once. The connectors send the vendor ``<key>:<belief>:<value>`` (the
belief being ``expected``, or what they read when it is None): the same write retried is the
same request, a write recomputed after STALE under the same action key is a new one (a vendor
refuses a key reused for other input). ``read_available`` raises
:class:`~resolvers.errors.BackendError` when the target cannot answer and returns None for a
cell it has no object for.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from resolvers.errors import BackendStatusError


@dataclass(frozen=True, slots=True)
class StockWrite:
    sku: str  # unified SKU
    location_id: str  # unified location code (e.g. "WH01")
    available: int  # the value the target's `available` must become
    expected: int | None  # what we believe the target holds now (compare-and-set); None: unknown
    idempotency_key: str  # stable per action attempt-set (same key on retry)
    reason: str = "correction"


@dataclass(frozen=True, slots=True)
class ItemWrite:
    sku: str
    name: str | None
    list_price: Decimal | None
    idempotency_key: str


class Outcome(StrEnum):
    DONE = "done"  # the target holds the desired value now
    STALE = "stale"  # the target held something other than `expected`: nothing written
    THROTTLED = "throttled"  # rate limited (429 / THROTTLED): retry after `retry_after`
    FAILED = "failed"  # any other failure (down, refused, malformed answer): retry later
    UNMAPPED = "unmapped"  # the target has no object for this SKU/location: nothing to write


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: Outcome
    actual: int | None = None  # what the target holds now (after DONE, or on STALE)
    retry_after: float | None = None  # seconds, for THROTTLED / 429
    error: str | None = None


class StockTarget(Protocol):
    name: str  # backend name, e.g. "commerce" / "pos"

    async def read_available(self, sku: str, location_id: str) -> int | None: ...

    async def set_available(self, write: StockWrite) -> WriteResult: ...


class ItemTarget(Protocol):
    name: str

    async def update_item(self, write: ItemWrite) -> WriteResult: ...


def refused(exc: BackendStatusError) -> WriteResult:
    """A backend's HTTP refusal as a write outcome: 429 (rate limited) is THROTTLED, anything
    else FAILED; its ``Retry-After`` is kept either way."""
    outcome = Outcome.THROTTLED if exc.status == 429 else Outcome.FAILED
    return WriteResult(outcome, retry_after=exc.retry_after, error=str(exc))
