"""Every error retailgraph raises on purpose, as one hierarchy (the httpx way)::

    RetailgraphError                 the root; ``code`` is its GraphQL ``extensions.code``
    ├── BadUserInput                 the request asks for something invalid (BAD_USER_INPUT)
    │   ├── InvalidCursor            a cursor that is not one (resolvers/changes.py)
    │   └── OutOfRange               a number outside its allowed range (also a ValueError)
    ├── CursorExpired                older than the change retention (CURSOR_EXPIRED)
    ├── ServiceUnavailable           a part the answer needs is not there (SERVICE_UNAVAILABLE)
    │   └── CacheUnavailable         Redis cannot be reached (resolvers/abc.py)
    ├── Forbidden                    not allowed to read this (FORBIDDEN, resolvers/access.py)
    ├── ConfigError                  a setting missing or contradictory (gateway/config.py; also
    │                                a ValueError); the service does not start
    ├── BodyTimeout                  a request body slower than its deadline: 408
    │                                (gateway/http/asgi.py)
    ├── Rejected                     a webhook delivery refused with its HTTP status
    │                                (gateway/intake/webhooks.py)
    ├── CellMissing                  the cache lacks a cell a reservation needs: read it through
    │                                and retry (resolvers/store/reservations.py; never shown)
    └── BackendError                 a backend could not answer usefully
        ├── BackendUnavailable       connect error, connection reset (code BACKEND_UNAVAILABLE)
        ├── BackendTimeout           no answer in time (code BACKEND_TIMEOUT)
        ├── BackendStatusError       a non-2xx answer (code BACKEND_ERROR)
        └── BackendProtocolError     a 2xx answer we cannot read (code BACKEND_BAD_RESPONSE)
            └── ValueOutOfRange      a number the unified model cannot hold (same code)

:class:`OutOfRange` is what the pure parsing functions shared by the polling and webhook paths
raise for such a number; connectors translate it into :class:`ValueOutOfRange`, and webhook
intake dead-letters the delivery (see ``resolvers.types.INT_MAX``).

A GraphQL error's ``extensions`` come from :meth:`RetailgraphError.extensions` in one place,
the gateway's ``ErrorCodes`` extension (gateway/http/graphql.py): the code, and for a backend
error the backend, so a client knows which system failed while the rest of its response
stays intact. Resolvers raise these, never a hand-built ``GraphQLError``.
"""

from __future__ import annotations

from typing import Any


class RetailgraphError(Exception):
    """Base class of every error retailgraph raises on purpose."""

    code = "INTERNAL"

    def extensions(self) -> dict[str, Any]:
        """What a GraphQL error made of this carries in ``extensions``."""
        return {"code": self.code}


class BadUserInput(RetailgraphError):
    code = "BAD_USER_INPUT"


class CursorExpired(RetailgraphError):
    """The cursor is older than the change retention: the client must re-query."""

    code = "CURSOR_EXPIRED"


class ServiceUnavailable(RetailgraphError):
    """A part the answer needs is not running or not reachable; retry later."""

    code = "SERVICE_UNAVAILABLE"


class BackendError(RetailgraphError):
    code = "BACKEND_ERROR"

    def __init__(self, backend: str, message: str) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend

    def extensions(self) -> dict[str, Any]:
        return {"code": self.code, "backend": self.backend}


class BackendUnavailable(BackendError):
    code = "BACKEND_UNAVAILABLE"


class BackendTimeout(BackendError):
    code = "BACKEND_TIMEOUT"


class BackendStatusError(BackendError):
    code = "BACKEND_ERROR"

    def __init__(self, backend: str, status: int, message: str,
                 retry_after: float | None = None, body: str = "") -> None:
        super().__init__(backend, f"HTTP {status}: {message}")
        self.status = status
        # Seconds the backend asked us to wait (``Retry-After`` on a 429 or 503), if it did.
        self.retry_after = retry_after
        # The answer's body (credential scrubbed, at most 4,000 characters): vendor error
        # codes for a connector to act on (Square's VERSION_MISMATCH).
        self.body = body


class BackendProtocolError(BackendError):
    code = "BACKEND_BAD_RESPONSE"


class ValueOutOfRange(BackendProtocolError):
    """A backend's answer holds a number outside what the unified model can represent."""


class OutOfRange(BadUserInput, ValueError):
    """A number outside its allowed range: a quantity past GraphQL's 32-bit ``Int``, a
    version past 2**53 - 1. The message names the field and the value."""
