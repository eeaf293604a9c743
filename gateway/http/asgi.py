"""Small pure-ASGI helpers shared by the middleware: request bodies (the one reading loop,
:func:`receive_body`; replaying what was read; :class:`BodyGuard`, which reads the bodies of
``POST /graphql`` and ``POST /webhooks/*`` first), the per-route method check
(:class:`Methods`), streamed responses.

The composition root (gateway/app.py ``serve``) attaches each middleware only to the routes
that need it, so none of them looks at ``scope["path"]``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resolvers.errors import RetailgraphError

log = logging.getLogger("retailgraph.asgi")

BodyState = Literal["complete", "over", "gone"]
# scope["state"] key of a reply a stage fetched for a later one in its own Redis round trip
# (the rate limit, for the response cache): ``(command, reply)``.
PREFETCH_STATE = "retailgraph_prefetched"
# While every body slot is taken, a request whose body arrives within this long (it came with
# the headers) is still read; one that would have to wait for the network gets 503.
FULL_GRACE_SECONDS = 0.05
RETRY_AFTER_SECONDS = 1


class BodyTimeout(RetailgraphError):
    """The body did not arrive within its deadline (answered 408)."""

    code = "BODY_TIMEOUT"


async def receive_body(receive: Receive, limit: int | None = None,
                       within: float | None = None) -> tuple[list[bytes], BodyState]:
    """The body's chunks as they arrived, and how reading ended: ``complete``; ``over``
    (more than ``limit`` bytes came in: reading stopped there, the chunks hold them);
    ``gone`` (the client disconnected first). With ``within``, all of it must arrive
    within that many seconds, else :class:`BodyTimeout`."""
    chunks: list[bytes] = []
    size = 0

    async def collect() -> BodyState:
        nonlocal size
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return "gone"
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                return "over"
            if not message.get("more_body", False):
                return "complete"

    if within is None:
        return chunks, await collect()
    try:
        async with asyncio.timeout(within):
            return chunks, await collect()
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {within:g}s") from None


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """The whole body (what arrived, if the client left), or None once it is over
    ``limit`` bytes."""
    chunks, state = await receive_body(receive, limit)
    return None if state == "over" else b"".join(chunks)


def replay(body: bytes | list[bytes], receive: Receive, more: bool = False) -> Receive:
    """``receive`` for an app downstream of one that read the body: the body once (bytes, or
    the chunks as they came), then the connection's own messages, so a streamed response
    (SSE, multipart) still hears the client disconnect instead of a made-up one that would
    end it at once. ``more``: the body goes on in ``receive`` (reading stopped at a limit)."""
    pending = [body] if isinstance(body, bytes) else list(body) or [b""]

    async def replayed() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or more}
        return await receive()
    return replayed


@dataclass(slots=True)
class BodyBudget:
    """What every :class:`BodyGuard` shares (one per app): the settings, and how many bodies
    are being read right now, over all the routes that read them."""

    timeout: float
    slots: int
    limit: int
    reading: int = 0
    warned_at: float = -1e9


class BodyGuard:
    """Reads the body of every ``POST`` to the route it guards (``/graphql``,
    ``/webhooks/*``) before the rest of the route's chain sees the request, and hands it on
    whole (what is behind reads a replay).

    - All of a body must arrive within ``timeout`` seconds of the guard starting to read it,
      else ``408`` (and the connection is closed).
    - At most ``slots`` bodies are read at once (over all guarded routes). Beyond that, a
      request whose body is already there (it came with the headers, as small bodies do) is
      still served; one that would have to wait for the network gets ``503`` with
      ``Retry-After`` at once.
    - Reading stops after ``limit`` bytes: what is behind answers ``413`` as it always did.

    The refusals name the setting: for ``/graphql`` (``graphql=True``) a GraphQL error with
    ``extensions.code`` ``LIMIT_EXCEEDED`` and ``extensions.limit``, for webhooks
    ``{"error", "reason"}``.
    """

    def __init__(self, app: ASGIApp, budget: BodyBudget, graphql: bool) -> None:
        self.app = app
        self.budget = budget
        self.graphql = graphql

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        budget = self.budget
        if budget.reading >= budget.slots:
            first = await self._arrived(receive)
            if first is None or first.get("more_body", False):
                await self._refuse(scope, send, 503, "busy", "max_concurrent_bodies",
                                   f"more than {budget.slots} request bodies are being "
                                   f"received at once; retry in {RETRY_AFTER_SECONDS}s")
                return
            if first["type"] != "http.request":
                return  # the client left
            chunks: list[bytes] = [first.get("body", b"")]
            state: BodyState = "over" if len(chunks[0]) > budget.limit else "complete"
        else:
            budget.reading += 1
            try:
                chunks, state = await receive_body(receive, budget.limit, budget.timeout)
            except BodyTimeout as exc:
                await self._refuse(scope, send, 408, "body_timeout", "body_timeout_seconds",
                                   str(exc))
                return
            finally:
                budget.reading -= 1
        if state == "gone":
            return  # nobody to answer
        await self.app(scope, replay(chunks, receive, more=state == "over"), send)

    async def _arrived(self, receive: Receive) -> Message | None:
        """The first message, if it comes within the grace; else None."""
        task = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait({task}, timeout=FULL_GRACE_SECONDS)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()

    async def _refuse(self, scope: Scope, send: Send, status: int, reason: str, setting: str,
                      message: str) -> None:
        budget = self.budget
        if time.monotonic() - budget.warned_at > 30:  # once in a while, not per request
            budget.warned_at = time.monotonic()
            log.warning("refusing request bodies (%s %s): %s", status, reason, message)
        headers = [(b"connection", b"close")]  # the rest of the body is not read
        if status == 503:
            headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
        if not self.graphql:
            await send_json(send, status, orjson.dumps({"error": message, "reason": reason}),
                            headers)
            return
        value: Any = budget.timeout if setting == "body_timeout_seconds" else budget.slots
        await send_errors(scope, send, status, orjson.dumps({"errors": [{
            "message": message,
            "extensions": {"code": "LIMIT_EXCEEDED", "limit": setting, "max": value}}]}),
            headers)


class Methods:
    """The method check of a route whose chain starts with middleware: it comes last, right
    before the endpoint, so what is in front (a CORS preflight, authentication, the rate
    limit) sees every request first, as it would in front of a Starlette route. Another
    method gets ``405`` with ``Allow``, as Starlette answers it."""

    def __init__(self, app: ASGIApp, methods: Iterable[str]) -> None:
        self.app = app
        self.methods = frozenset(methods) | ({"HEAD"} if "GET" in methods else set())
        self.allow = ", ".join(sorted(self.methods)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in self.methods:
            await self.app(scope, receive, send)
            return
        await send_json(send, 405, b"Method Not Allowed", [(b"allow", self.allow)],
                        b"text/plain; charset=utf-8")


# -- streamed responses (gateway/http/streams.py) ----------------------------------------------

SSE_MEDIA_TYPE = "text/event-stream"
MULTIPART_MEDIA_TYPE = "multipart/mixed"
# What the HTTP transports' streamed responses start with (response Content-Type).
STREAM_CONTENT_TYPES = (SSE_MEDIA_TYPE.encode(), MULTIPART_MEDIA_TYPE.encode())


# Media types answered with one JSON document (a query or mutation result); `*/*` too.
_JSON_MEDIA_TYPES = frozenset({"application/graphql-response+json", "application/json",
                               "application/graphql+json", "application/*", "*/*"})


def stream_protocol(accept: str) -> str | None:
    """The streamed response an ``Accept`` header prefers: ``SSE_MEDIA_TYPE``,
    ``MULTIPART_MEDIA_TYPE`` (Apollo's ``multipart/mixed;subscriptionSpec=1.0``), or ``None``
    when it prefers one JSON document or names no stream.

    The preferred type is the one with the highest ``q`` (default 1; 0 means "not
    acceptable"), the earlier-listed one among equals. urql asks for
    ``application/graphql-response+json, application/graphql+json, application/json,
    text/event-stream, multipart/mixed`` on every query: it gets JSON, while graphql-sse's
    ``text/event-stream`` and Apollo's multipart subscription Accept get their streams.
    """
    best: tuple[float, int, str | None] | None = None
    for index, part in enumerate(accept.split(",")):
        media, *raw = part.split(";")
        media = media.strip().lower()
        params: dict[str, str] = {}
        for item in raw:
            name, _, value = item.partition("=")
            params[name.strip().lower()] = value.strip().strip("'\"")
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if not 0 < q <= 1:  # also NaN
            continue
        if media == SSE_MEDIA_TYPE:
            kind: str | None = SSE_MEDIA_TYPE
        elif media == MULTIPART_MEDIA_TYPE and "subscriptionspec" in params:
            kind = MULTIPART_MEDIA_TYPE
        elif media in _JSON_MEDIA_TYPES:
            kind = None
        else:
            continue
        if best is None or (q, -index) > (best[0], -best[1]):
            best = (q, index, kind)
    return None if best is None else best[2]


def wants_sse(headers: Headers) -> bool:
    return stream_protocol(headers.get("accept", "")) == SSE_MEDIA_TYPE


def wants_multipart(headers: Headers) -> bool:
    """Apollo's multipart subscription Accept (``multipart/mixed;subscriptionSpec=1.0``)."""
    return stream_protocol(headers.get("accept", "")) == MULTIPART_MEDIA_TYPE


def is_stream(scope: Scope) -> bool:
    """Whether the request asks for a streamed response (SSE or multipart subscription)."""
    return stream_protocol(Headers(scope=scope).get("accept", "")) is not None


def is_stream_response(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an ``http.response.start`` message's headers start a streamed response."""
    return any(name == b"content-type" and value.startswith(STREAM_CONTENT_TYPES)
               for name, value in headers)


async def send_json(send: Send, status: int, body: bytes,
                    headers: Iterable[tuple[bytes, bytes]] = (),
                    content_type: bytes = b"application/json") -> None:
    """A whole response: ``body`` with ``status``, its length and ``headers``."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


async def send_errors(scope: Scope, send: Send, status: int, body: bytes,
                      headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Refuse a GraphQL request with ``body`` (``{"errors": [...]}``) before it runs: as JSON
    with ``status``, or, to a graphql-sse client, as an accepted stream that reports the
    errors in a ``next`` event and completes, as that protocol requires (a failed HTTP status
    would make the client retry or report nothing useful)."""
    if not wants_sse(Headers(scope=scope)):
        await send_json(send, status, body, headers)
        return
    stream = b"event: next\r\ndata: " + body + b"\r\n\r\nevent: complete\r\ndata: \r\n\r\n"
    await send_json(send, 200, stream, headers, SSE_MEDIA_TYPE.encode())
