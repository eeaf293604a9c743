"""GraphQL over WebSocket, with every protection HTTP has, on both protocols.

Strawberry speaks the protocols (``graphql-transport-ws`` and the legacy ``graphql-ws``);
these subclasses of its handlers add, per connection:

- **authentication** at ``connection_init`` (``GraphQLApp.on_ws_connect``), which also takes
  one rate-limit token from the caller's bucket (refused: close ``1013`` "try again later";
  legacy clients get a ``connection_error`` first);
- **credential expiry**: a JWT's socket is closed with ``4403`` at ``exp`` plus
  ``jwt_leeway_seconds``, and nothing is delivered after that moment;
- the **init timeout** (``ws_init_timeout_seconds``): a socket without ``connection_init``
  is closed with ``4408`` on both protocols;
- **malformed messages** (not a JSON object, an unknown type, a ``subscribe``/``start``
  without a usable payload) get the protocol's answer (``graphql-transport-ws``: close
  ``4400``; ``graphql-ws``: an ``error`` or ``connection_error`` message), never an exception;

and per operation (each ``subscribe`` / ``start``):

- the checks of :class:`gateway.http.operations.OperationGuard`: a rate-limit token, the
  allow-list and APQ (a hash-only payload runs the stored text). A refusal is the protocol's
  ``error`` message carrying the same ``extensions.code`` as over HTTP;
- its **own context**: fresh DataLoaders and errors, never an earlier operation's (and each
  subscription event renews its loaders: schema/subscription.py), so a query on a
  long-lived socket answers what is current;
- queries and mutations on the legacy protocol too (Strawberry runs only subscriptions there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from starlette.websockets import (
    WebSocket,
    WebSocketDisconnect,
    WebSocketDisconnected,
    WebSocketState,
)
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types.execution import PreExecutionError

from gateway.http.operations import Admitted, OperationRefused
from resolvers.loaders import RequestContext
from schema.events import encode

if TYPE_CHECKING:
    from strawberry.http.async_base_view import AsyncBaseHTTPView
    from strawberry.schema import BaseSchema

    from gateway.http.graphql import GraphQLApp

log = logging.getLogger("retailgraph.websocket")

SOCKET_STATE = "retailgraph_socket"
EXPIRED = (4403, "Forbidden: credentials expired")
INIT_TIMEOUT = (4408, "Connection initialisation timeout")
TRY_AGAIN_LATER = 1013  # RFC 6455: the server is overloaded (here: the caller's rate limit)


class TextFrames(ASGIWebSocketAdapter):
    """The socket as the handlers see it.

    Every message is a text frame: both protocols define their messages as text, and
    standard clients (graphql-ws, Apollo, urql, gql, browsers) reject binary frames. Nothing
    is sent once the credential has expired (the socket is closed instead), and sending or
    closing is quiet when the client has already gone.
    """

    def __init__(self, view: AsyncBaseHTTPView[Any, Any, Any, Any, Any, Any, Any],
                 request: WebSocket, response: WebSocket) -> None:
        super().__init__(view, request, response)
        # time.time() after which the credential is no longer valid (exp + leeway).
        self.expires_at: float | None = None
        # How a refused connection_init closes instead of Strawberry's choice (rate limit).
        self.refusal: tuple[int, str] | None = None
        self.closed = False
        response.scope.setdefault("state", {})[SOCKET_STATE] = self

    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at

    async def send_json(self, message: Mapping[str, object]) -> None:
        if self.closed:
            return
        if self.expired():
            await self.close(*EXPIRED)
            return
        try:
            await self.ws.send_text(encode(message).decode())
        except (WebSocketDisconnect, WebSocketDisconnected):
            # The client left (or the socket closed) while an operation was sending: nothing
            # more can be delivered; the receive loop sees the disconnect and ends every
            # operation. Raising here would only log an operation task's traceback.
            self.closed = True

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.refusal is not None:
            code, reason = self.refusal
        if self.ws.application_state is not WebSocketState.CONNECTED:
            return
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, OSError):
            await self.ws.close(code=code, reason=reason)


def socket_of(context: RequestContext) -> TextFrames | None:
    """The socket a WebSocket connection's context belongs to."""
    scope = getattr(context.request, "scope", None)
    found = scope.get("state", {}).get(SOCKET_STATE) if isinstance(scope, dict) else None
    return found if isinstance(found, TextFrames) else None


class _PerOperation:
    """What the protocol handlers run operations through: the schema, with a context of its
    own for each operation, queries allowed on the legacy protocol, and an APQ text
    registered once its operation produced a first result that parsed and validated."""

    def __init__(self, schema: BaseSchema, pending: dict[str, Admitted], view: GraphQLApp
                 ) -> None:
        self.schema = schema
        self.pending = pending
        self.view = view

    def __getattr__(self, name: str) -> Any:
        return getattr(self.schema, name)

    async def stream(self, query: str, variable_values: dict[str, Any] | None = None,
                     context_value: Any = None, root_value: Any = None,
                     operation_name: str | None = None, **kwargs: Any
                     ) -> AsyncGenerator[Any, None]:
        context = cast("RequestContext", context_value).for_operation()
        source = await self.schema.stream(query, variable_values=variable_values,
                                          context_value=context, root_value=root_value,
                                          operation_name=operation_name, **kwargs)
        return self._results(source, self.pending.pop(query, None))

    # The legacy handler calls subscribe(), which would refuse queries and mutations.
    subscribe = stream

    async def _results(self, source: AsyncGenerator[Any, None], admitted: Admitted | None
                       ) -> AsyncGenerator[Any, None]:
        async with contextlib.aclosing(source):
            async for result in source:
                if admitted is not None:  # the first result: did the text parse and validate?
                    if not isinstance(result, PreExecutionError):
                        await self.view.guard.ran(admitted,
                                                  [e.formatted for e in result.errors or ()])
                    admitted = None
                yield result


def _operation_problem(payload: object) -> str | None:
    """Why a subscribe/start payload cannot run, if it cannot."""
    if not isinstance(payload, dict):
        return "the payload must be an object with a query"
    query = payload.get("query")
    extensions = payload.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        return "extensions must be an object"
    if not isinstance(query, str) and not (query is None and isinstance(extensions, dict)
                                           and "persistedQuery" in extensions):
        return "the payload needs a query string (or a persisted query's hash)"
    if payload.get("variables") is not None and not isinstance(payload["variables"], dict):
        return "variables must be an object"
    name = payload.get("operationName")
    if name is not None and not isinstance(name, str):
        return "operationName must be a string"
    return None


class _Connection:
    """What both protocols' handlers add: expiry, timers, per-operation admission."""

    def __init__(self, socket: TextFrames, context: RequestContext, view: GraphQLApp,
                 refuse: Callable[[str, dict[str, Any]], Awaitable[None]]) -> None:
        self.socket = socket
        self.context = context
        self.view = view
        self.refuse = refuse
        self.pending: dict[str, Admitted] = {}
        self.timers: list[asyncio.Task[None]] = []

    @classmethod
    def install(cls, handler: Any) -> _Connection:
        """Attach to a protocol handler (its socket, context, view and ``_refuse``); the
        handler's schema becomes the per-operation one."""
        view = cast("GraphQLApp", handler.view)
        connection = cls(cast("TextFrames", handler.websocket), handler.context, view,
                         handler._refuse)
        handler.schema = cast("BaseSchema",
                              _PerOperation(handler.schema, connection.pending, view))
        return connection

    def after(self, delay: float, close: tuple[int, str],
              unless: Callable[[], bool] | None = None) -> None:
        """Close the socket ``delay`` seconds from now (unless ``unless()`` then)."""
        async def timer() -> None:
            await asyncio.sleep(max(0.0, delay))
            if unless is None or not unless():
                await self.socket.close(*close)
        self.timers.append(asyncio.create_task(timer()))

    async def stop(self) -> None:
        for task in self.timers:
            task.cancel()
        for task in self.timers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def acknowledged(self) -> None:
        """After the ack: close the socket when its credential expires."""
        expires_at = self.socket.expires_at
        if expires_at is not None:
            self.after(expires_at - time.time(), EXPIRED)

    async def admit(self, op_id: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The payload to run (its query resolved), or None after answering a refusal."""
        if self.socket.expired():
            await self.socket.close(*EXPIRED)
            return None
        try:
            admitted = await self.view.guard.admit(payload, self.context.principal,
                                                   self.context.client)
        except OperationRefused as refused:
            log.info("WebSocket operation refused: %s (%s)", refused.code, refused.message)
            await self.refuse(op_id, refused.error())
            return None
        if admitted.register is not None:
            self.pending[admitted.payload["query"]] = admitted
        return admitted.payload


class TransportWsHandler(BaseGraphQLTransportWSHandler[RequestContext, None]):
    """``graphql-transport-ws`` (the graphql-ws library's protocol)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = _Connection.install(self)
        self.socket = self.connection.socket

    async def handle(self) -> None:
        try:
            await super().handle()
        finally:
            await self.connection.stop()

    async def handle_message(self, message: Any) -> None:
        if self.socket.closed:
            return
        problem = _transport_problem(message)
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            self.connection.acknowledged()

    async def handle_subscribe(self, message: Any) -> None:
        if not self.connection_acknowledged or message["id"] in self.operations:
            await super().handle_subscribe(message)  # closes: 4401 / 4409
            return
        payload = await self.connection.admit(message["id"], message["payload"])
        if payload is not None:
            await super().handle_subscribe(cast("Any", {**message, "payload": payload}))

    async def handle_invalid_message(self, error_message: str) -> None:
        await self.socket.close(4400, error_message[:120])

    async def _refuse(self, op_id: str, error: dict[str, Any]) -> None:
        await self.send_message(cast("Any", {"id": op_id, "type": "error", "payload": [error]}))


def _transport_problem(message: object) -> str | None:
    """Why a graphql-transport-ws message is not one the protocol defines, if it is not."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "Invalid message: expected a JSON object with a type"
    kind = message["type"]
    if kind in ("subscribe", "complete") and not (
            isinstance(message.get("id"), str) and message["id"]):
        return f"Invalid message: {kind} needs an id"
    if kind == "subscribe":
        problem = _operation_problem(message.get("payload"))
        return None if problem is None else f"Invalid subscribe message: {problem}"
    return None


LEGACY_CLIENT_MESSAGES = ("connection_init", "connection_terminate", "start", "stop")


class LegacyWsHandler(BaseGraphQLWSHandler[RequestContext, None]):
    """The legacy ``graphql-ws`` protocol (subscriptions-transport-ws)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = _Connection.install(self)
        self.socket = self.connection.socket

    async def handle(self) -> None:
        # The modern protocol closes a socket that never initialised; so does this one.
        timeout = self.connection.view.connection_init_wait_timeout.total_seconds()
        self.connection.after(timeout, INIT_TIMEOUT, unless=lambda: self.connection_acknowledged)
        try:
            await super().handle()
        finally:
            await self.connection.stop()

    async def handle_message(self, message: Any) -> None:
        if self.socket.closed:
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self._connection_error("Invalid message: expected a JSON object with a type")
            return
        kind = message["type"]
        op_id = message.get("id")
        if kind in ("start", "stop") and not (isinstance(op_id, str) and op_id):
            await self._connection_error(f"Invalid message: {kind} needs an id")
            return
        if kind not in LEGACY_CLIENT_MESSAGES:
            await self._refuse(str(op_id) if op_id is not None else "",
                               {"message": f"Invalid message type: {kind}"})
            return
        if kind == "start" and (problem := _operation_problem(message.get("payload"))):
            await self._refuse(str(op_id), {"message": f"Invalid start message: {problem}",
                                            "extensions": {"code": "BAD_USER_INPUT"}})
            return
        await super().handle_message(message)  # type: ignore[arg-type]

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            self.connection.acknowledged()

    async def handle_start(self, message: Any) -> None:
        if not self.connection_acknowledged:
            await super().handle_start(message)  # closes: 4401
            return
        payload = await self.connection.admit(message["id"], message["payload"])
        if payload is not None:
            await super().handle_start(cast("Any", {**message, "payload": payload}))

    async def _connection_error(self, message: str) -> None:
        await self.send_message(cast("Any", {"type": "connection_error",
                                             "payload": {"message": message}}))

    async def _refuse(self, op_id: str, error: dict[str, Any]) -> None:
        await self.send_message(cast("Any", {"type": "error", "id": op_id, "payload": error}))


__all__ = ["SOCKET_STATE", "TRY_AGAIN_LATER", "LegacyWsHandler", "TextFrames",
           "TransportWsHandler", "socket_of"]
