"""The per-operation protections, one call for every transport.

Before a GraphQL operation runs, whatever carried it, it is checked by:

1. the rate limit (:mod:`gateway.http.ratelimit`): one token from the caller's bucket;
2. persisted queries (:mod:`gateway.http.persisted`): the allow-list, and APQ's hash lookup, which
   turns a hash into the query text to run.

A refusal is an :class:`OperationRefused`: its GraphQL error (``extensions.code``) is the same
on every transport, and it knows the HTTP status a request carrying only that operation gets.
Everything else is checked inside the schema and so holds on every transport by itself:
scopes and locations (:mod:`gateway.http.auth`), depth/alias/token/cost limits, introspection and
suggestion hiding (:mod:`gateway.http.limits`), and the subscription limits
(:mod:`gateway.events.changes`).

Who calls what:

- one operation per HTTP request: ``RateLimitMiddleware`` and ``PersistedQueryMiddleware``
  (they call :meth:`RateLimiter.take <gateway.http.ratelimit.RateLimiter.take>` and
  :meth:`PersistedQueries.resolve <gateway.http.persisted.PersistedQueries.resolve>`, the same
  checks :meth:`OperationGuard.admit` makes);
- each WebSocket ``subscribe`` / ``start`` message (:mod:`gateway.http.graphql`), and every
  transport that carries several operations per request or connection (batches, streams):
  :meth:`OperationGuard.admit`, then :meth:`OperationGuard.ran` with the operation's first
  result's errors, which registers an APQ text that parsed and validated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from resolvers.access import Principal
from resolvers.errors import RetailgraphError

if TYPE_CHECKING:
    from gateway.http.persisted import PersistedQueries
    from gateway.http.ratelimit import Decision, RateLimiter


class OperationRefused(RetailgraphError):
    """An operation refused before it ran.

    ``code`` and ``extensions`` make its GraphQL error (the same on every transport);
    ``status`` and ``headers`` are what an HTTP request carrying only this operation gets.
    """

    code = "BAD_USER_INPUT"

    def __init__(self, message: str, *, code: str | None = None, status: int = 400,
                 extensions: Mapping[str, Any] | None = None,
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status
        self.details = dict(extensions or {})
        self.headers = list(headers)

    def extensions(self) -> dict[str, Any]:
        return {"code": self.code, **self.details}

    def error(self) -> dict[str, Any]:
        """The GraphQL error, as it appears in ``errors``."""
        return {"message": self.message, "extensions": self.extensions()}

    def body(self) -> bytes:
        """An HTTP response body: ``{"errors": [error]}``."""
        return orjson.dumps({"errors": [self.error()]})


@dataclass(slots=True)
class Admitted:
    """An operation that may run."""

    payload: dict[str, Any]  # query (resolved from a persisted hash), variables, ...
    register: str | None  # an APQ hash to store with the query once it ran
    decision: Decision | None  # the rate limit's state (None: limiter off or unavailable)


# A registered text must have run: these codes mean it did not parse or validate.
NOT_RUN_CODES = frozenset({"GRAPHQL_PARSE_FAILED", "GRAPHQL_VALIDATION_FAILED",
                           "LIMIT_EXCEEDED"})


class OperationGuard:
    """The per-operation checks, in the order the HTTP middleware applies them."""

    def __init__(self, limiter: RateLimiter, persisted: PersistedQueries) -> None:
        self.limiter = limiter
        self.persisted = persisted

    async def admit(self, payload: Mapping[str, Any], principal: Principal | None,
                    client: str) -> Admitted:
        """Check one operation (``{"query", "variables", "operationName", "extensions"}``)
        of ``principal``, counted against ``client``'s bucket. Raises
        :class:`OperationRefused`; the payload is not changed."""
        decision = await self.limiter.take(client)
        resolved = dict(payload)
        digest = await self.persisted.resolve(resolved, principal)
        return Admitted(resolved, digest, decision)

    async def ran(self, admitted: Admitted, errors: Iterable[Mapping[str, Any]]) -> None:
        """Register the APQ text of an admitted operation whose first result had ``errors``
        (formatted), unless they say it did not parse or validate."""
        if admitted.register is None:
            return
        codes = {str((e.get("extensions") or {}).get("code")) for e in errors}
        if not codes & NOT_RUN_CODES:
            await self.persisted.register(admitted.register, admitted.payload["query"])


__all__ = ["NOT_RUN_CODES", "Admitted", "OperationGuard", "OperationRefused"]
