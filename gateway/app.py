"""The composition root: :func:`build` makes everything the running gateway needs, in
dependency order, and :func:`create_app` serves it.

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
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute, request_response
from starlette.types import Receive, Scope, Send

from gateway import telemetry
from gateway.config import Settings, browser_origins
from gateway.events.applier import Applier, PendingSweeper
from gateway.events.changes import ChangeFeed, ChangePublisher
from gateway.events.holds import HoldLog, HoldSettlement, HoldSweeper
from gateway.events.log import EventLog
from gateway.http import graphiql
from gateway.http.asgi import BodyBudget, BodyGuard, Methods, send_json
from gateway.http.auth import Authenticator, AuthMiddleware
from gateway.http.batch import BatchMiddleware
from gateway.http.cached_responses import CachedResponses, response_lookahead
from gateway.http.cors import BrowserOrigins
from gateway.http.graphql import GraphQLApp
from gateway.http.operations import OperationGuard
from gateway.http.persisted import PersistedQueries, PersistedQueryMiddleware
from gateway.http.ratelimit import RateLimiter, RateLimitMiddleware
from gateway.intake.webhooks import WebhookIntake
from gateway.reconcile.discrepancies import DiscrepancyFeed, DiscrepancyIndex, MovementHistory
from gateway.reconcile.runner import (
    Rechecker,
    ReconcileBookkeeping,
    ReconcileRunner,
    ReconcileStage,
)
from gateway.reconcile.synchealth import AppliedLag, SyncHealth
from gateway.redis_server import EmbeddedRedis
from gateway.serving import make_server, run_together, shared_port_socket
from gateway.serving import run as run_loop
from gateway.sync import Sync
from gateway.sync import build as build_sync
from gateway.sync.executor import HeldInStore
from gateway.telemetry import logs
from resolvers.abc import RedisClient
from resolvers.access import METRICS_READ
from resolvers.errors import BackendError
from resolvers.graph import RetailGraph
from resolvers.reservations import Reservations
from resolvers.store.cache import Cache
from resolvers.store.client import Deadlines, connect
from resolvers.store.reservations import HoldsStore, ReservationStore
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


@dataclass(frozen=True, slots=True)
class Runtime:
    """The running gateway, as :func:`build` made it; routes reach it through
    ``app.state.runtime``."""

    settings: Settings
    redis_url: str
    embedded: EmbeddedRedis | None  # the private Redis started when none is configured
    redis: RedisClient
    cache: Cache
    responses: ResponseStore
    events: EventLog
    graph: RetailGraph
    feed: ChangeFeed
    applier: Applier
    holds: HoldSweeper
    reservations: Reservations
    reconciliation: ReconcileStage
    sync: Sync
    intake: WebhookIntake
    sweeper: PendingSweeper
    # retailgraph_event_loop_lag_seconds (gateway/telemetry)
    loop_lag: telemetry.LoopLag
    # False for one-shot commands (events dlq/replay, reconcile): no sweeper, feed or
    # refreshers.
    background: bool = True
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Load the identity catalog (a backend that is down is retried in the background)
        and start the background jobs."""
        with contextlib.suppress(BackendError):
            await self.graph.refresh_catalog()
        if not self.background:
            return
        self.tasks.extend([
            asyncio.create_task(_keep_catalog_fresh(self.graph)),
            asyncio.create_task(_probe_backends(self.graph,
                                                self.settings.probe_interval_seconds)),
            asyncio.create_task(self.sweeper.run()),
            asyncio.create_task(self.holds.run()),
            asyncio.create_task(self.feed.run()),
            asyncio.create_task(self.loop_lag.run()),
            *map(asyncio.create_task, self.reconciliation.background()),
            *map(asyncio.create_task, self.sync.background())])

    async def readiness(self) -> dict[str, Any]:
        """``/readyz``: Redis answers, every backend answered its last call or probe, the
        identity catalog is loaded, and this replica's event readers (pending sweeper,
        change feed) are running. ``failing`` names the checks that are not."""
        graph = self.graph
        catalog = graph.catalog
        redis_ok = await self.cache.ping()
        checks: dict[str, dict[str, Any]] = {
            "redis": {"ok": True} if redis_ok else {"ok": False, "error": "no answer"},
            "backends": {"ok": not graph.health.down, "down": dict(graph.health.down)},
            "catalog": {"ok": catalog is not None and not catalog.missing,
                        "missing": list(catalog.missing) if catalog else ["all"]},
            "sweeper": {"ok": self.sweeper.running},
            "feed": {"ok": self.feed.running},
        }
        failing = [name for name, check in checks.items() if not check["ok"]]
        return {"ready": not failing, "failing": failing, "checks": checks}

    async def stop(self) -> None:
        self.feed.close_all()
        self.reconciliation.close()
        self.sync.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.graph.aclose()
        await self.cache.aclose()
        if self.embedded is not None:
            await self.embedded.stop()


async def build(settings: Settings, transport: httpx.AsyncBaseTransport | None = None,
                background: bool = True) -> Runtime:
    """Everything the running gateway needs, each part given what it uses, in dependency
    order: Redis and its stores, the graph (connectors, cache), the change feed, the
    applier and its observers, reconciliation, webhook intake. Nothing is wired afterwards.
    ``transport`` replaces the backends' network (tests)."""
    embedded = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedRedis()
        url = await embedded.start()
    redis = await connect(url, Deadlines.of(settings), batch=settings.redis_batching)
    cache = Cache(redis)
    responses = ResponseStore(redis)
    events = EventLog(redis)
    # The units reservations hold: the graph's loaders and the sync rules subtract them.
    held = HoldsStore(redis)
    graph = RetailGraph.from_settings(settings, cache if settings.cache else None, transport,
                                      telemetry.ResolverTelemetry(), held)

    def is_record(location_id: str, source: str) -> bool:
        return graph.system_of_record(location_id) == source

    feed = ChangeFeed(redis, settings.subscriber_buffer,
                      max_per_owner=settings.max_subscriptions_per_principal)
    # Sync (gateway/sync/): what reservations hold is not offered online; the applier
    # records each event's actions, a re-check or run finding an oversell asks for a push.
    sync = build_sync(settings, graph, redis, HeldInStore(held))
    index = DiscrepancyIndex(redis, [sync.recorder.judged])
    history = MovementHistory(redis)
    rechecker = Rechecker(settings, graph, index, history)
    applier = Applier(
        cache, responses,
        ChangePublisher(redis, settings.change_retention_seconds, graph.current_view, is_record),
        holds=HoldSettlement(graph, held), hold_log=HoldLog(graph, events),
        observers=[telemetry.ApplierTelemetry(),
                   ReconcileBookkeeping(history, rechecker, is_record), AppliedLag(redis)],
        before_done=[sync.recorder])
    # Reservations (issue 14): every change of a hold goes out on the one event path, through
    # the applier.
    store = ReservationStore(redis, graph.system_of_record, applier.publish_hold, units=held,
                             commit_hold_seconds=settings.reservation_commit_hold_seconds)
    reservations = Reservations(graph, store)
    runner = ReconcileRunner(settings, graph, cache, events, applier, index, history)
    health = SyncHealth(redis, settings, graph, events, applier, runner.heal_source)
    reconciliation = ReconcileStage(settings, redis, index,
                                    DiscrepancyFeed(redis, settings.subscriber_buffer), history,
                                    rechecker, runner, health)
    return Runtime(
        settings=settings, redis_url=url, embedded=embedded, redis=redis, cache=cache,
        responses=responses, events=events, graph=graph, feed=feed, applier=applier,
        holds=HoldSweeper(store), reservations=reservations, reconciliation=reconciliation,
        sync=sync,
        intake=WebhookIntake(settings, graph, events, applier, health),
        sweeper=PendingSweeper(events, applier), loop_lag=telemetry.LoopLag(),
        background=background)


class Healthz:
    """``/healthz`` (liveness): no middleware, no request object, the same bytes every time:
    ``{"status":"ok","pid":N}``, N the process that answers (one of ``--workers``).
    (A class: Starlette would wrap a function endpoint in a request/response adapter.)"""

    def __init__(self) -> None:
        self.body = b'{"status":"ok","pid":%d}' % os.getpid()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.body)


def serve(runtime: Runtime) -> Starlette:
    """The HTTP side of a built runtime: the routes, each behind the middlewares it needs."""
    settings = runtime.settings
    auth = Authenticator(settings)
    origins = browser_origins(settings)
    limiter = RateLimiter(runtime.redis, settings.rate_limit_per_minute)
    persisted = PersistedQueries(runtime.redis, settings)
    # The per-operation checks every transport applies (gateway/http/operations.py).
    guard = OperationGuard(limiter, persisted)
    graphql = GraphQLApp(settings, runtime.graph, auth=auth, guard=guard, feed=runtime.feed,
                         reconciliation=runtime.reconciliation, sync=runtime.sync,
                         reservations=runtime.reservations, keep_alive=True,
                         graphql_ide="graphiql" if settings.graphiql else None,
                         keep_alive_interval=settings.ws_keepalive_seconds,
                         allowed_origins=sorted(origins))

    async def readyz(request: Request) -> JSONResponse:
        report = await runtime.readiness()
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    async def webhook(request: Request) -> Response:
        # Subscription deliveries wait while a webhook is being acknowledged.
        with runtime.feed.deliveries.intake_first():
            return await telemetry.traced_webhook(request, runtime.intake, settings.backends)

    # Each route behind exactly the middlewares it needs (Starlette's per-route middleware,
    # outermost first; none of them looks at the path). /graphql and /metrics take every
    # method to their chain, which ends in the method check (Methods), so a CORS preflight,
    # the credential check and the rate limit see a request first, as they did in front of
    # the router. One body budget for every route that reads bodies.
    bodies = BodyBudget(timeout=settings.body_timeout_seconds,
                        slots=settings.max_concurrent_bodies, limit=settings.max_body_bytes)
    # /graphql over HTTP: metrics -> browser origins (CORS; preflights end here) -> auth
    # (not the GraphiQL page) -> bodies read (within body_timeout_seconds,
    # max_concurrent_bodies at once) -> batches taken apart -> (for each operation) rate
    # limit, which sends the response cache's lookup in its round trip -> persisted
    # queries -> response cache -> the method check -> Strawberry.
    graphql_http = [
        Middleware(telemetry.HttpMetrics),
        Middleware(BrowserOrigins, origins=origins),
        Middleware(AuthMiddleware, auth=auth, ide_page=True),
        Middleware(BodyGuard, budget=bodies, graphql=True),
        Middleware(BatchMiddleware, max_batch_size=settings.max_batch_size,
                   max_body=settings.max_body_bytes),
        Middleware(RateLimitMiddleware, limiter=limiter,
                   lookahead=response_lookahead(runtime.responses, settings.cache)),
        Middleware(PersistedQueryMiddleware, persisted=persisted,
                   max_body=settings.max_body_bytes),
        Middleware(CachedResponses, responses=runtime.responses,
                   health=runtime.graph.health, enabled=settings.cache),
        Middleware(Methods, methods=["GET", "POST"]),
    ]
    app = Starlette(routes=[
        Route("/graphql", graphql, methods=None, middleware=graphql_http),
        # The WebSocket handshake: the origin check; the rest happens at connection_init
        # and per operation (gateway/http/graphql.py, gateway/http/websocket.py).
        WebSocketRoute("/graphql", graphql,
                       middleware=[Middleware(BrowserOrigins, origins=origins)]),
        Route("/webhooks/{backend}", webhook, methods=["POST"], middleware=[
            Middleware(telemetry.HttpMetrics), Middleware(BodyGuard, budget=bodies,
                                                          graphql=False)]),
        Route("/healthz", Healthz(), methods=["GET"]),
        Route("/readyz", readyz),
        # Its credential is checked before its method (a preflight gets 401).
        Route("/metrics", Methods(request_response(telemetry.metrics_endpoint), ["GET"]),
              methods=None, middleware=[
                  Middleware(AuthMiddleware, auth=auth, scope=METRICS_READ)]),
        *([graphiql.assets()] if settings.graphiql else []),
    ])
    app.state.guard = guard
    return app


class Gateway:
    """The ASGI application a server runs: the lifespan builds the :class:`Runtime`
    (:func:`build`) and its HTTP side (:func:`serve`); every request goes to that. Servers
    send no request before the lifespan's startup is complete."""

    def __init__(self, settings: Settings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.transport = transport
        self.state = State({"settings": settings})
        self._served: Starlette | None = None

    @property
    def routes(self) -> list[BaseRoute]:
        """The routes being served (none before startup)."""
        return self._served.routes if self._served is not None else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._served is None:  # a request before startup or after shutdown
            if scope["type"] == "http":
                await JSONResponse({"error": "starting up"}, status_code=503)(
                    scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1013})
            return
        await self._served(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        runtime: Runtime | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    runtime = await build(self.settings, self.transport)
                    await runtime.start()
                except BaseException:  # reported to the server, which exits
                    await send({"type": "lifespan.startup.failed",
                                "message": traceback.format_exc()})
                    raise
                served = serve(runtime)
                self.state.runtime = runtime
                self.state.graph = runtime.graph
                self.state.guard = served.state.guard
                telemetry.watch(runtime)
                self._served = served
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._served = None
                if runtime is not None:
                    telemetry.unwatch(runtime)
                    await runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> Gateway:
    logs.protect(logs.secrets_of(settings))
    return Gateway(settings, transport)


def run_worker(settings: Settings, log_format: str, log_level: str) -> None:
    """One worker process of ``serve`` or ``demo --workers N``: the whole gateway
    (:func:`build` in its lifespan) on the port it shares with the other workers."""
    logs.configure(log_format, log_level)
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    sock = shared_port_socket(settings.host, settings.port)
    server = make_server(create_app(settings), settings.host, settings.port,
                         ws_per_message_deflate=settings.ws_per_message_deflate,
                         sockets=[sock])
    run_loop(run_together([[server]]), settings.event_loop)
