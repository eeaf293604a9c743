"""Where the systems disagree: what a discrepancy is, how a cell is judged, where they are kept.

A *cell* is one SKU at one location. Up to three systems have a view of it besides the
gateway's own cache: the system of record (POS at stores, WMS at warehouses), the web shop
(warehouses only: Shopify's ``available``) and the ERP's nightly snapshot (``on_hand``).
:func:`assess` compares them like with like and returns a :class:`Finding` per disagreement:

- ``ONLINE_OVERSELL_RISK``: the shop offers more than the warehouse can ship (commerce
  ``available`` > WMS ``available``). Delta: the units the shop could sell that do not exist.
- ``ERP_SNAPSHOT_DRIFT`` (warehouses) / ``POS_ERP_STORE_COUNT`` (stores): the ERP snapshot's
  on-hand differs from the system of record's by more than the movements since the snapshot
  explain. Delta: the unexplained units (snapshot minus the record's on-hand at snapshot time).
- ``CACHE_DRIFT``: the gateway's cache disagrees with its own backend (found by reconciliation
  runs, which repair it), or holds a version from the future: a timestamp version further
  ahead of the clock than ``max_clock_skew_seconds``, or a higher version than its backend's
  although the backend changed after it (a sequence number sent ahead of the source's own).
  Such a cell would win over every genuine event, so it is a drift even where the values
  agree, and its repair replaces it whatever its version.

Lagging or wrong: a view older than the last movement it has not seen is ``LAGGING`` (it may
catch up by itself: a snapshot taken before today's sales, a stock feed a few seconds behind);
otherwise it is ``WRONG``. For the ERP the movements are the system of record's history of the
cell (recorded per cell as events are applied, :class:`MovementHistory`): the record's on-hand
at the snapshot's time is what the snapshot should say; when that is unknown and the record has
moved since the snapshot, the difference is LAGGING.

The records and rules here are pure; ``gateway/reconcile/discrepancies.py`` keeps them in Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

from resolvers.types import LocationType, Quantities, StockView
from resolvers.values import epoch_micros, is_sequence, version_number


class Kind(StrEnum):
    ONLINE_OVERSELL_RISK = "ONLINE_OVERSELL_RISK"
    ERP_SNAPSHOT_DRIFT = "ERP_SNAPSHOT_DRIFT"
    POS_ERP_STORE_COUNT = "POS_ERP_STORE_COUNT"
    CACHE_DRIFT = "CACHE_DRIFT"


class Status(StrEnum):
    LAGGING = "LAGGING"
    WRONG = "WRONG"


class Severity(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return SEVERITY_ORDER.index(self)

    def lower(self) -> Severity:
        return SEVERITY_ORDER[max(0, self.rank - 1)]


SEVERITY_ORDER = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


class Role(StrEnum):
    SYSTEM_OF_RECORD = "SYSTEM_OF_RECORD"
    ONLINE = "ONLINE"
    ERP_SNAPSHOT = "ERP_SNAPSHOT"


class Transition(StrEnum):
    APPEARED = "APPEARED"
    UPDATED = "UPDATED"
    RESOLVED = "RESOLVED"


# -- views -----------------------------------------------------------------------------------

def derived_on_hand(q: Quantities) -> int | None:
    """On-hand as the merge rules count it (Square has no on-hand: its on-shelf states add up)."""
    if q.on_hand is not None:
        return q.on_hand
    a, c, qc, d = q.available, q.committed, q.quality_control, q.damaged
    if a is None and c is None and qc is None and d is None:
        return None
    return (a or 0) + (c or 0) + (qc or 0) + (d or 0)


def iso_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class Side:
    """One system's value in a finding: which quantity, how much, as of when, read from where."""

    source: str
    role: Role
    quantity: str  # "onHand" | "available"
    value: int
    as_of: datetime
    origin: str  # "cache" | "backend"

    def encode(self) -> list[Any]:
        return [self.source, self.role.value, self.quantity, self.value, iso_time(self.as_of),
                self.origin]

    @classmethod
    def decode(cls, raw: list[Any]) -> Side:
        return cls(raw[0], Role(raw[1]), raw[2], int(raw[3]), parse_time(raw[4]), raw[5])


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement at one cell. ``source`` is the view found lagging or wrong."""

    sku: str
    location_id: str
    kind: Kind
    status: Status
    severity: Severity
    delta: int
    source: str
    sides: tuple[Side, ...]
    detected_at: datetime
    explained: int | None = None  # units the movements since the older view account for
    last_movement_at: datetime | None = None
    message: str = ""
    since: datetime | None = None  # first detected (kept by the index across updates)

    @property
    def slot(self) -> str:
        """The kind as the index keys it: cache drift once per drifting source."""
        return f"{self.kind.value}:{self.source}" if self.kind is Kind.CACHE_DRIFT \
            else self.kind.value

    @property
    def key(self) -> str:
        return f"{self.location_id}|{self.sku}|{self.slot}"

    @property
    def signature(self) -> str:
        """What a subscriber is told about when it changes (not mere ageing)."""
        return f"{self.status.value}|{self.severity.value}|{self.delta}"

    def encode(self) -> bytes:
        return orjson.dumps({
            "sku": self.sku, "loc": self.location_id, "kind": self.kind.value,
            "status": self.status.value, "severity": self.severity.value, "delta": self.delta,
            "source": self.source, "sides": [s.encode() for s in self.sides],
            "explained": self.explained,
            "moved": iso_time(self.last_movement_at) if self.last_movement_at else None,
            "msg": self.message,
            # Last, so the index can tell a re-judgement that found the same (UPDATE_LUA).
            "at": iso_time(self.detected_at)})

    @classmethod
    def decode(cls, raw: bytes | str, since: str | bytes | None = None) -> Finding:
        d = orjson.loads(raw)
        since_text = since.decode() if isinstance(since, bytes) else since
        return cls(sku=d["sku"], location_id=d["loc"], kind=Kind(d["kind"]),
                   status=Status(d["status"]), severity=Severity(d["severity"]),
                   delta=int(d["delta"]), source=d["source"],
                   sides=tuple(Side.decode(s) for s in d["sides"]),
                   detected_at=parse_time(d["at"]), explained=d.get("explained"),
                   last_movement_at=parse_time(d["moved"]) if d.get("moved") else None,
                   message=d.get("msg", ""),
                   since=parse_time(since_text) if since_text else None)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    before: int | None
    after: int


@dataclass(frozen=True, slots=True)
class History:
    """A cell's recent on-hand changes at its system of record, oldest first."""

    entries: tuple[HistoryEntry, ...] = ()

    @property
    def last_movement(self) -> datetime | None:
        return self.entries[-1].at if self.entries else None

    def on_hand_at(self, moment: datetime) -> int | None:
        """On-hand at ``moment`` if the history tells (None when it starts later, unknown)."""
        known: int | None = None
        for entry in self.entries:
            if entry.at <= moment:
                known = entry.after
            else:
                return known if known is not None else entry.before
        return known


# -- judging one cell ------------------------------------------------------------------------

@dataclass(slots=True)
class CellViews:
    """What each system says about one cell (None: no view, or not read)."""

    sku: str
    location_id: str
    location_type: LocationType
    record: StockView | None = None
    erp: StockView | None = None
    online: StockView | None = None
    origins: dict[str, str] = field(default_factory=dict)  # source -> "cache" | "backend"

    def origin(self, view: StockView) -> str:
        return self.origins.get(view.source, "cache")


def _drift_severity(delta: int, reference: int) -> Severity:
    size = abs(delta)
    ratio = size / max(reference, 1)
    if size >= 25 or (ratio >= 0.5 and size >= 5):
        return Severity.HIGH
    if size >= 5 or ratio >= 0.2:
        return Severity.MEDIUM
    return Severity.LOW


def _oversell_severity(delta: int, warehouse_available: int) -> Severity:
    if warehouse_available <= 0 or delta >= 10:
        return Severity.CRITICAL
    if delta >= 5:
        return Severity.HIGH
    return Severity.MEDIUM


def assess(cell: CellViews, history: History | None, tolerance: int,
           now: datetime) -> list[Finding]:
    """The cross-system findings at one cell (cache drift is judged by :func:`cache_drift`)."""
    out: list[Finding] = []
    record = cell.record
    if record is None:
        return out
    history = history or History()
    moved_at = max(filter(None, (record.as_of, history.last_movement)))
    if cell.erp is not None:
        found = _snapshot_drift(cell, cell.erp, record, history, moved_at, tolerance, now)
        if found is not None:
            out.append(found)
    online = cell.online
    if online is not None and cell.location_type is LocationType.WAREHOUSE:
        shop, warehouse = online.quantities.available, record.quantities.available
        if shop is not None and warehouse is not None and shop - warehouse > tolerance:
            delta = shop - warehouse
            lagging = moved_at > online.as_of
            severity = _oversell_severity(delta, warehouse)
            status = Status.LAGGING if lagging else Status.WRONG
            message = (f"the web shop offers {shop} but the warehouse has {warehouse} "
                       f"available: {delta} unit(s) could be sold that cannot ship")
            if lagging:
                message += " (the shop has not caught up with the warehouse's last movement)"
            out.append(Finding(
                sku=cell.sku, location_id=cell.location_id, kind=Kind.ONLINE_OVERSELL_RISK,
                status=status, severity=severity.lower() if lagging else severity,
                delta=delta, source=online.source, detected_at=now, last_movement_at=moved_at,
                sides=(_side(cell, online, Role.ONLINE, "available"),
                       _side(cell, record, Role.SYSTEM_OF_RECORD, "available")),
                message=message))
    return out


def _side(cell: CellViews, view: StockView, role: Role, quantity: str = "onHand") -> Side:
    value = (view.quantities.available if quantity == "available"
             else derived_on_hand(view.quantities))
    return Side(view.source, role, quantity, int(value or 0), view.as_of, cell.origin(view))


def _snapshot_drift(cell: CellViews, erp: StockView, record: StockView, history: History,
                    moved_at: datetime, tolerance: int, now: datetime) -> Finding | None:
    snapshot, current = erp.quantities.on_hand, derived_on_hand(record.quantities)
    if snapshot is None or current is None:
        return None
    diff = snapshot - current
    if abs(diff) <= tolerance:
        return None
    moved = moved_at > erp.as_of
    at_snapshot = current if not moved else history.on_hand_at(erp.as_of)
    store = cell.location_type is LocationType.STORE
    kind = Kind.POS_ERP_STORE_COUNT if store else Kind.ERP_SNAPSHOT_DRIFT
    what = "store count" if store else "warehouse on-hand"
    explained: int | None = None
    if at_snapshot is not None:
        residual = snapshot - at_snapshot
        explained = diff - residual
        if abs(residual) <= tolerance:
            status, delta = Status.LAGGING, diff
            message = (f"ERP snapshot says {snapshot}, the {what} is {current}: the "
                       f"{abs(diff)} unit(s) moved since the snapshot explain it")
        else:
            status, delta = Status.WRONG, residual
            message = (f"ERP snapshot says {snapshot}, the {what} was {at_snapshot} at the "
                       f"snapshot and is {current} now: {residual:+d} unit(s) unexplained")
    else:
        status, delta = Status.LAGGING, diff
        message = (f"ERP snapshot says {snapshot}, the {what} is {current}; it moved since the "
                   "snapshot and the movements are not all known")
    severity = Severity.LOW if status is Status.LAGGING else _drift_severity(delta, current)
    return Finding(
        sku=cell.sku, location_id=cell.location_id, kind=kind, status=status,
        severity=severity, delta=delta, source=erp.source, detected_at=now,
        explained=explained, last_movement_at=moved_at, message=message,
        sides=(_side(cell, erp, Role.ERP_SNAPSHOT), _side(cell, record, Role.SYSTEM_OF_RECORD)))


QUANTITY_NAMES = {"on_hand": "onHand", "available": "available", "committed": "committed",
                  "incoming": "incoming", "quality_control": "qualityControl",
                  "damaged": "damaged"}
ONLINE_COMPARED = ("available",)


def in_the_future(backend: StockView, cached: StockView, now: datetime,
                  max_skew_seconds: float) -> bool:
    """Whether the cached cell's version lies in the future: ahead of its backend's although
    the backend changed more than the allowed clock skew after the cached state (a version
    that high was never the source's), or, for timestamp versions, further ahead of ``now``
    than that skew. Either would win over every genuine event to come. (A cached version
    ahead of the backend's is otherwise an event that arrived after the backend was read.)"""
    held = version_number(cached.version, cached.as_of)
    if held <= version_number(backend.version, backend.as_of):
        return False
    if (backend.as_of - cached.as_of).total_seconds() > max_skew_seconds:
        return True
    horizon = epoch_micros(now + timedelta(seconds=max_skew_seconds))
    return not is_sequence(backend.version) and held > horizon


def in_flight(backend: StockView, cached: StockView, now: datetime, grace_seconds: float,
              max_skew_seconds: float = 300.0) -> bool:
    """Whether the backend is ahead of the cached cell by a change younger than the grace:
    its webhook may still be on the way (LAGGING). A cached cell at the backend's own version
    that disagrees cannot be waiting for anything (WRONG), nor can one behind a change older
    than the grace."""
    if in_the_future(backend, cached, now, max_skew_seconds):
        return False
    if version_number(cached.version, cached.as_of) >= version_number(backend.version,
                                                                      backend.as_of):
        return False
    return (now - backend.as_of).total_seconds() <= grace_seconds


def cache_drift(backend: StockView, cached: StockView | None, role: Role, now: datetime,
                grace_seconds: float, max_skew_seconds: float = 300.0) -> Finding | None:
    """The cache's cell against the backend's own answer; None when they agree or the cache
    is newer than the read (an event arrived after it), unless its version lies in the
    future (:func:`in_the_future`: a drift whatever the values, repaired by replacing).
    LAGGING when it is :func:`in_flight`, else WRONG."""
    if cached is None:
        return None
    future = in_the_future(backend, cached, now, max_skew_seconds)
    if not future and version_number(cached.version, cached.as_of) > version_number(
            backend.version, backend.as_of):
        return None
    differing = []
    # The shop's stock channel (its ``inventory_levels/update`` webhook) carries ``available``
    # only, so its other quantities in the cache age between reads by design: only
    # ``available`` is compared for it.
    for name in ONLINE_COMPARED if role is Role.ONLINE else QUANTITY_NAMES:
        b, c = getattr(backend.quantities, name), getattr(cached.quantities, name)
        if b is not None and c is not None and b != c:
            differing.append((name, c - b))
    if not differing and not future:
        return None
    main = "available" if role is Role.ONLINE else "on_hand"
    b_main = (backend.quantities.available if role is Role.ONLINE
              else derived_on_hand(backend.quantities))
    c_main = (cached.quantities.available if role is Role.ONLINE
              else derived_on_hand(cached.quantities))
    delta = (c_main - b_main) if b_main is not None and c_main is not None else 0
    if delta == 0 and differing:
        delta = max((d for _, d in differing), key=abs)
    lagging = in_flight(backend, cached, now, grace_seconds, max_skew_seconds)
    severity = Severity.HIGH if role is Role.SYSTEM_OF_RECORD else Severity.MEDIUM
    fields_text = ", ".join(f"{QUANTITY_NAMES[n]} {d:+d}" for n, d in differing)
    message = f"the gateway's cache of {backend.source} differs from {backend.source} itself " \
              f"({fields_text})"
    if future:
        message = (f"the gateway's cache of {backend.source} holds version {cached.version} "
                   f"from the future (the backend's is {backend.version}): no later event "
                   f"would apply" + (f" ({fields_text})" if differing else ""))
    if lagging:
        message += "; the change is seconds old, its webhook may still be on the way"
    quantity = QUANTITY_NAMES[main]
    sides = (Side(backend.source, role, quantity, int(b_main or 0), backend.as_of, "backend"),
             Side(backend.source, role, quantity, int(c_main or 0), cached.as_of, "cache"))
    return Finding(sku=backend.sku, location_id=backend.location_id, kind=Kind.CACHE_DRIFT,
                   status=Status.LAGGING if lagging else Status.WRONG,
                   severity=severity.lower() if lagging else severity, delta=delta,
                   source=backend.source, sides=sides, detected_at=now,
                   last_movement_at=backend.as_of, message=message)


def cell_slots(location_type: LocationType, sources: Iterable[str] = ()) -> list[str]:
    """Every slot a fully judged cell can have (cache drift per given source)."""
    slots = [Kind.POS_ERP_STORE_COUNT.value if location_type is LocationType.STORE
             else Kind.ERP_SNAPSHOT_DRIFT.value]
    if location_type is LocationType.WAREHOUSE:
        slots.append(Kind.ONLINE_OVERSELL_RISK.value)
    slots += [f"{Kind.CACHE_DRIFT.value}:{s}" for s in sources]
    return slots


@dataclass(frozen=True, slots=True)
class CellUpdate:
    """The judgement of one cell: ``slots`` were evaluated, ``findings`` are what was found."""

    sku: str
    location_id: str
    slots: tuple[str, ...]
    findings: tuple[Finding, ...]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a discrepancy listing, in order (location, SKU, kind)."""

    findings: list[Finding]
    cursors: list[str]
    end_cursor: str | None
    has_more: bool


@dataclass(frozen=True, slots=True)
class DiscrepancyFilter:
    """Filters of a discrepancy listing or subscription."""

    location_ids: frozenset[str] | None = None
    skus: frozenset[str] | None = None
    min_delta: int = 0
    kinds: frozenset[Kind] | None = None
    statuses: frozenset[Status] | None = None
    min_severity: Severity = Severity.LOW

    def accepts(self, f: Finding) -> bool:
        return ((self.location_ids is None or f.location_id in self.location_ids)
                and (self.skus is None or f.sku in self.skus)
                and abs(f.delta) >= self.min_delta
                and (self.kinds is None or f.kind in self.kinds)
                and (self.statuses is None or f.status in self.statuses)
                and f.severity.rank >= self.min_severity.rank)


# -- live transitions ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DiscrepancyEvent:
    """A discrepancy appeared, changed (status, severity or delta) or resolved."""

    cursor: str
    transition: Transition
    finding: Finding
    at: datetime

    def key(self) -> str:
        return self.finding.key


def decode_event(entry_id: str, fields: dict[bytes, bytes]) -> DiscrepancyEvent:
    since = fields.get(b"s")
    finding = Finding.decode(fields[b"d"], since)
    transition = Transition(fields[b"t"].decode())
    at = parse_time(fields[b"r"].decode()) if b"r" in fields else finding.detected_at
    return DiscrepancyEvent(entry_id, transition, finding, at)
