"""Query batching: a JSON array of operations in one POST (Apollo ``BatchHttpLink``).

Each operation of a batch goes through the rest of the HTTP pipeline as if it had been sent
alone: the rate limit takes one token for it, persisted queries and the allow-list resolve
and check it, the response cache answers it (a batch of hits runs no GraphQL execution) or
stores it, and Strawberry runs it with the caller's scopes, locations and query limits. The
answer is the JSON array of the results, in order.

This middleware sits right after authentication, so every operation has the batch's
principal. It takes the body apart only when it is a JSON array:

- at most ``max_batch_size`` operations, else HTTP 400 with ``extensions.code =
  "LIMIT_EXCEEDED"`` and ``extensions.limit = "max_batch_size"``;
- an empty array, or an element that is not a JSON object: HTTP 400 (``BAD_REQUEST``);
- a batch cannot stream: with an SSE or multipart ``Accept`` it is a 400 as well.

Each operation answers with its own result; one that was refused (rate limited, not on the
allow-list, not a query) gets the error it would have got alone in its place, and the rest
still run. The batch's status is 200 unless every operation got the same other status (all
rate limited: 429 with ``Retry-After``). ``RateLimit-*`` headers say what is left after the
whole batch; ``x-retailgraph-cache`` lists ``hit``/``miss`` per operation, in order.
Mutations (reservations) run as if sent alone, concurrently with the batch's other
operations (tests/e2e/test_reservations.py: five reserveStock in one batch). Subscriptions:
each gets the 400 error of a subscription sent without a streaming ``Accept``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http import limits
from gateway.http.asgi import is_stream, read_body, replay, send_json
from gateway.http.limits import LIMIT_CODE
from gateway.http.operations import OperationRefused

BATCH_LIMIT = "max_batch_size"
BAD_REQUEST = "BAD_REQUEST"


class BatchRefused(OperationRefused):
    """A batch refused as a whole: HTTP 400 with one GraphQL error."""

    def __init__(self, message: str, code: str = BAD_REQUEST, **extensions: Any) -> None:
        super().__init__(message, code=code, extensions=extensions)


async def _no_more() -> Message:
    # An operation's answer is one JSON document: it never waits for the client.
    return {"type": "http.disconnect"}


class Answer:
    """What the pipeline answered for one operation of a batch."""

    __slots__ = ("body", "headers", "status")

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def result(self) -> Any:
        """The operation's GraphQL response; a plain-text refusal (Strawberry's 400s) as a
        GraphQL error."""
        if (self.header(b"content-type") or b"").startswith(b"application/json"):
            try:
                return orjson.loads(self.body)
            except orjson.JSONDecodeError:
                pass
        text = bytes(self.body).decode("utf-8", "replace") or f"HTTP {self.status}"
        return {"errors": [{"message": text, "extensions": {"code": BAD_REQUEST}}]}


class BatchMiddleware:
    def __init__(self, app: ASGIApp, max_batch_size: int, max_body: int) -> None:
        self.app = app
        self.max_batch_size = max_batch_size
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, self.max_body)
        if body is None:
            refused = BatchRefused(f"request body is over the {self.max_body}-byte limit",
                                   "BAD_USER_INPUT")
            await send_json(send, 413, refused.body())
            return
        if body.lstrip()[:1] != b"[":
            await self.app(scope, replay(body, receive), send)
            return
        try:
            operations = limits.loads(body)
        except orjson.JSONDecodeError:  # malformed or nested too deeply: Strawberry answers
            await self.app(scope, replay(body, receive), send)
            return
        try:
            self._check(scope, operations)
        except BatchRefused as refused:
            await send_json(send, 400, refused.body())
            return
        outcomes = await asyncio.gather(*(self._run(scope, op) for op in operations),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        answers: list[Answer] = outcomes  # type: ignore[assignment]
        statuses = {answer.status for answer in answers}
        status = statuses.pop() if len(statuses) == 1 else 200
        await send_json(send, status, orjson.dumps([a.result() for a in answers]),
                        _headers(answers))

    def _check(self, scope: Scope, operations: Any) -> None:
        if not isinstance(operations, list) or not operations:
            raise BatchRefused("an empty batch: send at least one operation")
        if len(operations) > self.max_batch_size:
            raise BatchRefused(
                f"a batch may hold {self.max_batch_size} operations, this one has "
                f"{len(operations)} (limit {BATCH_LIMIT})", LIMIT_CODE, limit=BATCH_LIMIT,
                max=self.max_batch_size)
        for index, operation in enumerate(operations):
            if not isinstance(operation, dict):
                raise BatchRefused(f"batch element {index} is not a JSON object (an "
                                   "operation: query, variables, operationName, extensions)")
        if is_stream(scope):
            raise BatchRefused("a batch cannot stream: send subscriptions one per request "
                               "(or over the WebSocket)")

    async def _run(self, scope: Scope, operation: dict[str, Any]) -> Answer:
        """One operation through the rest of the pipeline, as a request of its own."""
        body = orjson.dumps(operation)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        # Its own state: the response cache and freshness report are per operation.
        alone = {**scope, "headers": headers, "state": dict(scope.get("state") or {})}
        answer = Answer()

        async def collect(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer.status = message["status"]
                answer.headers = list(message.get("headers", ()))
            elif message["type"] == "http.response.body":
                answer.body += message.get("body", b"")

        await self.app(alone, replay(body, _no_more), collect)
        return answer


def _headers(answers: list[Answer]) -> list[tuple[bytes, bytes]]:
    """The batch's headers: what the rate limit left after the last of its operations, and
    the response cache's verdict on each."""
    out: list[tuple[bytes, bytes]] = []
    limited = [a for a in answers if a.header(b"ratelimit-remaining") is not None]
    if limited:
        last = min(limited, key=lambda a: int(a.header(b"ratelimit-remaining") or b"0"))
        out += [(k, v) for k, v in last.headers if k.lower().startswith(b"ratelimit-")]
        waits = [int(w) for a in answers if (w := a.header(b"retry-after")) is not None]
        if waits:
            out.append((b"retry-after", str(max(waits)).encode()))
    verdicts = [a.header(b"x-retailgraph-cache") or b"miss" for a in answers]
    out.append((b"x-retailgraph-cache", b", ".join(verdicts)))
    return out


__all__ = ["BATCH_LIMIT", "BatchMiddleware"]
