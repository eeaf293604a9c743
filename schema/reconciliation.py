"""Where the systems disagree: every system's view of a stock level, the discrepancies between
them (listed and live), and how far behind each system's feed runs.

Every field here needs the ``discrepancies:read`` scope (``resolvers.access``); a principal limited
to some locations sees only those.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, TypeVar

import strawberry

from resolvers.abc import Reconciliation, SyncControl
from resolvers.access import DISCREPANCIES_READ, SYNC_READ
from resolvers.discrepancies import DiscrepancyEvent as EventRecord
from resolvers.discrepancies import DiscrepancyFilter, Finding, Side
from resolvers.discrepancies import Kind as KindRecord
from resolvers.discrepancies import Severity as SeverityRecord
from resolvers.discrepancies import Status as StatusRecord
from resolvers.errors import BadUserInput, ServiceUnavailable
from resolvers.store.keys import VOLATILE_TAG
from resolvers.syncstatus import GAPS_KEPT, Gap, Lag
from resolvers.syncstatus import SourceStatus as SourceStatusRecord
from resolvers.types import INT_MAX, INT_MIN, saturate
from schema.context import Ctx
from schema.permissions import requires
from schema.sources import SourceRole, SourceView, age_seconds, source_views
from schema.types import Location, PageInfo, check_page_size


@strawberry.enum(description="How the systems disagree. ONLINE_OVERSELL_RISK: the web shop "
                             "offers more than the warehouse has available. "
                             "ERP_SNAPSHOT_DRIFT: the ERP's nightly on-hand of a warehouse "
                             "differs from the WMS beyond what the movements since explain. "
                             "POS_ERP_STORE_COUNT: the same for a store's count against the "
                             "POS. CACHE_DRIFT: the gateway's cache differs from the system it "
                             "copies (reconciliation repairs it).")
class DiscrepancyKind(Enum):
    ONLINE_OVERSELL_RISK = "ONLINE_OVERSELL_RISK"
    ERP_SNAPSHOT_DRIFT = "ERP_SNAPSHOT_DRIFT"
    POS_ERP_STORE_COUNT = "POS_ERP_STORE_COUNT"
    CACHE_DRIFT = "CACHE_DRIFT"


@strawberry.enum(description="How much a discrepancy matters, from its kind and size.")
class DiscrepancySeverity(Enum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


@strawberry.enum(description="LAGGING: the view is older than a movement it has not seen "
                             "yet (it may catch up by itself). WRONG: it has seen every "
                             "movement and still disagrees.")
class DiscrepancyStatus(Enum):
    LAGGING = "LAGGING"
    WRONG = "WRONG"


@strawberry.enum(description="What happened to a discrepancy.")
class DiscrepancyChange(Enum):
    APPEARED = "APPEARED"
    UPDATED = "UPDATED"
    RESOLVED = "RESOLVED"


@strawberry.type(description="A system's value in a discrepancy.")
class DiscrepancyView:
    source: str = strawberry.field(description="Backend name.")
    role: SourceRole = strawberry.field(description="What this view is for.")
    quantity: str = strawberry.field(description="Which quantity is compared: onHand or "
                                                 "available.")
    value: int = strawberry.field(description="Its value in this view.")
    as_of: datetime = strawberry.field(description="When this view last changed.")
    age_seconds: float = strawberry.field(description="Seconds since asOf.")
    origin: str = strawberry.field(description="cache (the gateway's copy) or backend (read "
                                               "from the system by a reconciliation run).")

    @classmethod
    def of(cls, side: Side) -> DiscrepancyView:
        return cls(source=side.source, role=SourceRole(side.role.value), quantity=side.quantity,
                   value=saturate(side.value), as_of=side.as_of,
                   age_seconds=age_seconds(side.as_of), origin=side.origin)


@strawberry.type(description="Systems disagreeing about one SKU at one location.")
class Discrepancy:
    id: strawberry.ID = strawberry.field(description="locationId|sku|kind (stable while it "
                                                     "lasts).")
    sku: strawberry.ID = strawberry.field(description="The SKU.")
    location_id: strawberry.ID = strawberry.field(description="The location.")
    kind: DiscrepancyKind = strawberry.field(description="How the systems disagree.")
    status: DiscrepancyStatus = strawberry.field(description="LAGGING or WRONG.")
    severity: DiscrepancySeverity = strawberry.field(description="How much it matters.")
    delta: int = strawberry.field(
        description="The units in question: shop available minus warehouse available "
                    "(oversell); for snapshot drift the units the movements since the "
                    "snapshot do not explain (or the whole difference while LAGGING); cache "
                    "minus backend (cache drift).")
    explained_by_movements: int | None = strawberry.field(
        description="Of the raw difference, the units movements since the older view "
                    "account for; null when they are not known.")
    source: str = strawberry.field(description="The system found lagging or wrong.")
    views: list[DiscrepancyView] = strawberry.field(description="Each view's value and age.")
    last_movement_at: datetime | None = strawberry.field(
        description="Last movement at the system of record (or the backend, for cache drift).")
    detected_at: datetime = strawberry.field(description="When this state was last judged.")
    since: datetime | None = strawberry.field(description="When it first appeared.")
    message: str = strawberry.field(description="What it means, in words.")

    @strawberry.field(description="The location.")
    async def location(self, info: Ctx) -> Location | None:
        catalog = await info.context.graph.ready_catalog()
        record = catalog.locations.get(str(self.location_id))
        return Location.of(record) if record else None

    @classmethod
    def of(cls, f: Finding) -> Discrepancy:
        return cls(id=strawberry.ID(f.key), sku=strawberry.ID(f.sku),
                   location_id=strawberry.ID(f.location_id), kind=DiscrepancyKind(f.kind.value),
                   status=DiscrepancyStatus(f.status.value),
                   severity=DiscrepancySeverity(f.severity.value), delta=saturate(f.delta),
                   explained_by_movements=None if f.explained is None
                   else saturate(f.explained), source=f.source,
                   views=[DiscrepancyView.of(s) for s in f.sides],
                   last_movement_at=f.last_movement_at, detected_at=f.detected_at,
                   since=f.since, message=f.message)


@strawberry.type(description="A discrepancy and its cursor.")
class DiscrepancyEdge:
    cursor: str = strawberry.field(description="Opaque position; pass as `after`.")
    node: Discrepancy = strawberry.field(description="The discrepancy.")


@strawberry.type(description="A page of discrepancies, by location, SKU and kind.")
class DiscrepancyConnection:
    edges: list[DiscrepancyEdge] = strawberry.field(description="This page.")
    page_info: PageInfo = strawberry.field(description="Where this page is in the list.")
    total: int = strawberry.field(description="All current discrepancies that match the "
                                              "arguments and that you may see (every page).")

    @strawberry.field(description="This page without cursors.")
    def nodes(self) -> list[Discrepancy]:
        return [edge.node for edge in self.edges]


@strawberry.type(name="DiscrepancyEvent",
                 description="A discrepancy appeared, changed (status, severity, delta) or "
                             "resolved.")
class DiscrepancyNotice:
    change: DiscrepancyChange = strawberry.field(description="What happened.")
    discrepancy: Discrepancy = strawberry.field(
        description="The discrepancy (for RESOLVED: as it was last judged).")
    at: datetime = strawberry.field(description="When it happened.")
    cursor: str = strawberry.field(description="Position in the discrepancy stream.")





async def _reconciliation(info: Ctx) -> Reconciliation:
    """The replica's reconciliation; the response is marked never to be cached (discrepancies
    and sync status change without an event on any SKU the response shows)."""
    found = info.context.reconciliation
    if found is None:
        raise ServiceUnavailable("reconciliation unavailable (Redis not connected)")
    # The response cache refuses to store a response with a tag invalidated after the
    # request started; this tag always is.
    info.context.loaders.freshness.tags.add(VOLATILE_TAG)
    await found.mark_volatile()
    return found


def _locations(info: Ctx, location_ids: list[strawberry.ID] | None) -> frozenset[str] | None:
    wanted = None if location_ids is None else [str(x) for x in location_ids]
    allowed = info.context.principal.restrict(wanted)
    return None if allowed is None else frozenset(allowed)


LocationsArg = Annotated[list[strawberry.ID] | None, strawberry.argument(
    description="Only these locations (default: all you may read).")]
SkusArg = Annotated[list[strawberry.ID] | None, strawberry.argument(
    description="Only these SKUs (default: all).")]
KindsArg = Annotated[list[DiscrepancyKind] | None, strawberry.argument(
    description="Only these kinds (default: all).")]
MinSeverityArg = Annotated[DiscrepancySeverity, strawberry.argument(
    description="Only this severity and above.")]


async def discrepancies(
        info: Ctx, location_ids: LocationsArg = None, skus: SkusArg = None,
        min_delta: Annotated[int, strawberry.argument(
            description="Only discrepancies of at least this many units (either way).")] = 0,
        kinds: KindsArg = None,
        status: Annotated[DiscrepancyStatus | None, strawberry.argument(
            description="Only LAGGING or only WRONG ones (default: both).")] = None,
        min_severity: MinSeverityArg = DiscrepancySeverity.LOW,
        first: Annotated[int, strawberry.argument(
            description="Page size, 1 to the configured maximum.")] = 50,
        after: Annotated[str | None, strawberry.argument(
            description="endCursor of the previous page.")] = None,
) -> DiscrepancyConnection | None:
    limit = info.context.graph.settings.max_page_size
    check_page_size(first, limit)
    if min_delta < 0:
        raise BadUserInput("minDelta must be 0 or more")
    reconciliation = await _reconciliation(info)
    query = DiscrepancyFilter(
        location_ids=_locations(info, location_ids),
        skus=None if skus is None else frozenset(str(s) for s in skus), min_delta=min_delta,
        kinds=None if kinds is None else frozenset(KindRecord(k.value) for k in kinds),
        statuses=None if status is None else frozenset({StatusRecord(status.value)}),
        min_severity=SeverityRecord(min_severity.value))
    try:
        page = await reconciliation.index.page(query, first, after)
    except ValueError as exc:
        raise BadUserInput(str(exc)) from exc
    edges = [DiscrepancyEdge(cursor=c, node=Discrepancy.of(f))
             for f, c in zip(page.findings, page.cursors, strict=True)]
    return DiscrepancyConnection(
        edges=edges, total=await reconciliation.index.total(query),
        page_info=PageInfo(has_next_page=page.has_more, has_previous_page=after is not None,
                           start_cursor=edges[0].cursor if edges else None,
                           end_cursor=page.end_cursor))


async def discrepancy_detected(
        info: Ctx, location_ids: LocationsArg = None,
        min_severity: MinSeverityArg = DiscrepancySeverity.LOW, kinds: KindsArg = None,
) -> AsyncGenerator[DiscrepancyNotice, None]:
    # Checked before the stream starts, so a refusal is the operation's error.
    reconciliation = await _reconciliation(info)
    query = DiscrepancyFilter(
        location_ids=_locations(info, location_ids),
        kinds=None if kinds is None else frozenset(KindRecord(k.value) for k in kinds),
        min_severity=SeverityRecord(min_severity.value))
    # The caller's subscriptions on this replica are counted together (gateway.events.changes).
    quota = info.context.feed.quota if info.context.feed is not None else None
    owner = info.context.client
    if quota is not None:
        quota.check(owner)

    def accept(event: EventRecord) -> bool:
        return query.accepts(event.finding)

    async def notices() -> AsyncGenerator[DiscrepancyNotice, None]:
        with quota.hold(owner) if quota is not None else contextlib.nullcontext():
            async with contextlib.aclosing(reconciliation.feed.subscribe(accept)) as events:
                async for event in events:
                    info.context.renew_loaders()
                    yield DiscrepancyNotice(change=DiscrepancyChange(event.transition.value),
                                            discrepancy=Discrepancy.of(event.finding),
                                            at=event.at, cursor=event.cursor)

    return notices()


# -- sync health -------------------------------------------------------------------------------

@strawberry.type(description="Latency percentiles over the last 1,000 events.")
class LagStats:
    p50_ms: float | None = strawberry.field(description="Median, milliseconds.")
    p95_ms: float | None = strawberry.field(description="95th percentile, milliseconds.")
    samples: int = strawberry.field(description="Events measured.")

    @classmethod
    def of(cls, lag: Lag) -> LagStats:
        return cls(p50_ms=lag.p50_ms, p95_ms=lag.p95_ms, samples=lag.samples)


@strawberry.type(description="Webhooks refused for one reason.")
class RejectCount:
    reason: str = strawberry.field(description="e.g. bad_signature, replay, malformed.")
    count: int = strawberry.field(description="How many.")


@strawberry.type(description="Events a source sent that never arrived, and their healing.")
class SyncGap:
    detected_at: datetime = strawberry.field(description="When the gap was found.")
    reason: str = strawberry.field(description="sequence (numbers skipped), cell-sequence (a "
                                               "cell's numbers skipped) or silent (quiet "
                                               "longer than the heartbeat while changing).")
    from_sequence: int | None = strawberry.field(description="First missing number (null "
                                                             "past 32 bits; detail says it).")
    to_sequence: int | None = strawberry.field(description="Last missing number (null past "
                                                           "32 bits; detail says it).")
    sku: strawberry.ID | None = strawberry.field(description="The cell's SKU, if one cell.")
    location_id: strawberry.ID | None = strawberry.field(description="The cell's location.")
    healed_at: datetime | None = strawberry.field(description="When the gateway caught up.")
    applied: int = strawberry.field(description="Events applied or cells repaired to heal it.")
    detail: str = strawberry.field(description="What happened, in words.")

    @classmethod
    def of(cls, gap: Gap) -> SyncGap:
        def number(n: int | None) -> int | None:  # past 32 bits only `detail` has it
            return n if n is not None and INT_MIN <= n <= INT_MAX else None

        return cls(detected_at=gap.detected_at, reason=gap.reason,
                   from_sequence=number(gap.from_sequence), to_sequence=number(gap.to_sequence),
                   sku=strawberry.ID(gap.sku) if gap.sku else None,
                   location_id=strawberry.ID(gap.location_id) if gap.location_id else None,
                   healed_at=gap.healed_at, applied=gap.applied, detail=gap.detail)


@strawberry.type(description="How one target system takes the pushes (the same on every "
                             "replica).")
class PushStatus:
    paused: bool = strawberry.field(description="`retailgraph sync pause` holds its pushes.")
    pending: int = strawberry.field(description="Actions not yet finished.")
    oldest_pending_seconds: float | None = strawberry.field(
        description="Age of the oldest of them.")
    latency_p50_ms: float | None = strawberry.field(
        description="Median push latency (causing event received -> target's answer) over "
                    "the last 5 minutes.")
    latency_p99_ms: float | None = strawberry.field(description="Its 99th percentile.")
    samples: int = strawberry.field(description="Pushes measured in those 5 minutes.")
    done: int = strawberry.field(description="Actions done in total.")
    writes: int = strawberry.field(description="Stock writes that took effect in total.")
    superseded: int = strawberry.field(description="Actions coalesced into a newer one.")
    failures: int = strawberry.field(description="Failed attempts (retried) in total.")
    throttled: int = strawberry.field(description="Attempts the target rate limited.")
    stale: int = strawberry.field(description="Compare-and-sets lost (re-read, recomputed).")
    echoes: int = strawberry.field(description="Webhooks recognised as our own write.")
    drift: int = strawberry.field(
        description="Pushes because the target offered more than the truth allows.")
    dead_letters: int = strawberry.field(description="Actions in the dead-letter list.")


def _percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def push_status(sync: SyncControl, target: str) -> PushStatus:
    outbox = sync.outbox
    now = int(time.time() * 1000)
    pending = await outbox.pending_by_target()
    n, oldest = pending.get(target, (0, None))
    latencies = await outbox.latencies(target, now - 5 * 60 * 1000)
    counters = await outbox.counters(target)
    dead = (await outbox.dead_count()).get(target, 0)
    return PushStatus(
        paused=target in await outbox.paused(), pending=n,
        oldest_pending_seconds=None if oldest is None else max(0.0, (now - oldest) / 1000),
        latency_p50_ms=_percentile(latencies, 0.5), latency_p99_ms=_percentile(latencies, 0.99),
        samples=len(latencies), done=counters.get("done", 0), writes=counters.get("writes", 0),
        superseded=counters.get("superseded", 0), failures=counters.get("failures", 0),
        throttled=counters.get("throttled", 0), stale=counters.get("stale", 0),
        echoes=counters.get("echoes", 0), drift=counters.get("drift", 0), dead_letters=dead)


T = TypeVar("T")
SOURCE_WIDE = " Null for a caller restricted to locations: it is computed over every location."
RECENT_GAPS = 10


@strawberry.type(description="How current the gateway is with one source system (the same "
                             "on every replica). A caller restricted to locations sees only "
                             "what concerns its locations: their gaps; the source-wide "
                             "figures are null.")
class SourceStatus:
    source: str = strawberry.field(description="Backend name.")
    system: str = strawberry.field(description="Its format.")
    last_event_received_at: datetime | None = strawberry.field(
        description="When its last webhook was received." + SOURCE_WIDE)
    last_event_occurred_at: datetime | None = strawberry.field(
        description="When the newest event received happened at the source." + SOURCE_WIDE)
    events_received: int | None = strawberry.field(
        description="Events received in total." + SOURCE_WIDE)
    events_per_minute: float | None = strawberry.field(
        description="Events received in the last minute." + SOURCE_WIDE)
    lag_occurred_to_received: LagStats | None = strawberry.field(
        description="From happening at the source to reaching the gateway." + SOURCE_WIDE)
    lag_received_to_applied: LagStats | None = strawberry.field(
        description="From reaching the gateway to being readable." + SOURCE_WIDE)
    rejects: list[RejectCount] | None = strawberry.field(
        description="Refused webhooks by reason." + SOURCE_WIDE)
    dead_letters: int | None = strawberry.field(
        description="Deliveries kept in the dead-letter stream." + SOURCE_WIDE)
    gaps_detected: int = strawberry.field(
        description="Gaps found so far (restricted callers: of the last 50, those at their "
                    "locations).")
    gaps_healed: int = strawberry.field(
        description="Gaps healed so far (restricted callers: as gapsDetected).")
    open_sequence_gap: bool | None = strawberry.field(
        description="Numbers are missing right now (waiting for late deliveries)."
                    + SOURCE_WIDE)
    recent_gaps: list[SyncGap] = strawberry.field(
        description="The last gaps, newest first (restricted callers: those at their "
                    "locations).")
    heartbeat_seconds: float | None = strawberry.field(
        description="Configured heartbeat; null when not checked.")
    silent_seconds: float | None = strawberry.field(
        description="Seconds since its last webhook." + SOURCE_WIDE)

    @strawberry.field(description="When sync writes to this source (the web shop, the POS "
                                  "catalog): how its pushes go. Null for the others, and for "
                                  "a caller restricted to locations (computed over every "
                                  "location). Needs sync:read.",
                      extensions=[requires(SYNC_READ)])
    async def push(self, info: Ctx) -> PushStatus | None:
        sync = info.context.sync
        if (sync is None or info.context.principal.locations is not None
                or not sync.pushes_to(self.source)):
            return None
        return await push_status(sync, self.source)

    @classmethod
    def of(cls, s: SourceStatusRecord, locations: frozenset[str] | None = None
           ) -> SourceStatus:
        """``s`` as ``locations`` (None: all) may see it."""
        gaps, counts = s.recent_gaps, (s.gaps_detected, s.gaps_healed)
        if locations is not None:
            # Only gaps at one of the caller's cells; a source-wide sequence gap is at none.
            gaps = [g for g in gaps if g.location_id in locations]
            counts = (len(gaps), sum(1 for g in gaps if g.healed_at is not None))

        def wide(value: T) -> T | None:
            """A figure computed over every location: not for a restricted caller."""
            return value if locations is None else None

        return cls(source=s.source, system=s.system,
                   last_event_received_at=wide(s.last_received_at),
                   last_event_occurred_at=wide(s.last_occurred_at),
                   events_received=wide(s.events_total),
                   events_per_minute=wide(s.events_per_minute),
                   lag_occurred_to_received=wide(LagStats.of(s.lag_received)),
                   lag_received_to_applied=wide(LagStats.of(s.lag_applied)),
                   rejects=wide([RejectCount(reason=r, count=n) for r, n in s.rejects.items()]),
                   dead_letters=wide(s.dead_letters), gaps_detected=counts[0],
                   gaps_healed=counts[1], open_sequence_gap=wide(s.open_sequence_gap),
                   recent_gaps=[SyncGap.of(g) for g in gaps[:RECENT_GAPS]],
                   heartbeat_seconds=s.heartbeat_seconds, silent_seconds=wide(s.silent_seconds))


async def sync_status(info: Ctx) -> list[SourceStatus]:
    reconciliation = await _reconciliation(info)
    locations = info.context.principal.locations
    statuses = await reconciliation.health.statuses(
        recent=RECENT_GAPS if locations is None else GAPS_KEPT)
    return [SourceStatus.of(s, locations) for s in statuses]


discrepancies_field: Any = strawberry.field(
    resolver=discrepancies, extensions=[requires(DISCREPANCIES_READ)],
    description="SKU x location cells where the systems disagree beyond the tolerance, with "
                "each view's value and age; kept current by events and reconciliation runs.")
sync_status_field: Any = strawberry.field(
    resolver=sync_status, extensions=[requires(DISCREPANCIES_READ)],
    description="Per source system: last event, events per minute, lags, rejects, dead "
                "letters and gaps.")
discrepancy_detected_field: Any = strawberry.subscription(
    resolver=discrepancy_detected, extensions=[requires(DISCREPANCIES_READ)],
    description="Fires when a discrepancy appears, changes or resolves.")

__all__ = ["Discrepancy", "DiscrepancyConnection", "DiscrepancyNotice", "SourceStatus",
           "SourceView", "discrepancies_field", "discrepancy_detected_field", "source_views",
           "sync_status_field"]
