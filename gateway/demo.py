"""``retailgraph demo``: four simulated backends and the gateway, in one process.

The demo uses exactly the production code path: a :class:`~gateway.config.Settings` (with
``RETAILGRAPH_*`` overrides applied), real HTTP between gateway and simulators, real signed
webhooks from the simulators to the gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette

from gateway.app import create_app, run_worker
from gateway.config import Settings, demo_settings
from gateway.http.auth import Authenticator, issue_token
from gateway.redis_server import EmbeddedRedis, start_server
from gateway.serving import (
    Server,
    Workers,
    default_workers,
    make_server,
    run_together,
)
from gateway.simulators.activity import Activity
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import World
from resolvers.settings import BackendSettings
from resolvers.store import keys
from resolvers.store.client import connect

SIMULATOR_MODULES = {"square": "pos", "epcis": "wms", "erp": "erp", "shopify": "commerce"}


def simulator_module(fmt: str) -> ModuleType:
    return importlib.import_module(f"gateway.simulators.{SIMULATOR_MODULES[fmt]}")


def simulator_app(world: World, backend: BackendSettings, webhook_url: str,
                  options: DeliveryOptions | None = None) -> Starlette:
    app: Starlette = simulator_module(backend.format).create_app(world, backend, webhook_url,
                                                                  options)
    return app


def webhook_url(settings: Settings, backend: str) -> str:
    return f"http://{settings.host}:{settings.port}/webhooks/{backend}"


@dataclass(slots=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    seed: int = 42
    skus: int = 200
    stores: int = 8
    warehouses: int = 2
    activity: float = 0.0
    auth: bool = False  # require credentials; print a token per role
    reconcile_interval: float = 30.0  # a full reconciliation every N s (0 = off)
    workers: int = 1  # gateway processes sharing the port (0: one per core)
    log_format: str = "text"  # how the gateway's worker processes log
    log_level: str = "INFO"


def demo_tokens(settings: Settings, store: str | None) -> dict[str, str]:
    """A ready HS256 token for each role: admin, stock reader, and one store's staff."""
    roles: dict[str, tuple[list[str], list[str] | None]] = {
        "admin": (["admin"], None), "stock reader": (["stock:read"], None)}
    if store is not None:
        roles[f"store {store}"] = (["stock:read"], [store])
    return {role: issue_token(settings.jwt_secret, role.replace(" ", "-"), scopes, locations,
                              audience=settings.jwt_audience or None,
                              issuer=settings.jwt_issuer or None)
            for role, (scopes, locations) in roles.items()}


def banner(settings: Settings, opts: DemoOptions, redis_url: str,
           tokens: dict[str, str] | None = None) -> str:
    base = f"http://{settings.host}:{settings.port}"
    lines = [
        f"retailgraph demo (seed {opts.seed}: {opts.skus} SKUs, {opts.stores} stores, "
        f"{opts.warehouses} warehouses; activity {opts.activity:g} events/s)",
        f"  GraphQL   {base}/graphql   (GraphiQL in a browser)",
        f"  liveness  {base}/healthz",
        f"  webhooks  {base}/webhooks/{{pos,wms,erp,commerce}}",
        f"  redis     {redis_url}" + ("   (embedded)" if not settings.redis_url else ""),
    ]
    for name, backend in settings.backends.items():
        lines.append(f"  {name:<9} {backend.base_url}   ({backend.format} simulator)")
    auth = Authenticator(settings)
    if not auth.enabled:
        lines.append("  auth      OPEN: no credentials configured, anyone can query "
                     "(--auth to require them)")
    else:
        lines.append(f"  auth      ON: {auth.describe()}; send Authorization: Bearer <token>")
    for role, token in (tokens or {}).items():
        lines.append(f"    {role:<14} {token}")
    lines.append("Press Ctrl+C to stop.")
    return "\n".join(lines)


async def forget_previous_run(redis_url: str) -> int:
    """The simulators start from the seed's opening state on every run, their versions and
    sequence numbers from 1; state a previous demo left in a persistent Redis would look
    newer than theirs. Remove the gateway's keys (``rg:*``) so the run starts consistent."""
    client = await connect(redis_url)
    removed = 0
    try:
        async for key in client.scan_iter(match=keys.PATTERN, count=1000):
            removed += int(await client.unlink(key))
    finally:
        await client.aclose()
    return removed


async def run(opts: DemoOptions) -> None:
    settings = demo_settings(opts.host, opts.port)
    settings.reconcile_interval_seconds = opts.reconcile_interval
    if settings.redis_url:
        removed = await forget_previous_run(settings.redis_url)
        if removed:
            print(f"demo: removed {removed} keys of a previous demo run from "
                  f"{settings.redis_url}", flush=True)
    world = World(opts.seed, opts.skus, opts.stores, opts.warehouses)
    tokens = None
    if opts.auth:
        settings.jwt_secret = settings.jwt_secret or secrets.token_urlsafe(32)
        tokens = demo_tokens(settings, world.stores[0].code if world.stores else None)
    simulators: list[Server] = []
    for name, backend in settings.backends.items():
        app = simulator_app(world, backend, webhook_url(settings, name))
        url = urlsplit(backend.base_url)
        simulators.append(make_server(app, url.hostname or opts.host, url.port or 80))
    activity = None
    if opts.activity > 0:
        # With sync on, retailgraph is the only thing that moves stock numbers between the
        # systems: the simulated WMS -> shop stock feed stays off.
        activity = Activity(settings, world, opts.activity, seed=opts.seed,
                            shop_stock_feed=not settings.sync.enabled)
    workers = opts.workers or default_workers()
    if workers > 1:
        await _run_workers(settings, opts, workers, simulators, activity, tokens)
        return
    gateway_app = create_app(settings)
    gateway = make_server(gateway_app, settings.host, settings.port,
                          ws_per_message_deflate=settings.ws_per_message_deflate)
    background = []
    stopping = []
    if activity is not None:
        background.append(activity.run)
        stopping.append(activity.stop)  # finishes the request under way, then returns
    # Simulators first, so the gateway's first catalog load finds them.
    await run_together([simulators, [gateway]], background, on_stopping=stopping,
                       on_started=lambda: print(banner(settings, opts,
                                                       gateway_app.state.runtime.redis_url,
                                                       tokens),
                                                flush=True))


async def _answers(url: str, runner: asyncio.Task[None]) -> bool:
    """Wait until ``url`` answers 200 (False if ``runner``, the workers, ends first)."""
    async with httpx.AsyncClient(timeout=2) as client:
        while not runner.done():
            try:
                if (await client.get(url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    return False


async def _run_workers(settings: Settings, opts: DemoOptions, workers: int,
                       simulators: list[Server], activity: Activity | None,
                       tokens: dict[str, str] | None) -> None:
    """The simulators (and activity) in this process, the gateway in ``workers`` processes
    sharing its port and one Redis (a private one here if none is configured)."""
    embedded = None
    shared = dataclasses.replace(settings)
    if not settings.redis_url:
        embedded = await asyncio.to_thread(start_server, **EmbeddedRedis().options)
        shared.redis_url = str(embedded.connection_url)
    pool = Workers(workers, run_worker, (shared, opts.log_format, opts.log_level), "spawn")

    async def gateway() -> None:
        runner = asyncio.create_task(pool.run())
        jobs: list[asyncio.Task[None]] = [runner]
        try:
            if not await _answers(f"http://{settings.host}:{settings.port}/healthz", runner):
                return
            print(banner(settings, opts, shared.redis_url, tokens)
                  + f"\n  ({workers} gateway worker processes)", flush=True)
            if activity is not None:
                jobs.append(asyncio.create_task(activity.run()))
            await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The activity finishes its request first, then the workers stop.
            if activity is not None:
                activity.stop()
            await asyncio.gather(*jobs[1:], return_exceptions=True)
            pool.stop()
            await asyncio.gather(runner, return_exceptions=True)

    # Asked to stop: the activity first (the gateway job then stops the workers), or the
    # workers straight away when there is none.
    stopping: list[Callable[[], None]] = [activity.stop if activity is not None else pool.stop]
    jobs: list[Callable[[], Coroutine[Any, Any, None]]] = [gateway]
    try:
        await run_together([simulators], jobs, on_stopping=stopping)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
