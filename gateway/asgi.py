"""Small pure-ASGI helpers shared by the middleware: request bodies, streamed responses."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """The whole body, or None once it is over ``limit`` bytes."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an app downstream of one that read the body: the body once, then the
    connection's own messages, so a streamed response (SSE, multipart) still hears the client
    disconnect instead of a made-up one that would end it at once."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed


# -- streamed responses (gateway/streams.py) ----------------------------------------------

SSE_MEDIA_TYPE = "text/event-stream"
MULTIPART_MEDIA_TYPE = "multipart/mixed"
# What the HTTP transports' streamed responses start with (response Content-Type).
STREAM_CONTENT_TYPES = (SSE_MEDIA_TYPE.encode(), MULTIPART_MEDIA_TYPE.encode())


def wants_sse(headers: Headers) -> bool:
    return any(part.split(";", 1)[0].strip().lower() == SSE_MEDIA_TYPE
               for part in headers.get("accept", "").split(","))


def wants_multipart(headers: Headers) -> bool:
    """Apollo's multipart subscription Accept (``multipart/mixed;subscriptionSpec=1.0``)."""
    return any(part.split(";", 1)[0].strip().lower() == MULTIPART_MEDIA_TYPE
               and "subscriptionspec" in part.lower()
               for part in headers.get("accept", "").split(","))


def is_stream(scope: Scope) -> bool:
    """Whether the request asks for a streamed response (SSE or multipart subscription)."""
    headers = Headers(scope=scope)
    return wants_sse(headers) or wants_multipart(headers)


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
