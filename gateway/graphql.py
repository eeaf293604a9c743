"""GraphQL over HTTP and WebSocket: Strawberry's ASGI view plus our context and error codes.

Validation limits are built once at import, so Strawberry's validation cache keeps hitting
(a limiter built per request defeats it; see shared/reference/strawberry-notes.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import strawberry
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.types.graphql import OperationType

from gateway.response_cache import FRESHNESS_STATE
from resolvers.errors import RetailgraphError
from resolvers.graph import RequestContext, RetailGraph
from schema import build_schema

log = logging.getLogger("retailgraph.graphql")

MAX_DEPTH = 12
MAX_ALIASES = 50
MAX_TOKENS = 5000
_LIMIT_RULES = [*QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
                *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules]


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
        if result is not None and getattr(result, "errors", None):
            self._process(result.errors)

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
                extensions["code"] = original.code
                if backend := getattr(original, "backend", None):
                    extensions["backend"] = backend
            elif original is not None and not isinstance(original, GraphQLError):
                log.error("unexpected error in %s", error.path, exc_info=original)
                error.message = "Internal error"
                extensions["code"] = "INTERNAL"
            extensions.setdefault("code", "GRAPHQL_VALIDATION_FAILED" if error.path is None
                                  else "BAD_USER_INPUT")
            error.extensions = extensions


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


def make_schema() -> strawberry.Schema:
    return build_schema(extensions=[
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: AddValidationRules(_LIMIT_RULES),
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
        ErrorCodes,
        FreshnessReport,
    ])


class GraphQLApp(GraphQL[RequestContext, None]):
    """Strawberry's ASGI app with a per-request :class:`RequestContext`."""

    def __init__(self, graph: RetailGraph, **kwargs: Any) -> None:
        super().__init__(make_schema(), **kwargs)
        self.graph = graph

    async def get_context(self, request: Request | WebSocket,
                          response: Response | WebSocket) -> RequestContext:
        freshness = request.scope.setdefault("state", {}).get(FRESHNESS_STATE)
        return RequestContext(graph=self.graph, loaders=self.graph.loaders(freshness),
                              request=request, response=response)

    def encode_json(self, data: object) -> bytes:
        return orjson.dumps(data)
