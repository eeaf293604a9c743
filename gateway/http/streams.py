"""GraphQL over HTTP streams: graphql-sse (distinct connections mode) and Apollo multipart.

Strawberry implements both protocols (``strawberry/http/streaming.py``); this module adds what
a stock stream needs on top of them:

- every subscription result carries its change's cursor as ``extensions.cursor``, on every
  transport (:class:`StreamCursor`), so a client can resume without selecting ``cursor``;
- each SSE ``next`` event has that cursor as its ``id:`` (:func:`transports`), and a request
  with the standard ``Last-Event-ID`` header (which ``EventSource`` sends when it reconnects)
  resumes right after it, exactly like ``after:``: the missed changes, then live ones;
- keep-alives on idle streams every ``stream_keepalive_seconds`` (an SSE comment, an empty
  multipart part), so proxies and clients do not drop a quiet subscription.

A request streams when its ``Accept`` prefers ``text/event-stream`` (graphql-sse) or
``multipart/mixed;subscriptionSpec=1.0`` (Apollo) to a JSON type
(:func:`gateway.http.asgi.stream_protocol`). The middleware in front of Strawberry never
buffers or caches such a response (:func:`gateway.http.asgi.is_stream`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from strawberry.extensions import SchemaExtension
from strawberry.http.streaming import (
    HTTPStreamTransport,
    MultipartSubscriptionTransport,
    SSETransport,
)
from strawberry.subscriptions import GRAPHQL_SSE_PROTOCOL, MULTIPART_SUBSCRIPTION_PROTOCOL

from gateway.http.asgi import MULTIPART_MEDIA_TYPE, SSE_MEDIA_TYPE, stream_protocol, wants_sse
from schema.subscription import STREAM_POSITION, StreamPosition

if TYPE_CHECKING:
    from strawberry.http import GraphQLHTTPResponse
    from strawberry.http.streaming import JSONEncoder

PROTOCOLS = (GRAPHQL_SSE_PROTOCOL, MULTIPART_SUBSCRIPTION_PROTOCOL)


class StreamCursor(SchemaExtension):
    """``extensions.cursor`` on each subscription result: the cursor of the change behind it
    (see :class:`schema.subscription.StreamPosition`), and, on an SSE request, the
    ``Last-Event-ID`` to resume after."""

    def on_operation(self) -> Iterator[None]:
        request = getattr(self.execution_context.context, "request", None)
        resume = None
        if request is not None and request.scope.get("type") == "http" \
                and wants_sse(request.headers):
            resume = request.headers.get("last-event-id") or None
        self.position = StreamPosition(resume_after=resume)
        token = STREAM_POSITION.set(self.position)
        try:
            yield
        finally:
            # A stream finalised by the garbage collector runs in another context.
            with contextlib.suppress(ValueError):
                STREAM_POSITION.reset(token)

    def get_results(self) -> dict[str, Any]:
        cursor = self.position.cursor
        return {} if cursor is None else {"cursor": cursor}


class CursorSSE(SSETransport):
    """graphql-sse events with the change's cursor as the SSE ``id``; chosen only when the
    ``Accept`` header prefers ``text/event-stream`` (:func:`gateway.http.asgi.stream_protocol`:
    Strawberry's own check takes it whenever it is listed at all, which answered urql's
    queries as streams)."""

    def accepts(self, accept: str) -> bool:
        return stream_protocol(accept) == SSE_MEDIA_TYPE

    def encode_next(self, response: GraphQLHTTPResponse, encode_json: JSONEncoder) -> str:
        event = super().encode_next(response, encode_json)
        extensions = response.get("extensions")
        cursor = extensions.get("cursor") if isinstance(extensions, Mapping) else None
        return f"id: {cursor}\r\n{event}" if isinstance(cursor, str) else event


def transports(keepalive_seconds: float) -> dict[str, type[HTTPStreamTransport]]:
    """Strawberry's stream transports by protocol, keeping alive every ``keepalive_seconds``."""

    class SSE(CursorSSE):
        def __init__(self) -> None:
            super().__init__(heartbeat_interval=keepalive_seconds)

    class Multipart(MultipartSubscriptionTransport):
        heartbeat_interval = keepalive_seconds

        def accepts(self, accept: str) -> bool:
            return stream_protocol(accept) == MULTIPART_MEDIA_TYPE and super().accepts(
                next(part for part in accept.split(",")
                     if part.split(";", 1)[0].strip().lower() == MULTIPART_MEDIA_TYPE))

    return {GRAPHQL_SSE_PROTOCOL: SSE, MULTIPART_SUBSCRIPTION_PROTOCOL: Multipart}


__all__ = ["PROTOCOLS", "CursorSSE", "StreamCursor", "transports"]
