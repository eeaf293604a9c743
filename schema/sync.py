"""Sync, visible and steerable: the audit trail of actions, each target's push health, and
pushing now (gateway/sync/).

``syncActions`` and a source's ``push`` need the ``sync:read`` scope, ``syncNow`` needs
``sync:write`` (``admin`` implies both). A caller restricted to some locations sees only the
stock actions at its locations (item actions concern every location: not listed for it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any

import strawberry

from resolvers.abc import SyncControl
from resolvers.access import SYNC_READ, SYNC_WRITE
from resolvers.errors import BadUserInput, ServiceUnavailable
from resolvers.store.keys import VOLATILE_TAG
from resolvers.store.outbox import Action as ActionRecord
from resolvers.store.outbox import ActionKind as KindRecord
from resolvers.store.outbox import Finished
from resolvers.store.outbox import Status as StatusRecord
from schema.context import Ctx
from schema.permissions import requires
from schema.reconciliation import PushStatus
from schema.types import PageInfo, check_page_size

MAX_IDS = 1000  # SKUs, locations or targets one argument may name
SCANNED = 20_000  # actions a page looks through for matches before it ends


@strawberry.enum(description="Where a sync action is. PENDING: recorded, not yet written. "
                             "FAILED: the last attempt failed, it is retried after a backoff. "
                             "DONE: the target holds the desired value. DEAD: given up after "
                             "sync.max_attempts (or nothing to write to): `retailgraph sync "
                             "dlq`, `replay`. SUPERSEDED: a newer action on the same target "
                             "cell replaced it (a burst coalesces into one write).")
class SyncActionStatus(Enum):
    PENDING = "PENDING"
    FAILED = "FAILED"
    DONE = "DONE"
    DEAD = "DEAD"
    SUPERSEDED = "SUPERSEDED"


@strawberry.enum(description="STOCK: a location's available-to-sell in the web shop. ITEM: "
                             "an item's name (and, at the till, list price).")
class SyncActionKind(Enum):
    STOCK = "STOCK"
    ITEM = "ITEM"


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


@strawberry.type(description="One push of a system of record's truth to a target system.")
class SyncAction:
    id: strawberry.ID = strawberry.field(description="Increasing with creation.")
    target: str = strawberry.field(description="The backend written to (e.g. commerce).")
    kind: SyncActionKind = strawberry.field(description="What is written.")
    sku: strawberry.ID = strawberry.field(description="The unified SKU.")
    location_id: strawberry.ID | None = strawberry.field(description="Null for ITEM.")
    desired: int | None = strawberry.field(
        description="STOCK: the available-to-sell written (null until computed; a superseded "
                    "action never is).")
    previous: int | None = strawberry.field(
        description="STOCK: what the target held before the write (its compare-and-set).")
    name: str | None = strawberry.field(description="ITEM: the name written.")
    list_price: str | None = strawberry.field(
        description="ITEM: the list price written (decimal string; the POS only).")
    status: SyncActionStatus = strawberry.field(description="Where the action is.")
    attempts: int = strawberry.field(description="Writes tried.")
    event_id: str | None = strawberry.field(
        description="The event that caused it (empty for a discrepancy or syncNow).")
    source: str | None = strawberry.field(
        description="Where that came from: a backend, `discrepancy` or `syncNow`.")
    created_at: datetime = strawberry.field(description="When it was recorded.")
    completed_at: datetime | None = strawberry.field(description="DONE, DEAD or SUPERSEDED.")
    confirmed_at: datetime | None = strawberry.field(
        description="When the target's webhook reported the value written (its echo).")
    latency_ms: int | None = strawberry.field(
        description="DONE: from the receipt of the causing event to the target's "
                    "confirmation: the shop's echo (inventory_levels/update) of a stock write, "
                    "null until it comes; the target's answer for a push no echo confirms "
                    "(an item update, a cell that already held the value).")
    written_ms: int | None = strawberry.field(
        description="DONE: from the receipt of the causing event to the target's answer.")
    error: str | None = strawberry.field(description="The last failure.")
    note: str | None = strawberry.field(description="e.g. the target already held it.")

    @classmethod
    def of(cls, a: ActionRecord) -> SyncAction:
        item = a.desired if isinstance(a.desired, dict) else {}
        return cls(id=strawberry.ID(a.id), target=a.target,
                   kind=SyncActionKind(a.kind.value), sku=strawberry.ID(a.sku),
                   location_id=strawberry.ID(a.location_id) if a.location_id else None,
                   desired=a.desired if isinstance(a.desired, int) else None,
                   previous=a.previous if isinstance(a.previous, int) else None,
                   name=item.get("name"), list_price=item.get("listPrice"),
                   status=SyncActionStatus(a.status.value), attempts=a.attempts,
                   event_id=a.event_id, source=a.source, created_at=_at(a.created_ms)
                   or datetime.now(UTC), completed_at=_at(a.completed_ms),
                   confirmed_at=_at(a.confirmed_ms), latency_ms=a.latency_ms,
                   written_ms=a.written_ms, error=a.error,
                   note=a.note)


@strawberry.type(description="One sync action in a page.")
class SyncActionEdge:
    cursor: str = strawberry.field(description="Its position: pass it as `after`.")
    node: SyncAction = strawberry.field(description="The action.")


@strawberry.type(description="Sync actions, newest first.")
class SyncActionConnection:
    edges: list[SyncActionEdge] = strawberry.field(description="This page.")
    page_info: PageInfo = strawberry.field(description="Where this page is.")


def sync_of(info: Ctx) -> SyncControl:
    """The replica's sync; the response is marked never to be cached (actions change
    without an event on the SKUs the response shows)."""
    found = info.context.sync
    if found is None:
        raise ServiceUnavailable("sync unavailable (Redis not connected)")
    info.context.loaders.freshness.tags.add(VOLATILE_TAG)
    return found


async def _never_cached(info: Ctx) -> None:
    if info.context.reconciliation is not None:
        await info.context.reconciliation.mark_volatile()


def _ids(value: list[strawberry.ID] | list[str] | None, what: str) -> frozenset[str] | None:
    if value is None:
        return None
    if len(value) > MAX_IDS:
        raise BadUserInput(f"{what} names more than {MAX_IDS}")
    return frozenset(str(x) for x in value)


TargetsArg = Annotated[list[str] | None, strawberry.argument(
    description="Only these targets (backend names; default: all).")]
SkusArg = Annotated[list[strawberry.ID] | None, strawberry.argument(
    description="Only these SKUs (default: all).")]
LocationsArg = Annotated[list[strawberry.ID] | None, strawberry.argument(
    description="Only these locations (default: all you may read).")]


async def sync_actions(
        info: Ctx, targets: TargetsArg = None, skus: SkusArg = None,
        location_ids: LocationsArg = None,
        status: Annotated[list[SyncActionStatus] | None, strawberry.argument(
            description="Only actions in these states (default: all).")] = None,
        first: Annotated[int, strawberry.argument(
            description="Page size, 1 to the configured maximum.")] = 50,
        after: Annotated[str | None, strawberry.argument(
            description="endCursor of the previous page.")] = None,
) -> SyncActionConnection | None:
    limit = info.context.graph.settings.max_page_size
    check_page_size(first, limit)
    before: int | None = None
    if after is not None:
        if not after.isdigit() or len(after) > 19:
            raise BadUserInput("after: not a cursor of syncActions")
        before = int(after)
    wanted_targets, wanted_skus = _ids(targets, "targets"), _ids(skus, "skus")
    wanted_locations = _ids(location_ids, "locationIds")
    restricted = info.context.principal.locations
    allowed = info.context.principal.restrict(
        None if wanted_locations is None else sorted(wanted_locations))
    states = None if status is None else {StatusRecord(s.value) for s in status}
    sync = sync_of(info)
    await _never_cached(info)

    def accept(a: ActionRecord) -> bool:
        if wanted_targets is not None and a.target not in wanted_targets:
            return False
        if wanted_skus is not None and a.sku not in wanted_skus:
            return False
        if states is not None and a.status not in states:
            return False
        if a.kind is KindRecord.ITEM:
            return restricted is None and wanted_locations is None
        return allowed is None or a.location_id in allowed

    found: list[ActionRecord] = []
    scanned, more = 0, False
    while scanned < SCANNED:
        ids = await sync.outbox.newest(before, 500)
        if not ids:
            break
        scanned += len(ids)
        before = int(ids[-1])
        for action in await sync.outbox.get(ids):
            if action is not None and accept(action):
                if len(found) == first:
                    more = True
                    break
                found.append(action)
        if more:
            break
    edges = [SyncActionEdge(cursor=a.id, node=SyncAction.of(a)) for a in found]
    if not more and scanned >= SCANNED and edges:
        more = True  # looked through as many as a page may; the next page goes on
    return SyncActionConnection(edges=edges, page_info=PageInfo(
        has_next_page=more, has_previous_page=after is not None,
        start_cursor=edges[0].cursor if edges else None,
        end_cursor=edges[-1].cursor if edges else None))


@strawberry.type(description="What syncNow recorded.")
class SyncNowResult:
    actions: list[strawberry.ID] = strawberry.field(description="The actions recorded.")
    queued: int = strawberry.field(description="How many.")


async def sync_now(
        info: Ctx,
        skus: Annotated[list[strawberry.ID], strawberry.argument(
            description="The SKUs to recompute and push (at most 1,000).")],
        location_ids: LocationsArg = None, targets: TargetsArg = None,
) -> SyncNowResult:
    wanted_skus = _ids(skus, "skus")
    if not wanted_skus:
        raise BadUserInput("skus: name at least one SKU")
    wanted_locations = _ids(location_ids, "locationIds")
    allowed = info.context.principal.restrict(
        None if wanted_locations is None else sorted(wanted_locations))
    sync = sync_of(info)
    await _never_cached(info)
    if not sync.enabled:
        raise ServiceUnavailable("sync is off (sync.enabled = false)")
    try:
        recorded = await sync.now(
            sorted(wanted_skus), None if allowed is None else set(allowed),
            _ids(targets, "targets"), items=info.context.principal.locations is None)
    except ValueError as exc:
        raise BadUserInput(str(exc)) from exc
    return SyncNowResult(actions=[strawberry.ID(i) for i in recorded], queued=len(recorded))


async def sync_action_completed(
        info: Ctx, targets: TargetsArg = None, skus: SkusArg = None,
        location_ids: LocationsArg = None) -> AsyncGenerator[SyncAction, None]:
    # Checked before the stream starts, so a refusal is the operation's error.
    wanted_targets, wanted_skus = _ids(targets, "targets"), _ids(skus, "skus")
    wanted_locations = _ids(location_ids, "locationIds")
    restricted = info.context.principal.locations
    allowed = info.context.principal.restrict(
        None if wanted_locations is None else sorted(wanted_locations))
    sync = sync_of(info)
    # The caller's subscriptions on this replica are counted together (gateway.subscriptions).
    quota = info.context.feed.quota if info.context.feed is not None else None
    owner = info.context.client
    if quota is not None:
        quota.check(owner)

    def accept(event: Finished) -> bool:
        a = event.action
        if wanted_targets is not None and a.target not in wanted_targets:
            return False
        if wanted_skus is not None and a.sku not in wanted_skus:
            return False
        if a.kind is KindRecord.ITEM:
            return restricted is None and wanted_locations is None
        return allowed is None or a.location_id in allowed

    async def finished() -> AsyncGenerator[SyncAction, None]:
        with quota.hold(owner) if quota is not None else contextlib.nullcontext():
            async with contextlib.aclosing(sync.finished(accept)) as events:
                async for event in events:
                    yield SyncAction.of(event.action)

    return finished()


sync_action_completed_field: Any = strawberry.subscription(
    resolver=sync_action_completed, extensions=[requires(SYNC_READ)],
    description="Fires when a sync action is finished (DONE, DEAD or SUPERSEDED), on every "
                "replica.")
sync_actions_field: Any = strawberry.field(
    resolver=sync_actions, extensions=[requires(SYNC_READ)],
    description="The audit trail of sync actions, newest first: what was pushed where, why, "
                "and how it went.")
sync_now_field: Any = strawberry.mutation(
    resolver=sync_now, extensions=[requires(SYNC_WRITE)],
    description="Recompute and push now: available-to-sell of these SKUs at the locations "
                "sold online (and their item master, for callers not restricted to "
                "locations), to the targets named (default: all).")

__all__ = ["PushStatus", "SyncAction", "SyncActionConnection", "SyncNowResult",
           "sync_action_completed_field", "sync_actions_field", "sync_now_field"]
