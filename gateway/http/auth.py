"""Who may see what: API keys and JWTs become a :class:`Principal` with scopes and locations.

Auth is on as soon as any credential is configured (``api_keys``, ``jwt_secret`` or a JWKS);
with none, every caller is :data:`OPEN` (all scopes, all locations). Credentials travel as
``Authorization: Bearer <api key or JWT>`` or ``X-API-Key: <key>`` on HTTP, and in the
WebSocket ``connection_init`` payload (``{"Authorization": "Bearer ..."}``, ``{"token": ...}``
or ``{"apiKey": ...}``). No or bad credentials: HTTP 401, WebSocket close 4403.

The scopes and the :class:`~resolvers.access.Principal` are data (``resolvers/access.py``);
schema fields check them with ``schema.permissions.requires``.

Product and location master data need an authenticated caller and no scope. A principal's
``locations`` (JWT claim ``locations``; absent = all) restrict every path to those locations:
the per-request :class:`resolvers.graph.Loaders` filter stock, locations and purchase orders,
and subscriptions filter their changes. Asking for another location by id is ``FORBIDDEN``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import Settings
from gateway.http.cached_responses import SCOPE_STATE
from resolvers.access import NOBODY, OPEN, Principal
from resolvers.errors import RetailgraphError

log = logging.getLogger("retailgraph.auth")

PRINCIPAL_STATE = "retailgraph_principal"
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")
JWKS_CACHE_SECONDS = 300.0
# NumericDate claims (RFC 7519 section 2) are seconds since the epoch: no later than the end
# of year 9999 (a huge integer passed PyJWT's checks, then float() overflowed: a 500).
MAX_NUMERIC_DATE = 253_402_300_799


class AuthError(RetailgraphError):
    """Credentials missing or not valid (HTTP 401, WebSocket 4403). The message is safe to
    show: it never contains the credential."""

    code = "UNAUTHENTICATED"


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

def _is_ide_page(scope: Scope) -> bool:
    """A plain browser GET of /graphql: the static GraphiQL page, which runs nothing."""
    if scope["method"] != "GET" or scope.get("query_string"):
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
    """Authenticates every HTTP request to the route it is attached to (``/graphql``,
    ``/metrics``; WebSocket: ``on_ws_connect``).

    ``scope``: a scope the caller must hold (``metrics:read`` on ``/metrics``), else 403.
    ``ide_page``: a plain browser GET (the static GraphiQL page, which runs nothing) needs no
    credential. Puts the :class:`Principal` in ``scope["state"]`` and the response-cache scope
    next to it, so a cached response is only served to callers allowed to see the same data.
    """

    def __init__(self, app: ASGIApp, auth: Authenticator, scope: str | None = None,
                 ide_page: bool = False) -> None:
        self.app = app
        self.auth = auth
        self.required = scope
        self.ide_page = ide_page
        self.scope_state = SCOPE_STATE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.auth.enabled
                or (self.ide_page and _is_ide_page(scope))):
            await self.app(scope, receive, send)
            return
        try:
            credential = self.auth.credential_from_headers(Headers(scope=scope))
            principal = await self.auth.authenticate(credential)
        except AuthError as exc:
            log.info("unauthenticated request to %s: %s", scope["path"], exc)
            await _deny(send, 401, str(exc), exc.code)
            return
        if self.required is not None and not principal.has(self.required):
            await _deny(send, 403, f"{self.required} scope required", "FORBIDDEN")
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


__all__ = ["PRINCIPAL_STATE", "AuthError", "AuthMiddleware", "Authenticator", "issue_token",
           "principal_of"]
