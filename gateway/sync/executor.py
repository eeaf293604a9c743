"""Executing sync actions: on any replica, one at a time per target cell, in order.

Every replica runs an :class:`Executor`. It leases due cells from the outbox (a Redis lease
per cell, renewed while it works, so a replica killed mid-push leaves the cell to another
once the lease expires), and for each one:

1. takes the cell's unfinished actions, oldest first: all but the newest are SUPERSEDED (a
   burst coalesces into one write of the newest value);
2. computes the desired value from what is current *now* (the rules in
   :mod:`gateway.sync.rules`, the cache read through), so nothing older ever wins;
3. writes it with compare-and-set (``expected`` = what the target is believed to hold) and an
   idempotency key that stays the same while the write's input does (a retry after a lost
   answer, or by another replica after a crash, takes effect once);
4. on STALE re-reads and recomputes (never overwrites), on THROTTLED / 429 waits what the
   target asked, on failure backs off exponentially with jitter; after ``sync.max_attempts``
   the action is DEAD (``retailgraph sync dlq``, ``replay``).

A target's own change that reports the value we wrote is our echo (the outbox confirms the
action and nothing else happens); any other change of the shop's level is checked at once
against what the system of record allows ("the truth wins").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from redis.exceptions import RedisError
from ulid import ULID

from gateway import telemetry
from gateway.config import SyncSettings
from gateway.events.envelope import Envelope, EventKind
from gateway.sync import rules
from gateway.sync.rules import Rules
from resolvers.abc import HeldUnits
from resolvers.discrepancies import CellUpdate, Kind
from resolvers.errors import BackendError
from resolvers.store.client import Backoff
from resolvers.store.outbox import (
    Action,
    ActionKind,
    Cause,
    Outbox,
    Status,
    Turn,
    cell_id,
    parse_cell,
)
from resolvers.types import LocationRecord, MasterItem, StockView
from resolvers.writes import ItemTarget, ItemWrite, Outcome, StockTarget, StockWrite, WriteResult

log = logging.getLogger("retailgraph.sync")

STALE_RETRIES = 3  # re-read and recompute this often within one turn, then back off
LATENCY_WINDOW_MS = 5 * 60 * 1000


class StockInputs(Protocol):
    """What the rules read: the system of record's available, the item's safety stock and
    what the target holds (the cache, read through)."""

    async def record_available(self, sku: str, location_id: str) -> int | None: ...

    async def safety_stock(self, sku: str) -> int: ...

    async def online_available(self, sku: str, location_id: str) -> int | None: ...


class Reservations(Protocol):
    """Units held back from the channel by retailgraph reservations (issue 14)."""

    async def held(self, sku: str, location_id: str) -> int: ...


class NoReservations:
    """Nothing held (a gateway without reservations, and the unit tests)."""

    async def held(self, sku: str, location_id: str) -> int:
        return 0


class HeldInStore:
    """:class:`Reservations` from the units reservations hold (resolvers/store/reservations.py
    ``HoldsStore``)."""

    def __init__(self, store: HeldUnits) -> None:
        self.store = store

    async def held(self, sku: str, location_id: str) -> int:
        return (await self.store.held([sku])).get(sku, {}).get(location_id, 0)


Locations = Callable[[], Awaitable[dict[str, LocationRecord]]]
MasterData = Callable[[str], Awaitable[MasterItem | None]]
SystemOfRecord = Callable[[str], str | None]


def _ms() -> int:
    return int(time.time() * 1000)


def _item_desired(fields: rules.ItemFields) -> dict[str, Any]:
    return {"name": fields.name,
            "listPrice": None if fields.list_price is None else str(fields.list_price)}


@dataclass(frozen=True, slots=True)
class Targets:
    """The systems sync writes to, by backend name."""

    stock: dict[str, StockTarget]
    items: dict[str, ItemTarget]
    formats: dict[str, str]  # backend name -> format (for field ownership)
    shop: str  # the web shop's backend name: the target of available-to-sell


async def pushed(outbox: Outbox, action_id: str, record: Action | None = None) -> None:
    """A push's latency and span, from the causing event's receipt to the target's
    confirmation (its echo, or its answer where none comes), once both are in."""
    action = await outbox.settle_latency(action_id, record)
    if action is None or action.latency_ms is None:
        return
    received = action.received_ms or action.created_ms
    t = telemetry.current()
    t.m.sync_latency.record(action.latency_ms / 1000, {"target": action.target})
    if t.tracer is not None:
        span = t.tracer.start_span(
            f"sync.push {action.target}", start_time=received * 1_000_000,
            attributes={"retailgraph.sync.action": action.id,
                        "retailgraph.sync.target": action.target,
                        "retailgraph.sync.cell": action.cell,
                        "retailgraph.sync.event": action.event_id or "",
                        "retailgraph.sync.attempts": action.attempts,
                        "retailgraph.sync.written_ms": action.written_ms or 0,
                        "retailgraph.sync.confirmed_by": "echo" if action.awaits_echo
                        else "answer"})
        span.end(end_time=(received + action.latency_ms) * 1_000_000)


class Recorder:
    """The applier's sync step: derives the actions an applied event asks for and records
    them before the event leaves the pending set (see :mod:`resolvers.store.outbox`)."""

    def __init__(self, outbox: Outbox, rules_: Rules, targets: Targets, locations: Locations,
                 system_of_record: SystemOfRecord, erp: str,
                 wake: Callable[[], None] = lambda: None,
                 master: MasterData | None = None) -> None:
        self.outbox = outbox
        self.rules = rules_
        self.targets = targets
        self.locations = locations
        self.system_of_record = system_of_record
        self.erp = erp
        self.wake = wake
        self.master = master

    async def __call__(self, entry_id: str, envelope: Envelope, cell: StockView | None) -> None:
        if not self.rules.enabled:
            return
        e = envelope
        cause = Cause(entry_id=entry_id, event_id=e.id, source=e.source,
                      received_ms=int(e.received_at.timestamp() * 1000))
        recorded = False
        if e.kind is EventKind.HOLD and e.sku and e.location_id:
            # A reservation held or gave back units: an input of available-to-sell.
            location = (await self.locations()).get(e.location_id)
            if location is not None and rules.fulfils_online(self.rules, location):
                await self.outbox.record(
                    cell_id(self.targets.shop, ActionKind.STOCK, e.sku, e.location_id), cause)
                recorded = True
        elif e.kind in (EventKind.LEVEL_SNAPSHOT, EventKind.MOVEMENT) and e.sku and \
                e.location_id and e.quantities is not None:
            location = (await self.locations()).get(e.location_id)
            if location is None or not rules.fulfils_online(self.rules, location):
                return
            shop_cell = cell_id(self.targets.shop, ActionKind.STOCK, e.sku, e.location_id)
            if e.source == self.system_of_record(e.location_id):
                if e.quantities.available is not None or e.full:
                    await self.outbox.record(shop_cell, cause)
                    recorded = True
            elif e.source == self.targets.shop and e.quantities.available is not None:
                seen = cell.quantities.available if cell is not None else None
                reported = e.quantities.available if seen is None else seen
                echo = await self.outbox.observe(shop_cell, reported, cause)
                if echo:
                    await self.outbox.count(self.targets.shop, "echoes")
                    await pushed(self.outbox, echo)
                recorded = echo is None
        elif e.kind is EventKind.MASTER_UPDATE and e.sku and e.data is not None and \
                e.source == self.erp:
            recorded = await self._item(e.sku, e.data, cause)
        if recorded:
            self.wake()

    async def now(self, skus: Sequence[str], locations: set[str] | None,
                  targets: frozenset[str] | None, items: bool) -> list[str]:
        """``Mutation.syncNow``: an action per SKU and online location (of ``locations``;
        None: all) for the shop, and with ``items`` the item master for the item targets,
        each recomputed from what is current when it runs."""
        known = set(self.targets.stock) | set(self.targets.items) | {self.targets.shop}
        if targets is not None and targets - known:
            raise ValueError(f"targets: {', '.join(sorted(targets - known))} not one of "
                             f"{', '.join(sorted(known))}")
        now = _ms()
        cause = Cause(entry_id=f"now:{ULID()}", event_id="", source="syncNow", received_ms=now)
        out: list[str] = []
        shop = targets is None or self.targets.shop in targets
        online = [loc for loc in (await self.locations()).values()
                  if rules.fulfils_online(self.rules, loc)
                  and (locations is None or loc.id in locations)]
        for sku in skus:
            if shop:
                for loc in online:
                    out.append(await self.outbox.record(
                        cell_id(self.targets.shop, ActionKind.STOCK, sku, loc.id), cause))
            if items and self.rules.items and self.master is not None:
                item = await self.master(sku)
                if item is None:
                    continue
                for target in self.targets.items:
                    if targets is not None and target not in targets:
                        continue
                    fields = rules.item_fields(self.targets.formats.get(target, ""), item.name,
                                               item.list_price, self.rules.pos_price_from_erp)
                    if not fields.empty:
                        out.append(await self.outbox.record(
                            cell_id(target, ActionKind.ITEM, sku), cause,
                            desired=_item_desired(fields)))
        if out:
            self.wake()
        return out

    async def judged(self, updates: Sequence[CellUpdate]) -> None:
        """A re-check or a reconciliation run judged cells: an ONLINE_OVERSELL_RISK among
        them asks for the same push at once ("the truth wins")."""
        if not self.rules.enabled:
            return
        now = _ms()
        asked = False
        for update in updates:
            for finding in update.findings:
                if finding.kind is Kind.ONLINE_OVERSELL_RISK:
                    await self.outbox.request_check(
                        cell_id(self.targets.shop, ActionKind.STOCK, update.sku,
                                update.location_id),
                        Cause(entry_id=f"disc:{now}", event_id="",
                              source="discrepancy", received_ms=now))
                    asked = True
        if asked:
            self.wake()

    async def _item(self, sku: str, data: dict[str, Any], cause: Cause) -> bool:
        recorded = False
        if self.rules.items:
            name = data.get("description")
            price: Decimal | None = None
            with contextlib.suppress(InvalidOperation, TypeError, ValueError):
                price = Decimal(str(data["listPrice"])) if data.get("listPrice") else None
            for target in self.targets.items:
                fields = rules.item_fields(self.targets.formats.get(target, ""),
                                           name if isinstance(name, str) else None, price,
                                           self.rules.pos_price_from_erp)
                if fields.empty:
                    continue
                await self.outbox.record(cell_id(target, ActionKind.ITEM, sku), cause,
                                         desired=_item_desired(fields))
                recorded = True
        if "safetyStock" in data:  # an input of available-to-sell at every online location
            for loc in (await self.locations()).values():
                if rules.fulfils_online(self.rules, loc):
                    await self.outbox.record(
                        cell_id(self.targets.shop, ActionKind.STOCK, sku, loc.id), cause)
                    recorded = True
        return recorded


class Executor:
    """Runs due sync actions on this replica (see the module docstring)."""

    def __init__(self, outbox: Outbox, settings: SyncSettings, rules_: Rules, targets: Targets,
                 inputs: StockInputs, reservations: Reservations | None = None,
                 random_: Callable[[], float] = random.random) -> None:
        self.outbox = outbox
        self.settings = settings
        self.rules = rules_
        self.targets = targets
        self.inputs = inputs
        self.reservations = reservations or NoReservations()
        self.random = random_
        self.lease_ms = int(settings.lease_seconds * 1000)
        self._wake = asyncio.Event()
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.running = False
        # Test hook: awaited just before a target is written (e.g. to kill a replica there).
        self.before_write: Callable[[Action], Awaitable[None]] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            self.running = False
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            # A cell cut off here keeps its lease until it expires; its actions stay queued.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        backoff = Backoff("sync executor")
        trimmed = 0.0
        while True:
            wait: float | None = 0.5
            try:
                free = self.settings.concurrency - len(self._busy)
                cells: list[str] = []
                if free > 0:
                    cells, wait = await self.outbox.claim(free, self.lease_ms)
                self.running = True
                backoff.succeeded()
                for cell in cells:
                    self._busy.add(cell)
                    task = asyncio.create_task(self._cell(cell))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                if time.monotonic() - trimmed > 60:
                    trimmed = time.monotonic()
                    await self.outbox.trim()
                if cells and free - len(cells) > 0:
                    continue  # more may be due right now
            except (RedisError, OSError) as exc:
                self.running = False
                wait = backoff.failed(exc)
            # Other replicas' work is found by polling; this replica's by being woken.
            timeout = 0.1 if wait is None else min(max(wait, 0.005), 0.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    async def _cell(self, cell: str) -> None:
        renew = asyncio.create_task(self._keep_lease(cell))
        try:
            await self.execute(cell)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("sync of %s interrupted: %s", cell, exc)
        except Exception:
            log.exception("sync of %s failed", cell)
            with contextlib.suppress(RedisError, OSError):
                await self.outbox.finish(cell, 0, "", retry_in=self.settings.retry_cap_seconds)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            self._busy.discard(cell)
            self._wake.set()

    async def _keep_lease(self, cell: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            with contextlib.suppress(RedisError, OSError):
                await self.outbox.renew(cell, self.lease_ms)

    # -- one turn on one cell ---------------------------------------------------------------

    async def execute(self, cell: str) -> None:
        turn = await self.outbox.turn(cell)
        target, kind, sku, loc = parse_cell(cell)
        if kind is ActionKind.STOCK:
            await self._stock(turn, target, sku, loc)
        else:
            await self._item(turn, target, sku)

    async def _supersede(self, older: Iterable[Action], newest: Action) -> None:
        superseded = [a for a in older if not a.status.final]
        await self.outbox.superseded(superseded, newest.id)
        for action in superseded:
            telemetry.current().m.sync_actions.add(
                1, {"target": action.target, "status": "SUPERSEDED"})

    async def desired(self, sku: str, location_id: str) -> int:
        available, safety, held = await asyncio.gather(
            self.inputs.record_available(sku, location_id), self.inputs.safety_stock(sku),
            self.reservations.held(sku, location_id))
        return rules.available_to_sell(available, safety, self.rules.buffer_at(location_id),
                                       held)

    async def _stock(self, turn: Turn, target_name: str, sku: str, loc: str) -> None:
        cell = turn.cell
        target = self.targets.stock.get(target_name)
        actions = list(turn.actions)
        try:
            desired = await self.desired(sku, loc)
            # Our last write, until its echo updates the cache's copy of the shop.
            holds = await self.outbox.unconfirmed_write(cell)
            if holds is None:
                holds = await self.inputs.online_available(sku, loc)
            if holds is None and target is not None:
                holds = await target.read_available(sku, loc)
        except BackendError as exc:  # the system of record cannot be read: wait for it
            await self._retry_all(turn, actions, f"inputs unreadable: {exc}", None)
            return
        if not actions:
            if turn.check is None or not rules.shop_drifted(holds, desired):
                await self.outbox.finish(cell, 0, turn.check_generation)
                return
            # The shop offers more than the truth allows: the same push, at once.
            action_id = await self.outbox.record(cell, Cause(
                entry_id=f"check:{turn.check.entry_id}:{turn.check_generation}",
                event_id=turn.check.event_id, source=turn.check.source,
                received_ms=turn.check.received_ms))
            await self.outbox.count(target_name, "drift")
            # The cell's queue as it is now: an action recorded meanwhile is ahead of it.
            actions = list((await self.outbox.turn(cell)).actions)
            if not any(a.id == action_id for a in actions):
                raise RuntimeError(f"drift action {action_id} is not in {cell}'s queue")
        newest = actions[-1]
        await self._supersede(actions[:-1], newest)
        taken = len(actions)
        if target is None:
            await self._dead(newest, f"no stock target {target_name!r} can be written",
                             holds, desired)
            await self.outbox.finish(cell, taken, turn.check_generation)
            return
        action = newest
        for _ in range(STALE_RETRIES + 1):
            if not rules.needs_write(holds, desired):
                await self._done(action, holds, desired, note="the target already held it")
                await self.outbox.finish(cell, taken, turn.check_generation)
                return
            action = await self._attempt(action, desired, holds)
            write = StockWrite(sku=sku, location_id=loc, available=desired, expected=holds,
                               idempotency_key=action.idempotency_key)
            await self.outbox.writing(cell, action.id, desired)
            if self.before_write is not None:
                await self.before_write(action)
            result = await target.set_available(write)
            if result.outcome is Outcome.DONE:
                await self.outbox.written(cell, action.id)
                # Confirmed by the shop's echo (inventory_levels/update), unless nothing changed.
                await self._done(action, holds, desired, echo=result.actual != holds)
                await self.outbox.count(target_name, "writes")
                await self.outbox.finish(cell, taken, turn.check_generation)
                return
            if result.outcome is not Outcome.STALE:
                await self._failed(turn, action, taken, result, holds, desired)
                return
            # Compare-and-set lost (an order committed units meanwhile): re-read, recompute.
            await self.outbox.count(target_name, "stale")
            holds = result.actual if result.actual is not None else \
                await target.read_available(sku, loc)
            desired = await self.desired(sku, loc)
        await self._failed(turn, action, taken, WriteResult(
            Outcome.FAILED, error="compare-and-set kept losing"), holds, desired)

    async def _item(self, turn: Turn, target_name: str, sku: str) -> None:
        cell = turn.cell
        actions = list(turn.actions)
        if not actions:
            await self.outbox.finish(cell, 0, turn.check_generation)
            return
        newest = actions[-1]
        await self._supersede(actions[:-1], newest)
        target = self.targets.items.get(target_name)
        if target is None:
            await self._dead(newest, f"no item target {target_name!r}", None, newest.desired)
            await self.outbox.finish(cell, len(actions), turn.check_generation)
            return
        fields = dict(newest.desired or {})
        price = fields.get("listPrice")
        action = await self._attempt(newest, fields, None)
        result = await target.update_item(ItemWrite(
            sku=sku, name=fields.get("name"),
            list_price=Decimal(price) if price is not None else None,
            idempotency_key=action.idempotency_key))
        if result.outcome is Outcome.DONE:
            await self._done(action, None, fields)
            await self.outbox.finish(cell, len(actions), turn.check_generation)
        else:
            await self._failed(turn, action, len(actions), result, None, fields)

    # -- bookkeeping ------------------------------------------------------------------------

    async def _attempt(self, action: Action, desired: Any, holds: int | None) -> Action:
        """Count an attempt; a new idempotency key only when the write's input changed."""
        key_input = f"{desired!r}:{holds!r}"
        key_seq = action.key_seq
        if action.key_input is not None and action.key_input != key_input:
            key_seq += 1
        attempts = action.attempts + 1
        await self.outbox.update(action.id, attempts=attempts, keySeq=key_seq,
                                 keyInput=key_input, desired=desired, previous=holds,
                                 by=self.outbox.token)
        # What was just written (this replica holds the cell's lease): no read back.
        return dataclasses.replace(action, attempts=attempts, key_seq=key_seq,
                                   key_input=key_input, desired=desired, previous=holds)

    async def _done(self, action: Action, holds: Any, desired: Any, note: str = "",
                    echo: bool = False) -> None:
        record = await self.outbox.completed(action, Status.DONE, previous=holds,
                                             desired=desired, error=None, note=note or None,
                                             echo=echo)
        telemetry.current().m.sync_actions.add(1, {"target": action.target, "status": "DONE"})
        await pushed(self.outbox, action.id, record)

    async def _dead(self, action: Action, error: str, holds: Any, desired: Any) -> None:
        await self.outbox.completed(action, Status.DEAD, error=error, previous=holds,
                                    desired=desired)
        telemetry.current().m.sync_actions.add(1, {"target": action.target, "status": "DEAD"})
        log.warning("sync action %s on %s is dead: %s", action.id, action.cell, error)

    async def _failed(self, turn: Turn, action: Action, taken: int, result: WriteResult,
                      holds: Any, desired: Any) -> None:
        error = result.error or result.outcome.value
        throttled = result.outcome is Outcome.THROTTLED and result.retry_after is not None
        if result.outcome is Outcome.UNMAPPED or (
                action.attempts >= self.settings.max_attempts and not throttled):
            await self._dead(action, error, holds, desired)
            await self.outbox.finish(turn.cell, taken, turn.check_generation)
            return
        await self.outbox.update(action.id, status=Status.FAILED, error=error)
        await self.outbox.count(action.target, "throttled" if result.outcome is
                                Outcome.THROTTLED else "failures")
        telemetry.current().m.sync_actions.add(1, {"target": action.target,
                                                   "status": "FAILED"})
        if throttled:
            assert result.retry_after is not None
            delay = rules.throttled_seconds(result.retry_after, self.settings.retry_base_seconds,
                                            self.random)
        else:
            delay = rules.backoff_seconds(action.attempts, self.settings.retry_base_seconds,
                                          self.settings.retry_cap_seconds, result.retry_after,
                                          self.random)
        # The superseded ones are finished; the newest stays at the queue's head.
        await self.outbox.finish(turn.cell, taken - 1, turn.check_generation, retry_in=delay)

    async def _retry_all(self, turn: Turn, actions: list[Action], error: str,
                         retry_after: float | None) -> None:
        if actions:
            newest = actions[-1]
            await self._supersede(actions[:-1], newest)
            attempts = newest.attempts + 1
            await self.outbox.update(newest.id, status=Status.FAILED, error=error,
                                     attempts=attempts)
            delay = rules.backoff_seconds(attempts, self.settings.retry_base_seconds,
                                          self.settings.retry_cap_seconds, retry_after,
                                          self.random)
            await self.outbox.finish(turn.cell, len(actions) - 1, "", retry_in=delay)
        else:
            await self.outbox.finish(turn.cell, 0, "", retry_in=self.settings.retry_cap_seconds)
