"""``retailgraph demo``: four simulated backends and the gateway, in one process.

The demo uses exactly the production code path: a :class:`~gateway.config.Settings` (with
``RETAILGRAPH_*`` overrides applied), real HTTP between gateway and simulators, real signed
webhooks from the simulators to the gateway.
"""

from __future__ import annotations

import importlib
import secrets
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import urlsplit

from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import Settings, demo_settings
from gateway.http.auth import Authenticator, issue_token
from gateway.serving import Server, make_server, run_together
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
    gateway_app = create_app(settings)
    gateway = make_server(gateway_app, settings.host, settings.port,
                          ws_per_message_deflate=settings.ws_per_message_deflate)
    background = []
    stopping = []
    if opts.activity > 0:
        # With sync on, retailgraph is the only thing that moves stock numbers between the
        # systems: the simulated WMS -> shop stock feed stays off.
        activity = Activity(settings, world, opts.activity, seed=opts.seed,
                            shop_stock_feed=not settings.sync.enabled)
        background.append(activity.run)
        stopping.append(activity.stop)  # finishes the request under way, then returns
    # Simulators first, so the gateway's first catalog load finds them.
    await run_together([simulators, [gateway]], background, on_stopping=stopping,
                       on_started=lambda: print(banner(settings, opts,
                                                       gateway_app.state.runtime.redis_url,
                                                       tokens),
                                                flush=True))
