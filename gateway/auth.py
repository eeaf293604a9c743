"""Who may see what: API keys and JWTs become a :class:`Principal` with scopes and locations.

Auth is on as soon as any credential is configured (``api_keys``, ``jwt_secret`` or a JWKS);
with none, every caller is :data:`OPEN` (all scopes, all locations). Credentials travel as
``Authorization: Bearer <api key or JWT>`` or ``X-API-Key: <key>`` on HTTP, and in the
WebSocket ``connection_init`` payload (``{"Authorization": "Bearer ..."}``, ``{"token": ...}``
or ``{"apiKey": ...}``). No or bad credentials: HTTP 401, WebSocket close 4403.

Scopes (``admin`` implies all of them):

- ``stock:read``: stock levels, availability, purchase orders, stock history and subscriptions;
- ``discrepancies:read``: discrepancy fields (guard them with ``requires(DISCREPANCIES_READ)``);
- ``metrics:read``: ``GET /metrics``;
- ``admin``: everything, including ``unmappedIdentifiers``.

Product and location master data need an authenticated caller and no scope. A principal's
``locations`` (JWT claim ``locations``; absent = all) restrict every path to those locations:
the per-request :class:`resolvers.graph.Loaders` filter stock, locations and purchase orders,
and subscriptions filter their changes. Asking for another location by id is ``FORBIDDEN``.

A field the caller may not read gives an error with ``extensions.code = "FORBIDDEN"`` and the
rest of the response intact (list fields come back empty, nullable fields null).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from graphql import GraphQLError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.extensions import FieldExtension, SchemaExtension
from strawberry.types.base import StrawberryList

from gateway.config import Settings
from resolvers.errors import RetailgraphError

if TYPE_CHECKING:
    from strawberry.extensions.field_extension import (
        AsyncExtensionResolver,
        SyncExtensionResolver,
    )
    from strawberry.types import Info
    from strawberry.types.field import StrawberryField

log = logging.getLogger("retailgraph.auth")

STOCK_READ = "stock:read"
DISCREPANCIES_READ = "discrepancies:read"
METRICS_READ = "metrics:read"
ADMIN = "admin"
SCOPES = (STOCK_READ, DISCREPANCIES_READ, METRICS_READ, ADMIN)

PRINCIPAL_STATE = "retailgraph_principal"
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")
JWKS_CACHE_SECONDS = 300.0
# NumericDate claims (RFC 7519 section 2) are seconds since the epoch: no later than the end
# of year 9999 (a huge integer passed PyJWT's checks, then float() overflowed: a 500).
MAX_NUMERIC_DATE = 253_402_300_799


class AuthError(Exception):
    """Credentials missing or not valid (HTTP 401, WebSocket 4403). The message is safe to
    show: it never contains the credential."""


class Forbidden(RetailgraphError):
    """Authenticated, but not allowed to read this (a GraphQL error, code FORBIDDEN)."""

    code = "FORBIDDEN"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: what it may read and where."""

    subject: str
    scopes: frozenset[str]
    locations: frozenset[str] | None = None  # None: every location
    kind: str = "open"  # "open" (auth off) | "api_key" | "jwt" | "none"
    expires_at: float | None = None

    def has(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    def sees(self, location_id: str) -> bool:
        return self.locations is None or location_id in self.locations

    def visible(self, location_ids: Iterable[str]) -> list[str]:
        """Those of ``location_ids`` this principal may read, in order."""
        if self.locations is None:
            return list(location_ids)
        return [x for x in location_ids if x in self.locations]

    def restrict(self, wanted: Sequence[str] | None) -> list[str] | None:
        """The locations a request for ``wanted`` (None: all) may read; None means all.

        Asking explicitly for a location outside the grant is :class:`Forbidden`.
        """
        if self.locations is None:
            return None if wanted is None else list(wanted)
        if wanted is None:
            return sorted(self.locations)
        denied = [x for x in wanted if x not in self.locations]
        if denied:
            raise Forbidden(f"not allowed to read location(s) {', '.join(map(str, denied))}")
        return list(wanted)

    def require_location(self, location_id: str) -> None:
        if not self.sees(location_id):
            raise Forbidden(f"not allowed to read location {location_id}")

    @property
    def client_id(self) -> str:
        """Stable id of the caller for rate limiting; empty when not authenticated."""
        return f"{self.kind}:{self.subject}" if self.kind in ("api_key", "jwt") else ""

    def client_key(self, peer: object) -> str:
        """Who a request or subscription counts against (rate limit, subscription limit): the
        authenticated caller, else its address (``peer``: ``scope["client"]``)."""
        if self.client_id:
            return self.client_id
        host = peer[0] if isinstance(peer, tuple | list) and peer else "unknown"
        return f"ip:{host}"

    def cache_scope(self) -> str:
        """What the response cache keys on: two callers with equal scope share responses."""
        if self.kind == "open":
            return "public"
        locations = "*" if self.locations is None else ",".join(sorted(self.locations))
        return f"scopes={','.join(sorted(self.scopes))};locations={locations}"


OPEN = Principal("anonymous", frozenset({ADMIN}))
NOBODY = Principal("unauthenticated", frozenset(), frozenset(), kind="none")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _scopes(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return frozenset(value)
    raise AuthError("the scope claim must be a space-separated string")


def _numeric_dates(claims: Mapping[str, Any]) -> float:
    """The token's ``exp``, once ``exp``, ``nbf`` and ``iat`` (when present) are checked to
    be dates: finite numbers from 0 to :data:`MAX_NUMERIC_DATE`."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is None and name != "exp":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0 <= value <= MAX_NUMERIC_DATE:  # NaN compares false
            raise AuthError(f"invalid token: the {name} claim is not a date")
    return float(claims["exp"])


def _locations(value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return frozenset(value)
    raise AuthError("the locations claim must be a list of location ids")


class Authenticator:
    """Checks API keys and JWTs against the settings; one per app (it caches JWKS keys)."""

    def __init__(self, settings: Settings) -> None:
        self._keys: list[tuple[bytes, Principal]] = []
        for name, entry in settings.api_keys.items():
            digest = (bytes.fromhex(entry["key_sha256"]) if entry.get("key_sha256")
                      else _digest(entry["key"]))
            locations = entry.get("locations")
            self._keys.append((digest, Principal(
                subject=name, scopes=frozenset(entry.get("scopes", [])), kind="api_key",
                locations=frozenset(locations) if locations is not None else None)))
        self._secret = settings.jwt_secret
        self._jwks_set: jwt.PyJWKSet | None = None
        if settings.jwks_file:
            self._jwks_set = jwt.PyJWKSet.from_json(Path(settings.jwks_file).read_text())
        self._jwks_client = (jwt.PyJWKClient(settings.jwks_url, timeout=5, lifespan=300)
                             if settings.jwks_url else None)
        self._jwk_cache: dict[str, tuple[jwt.PyJWK, float]] = {}
        self.audience = settings.jwt_audience or None
        self.issuer = settings.jwt_issuer or None
        self.leeway = settings.jwt_leeway_seconds

    @property
    def enabled(self) -> bool:
        return bool(self._keys or self._secret or self._jwks_set or self._jwks_client)

    @property
    def uses_jwt(self) -> bool:
        return bool(self._secret or self._jwks_set or self._jwks_client)

    def describe(self) -> str:
        """For banners and ``--check``: which kinds of credentials are accepted."""
        kinds = []
        if self._keys:
            kinds.append(f"{len(self._keys)} API key(s)")
        if self._secret:
            kinds.append("JWT HS256")
        if self._jwks_set is not None:
            kinds.append("JWT RS256/ES256 (JWKS file)")
        if self._jwks_client is not None:
            kinds.append("JWT RS256/ES256 (JWKS URL)")
        return ", ".join(kinds) if kinds else "none (open)"

    # -- where credentials are --------------------------------------------------------------

    @staticmethod
    def credential_from_headers(headers: Mapping[str, str]) -> str | None:
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() in ("bearer", "apikey") and value.strip():
                return value.strip()
            raise AuthError("Authorization must be 'Bearer <token or API key>'")
        return headers.get("x-api-key") or None

    @classmethod
    def credential_from_params(cls, params: Mapping[str, Any]) -> str | None:
        """From a WebSocket ``connection_init`` payload."""
        lowered = {str(k).lower(): v for k, v in params.items()}
        for name in ("authorization", "token", "apikey", "api_key", "x-api-key"):
            value = lowered.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise AuthError(f"{name} must be a string")
            return cls.credential_from_headers({"authorization": value} if name ==
                                               "authorization" else {"x-api-key": value})
        headers = lowered.get("headers")
        if isinstance(headers, Mapping):
            return cls.credential_from_params({k: v for k, v in headers.items()
                                               if str(k).lower() != "headers"})
        return None

    # -- checking them ----------------------------------------------------------------------

    async def authenticate(self, credential: str | None) -> Principal:
        """The principal of ``credential``, or :class:`AuthError`. Open when auth is off."""
        if not self.enabled:
            return OPEN
        if not credential:
            raise AuthError("credentials required: send 'Authorization: Bearer <token>'")
        if self.uses_jwt and credential.count(".") == 2:
            return await self._jwt(credential)
        presented = _digest(credential)
        found: Principal | None = None
        for digest, principal in self._keys:
            if hmac.compare_digest(digest, presented):  # every key compared: constant time
                found = principal
        if found is None:
            raise AuthError("invalid credentials")
        return found

    async def _jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token") from exc
        alg = header.get("alg")
        if alg not in JWT_ALGORITHMS:
            raise AuthError(f"token algorithm must be one of {', '.join(JWT_ALGORITHMS)}")
        key: Any
        if alg == "HS256":
            if not self._secret:
                raise AuthError("HS256 tokens are not accepted (no jwt_secret configured)")
            key = self._secret
        else:
            jwk = await self._signing_key(header.get("kid"))
            if jwk.algorithm_name != alg:
                raise AuthError("token algorithm does not match its signing key")
            key = jwk.key
        try:
            claims = jwt.decode(
                token, key=key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp"], "verify_aud": self.audience is not None})
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            raise AuthError("invalid token") from exc
        subject = claims.get("sub") or claims.get("client_id") or "jwt"
        return Principal(subject=str(subject), kind="jwt",
                         scopes=_scopes(claims.get("scope", claims.get("scp", ""))),
                         locations=_locations(claims.get("locations")),
                         expires_at=_numeric_dates(claims))

    async def _signing_key(self, kid: object) -> jwt.PyJWK:
        if self._jwks_set is not None:
            keys = self._jwks_set.keys
            if kid is None and len(keys) == 1:
                return keys[0]
            for candidate in keys:
                if candidate.key_id == kid:
                    return candidate
            if self._jwks_client is None:
                raise AuthError("no signing key for this token (kid)")
        if self._jwks_client is None:
            raise AuthError("RS256/ES256 tokens are not accepted (no JWKS configured)")
        if not isinstance(kid, str):
            raise AuthError("token has no kid header")
        cached = self._jwk_cache.get(kid)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            found = await asyncio.to_thread(self._jwks_client.get_signing_key, kid)
        except jwt.PyJWKClientError as exc:
            log.warning("JWKS lookup failed: %s", exc)
            raise AuthError("no signing key for this token (kid)") from exc
        if len(self._jwk_cache) > 64:
            self._jwk_cache.clear()
        self._jwk_cache[kid] = (found, time.monotonic() + JWKS_CACHE_SECONDS)
        return found


def issue_token(secret: str, subject: str, scopes: Iterable[str],
                locations: Iterable[str] | None = None, ttl_seconds: int = 86_400,
                audience: str | None = None, issuer: str | None = None) -> str:
    """An HS256 token the gateway accepts (``retailgraph demo --auth``, tests, scripts)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "scope": " ".join(scopes), "iat": now,
                              "exp": now + ttl_seconds}
    if locations is not None:
        claims["locations"] = list(locations)
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


# -- HTTP -------------------------------------------------------------------------------------

PROTECTED_PATHS = ("/graphql", "/metrics")


def _is_ide_page(scope: Scope) -> bool:
    """A plain browser GET of /graphql: the static GraphiQL page, which runs nothing."""
    if scope["method"] != "GET" or scope["path"] != "/graphql" or scope.get("query_string"):
        return False
    accept = Headers(scope=scope).get("accept", "")
    return "text/html" in accept


async def _deny(send: Send, status: int, message: str, code: str) -> None:
    body = orjson.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="retailgraph"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """Authenticates ``/graphql`` and ``/metrics`` requests (WebSocket: ``on_ws_connect``).

    Puts the :class:`Principal` in ``scope["state"]`` and the response-cache scope next to it,
    so a cached response is only served to callers allowed to see the same data.
    """

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        from gateway.response_cache import SCOPE_STATE  # imports resolvers.graph, which needs us

        self.app = app
        self.auth = auth
        self.scope_state = SCOPE_STATE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.auth.enabled
                or scope["path"] not in PROTECTED_PATHS or _is_ide_page(scope)):
            await self.app(scope, receive, send)
            return
        try:
            credential = self.auth.credential_from_headers(Headers(scope=scope))
            principal = await self.auth.authenticate(credential)
        except AuthError as exc:
            log.info("unauthenticated request to %s: %s", scope["path"], exc)
            await _deny(send, 401, str(exc), "UNAUTHENTICATED")
            return
        if scope["path"] == "/metrics" and not principal.has(METRICS_READ):
            await _deny(send, 403, f"{METRICS_READ} scope required", "FORBIDDEN")
            return
        state = scope.setdefault("state", {})
        state[PRINCIPAL_STATE] = principal
        state[self.scope_state] = principal.cache_scope()
        await self.app(scope, receive, send)


def principal_of(scope: Scope, auth: Authenticator) -> Principal:
    """The principal the middleware found; fail closed if it did not run while auth is on."""
    found = scope.get("state", {}).get(PRINCIPAL_STATE)
    if isinstance(found, Principal):
        return found
    return NOBODY if auth.enabled else OPEN


# -- GraphQL fields ---------------------------------------------------------------------------

class Requires(FieldExtension):
    """Field extension: the caller needs ``scope``. Denied list fields resolve to ``[]`` and
    nullable ones to null, each with a FORBIDDEN error; the rest of the response stays."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.returns_list = False

    def apply(self, field: StrawberryField) -> None:
        # A nullable field becomes null (the error says why); a non-null list becomes [].
        self.returns_list = isinstance(field.type, StrawberryList)

    def _deny(self, info: Info[Any, Any]) -> list[Any]:
        raw = info._raw_info
        message = f"the {self.scope} scope is required for {raw.parent_type.name}." \
                  f"{info.field_name}"
        if not self.returns_list:
            raise Forbidden(message)
        info.context.errors.append(GraphQLError(
            message, nodes=raw.field_nodes, path=info.path.as_list(),
            extensions={"code": Forbidden.code}))
        return []

    def resolve(self, next_: SyncExtensionResolver, source: Any, info: Info[Any, Any],
                **kwargs: Any) -> Any:
        if not info.context.principal.has(self.scope):
            return self._deny(info)
        return next_(source, info, **kwargs)

    async def resolve_async(self, next_: AsyncExtensionResolver, source: Any,
                            info: Info[Any, Any], **kwargs: Any) -> Any:
        if not info.context.principal.has(self.scope):
            return self._deny(info)
        result = next_(source, info, **kwargs)
        if inspect.isasyncgen(result):
            return result
        return await result


def requires(scope: str) -> Requires:
    """``@strawberry.field(extensions=[requires(STOCK_READ)])``."""
    return Requires(scope)


class ForbiddenErrors(SchemaExtension):
    """Adds the FORBIDDEN errors of list fields that resolved to ``[]`` to the result."""

    def on_operation(self) -> Iterator[None]:
        yield
        context = self.execution_context.context
        extra = getattr(context, "errors", None)
        result = self.execution_context.result
        if extra and result is not None and hasattr(result, "errors"):
            result.errors = [*(result.errors or []), *extra]


__all__ = [
    "ADMIN", "DISCREPANCIES_READ", "METRICS_READ", "NOBODY", "OPEN", "SCOPES", "STOCK_READ",
    "AuthError", "AuthMiddleware", "Authenticator", "Forbidden", "ForbiddenErrors",
    "Principal", "Requires", "issue_token", "principal_of", "requires",
]
