"""Browser apps on other origins: CORS for ``/graphql`` over HTTP, and the WebSocket origin check.

One setting, ``cors_origins`` (gateway/config.py), governs both. Empty (the default): only
pages served by the gateway itself (GraphiQL) may use it from a browser. ``"*"``: any origin
(sensible only because credentials are headers, never cookies: a page can only send a
credential it was given).

HTTP (``/graphql`` only): preflights (``OPTIONS`` with ``Access-Control-Request-Method``) are
answered here, before authentication and the rate limit, so they need no credential and
cost no token; every answer to a listed origin, a 401 or a 429 included, carries the CORS
headers, so the page can read the error and the RateLimit headers. Webhooks, ``/healthz``,
``/readyz`` and ``/metrics`` are for servers and probes, not browsers: they get no CORS
headers, and a preflight to them is refused (405), so no page on another origin can call them.

WebSocket: browsers send ``Origin`` but apply no CORS to WebSockets, so the handshake itself
is checked: no ``Origin`` (not a browser) or the gateway's own origin is accepted, another
origin only when listed; otherwise the handshake is refused (HTTP 403) and the log names the
setting to change. Strawberry's own check gets the same list (gateway/app.py), so the two
never disagree.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.http.websocket_origin import is_same_origin, normalize_origin

log = logging.getLogger("retailgraph.cors")

# What browser clients send besides the always-allowed Accept and Content-Type (whatever
# their value: JSON, multipart subscriptions, graphql-sse): credentials (gateway/http/auth.py),
# graphql-sse's resume and token headers, Apollo Client's, and W3C trace context
# (gateway/telemetry/__init__.py).
ALLOWED_HEADERS = (
    "authorization", "x-api-key", "last-event-id",
    "x-graphql-event-stream-token", "apollographql-client-name",
    "apollographql-client-version", "apollo-require-preflight", "x-apollo-operation-name",
    "traceparent", "tracestate",
)
# What a page may read beyond the safelisted headers.
EXPOSED_HEADERS = (
    "x-retailgraph-cache", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset",
    "ratelimit-policy", "retry-after", "www-authenticate",
)
PREFLIGHT_MAX_AGE_SECONDS = 600


class BrowserOrigins:
    """Applies ``cors_origins`` (normalised, see config.browser_origins) to the route it is
    attached to (``/graphql``): CORS on HTTP, the origin check on WebSocket handshakes. The
    other routes have none of it (gateway/app.py ``serve``)."""

    def __init__(self, app: ASGIApp, origins: frozenset[str]) -> None:
        self.app = app
        self.origins = origins
        self.cors = CORSMiddleware(
            app, allow_origins=sorted(origins), allow_methods=["GET", "POST"],
            allow_headers=list(ALLOWED_HEADERS), expose_headers=list(EXPOSED_HEADERS),
            allow_credentials=True, max_age=PREFLIGHT_MAX_AGE_SECONDS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.cors(scope, receive, send)
            return
        if scope["type"] == "websocket" and not self.websocket_allowed(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)

    def websocket_allowed(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:  # browsers always send it: this is no browser
            return True
        host = headers.get("host")
        if (headers.get("sec-fetch-site") == "same-origin" or is_same_origin(origin, host)
                or "*" in self.origins or normalize_origin(origin) in self.origins):
            return True
        # %.200r: a hostile Origin header cannot flood the log.
        log.warning("WebSocket from origin %.200r to %.200r refused: it is not in cors_origins "
                    "(RETAILGRAPH_CORS_ORIGINS)", origin, host)
        return False


__all__ = ["ALLOWED_HEADERS", "EXPOSED_HEADERS", "BrowserOrigins"]
