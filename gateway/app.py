"""The gateway's ASGI application.

Routes: ``/graphql`` (HTTP and WebSocket, GraphiQL on GET, its assets under
``/graphql/static/``), ``POST /webhooks/{backend}``,
``/healthz`` (liveness), ``/readyz`` (readiness: Redis, backends, catalog, event readers).
The lifespan connects Redis (or starts the embedded server), loads the identity catalog, and
runs the pending-event sweeper, the change feed, the backend prober and the catalog refresher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from gateway import telemetry
from gateway.config import Settings, browser_origins
from gateway.events.applier import Applier, PendingSweeper
from gateway.events.changes import ChangeFeed, ChangePublisher
from gateway.events.holds import Holds
from gateway.events.log import EventLog
from gateway.http import graphiql
from gateway.http.asgi import BodyGuard
from gateway.http.auth import Authenticator, AuthMiddleware
from gateway.http.batch import BatchMiddleware
from gateway.http.cached_responses import CachedResponses
from gateway.http.cors import BrowserOrigins
from gateway.http.graphql import GraphQLApp
from gateway.http.operations import OperationGuard
from gateway.http.persisted import PersistedQueries, PersistedQueryMiddleware
from gateway.http.ratelimit import RateLimiter, RateLimitMiddleware
from gateway.intake.webhooks import WebhookIntake
from gateway.reconcile.runner import ReconcileStage
from gateway.redis_server import EmbeddedRedis
from gateway.telemetry import logs
from resolvers.errors import BackendError
from resolvers.graph import RetailGraph
from resolvers.reservations import Reservations
from resolvers.store.cache import Cache
from resolvers.store.client import Deadlines, connect
from resolvers.store.reservations import ReservationStore
from resolvers.store.responses import ResponseStore

log = logging.getLogger("retailgraph.app")
CATALOG_RETRY_SECONDS = 2.0
CATALOG_REFRESH_SECONDS = 300.0


async def _keep_catalog_fresh(graph: RetailGraph) -> None:
    """Refresh the catalogs periodically; soon again while any backend's catalog is missing."""
    while True:
        incomplete = graph.catalog is None or graph.catalog.missing
        await asyncio.sleep(CATALOG_RETRY_SECONDS if incomplete else CATALOG_REFRESH_SECONDS)
        try:
            await graph.refresh_catalog()
        except BackendError as exc:
            log.warning("catalog not loaded (%s); retrying", exc)


async def _probe_backends(graph: RetailGraph, interval: float) -> None:
    """Keep backend health current: down backends every interval, all every 5 intervals."""
    tick = 0
    while True:
        await asyncio.sleep(interval)
        tick += 1
        await graph.probe(only_down=tick % 5 != 0)


@dataclass(slots=True)
class Runtime:
    """What the lifespan builds; routes reach it through ``app.state.runtime``."""

    settings: Settings
    graph: RetailGraph
    redis_url: str = ""
    embedded: EmbeddedRedis | None = None
    cache: Cache | None = None
    responses: ResponseStore | None = None
    events: EventLog | None = None
    intake: WebhookIntake | None = None
    sweeper: PendingSweeper | None = None
    feed: ChangeFeed | None = None
    reconciliation: ReconcileStage | None = None
    holds: Holds | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # retailgraph_event_loop_lag_seconds (gateway/telemetry/__init__.py)
    loop_lag: telemetry.LoopLag = field(default_factory=telemetry.LoopLag)
    # False for one-shot commands (events dlq/replay): no sweeper, feed or refreshers.
    background: bool = True

    async def start(self) -> None:
        url = self.settings.redis_url
        if not url:
            self.embedded = EmbeddedRedis()
            url = await self.embedded.start()
        self.redis_url = url
        client = await connect(url, Deadlines.of(self.settings))
        self.cache = Cache(client)
        self.responses = ResponseStore(client)
        self.events = EventLog(client)
        self.reconciliation = ReconcileStage(self.settings, self.graph, client, self.cache,
                                             self.events)
        # Reservations: their holds in Redis, every change of one on the event path.
        self.holds = Holds(self.graph, self.events)
        applier = Applier(self.cache, self.responses, self.reconciliation.publisher(
                          ChangePublisher(
                              client, self.settings.change_retention_seconds,
                              self.graph.current_view,
                              lambda loc, src: self.graph.system_of_record(loc) == src)),
                          holds=self.holds)
        store = ReservationStore(
            client, self.graph.system_of_record, self.holds,
            commit_hold_seconds=self.settings.reservation_commit_hold_seconds)
        self.holds.bind(applier, store)
        self.graph.reservations = Reservations(self.graph, store)
        self.feed = ChangeFeed(client, self.settings.subscriber_buffer,
                               max_per_owner=self.settings.max_subscriptions_per_principal)
        self.graph.feed = self.feed
        self.graph.cache = self.cache if self.settings.cache else None
        telemetry.instrument_applier(applier)
        self.intake = WebhookIntake(self.settings, self.graph, self.events, applier)
        self.sweeper = PendingSweeper(self.events, applier)
        self.reconciliation.bind(applier, self.intake)
        with contextlib.suppress(BackendError):
            await self.graph.refresh_catalog()
        if not self.background:
            return
        self.tasks = [asyncio.create_task(_keep_catalog_fresh(self.graph)),
                      asyncio.create_task(_probe_backends(self.graph,
                                                          self.settings.probe_interval_seconds)),
                      asyncio.create_task(self.sweeper.run()),
                      asyncio.create_task(self.holds.sweep_forever()),
                      asyncio.create_task(self.feed.run()),
                      asyncio.create_task(self.loop_lag.run()),
                      *map(asyncio.create_task, self.reconciliation.background())]

    async def readiness(self) -> dict[str, Any]:
        """``/readyz``: Redis answers, every backend answered its last call or probe, the
        identity catalog is loaded, and this replica's event readers (pending sweeper,
        change feed) are running. ``failing`` names the checks that are not."""
        graph = self.graph
        catalog = graph.catalog
        redis_ok = self.cache is not None and await self.cache.ping()
        checks: dict[str, dict[str, Any]] = {
            "redis": {"ok": redis_ok} if redis_ok else {
                "ok": False, "error": "not connected" if self.cache is None else "no answer"},
            "backends": {"ok": not graph.health.down, "down": dict(graph.health.down)},
            "catalog": {"ok": catalog is not None and not catalog.missing,
                        "missing": list(catalog.missing) if catalog else ["all"]},
            "sweeper": {"ok": self.sweeper is not None and self.sweeper.running},
            "feed": {"ok": self.feed is not None and self.feed.running},
        }
        failing = [name for name, check in checks.items() if not check["ok"]]
        return {"ready": not failing, "failing": failing, "checks": checks}

    async def stop(self) -> None:
        if self.feed is not None:
            self.feed.close_all()
        if self.reconciliation is not None:
            self.reconciliation.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.graph.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        if self.embedded is not None:
            await self.embedded.stop()


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    graph = RetailGraph.from_settings(settings, transport=transport,
                                      observer=telemetry.ResolverTelemetry())
    runtime = Runtime(settings, graph)
    auth = Authenticator(settings)
    logs.protect(logs.secrets_of(settings))
    origins = browser_origins(settings)
    limiter = RateLimiter(runtime, settings.rate_limit_per_minute)
    persisted = PersistedQueries(runtime, settings)
    # The per-operation checks every transport applies (gateway/http/operations.py).
    guard = OperationGuard(limiter, persisted)
    graphql = GraphQLApp(settings, graph, auth=auth, guard=guard, keep_alive=True,
                         graphql_ide="graphiql" if settings.graphiql else None,
                         keep_alive_interval=settings.ws_keepalive_seconds,
                         allowed_origins=sorted(origins))

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        report = await runtime.readiness()
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    async def webhook(request: Request) -> Response:
        if runtime.intake is None or runtime.feed is None:
            return JSONResponse({"error": "starting up"}, status_code=503)
        # Subscription deliveries wait while a webhook is being acknowledged.
        with runtime.feed.deliveries.intake_first():
            return await telemetry.traced_webhook(request, runtime.intake, settings.backends)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        telemetry.watch(runtime)
        try:
            yield
        finally:
            telemetry.unwatch(runtime)
            await runtime.stop()

    app = Starlette(routes=[
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/webhooks/{backend}", webhook, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", telemetry.metrics_endpoint),
        *([graphiql.assets()] if settings.graphiql else []),
    ], lifespan=lifespan)
    app.add_middleware(CachedResponses, runtime=runtime)
    # Outermost last: metrics -> browser origins (CORS; preflights end here) -> auth ->
    # bodies read (within body_timeout_seconds, max_concurrent_bodies at once) -> batches
    # taken apart -> (for each operation) rate limit -> persisted queries -> response cache.
    app.add_middleware(PersistedQueryMiddleware, persisted=persisted,
                       max_body=settings.max_body_bytes)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    app.add_middleware(BatchMiddleware, max_batch_size=settings.max_batch_size,
                       max_body=settings.max_body_bytes)
    app.add_middleware(BodyGuard, timeout=settings.body_timeout_seconds,
                       slots=settings.max_concurrent_bodies, limit=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, auth=auth)
    app.add_middleware(BrowserOrigins, origins=origins)
    app.add_middleware(telemetry.HttpMetrics)
    app.state.runtime = runtime
    app.state.guard = guard
    app.state.graph = graph
    app.state.settings = settings
    return app
