"""GraphQL over HTTP and WebSocket: Strawberry's ASGI view plus our context and error codes.

Validation limits are built once per schema (gateway/http/limits.py), so Strawberry's validation
cache keeps hitting (a limiter built per request defeats it; see
shared/reference/strawberry-notes.md). Auth: the principal comes from gateway/http/auth.py's
middleware on HTTP and from the ``connection_init`` payload on WebSocket, where
gateway/http/websocket.py applies every per-operation protection (gateway/http/operations.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import strawberry
from cross_web import HTTPException
from graphql import DocumentNode, GraphQLError, GraphQLSyntaxError, parse
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.extensions import (
    SchemaExtension,
    ValidationCache,
)
from strawberry.http import GraphQLRequestData
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from gateway.config import Settings
from gateway.events.changes import delivered
from gateway.http import graphiql, limits
from gateway.http.auth import Authenticator, AuthError, principal_of
from gateway.http.cached_responses import FRESHNESS_STATE
from gateway.http.limits import limit_extensions
from gateway.http.operations import OperationGuard
from gateway.http.ratelimit import RateLimited
from gateway.http.streams import PROTOCOLS, StreamCursor, transports
from gateway.http.websocket import (
    TRY_AGAIN_LATER,
    LegacyWsHandler,
    TextFrames,
    TransportWsHandler,
    socket_of,
)
from gateway.telemetry import OperationTelemetry
from resolvers.abc import ChangeFeed, Reconciliation, SyncControl
from resolvers.errors import RetailgraphError, ServiceUnavailable
from resolvers.graph import RetailGraph
from resolvers.loaders import RequestContext
from resolvers.reservations import Reservations
from schema import build_schema
from schema.events import encode
from schema.permissions import ForbiddenErrors

log = logging.getLogger("retailgraph.graphql")
# Strawberry logs every field error with a traceback; ErrorCodes logs the unexpected ones
# itself, and a backend being down is logged once by the health tracker, not per field.
logging.getLogger("strawberry.execution").setLevel(logging.CRITICAL)
_ACK: UnsetType = UNSET  # connection_ack without a payload



class ErrorCodes(SchemaExtension):
    """Give every error an ``extensions.code``; never leak internals of unexpected errors.

    Backend failures carry ``code`` and ``backend``, so a client knows which system failed
    while the rest of the response stays intact.
    """

    def on_operation(self) -> Iterator[None]:
        try:
            yield
        except GraphQLError as exc:
            # A syntax error (or too many tokens) raised by ParserCache's on_parse escapes the
            # operation; Strawberry then reports it as is, so give it a code here (unless the
            # extension that raised it already did).
            exc.extensions = {"code": "GRAPHQL_PARSE_FAILED", **(exc.extensions or {})}
            raise
        result = self.execution_context.result
        errors = getattr(result, "errors", None)
        if errors:
            self._process(errors)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        """Subscriptions: the same treatment for each streamed result."""
        if getattr(result, "errors", None):
            self._process(result.errors)
        yield None

    @staticmethod
    def _process(errors: list[GraphQLError]) -> None:
        for error in errors:
            original = error.original_error
            extensions = dict(error.extensions or {})
            if isinstance(original, RetailgraphError):
                extensions.update(original.extensions())
            elif isinstance(original, RedisError):
                # A Redis command that missed its deadline (a subscription's replay, a
                # reservation's script) where no fallback exists: retry, not a bug.
                log.warning("Redis did not answer for %s: %s", error.path, original)
                error.message = ("Redis did not answer in time; retry (a subscription resumes "
                                 "after its last cursor)")
                extensions["code"] = ServiceUnavailable.code
            elif original is not None and not isinstance(original, GraphQLError):
                log.error("unexpected error in %s", error.path, exc_info=original)
                error.message = "Internal error"
                extensions["code"] = "INTERNAL"
            extensions.setdefault("code", "GRAPHQL_PARSE_FAILED"
                                  if isinstance(error, GraphQLSyntaxError)
                                  else "GRAPHQL_VALIDATION_FAILED" if error.path is None
                                  else "BAD_USER_INPUT")
            error.extensions = extensions


@functools.cache
def _parse_cache(maxsize: int) -> Callable[..., DocumentNode]:
    return functools.lru_cache(maxsize=maxsize)(parse)


class ParsedOnce(SchemaExtension):
    """Parsed documents kept in an LRU, as Strawberry's ``ParserCache`` does, except that a
    document that does not parse is left to Strawberry's own parse step, which reports the
    error as the operation's result on every transport. ``ParserCache`` raised it from
    ``on_parse``, outside Strawberry's error handling: over WebSocket a syntax error or a
    document over ``max_tokens`` was an unhandled exception in the log and no answer (a bare
    ``complete`` on graphql-transport-ws)."""

    def __init__(self, maxsize: int = 256) -> None:
        self.parse = _parse_cache(maxsize)

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query:
            with contextlib.suppress(GraphQLError):
                context.graphql_document = self.parse(context.query, **context.parse_options)
        yield


class FreshnessReport(SchemaExtension):
    """``extensions.freshness``: per source, the newest and oldest ``asOf`` served and whether
    it came from the cache or the backend; ``responseCache`` says whether execution ran."""

    def get_results(self) -> dict[str, Any]:
        context = self.execution_context.context
        if not isinstance(context, RequestContext):
            return {}
        # No document after a syntax error: operation_type would raise (a 500), and it is no
        # subscription anyway.
        if (self.execution_context.graphql_document is not None
                and self.execution_context.operation_type is OperationType.SUBSCRIPTION):
            return {}
        return {"freshness": {**context.loaders.freshness.summary(), "responseCache": "miss"}}


class DeliverySlots(SchemaExtension):
    """A streamed result is computed: its subscription event's delivery slot is given back
    before any transport (WebSocket, SSE, multipart) sends it, so a slow client holds none
    (gateway/events/changes.py ``Deliveries``)."""

    def on_stream_result(self, result: Any) -> Iterator[None]:
        delivered()
        yield None


def make_schema(settings: Settings | None = None) -> strawberry.Schema:
    return build_schema(extensions=[
        *limit_extensions(settings or Settings()),
        lambda: ParsedOnce(maxsize=256),
        lambda: ValidationCache(maxsize=256),
        ErrorCodes,
        FreshnessReport,
        ForbiddenErrors,
        OperationTelemetry,
        StreamCursor,
        DeliverySlots,
    ])


NOT_STREAMED = ("a subscription over HTTP needs a streaming response: send Accept: "
                "text/event-stream (graphql-sse) or multipart/mixed;subscriptionSpec=1.0 "
                "(Apollo), or subscribe over the WebSocket")


class GraphQLApp(GraphQL[RequestContext, None]):
    """Strawberry's ASGI app with a per-request :class:`RequestContext`.

    Subscriptions run over both WebSocket protocols and, on HTTP, over graphql-sse and
    Apollo's multipart protocol (gateway/http/streams.py).
    """

    websocket_adapter_class = TextFrames
    graphql_transport_ws_handler_class = TransportWsHandler
    graphql_ws_handler_class = LegacyWsHandler

    def __init__(self, settings: Settings, graph: RetailGraph, auth: Authenticator,
                 guard: OperationGuard, feed: ChangeFeed, reconciliation: Reconciliation,
                 sync: SyncControl, reservations: Reservations, **kwargs: Any) -> None:
        kwargs.setdefault("connection_init_wait_timeout",
                          timedelta(seconds=settings.ws_init_timeout_seconds))
        kwargs.setdefault("subscription_protocols",
                          (GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL, *PROTOCOLS))
        super().__init__(make_schema(settings), **kwargs)
        self.stream_transport_classes_by_protocol = transports(
            settings.stream_keepalive_seconds)
        self.graph = graph
        self.auth = auth
        self.guard = guard
        self.feed = feed
        self.reconciliation = reconciliation
        self.sync = sync
        self.reservations = reservations

    async def execute_single(self, request: Request, request_adapter: Any,
                             sub_response: Response, context: RequestContext,
                             root_value: None, request_data: GraphQLRequestData,
                             ) -> ExecutionResult:
        """A request answered with one JSON document: queries (GET and POST) and mutations
        (POST). A subscription here would be executed like a query and fail on its stream
        (Strawberry allows it on every method): a 400 saying how to stream it instead."""
        allowed = OperationType.from_http(request_adapter.method) - {OperationType.SUBSCRIPTION}
        if not self.allow_queries_via_get and request_adapter.method == "GET":
            allowed.discard(OperationType.QUERY)
        try:
            return await self.schema.execute(
                request_data.query, root_value=root_value,
                variable_values=request_data.variables, context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions)
        except CannotGetOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason()) from exc
        except InvalidOperationTypeError as exc:
            if exc.operation_type is OperationType.SUBSCRIPTION:
                raise HTTPException(400, NOT_STREAMED) from exc
            raise HTTPException(400, exc.as_http_error_reason(request_adapter.method)) from exc
        except MissingQueryError as exc:
            raise HTTPException(400, "No GraphQL query found in the request") from exc

    async def get_context(self, request: Request | WebSocket,
                          response: Response | WebSocket) -> RequestContext:
        freshness = request.scope.setdefault("state", {}).get(FRESHNESS_STATE)
        principal = principal_of(request.scope, self.auth)
        return RequestContext(graph=self.graph, loaders=self.graph.loaders(freshness, principal),
                              feed=self.feed, reconciliation=self.reconciliation,
                              sync=self.sync, reservations=self.reservations,
                              request=request, response=response)

    async def on_ws_connect(self, context: RequestContext) -> UnsetType | dict[str, object] | None:
        """Authenticate a WebSocket from its ``connection_init`` payload (or, failing that,
        the handshake's headers): bad or missing credentials close it with 4403. Then take a
        rate-limit token, as an HTTP request would (refused: close 1013, try again later).
        A JWT's socket is closed when the token expires (gateway/http/websocket.py)."""
        socket = socket_of(context)
        if self.auth.enabled:
            try:
                credential = self.auth.credential_from_params(context.connection_params or {})
                if credential is None and context.request is not None:
                    credential = self.auth.credential_from_headers(context.request.headers)
                principal = await self.auth.authenticate(credential)
            except AuthError as exc:
                log.info("WebSocket connection refused: %s", exc)
                raise ConnectionRejectionError from exc
            context.loaders.principal = principal
            if socket is not None and principal.expires_at is not None:
                socket.expires_at = principal.expires_at + self.auth.leeway
        try:
            await self.guard.limiter.take(context.client)
        except RateLimited as refused:
            log.info("WebSocket connection refused: %s", refused.message)
            if socket is not None:
                socket.refusal = (TRY_AGAIN_LATER, refused.message[:120])
            raise ConnectionRejectionError(refused.error()) from refused
        return _ACK

    async def render_graphql_ide(self, request: Request) -> Response:
        """Our GraphiQL page, whose assets come from the package (Strawberry's loads a CDN)."""
        return graphiql.page()

    def encode_json(self, data: object) -> bytes:
        return encode(data)  # a shared subscription payload's data is written once

    def decode_json(self, data: str | bytes) -> object:
        # orjson.JSONDecodeError is a json.JSONDecodeError, which Strawberry answers with 400
        # (and a WebSocket closes with 4400); json.loads raised UnicodeDecodeError on a body
        # that is not UTF-8: a 500. Bodies nested too deeply are refused the same way.
        return limits.loads(data)

    def parse_json(self, data: str | bytes) -> Any:
        try:
            parsed = self.decode_json(data)
        except limits.NestedTooDeep as exc:
            raise HTTPException(400, f"The request body is {exc}") from exc
        except json.JSONDecodeError as exc:  # as Strawberry's parse_json answers
            raise HTTPException(400, "Unable to parse request body as JSON") from exc
        if not isinstance(parsed, dict | list):  # Strawberry would fail on it with a 500
            raise HTTPException(400, "The request body must be a JSON object")
        return parsed
