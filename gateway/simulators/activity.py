"""Background retail activity for ``retailgraph demo --activity EVENTS_PER_SEC``.

The demo should look like a live retailer: tills selling, web orders being allocated and
shipped, goods arriving against purchase orders, stores being replenished, counts being
corrected. :class:`Activity` plays the people and integrations that do this, and it does it
only through the simulators' own vendor APIs over real HTTP, exactly as those systems would be
driven in production. So every change reaches the gateway the production way (a signed
webhook), and the gateway has nothing to learn from the activity itself.

Operations are chosen from a ``random.Random(seed)``: the same seed chooses the same sequence
(:meth:`Activity.choose`), which makes a demo reproducible. What is resolved against live
state (which PO is still open, the current on-hand to count near) is read from the systems.

A rejected operation (a 4xx: out of stock, over-receipt, ...) is skipped and counted, as a
real integration would log and move on; a connection error is logged and the same step is
retried later with the same idempotency token, so a retry cannot apply twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from gateway.config import Settings
from gateway.simulators.world import COMPANY_PREFIX, Item, Location, World
from resolvers.connectors.http import auth_headers
from resolvers.settings import BackendFormat

log = logging.getLogger("retailgraph.activity")

SHOPIFY_API = "/admin/api/2025-01"
# Primary operations and how often each is chosen. Follow-ups (allocate, ship, fulfil,
# putaway, transfer_in, arrive, stock_sync, ...) come from these.
WEIGHTS = {"sale": 30, "online_order": 20, "receipt": 10, "transfer": 12, "wh_transfer": 4,
           "cycle_count": 10}
MAX_ATTEMPTS = 8
MAX_BACKLOG_SECONDS = 1.0
SUMMARY_SECONDS = 60.0


class Rejected(Exception):
    """The system refused the request (4xx); the operation is skipped."""


class Unavailable(Exception):
    """The system is unreachable or answered 5xx: the step is retried later."""

    def __init__(self, system: str, message: str) -> None:
        super().__init__(message)
        self.system = system


@dataclass(frozen=True, slots=True)
class Plan:
    """One chosen primary operation: a pure function of the seeded random stream.

    ``location`` and ``other`` are indices into ``World.locations``; ``pick`` resolves choices
    that depend on live state (which open PO, how far a count is off) deterministically.
    """

    kind: str
    item: int
    location: int
    other: int
    quantity: int
    pick: int


@dataclass(slots=True)
class Step:
    """One write to one system (plus the reads it needs), retried as a unit.

    ``token`` is fixed at creation, so a retried step sends the same idempotency key
    (Square) or EPCIS eventID (WMS) and cannot be applied twice.
    """

    kind: str
    fn: Callable[[Step], Awaitable[None]]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0


def epc_class(gtin14: str) -> str:
    """EPC class pattern (``urn:epc:idpat:sgtin``) of a GTIN-14 of the World's company."""
    cp = len(COMPANY_PREFIX)
    return f"urn:epc:idpat:sgtin:{gtin14[1:1 + cp]}.{gtin14[0]}{gtin14[1 + cp:13]}.*"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Activity:
    """Drives the four simulators at about ``rate`` operations per second until cancelled."""

    def __init__(self, settings: Settings, world: World, rate: float, seed: int = 42,
                 follow_up_delay: tuple[float, float] = (1.0, 5.0),
                 shop_stock_feed: bool = True) -> None:
        """``shop_stock_feed=False`` switches off the built-in WMS -> Shopify stock feed
        (``_stock_sync``): with retailgraph's sync on, it is the only thing that moves stock
        numbers between systems, so this integration must be absent."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.settings = settings
        self.world = world
        self.rate = rate
        self.rng = random.Random(seed)
        # Follow-up delays draw from their own stream, so they never shift the choices.
        self._delays = random.Random(seed + 1)
        self.follow_up_delay = follow_up_delay
        self.shop_stock_feed = shop_stock_feed
        self.stats: Counter[str] = Counter()
        # (item index, location index) of every cell a write changed: what to check.
        self.touched: set[tuple[int, int]] = set()
        self._stores = world.stores
        self._warehouses = world.warehouses
        kinds = {k: w for k, w in WEIGHTS.items()
                 if (self._stores or k not in ("sale", "transfer"))
                 and (len(self._warehouses) > 1 or k != "wh_transfer")}
        self._kinds, self._weights = list(kinds), list(kinds.values())
        # Units on unfulfilled web orders per (item, warehouse): Shopify's REST API does not
        # expose "committed", so the OMS integration keeps its own book, opened from the
        # seeded world (orders placed before the demo started) and moved by its own orders.
        self._committed: dict[tuple[int, int], int] = {}
        self._due: list[tuple[float, int, Step]] = []
        self._seq = itertools.count()
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._stopping = asyncio.Event()
        self._down: set[str] = set()  # systems last found unreachable: warn once, not per step

    # -- choosing ------------------------------------------------------------------------------

    def choose(self) -> Plan:
        """The next primary operation; always draws the same amount from the stream."""
        r = self.rng
        kind = r.choices(self._kinds, self._weights)[0]
        item = r.randrange(self.world.n_skus)
        warehouse = r.choice(self._warehouses).index
        store = r.choice(self._stores).index if self._stores else warehouse
        other = r.choice(self._warehouses).index
        small, large, pick = r.randint(1, 2), r.randint(2, 6), r.getrandbits(32)
        if kind == "wh_transfer" and other == warehouse:
            other = self._warehouses[(self._warehouses.index(
                self.world.locations[warehouse]) + 1) % len(self._warehouses)].index
        if kind == "sale":
            return Plan(kind, item, store, store, small, pick)
        if kind == "online_order":
            return Plan(kind, item, warehouse, warehouse, small, pick)
        if kind == "transfer":
            return Plan(kind, item, warehouse, store, large, pick)
        if kind == "wh_transfer":
            return Plan(kind, item, warehouse, other, large, pick)
        return Plan(kind, item, warehouse, warehouse, 0, pick)  # receipt, cycle_count

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Operate until cancelled or stopped: each tick runs a due follow-up, else a new
        operation."""
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            formats: tuple[BackendFormat, ...] = ("square", "epcis", "erp", "shopify")
            for fmt in formats:
                backend = self.settings.backend_for(fmt)
                self._clients[fmt] = await stack.enter_async_context(httpx.AsyncClient(
                    base_url=backend.base_url, headers=auth_headers(backend),
                    timeout=httpx.Timeout(5.0, connect=2.0)))
            interval = 1.0 / self.rate
            next_at = summary_at = loop.time()
            while not self._stopping.is_set():
                delay = next_at - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
                    if self._stopping.is_set():
                        break
                # Behind schedule (slow systems): catch up at most a second's worth, no burst.
                next_at = max(next_at + interval, loop.time() - MAX_BACKLOG_SECONDS)
                await self.tick()
                if loop.time() >= summary_at + SUMMARY_SECONDS:
                    summary_at = loop.time()
                    log.info("activity so far: %s", ", ".join(
                        f"{k} {v}" for k, v in sorted(self.stats.items())))

    def stop(self) -> None:
        """Finish the operation under way, then return from :meth:`run` (no request is cut
        off half-way, unlike a cancel)."""
        self._stopping.set()

    async def tick(self) -> None:
        """One operation: the earliest due follow-up first, else a newly chosen one."""
        if self._due and self._due[0][0] <= asyncio.get_running_loop().time():
            _, _, step = heapq.heappop(self._due)
            await self._do(step)
        else:
            await self._do(self._primary(self.choose()))

    def _primary(self, plan: Plan) -> Step:
        fns: dict[str, Callable[[Plan, Step], Awaitable[None]]] = {
            "sale": self._sale, "online_order": self._online_order, "receipt": self._receipt,
            "transfer": self._transfer, "wh_transfer": self._transfer,
            "cycle_count": self._cycle_count}
        fn = fns[plan.kind]
        return Step(plan.kind, lambda step: fn(plan, step))

    def _later(self, step: Step, delay: float | None = None) -> None:
        """Schedule a follow-up: real shipments and putaways happen a while after the order."""
        if delay is None:
            delay = self._delays.uniform(*self.follow_up_delay)
        due = asyncio.get_running_loop().time() + delay
        heapq.heappush(self._due, (due, next(self._seq), step))

    async def _do(self, step: Step) -> None:
        """Run a step; count it; never let one failure stop the activity."""
        try:
            await step.fn(step)
        except Rejected as exc:
            self.stats[f"{step.kind}.rejected"] += 1
            log.debug("activity %s rejected: %s", step.kind, exc)
        except Unavailable as exc:
            step.attempts += 1
            if exc.system not in self._down:
                self._down.add(exc.system)
                log.warning("activity: %s unavailable (%s); retrying its steps later",
                            exc.system, exc)
            if step.attempts >= MAX_ATTEMPTS:
                self.stats[f"{step.kind}.dropped"] += 1
                log.warning("activity %s dropped after %d attempts: %s", step.kind,
                            step.attempts, exc)
                return
            self.stats[f"{step.kind}.retried"] += 1
            self._later(step, min(30.0, 0.5 * 2 ** step.attempts))
        except Exception:
            self.stats[f"{step.kind}.failed"] += 1
            log.exception("activity %s failed", step.kind)
        else:
            self.stats[step.kind] += 1

    async def _call(self, system: str, method: str, path: str, body: Any = None,
                    params: dict[str, Any] | None = None) -> Any:
        try:
            response = await self._clients[system].request(method, path, json=body,
                                                           params=params)
        except httpx.TransportError as exc:
            raise Unavailable(system, f"{method} {path}: {type(exc).__name__} {exc}") from exc
        if response.status_code >= 500:
            raise Unavailable(system, f"{method} {path}: {response.status_code}")
        if system in self._down:
            self._down.discard(system)
            log.info("activity: %s is reachable again", system)
        if 400 <= response.status_code < 500:
            raise Rejected(f"{system} {method} {path}: {response.status_code} "
                           f"{response.text[:200]}")
        return response.json()

    # -- system helpers ------------------------------------------------------------------------

    async def _square_adjust(self, step: Step, store: Location, item: Item, from_state: str,
                             to_state: str, quantity: int) -> None:
        """A Square ADJUSTMENT, idempotent by the step's token."""
        await self._call("square", "POST", "/v2/inventory/changes/batch-create", {
            "idempotency_key": step.token,
            "changes": [{"type": "ADJUSTMENT", "adjustment": {
                "catalog_object_id": item.square_variation_id, "location_id": store.square_id,
                "from_state": from_state, "to_state": to_state, "quantity": str(quantity),
                "occurred_at": now_iso()}}]})
        self.touched.add((item.index, store.index))

    async def _capture(self, step: Step, events: list[dict[str, Any]]) -> None:
        """Capture ObjectEvents as one all-or-nothing EPCIS document; eventIDs from the token."""
        for n, event in enumerate(events):
            event.update({"type": "ObjectEvent", "eventID": f"urn:uuid:{uuid.UUID(step.token)}"
                          if n == 0 else f"urn:uuid:{uuid.uuid5(uuid.UUID(step.token), str(n))}",
                          "eventTime": now_iso(), "eventTimeZoneOffset": "+00:00"})
        await self._call("epcis", "POST", "/api/v1/events", {
            "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
            "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": now_iso(),
            "epcisBody": {"eventList": events}})

    @staticmethod
    def _event(step: str, item: Item, site: Location, quantity: int, action: str = "ADD",
               **extra: Any) -> dict[str, Any]:
        return {"action": action, "bizStep": step, "bizLocation": {"id": site.sgln},
                "readPoint": {"id": site.sgln},
                "quantityList": [{"epcClass": epc_class(item.gtin14), "quantity": quantity,
                                  "uom": "EA"}], **extra}

    async def _balance(self, item: Item, site: Location) -> dict[str, Any]:
        found = await self._call("epcis", "POST", "/api/v1/balances/query",
                                 {"gtins": [item.gtin14], "glns": [site.gln]})
        rows: list[dict[str, Any]] = found["balances"]
        if not rows:
            raise Rejected(f"WMS has no balance for {item.sku} at {site.code}")
        return rows[0]

    def committed(self, item: int, warehouse: int) -> int:
        """Units of ``item`` on unfulfilled web orders at ``warehouse`` (the OMS's book)."""
        key = (item, warehouse)
        if key not in self._committed:
            self._committed[key] = self.world.online_committed(item, warehouse)
        return self._committed[key]

    async def _changed(self, item: Item, site: Location) -> None:
        """After a change at a warehouse, the stock feed brings Shopify's available in line."""
        self.touched.add((item.index, site.index))
        if self.shop_stock_feed and site.shopify_id is not None:
            await self._do(Step("stock_sync", lambda s: self._stock_sync(item, site)))

    async def _stock_sync(self, item: Item, site: Location) -> None:
        """The WMS -> Shopify stock feed: available = WMS available - web committed (>= 0).

        Subtracting what Shopify already holds for open web orders keeps the shop from
        selling stock the warehouse has not yet allocated to them.
        """
        balance = await self._balance(item, site)
        target = max(0, int(balance["available"]) - self.committed(item.index, site.index))
        await self._call("shopify", "POST", f"{SHOPIFY_API}/inventory_levels/set.json", {
            "location_id": site.shopify_id, "inventory_item_id": item.shopify_inventory_item_id,
            "available": target})

    # -- operations ----------------------------------------------------------------------------

    async def _sale(self, plan: Plan, step: Step) -> None:
        """A till sale: Square moves the units IN_STOCK -> SOLD."""
        await self._square_adjust(step, self.world.locations[plan.location],
                                  self.world.item(plan.item), "IN_STOCK", "SOLD", plan.quantity)

    async def _online_order(self, plan: Plan, step: Step) -> None:
        """A web order at a fulfilment warehouse; the OMS then allocates it in the WMS."""
        item, site = self.world.item(plan.item), self.world.locations[plan.location]
        found = await self._call("shopify", "POST", f"{SHOPIFY_API}/orders.json", {"order": {
            "line_items": [{"variant_id": item.shopify_variant_id, "quantity": plan.quantity}],
            "location_id": site.shopify_id, "email": f"customer{plan.pick % 10_000}@example.com"}})
        order_id = int(found["order"]["id"])
        self._committed[item.index, site.index] = (self.committed(item.index, site.index)
                                                   + plan.quantity)
        self.touched.add((item.index, site.index))
        await self._do(Step("allocate", lambda s: self._allocate(s, order_id, item, site,
                                                                 plan.quantity)))

    async def _allocate(self, step: Step, order_id: int, item: Item, site: Location,
                        quantity: int) -> None:
        """WMS ``picking`` reserves the order's units; shipping follows later."""
        await self._capture(step, [self._event(
            "picking", item, site, quantity, disposition="in_progress",
            bizTransactionList=[{"type": "po",  # the customer's order, in CBV terms
                                 "bizTransaction": f"gid://shopify/Order/{order_id}"}])])
        await self._changed(item, site)
        self._later(Step("ship", lambda s: self._ship(s, order_id, item, site, quantity)))

    async def _ship(self, step: Step, order_id: int, item: Item, site: Location,
                    quantity: int) -> None:
        """The warehouse ships the order (WMS ``shipping``); the OMS then marks it fulfilled."""
        await self._capture(step, [self._event("shipping", item, site, quantity,
                                               disposition="in_transit")])
        await self._changed(item, site)
        await self._do(Step("fulfil", lambda s: self._fulfil(order_id, item, site, quantity)))

    async def _fulfil(self, order_id: int, item: Item, site: Location, quantity: int) -> None:
        await self._call("shopify", "POST", f"{SHOPIFY_API}/orders/{order_id}/fulfillments.json",
                         {"fulfillment": {"location_id": site.shopify_id}})
        self._committed[item.index, site.index] = max(
            0, self.committed(item.index, site.index) - quantity)
        await self._changed(item, site)  # Shopify committed fell: resync available

    async def _receipt(self, plan: Plan, step: Step) -> None:
        """Goods arrive against an open PO: the ERP books the receipt, then the WMS receives."""
        site = self.world.locations[plan.location]
        found = await self._call("erp", "GET", "/api/v1/purchase-orders",
                                 params={"status": "open", "locations": site.code,
                                         "limit": 100})
        orders: list[dict[str, Any]] = found["purchaseOrders"]
        if not orders:
            raise Rejected(f"no open purchase order at {site.code}")
        po = orders[plan.pick % len(orders)]
        line = po["lines"][0]
        remaining = int(line["quantityOrdered"]) - int(line["quantityReceived"])
        quantity = remaining if (plan.pick >> 8) % 3 else max(1, remaining // 2)
        item = self._item_by_sku(str(line["sku"]))
        await self._call("erp", "POST", f"/api/v1/purchase-orders/{po['poNumber']}/receipts",
                         {"lines": [{"lineNumber": line["lineNumber"], "quantity": quantity}]})
        number = str(po["poNumber"])
        await self._do(Step("receive", lambda s: self._receive(s, number, item, site, quantity)))

    async def _receive(self, step: Step, po: str, item: Item, site: Location,
                       quantity: int) -> None:
        """WMS ``receiving`` into quality control; putaway releases it later."""
        await self._capture(step, [self._event(
            "receiving", item, site, quantity, disposition="in_progress",
            bizTransactionList=[{"type": "po",
                                 "bizTransaction": f"urn:epcglobal:cbv:bt:{site.gln}:{po}"}])])
        await self._changed(item, site)
        self._later(Step("putaway", lambda s: self._putaway(s, item, site, quantity)))

    async def _putaway(self, step: Step, item: Item, site: Location, quantity: int) -> None:
        await self._capture(step, [self._event("storing", item, site, quantity,
                                               disposition="sellable_accessible")])
        await self._changed(item, site)

    async def _transfer(self, plan: Plan, step: Step) -> None:
        """Replenishment from a warehouse: picked and shipped in one WMS document.

        Picking first matters: ``shipping`` consumes allocated units, so shipping unpicked
        stock would silently release web orders' allocations.
        """
        item = self.world.item(plan.item)
        src, dst = self.world.locations[plan.location], self.world.locations[plan.other]
        await self._capture(step, [
            self._event("picking", item, src, plan.quantity, disposition="in_progress"),
            self._event("shipping", item, src, plan.quantity, disposition="in_transit",
                        destinationList=[{"type": "location", "destination": dst.sgln}])])
        await self._changed(item, src)
        if dst.type == "STORE":
            await self._do(Step("in_transit", lambda s: self._square_adjust(
                s, dst, item, "NONE", "IN_TRANSIT_TO", plan.quantity)))
            self._later(Step("transfer_in", lambda s: self._square_adjust(
                s, dst, item, "IN_TRANSIT_TO", "IN_STOCK", plan.quantity)))
        else:
            self._later(Step("arrive", lambda s: self._arrive(s, item, src, dst,
                                                              plan.quantity)))

    async def _arrive(self, step: Step, item: Item, src: Location, dst: Location,
                      quantity: int) -> None:
        await self._capture(step, [self._event(
            "arriving", item, dst, quantity, disposition="in_progress",
            sourceList=[{"type": "location", "source": src.sgln}])])
        await self._changed(item, dst)

    async def _cycle_count(self, plan: Plan, step: Step) -> None:
        """A count near the book on-hand (shrinkage, a misplaced carton): OBSERVE sets it."""
        item, site = self.world.item(plan.item), self.world.locations[plan.location]
        balance = await self._balance(item, site)
        counted = max(0, int(balance["onHand"]) + plan.pick % 5 - 2)
        await self._capture(step, [self._event("cycle_counting", item, site, counted,
                                               action="OBSERVE")])
        await self._changed(item, site)

    def _item_by_sku(self, sku: str) -> Item:
        index = int(sku.removeprefix("SKU-")) - 1 if sku.startswith("SKU-") else -1
        if not 0 <= index < self.world.n_skus or self.world.item(index).sku != sku:
            raise Rejected(f"PO line for unknown SKU {sku!r}")
        return self.world.item(index)
