"""One long-lived ``httpx.AsyncClient`` per backend, with retries and typed errors.

Retries live in a transport (the httpx way), so a test can swap the network for any other
``httpx.AsyncBaseTransport``. Only idempotent requests are retried: GETs, and POSTs the
connector marks as idempotent with ``extensions={"idempotent": True}`` (batch-retrieve
endpoints, and writes that carry an idempotency key). Backoff is exponential with jitter; a
429 or 503 with ``Retry-After`` waits that long when it is at most :data:`MAX_RETRY_WAIT`,
and is answered at once when longer (the caller sees ``BackendStatusError.retry_after``: a
read does not hang, a write is retried later by its owner).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from resolvers.abc import NO_OBSERVER, Observer
from resolvers.errors import (
    BackendProtocolError,
    BackendStatusError,
    BackendTimeout,
    BackendUnavailable,
)
from resolvers.settings import BackendSettings

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRY_WAIT = 2.0  # seconds a Retry-After may hold a request up before it is answered


class RetryTransport(httpx.AsyncBaseTransport):
    """Retries idempotent requests on connection errors and 429/502/503/504, with backoff."""

    def __init__(self, inner: httpx.AsyncBaseTransport, retries: int = 2,
                 backoff: float = 0.05) -> None:
        self.inner = inner
        self.retries = retries
        self.backoff = backoff

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        idempotent = request.method in ("GET", "HEAD") or request.extensions.get("idempotent")
        attempts = self.retries + 1 if idempotent else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self.inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                if last:
                    raise
                wait = self._backoff(attempt)
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    return response
                asked = retry_after(response.headers.get("retry-after"))
                if asked is not None and asked > MAX_RETRY_WAIT:
                    return response  # too long to hold the request up: the caller decides
                await response.aclose()
                wait = max(self._backoff(attempt), asked or 0.0)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        """Exponential, with jitter (0.5x to 1.5x), so clients refused together do not all
        come back together."""
        return float(self.backoff * 2**attempt) * (0.5 + random.random())

    async def aclose(self) -> None:
        await self.inner.aclose()


SQUARE_VERSION = "2026-09-16"  # the Square API version every call to Square names


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (only the delta-seconds form; a date is ignored), or None."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86_400 else None


def auth_headers(settings: BackendSettings) -> dict[str, str]:
    """Each vendor's way of presenting an API credential (and Square its API version, which
    goes on every call, with a credential or without)."""
    headers = {"Square-Version": SQUARE_VERSION} if settings.format == "square" else {}
    if not settings.token:
        return headers
    if settings.format == "shopify":
        return {"X-Shopify-Access-Token": settings.token}
    return headers | {"Authorization": f"Bearer {settings.token}"}


class BackendClient:
    """JSON over HTTP to one backend; every failure becomes a :class:`BackendError`."""

    def __init__(self, settings: BackendSettings,
                 transport: httpx.AsyncBaseTransport | None = None,
                 observer: Observer = NO_OBSERVER) -> None:
        self.name = settings.name
        self._token = settings.token
        inner = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20))
        self.http = httpx.AsyncClient(
            base_url=settings.base_url,
            transport=observer.backend_transport(
                RetryTransport(inner, retries=settings.retries), settings.name),
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            headers={"Accept": "application/json", **auth_headers(settings)},
        )

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      json: Any = None, idempotent: bool = False) -> httpx.Response:
        content = orjson.dumps(json) if json is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = await self.http.request(
                method, path, params=params, content=content, headers=headers,
                extensions={"idempotent": True} if idempotent else None)
        except httpx.TimeoutException as exc:
            raise BackendTimeout(self.name, f"{method} {path} timed out") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(self.name, f"{method} {path}: {type(exc).__name__}") from exc
        if not response.is_success:
            text = self._scrub(response.text)
            raise BackendStatusError(self.name, response.status_code,
                                     f"{method} {path}: {text[:200]}",
                                     retry_after(response.headers.get("retry-after")),
                                     text[:4000])
        return response

    def _scrub(self, text: str) -> str:
        """A backend's error text without our credential (some echo the request)."""
        return text.replace(self._token, "[REDACTED]") if len(self._token) >= 4 else text

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.request(method, path, **kwargs)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise BackendProtocolError(self.name, f"{method} {path}: body is not JSON") from exc

    async def aclose(self) -> None:
        await self.http.aclose()
