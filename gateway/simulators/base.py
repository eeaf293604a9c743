"""What every simulator shares: auth, request counting, webhook lifespan, ``/_sim`` controls.

A simulator is a plain Starlette app built by :func:`simulator_app` around its own routes.
``/_sim/*`` is the simulator's back door for tests and the demo (never part of the imitated
vendor API): request counts, recent webhook deliveries, delivery fault knobs, and an outage:

- ``POST /_sim/outage {"seconds": N, "retry_after"?: S}``: for N seconds every vendor request
  answers ``503 Service Unavailable`` (with ``Retry-After: S`` when given), as a system down
  for maintenance does; ``{"seconds": 0}`` ends it; ``GET`` tells what is left. Webhooks keep
  flowing (they are queued, not served). A refused connection is not something an app can
  do: stop the simulator's server and start it again on the same port (the app object keeps
  its state and its queued webhooks; ``tests/integration/test_sim_shopify.py`` shows how).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.simulators.webhooks import WebhookSender


class RequestCounter:
    """Pure ASGI middleware counting requests per ``METHOD path`` (tests count backend calls)."""

    def __init__(self, app: ASGIApp, counts: Counter[str]) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_sim/"):
            self.counts[f"{scope['method']} {scope['path']}"] += 1
        await self.app(scope, receive, send)


class Outage:
    """Until ``until`` (monotonic time) the vendor API is down."""

    def __init__(self) -> None:
        self.until = 0.0
        self.retry_after: int | None = None
        self.refused = 0

    def left(self) -> float:
        return max(0.0, self.until - time.monotonic())


class OutageGate:
    """Pure ASGI middleware: 503 for every vendor request while an :class:`Outage` lasts."""

    def __init__(self, app: ASGIApp, outage: Outage) -> None:
        self.app = app
        self.outage = outage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_sim/") \
                and self.outage.left() > 0:
            self.outage.refused += 1
            headers = {"Retry-After": str(self.outage.retry_after)} \
                if self.outage.retry_after is not None else None
            await Response("Service Unavailable", 503, headers,
                           media_type="text/plain")(scope, receive, send)
            return
        await self.app(scope, receive, send)


class TokenAuth:
    """Pure ASGI middleware: the vendor API answers 401 without the configured credential."""

    def __init__(self, app: ASGIApp, check: Callable[[dict[str, str]], bool],
                 unauthorized: Callable[[], Response]) -> None:
        self.app = app
        self.check = check
        self.unauthorized = unauthorized

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_sim/"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope["headers"]}
            if not self.check(headers):
                await self.unauthorized()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def bearer_check(token: str) -> Callable[[dict[str, str]], bool]:
    def check(headers: dict[str, str]) -> bool:
        return not token or headers.get("authorization") == f"Bearer {token}"
    return check


def simulator_app(name: str, routes: Sequence[BaseRoute], sender: WebhookSender,
                  auth: Callable[[dict[str, str]], bool],
                  unauthorized: Callable[[], Response],
                  state: Any) -> Starlette:
    """Wrap a simulator's vendor routes with the shared controls and middleware."""
    counts: Counter[str] = Counter()

    async def stats(request: Request) -> Response:
        if request.method == "DELETE":
            counts.clear()
        return JSONResponse({"requests": dict(counts), "webhooks_pending": sender.pending,
                             "webhooks_sent": sender.sent_total,
                             "webhooks_failed": len(sender.failed),
                             "webhooks_dropped": len(sender.dropped)})

    async def deliveries(request: Request) -> Response:
        limit = int(request.query_params.get("limit", "100"))
        items = list(sender.history)[-limit:]
        return JSONResponse({"deliveries": [d.as_json() for d in items]})

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            for key, value in body.items():
                if not hasattr(sender.options, key):
                    return JSONResponse({"error": f"unknown option {key!r}"}, status_code=400)
                setattr(sender.options, key, type(getattr(sender.options, key))(value))
        opts = sender.options
        return JSONResponse({k: getattr(opts, k) for k in opts.__slots__})

    async def drain(request: Request) -> Response:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(float(request.query_params.get("timeout", "10"))):
                await sender.drain()
        return JSONResponse({"pending": sender.pending})

    outage = Outage()

    async def outage_control(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await request.json()
                seconds = float(body["seconds"])
                retry_after = body.get("retry_after")
                retry_after = None if retry_after is None else int(retry_after)
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"error": 'expected {"seconds": N, "retry_after"?: S}'},
                                    status_code=400)
            if seconds < 0 or seconds != seconds:
                return JSONResponse({"error": "seconds must be >= 0"}, status_code=400)
            outage.until = time.monotonic() + seconds
            outage.retry_after = retry_after
        return JSONResponse({"seconds_left": round(outage.left(), 3),
                             "refused": outage.refused})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sender.start()
        try:
            yield
        finally:
            await sender.stop()

    app = Starlette(
        routes=[*routes,
                Route("/_sim/stats", stats, methods=["GET", "DELETE"]),
                Route("/_sim/webhooks", deliveries),
                Route("/_sim/webhooks/drain", drain, methods=["POST"]),
                Route("/_sim/faults", faults, methods=["GET", "POST"]),
                Route("/_sim/outage", outage_control, methods=["GET", "POST"])],
        lifespan=lifespan,
    )
    app.state.name = name
    app.state.sim = state
    app.state.sender = sender
    app.state.counts = counts
    app.state.outage = outage
    app.add_middleware(TokenAuth, check=auth, unauthorized=unauthorized)
    app.add_middleware(OutageGate, outage=outage)
    app.add_middleware(RequestCounter, counts=counts)
    return app
