"""Persisted queries: Apollo's automatic persisted queries (APQ), and an allow-list mode.

APQ (``apq = true``): a client sends ``extensions.persistedQuery = {"version": 1,
"sha256Hash": "<hex>"}`` without the query text. If this gateway (any replica: the texts are
in Redis) knows the hash, the query runs; if not, the answer is a GraphQL error
``PersistedQueryNotFound`` (``extensions.code = "PERSISTED_QUERY_NOT_FOUND"``) and the client
sends hash and text together, which registers the text once it has parsed and validated. A
hash that does not match the text is refused. Works for POST bodies, GET query strings and
WebSocket operations (each ``subscribe``/``start`` message's payload).

Allow-list (``allow_list_file``): only operations listed in the file run, sent by hash or in
full; anything else is refused with ``PERSISTED_QUERY_NOT_ALLOWED`` (HTTP 403). Callers with
the ``admin`` scope (when auth is on) are exempt, so operators can still explore. The file is
JSON: an Apollo persisted-query manifest (``{"operations": [{"id", "body", ...}]}``), an
object ``{"<sha256>": "<query>"}``, or a list of query texts.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import ConfigError, Settings
from gateway.http import limits
from gateway.http.asgi import is_stream_response, read_body, replay, send_errors
from gateway.http.auth import PRINCIPAL_STATE
from gateway.http.operations import NOT_RUN_CODES, OperationRefused
from resolvers.abc import RedisClient
from resolvers.access import ADMIN, Principal
from resolvers.store.client import optional
from resolvers.store.keys import PERSISTED_QUERY_PREFIX as KEY_PREFIX

log = logging.getLogger("retailgraph.persisted")

TTL_SECONDS = 7 * 86_400
MAX_QUERY_BYTES = 100_000
_HASH = re.compile(r"^[0-9a-f]{64}$")
# A registered text must have run: these codes mean it did not parse or validate.
_INVALID = tuple(code.encode() for code in sorted(NOT_RUN_CODES))


def sha256(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


def load_allow_list(path: str) -> dict[str, str]:
    """``{id or sha256: query}`` from an allow-list file (see the module docstring)."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"allow_list_file: cannot read {path}: {exc}") from exc
    pairs: list[tuple[str | None, Any]] = []
    if isinstance(data, dict) and isinstance(data.get("operations"), list):
        pairs = [(op.get("id"), op.get("body")) for op in data["operations"]
                 if isinstance(op, dict)]
    elif isinstance(data, dict):
        pairs = list(data.items())
    elif isinstance(data, list):
        pairs = [(None, q) for q in data]
    out: dict[str, str] = {}
    for key, query in pairs:
        if not isinstance(query, str):
            raise ConfigError(f"allow_list_file: {path}: every operation needs a query text")
        out[sha256(query)] = query
        if key:
            out[str(key)] = query
    if not out:
        raise ConfigError(f"allow_list_file: {path} lists no operations")
    return out


class PersistedQueryError(OperationRefused):
    """A persisted-query refusal: not found / not supported (HTTP 200, the client retries with
    the text), not on the allow-list (403), a bad hash (400)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code, status=status)


async def _respond(scope: Scope, send: Send, error: OperationRefused) -> None:
    await send_errors(scope, send, error.status, error.body(), error.headers)


class PersistedQueries:
    """The allow-list and the APQ store; one per app, shared by the HTTP middleware and the
    per-operation checks (:class:`gateway.http.operations.OperationGuard`)."""

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self.redis = redis
        self.apq = settings.apq
        self.allow_list = (load_allow_list(settings.allow_list_file)
                           if settings.allow_list_file else None)

    @staticmethod
    def exempt(principal: Principal | None) -> bool:
        """Admins (authenticated ones) may run what the allow-list does not name."""
        return (principal is not None and principal.kind in ("api_key", "jwt")
                and principal.has(ADMIN))

    def concerns(self, payload_bytes: bytes) -> bool:
        """Whether a request body can need this at all (the fast path skips parsing it)."""
        return self.allow_list is not None or b"persistedQuery" in payload_bytes

    async def resolve(self, payload: dict[str, Any], principal: Principal | None) -> str | None:
        """Check one operation and put the query text to run in ``payload["query"]``; return
        a hash to register once it ran, if any. Raises :class:`PersistedQueryError`."""
        extensions = payload.get("extensions")
        persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        query = payload.get("query")
        listed = self.allow_list is not None and not self.exempt(principal)
        if persisted is None:
            if listed and isinstance(query, str) and sha256(query) not in self.allow_list:  # type: ignore[operator]
                raise PersistedQueryError(403, "PERSISTED_QUERY_NOT_ALLOWED",
                                          "this operation is not on the allow-list")
            return None
        if not isinstance(persisted, dict) or persisted.get("version") != 1 or not (
                isinstance(persisted.get("sha256Hash"), str)
                and _HASH.match(persisted["sha256Hash"])):
            raise PersistedQueryError(400, "BAD_USER_INPUT",
                                      "persistedQuery needs version 1 and a sha256Hash "
                                      "(64 lowercase hex digits)")
        digest: str = persisted["sha256Hash"]
        if listed:
            assert self.allow_list is not None
            if isinstance(query, str) and sha256(query) != digest:
                raise PersistedQueryError(400, "BAD_USER_INPUT",
                                          "provided sha does not match query")
            found = self.allow_list.get(digest)
            if found is None:
                raise PersistedQueryError(403, "PERSISTED_QUERY_NOT_ALLOWED",
                                          "this operation is not on the allow-list")
            payload["query"] = found
            return None
        if not self.apq:
            raise PersistedQueryError(200, "PERSISTED_QUERY_NOT_SUPPORTED",
                                      "PersistedQueryNotSupported")
        if isinstance(query, str):
            if sha256(query) != digest:
                raise PersistedQueryError(400, "BAD_USER_INPUT",
                                          "provided sha does not match query")
            return digest if len(query.encode()) <= MAX_QUERY_BYTES else None
        stored = await self._lookup(digest)
        if stored is None:
            raise PersistedQueryError(200, "PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound")
        payload["query"] = stored
        return None

    async def _lookup(self, digest: str) -> str | None:
        try:
            with optional():  # unknown: the client sends the query text
                raw = await self.redis.get(KEY_PREFIX + digest)
        except (RedisError, OSError) as exc:
            log.warning("persisted query store unavailable: %s", exc)
            return None
        return raw.decode() if isinstance(raw, bytes) else raw

    async def register(self, digest: str, query: str) -> None:
        """Store an APQ text (it ran: it parsed and validated)."""
        try:
            with optional():  # the query ran; the client sends its text again if need be
                await self.redis.set(KEY_PREFIX + digest, query.encode(), ex=TTL_SECONDS)
        except (RedisError, OSError) as exc:
            log.warning("persisted query not stored: %s", exc)


class PersistedQueryMiddleware:
    """Turns hashes into query texts (and refuses what the allow-list does not name) before
    the response cache and Strawberry see an HTTP request. (WebSocket operations:
    gateway/http/graphql.py, through :class:`gateway.http.operations.OperationGuard`.)"""

    def __init__(self, app: ASGIApp, persisted: PersistedQueries, max_body: int) -> None:
        self.app = app
        self.persisted = persisted
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["method"] == "POST":
            await self._post(scope, receive, send)
        elif scope["method"] == "GET" and scope.get("query_string"):
            await self._get(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _resolve(self, scope: Scope, payload: dict[str, Any]) -> str | None:
        return await self.persisted.resolve(payload, scope.get("state", {}).get(PRINCIPAL_STATE))

    async def _run(self, scope: Scope, receive: Receive, send: Send,
                   register: tuple[str, str] | None) -> None:
        if register is None:
            await self.app(scope, receive, send)
            return
        status = 0
        chunks: list[bytes] | None = []  # None: a stream, judged by its first result

        async def capture(message: Message) -> None:
            # The text is stored before the answer's last byte (or a stream's first result)
            # goes out: a client that has its answer finds the hash registered, on any replica.
            nonlocal status, chunks, register
            if message["type"] == "http.response.start":
                status = message["status"]
                if is_stream_response(message.get("headers", ())):
                    chunks = None
            elif message["type"] == "http.response.body" and register is not None:
                chunk = message.get("body", b"")
                judged: bytes | None = None
                if chunks is not None:
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        judged = b"".join(chunks)
                elif b'"payload"' in chunk or b"event: next" in chunk:  # not a keep-alive
                    judged = chunk
                if judged is not None:
                    if status == 200 and not any(code in judged for code in _INVALID):
                        await self.persisted.register(*register)
                    register = None
            await send(message)

        await self.app(scope, receive, capture)

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive, self.max_body)
        if body is None:
            await _respond(scope, send, PersistedQueryError(
                413, "BAD_USER_INPUT", f"request body is over the {self.max_body}-byte limit"))
            return
        if not self.persisted.concerns(body):
            await self.app(scope, replay(body, receive), send)
            return
        try:
            payload = limits.loads(body)
        except orjson.JSONDecodeError:  # also when nested too deeply: Strawberry answers
            payload = None
        if not isinstance(payload, dict):  # malformed or a batch: Strawberry answers
            await self.app(scope, replay(body, receive), send)
            return
        try:
            digest = await self._resolve(scope, payload)
        except PersistedQueryError as exc:
            await _respond(scope, send, exc)
            return
        new_body = _canonical(payload)
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(new_body)).encode()))
        register = (digest, payload["query"]) if digest else None
        await self._run({**scope, "headers": headers}, replay(new_body, receive), send, register)

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = dict(parse_qsl(scope["query_string"].decode("latin-1"),
                                keep_blank_values=True))
        if "extensions" not in params and self.persisted.allow_list is None:
            await self.app(scope, receive, send)
            return
        payload: dict[str, Any] = {"query": params.get("query")}
        try:
            payload["extensions"] = (limits.loads(params["extensions"])
                                     if "extensions" in params else None)
        except orjson.JSONDecodeError:
            await _respond(scope, send, PersistedQueryError(400, "BAD_USER_INPUT",
                                                     "extensions is not valid JSON"))
            return
        try:
            digest = await self._resolve(scope, payload)
        except PersistedQueryError as exc:
            await _respond(scope, send, exc)
            return
        if isinstance(payload.get("query"), str):
            params["query"] = payload["query"]
        query_string = urlencode(params).encode()
        register = (digest, payload["query"]) if digest else None
        await self._run({**scope, "query_string": query_string}, receive, send, register)


def _canonical(payload: dict[str, Any]) -> bytes:
    """The request as the response cache (which keys on the body's bytes) should see it: the
    same for a hash-only request and the one that registered the text."""
    out: dict[str, Any] = {"query": payload.get("query")}
    for name in ("operationName", "variables"):
        if payload.get(name) is not None:
            out[name] = payload[name]
    extensions = payload.get("extensions")
    if isinstance(extensions, dict):
        rest = {k: v for k, v in extensions.items() if k != "persistedQuery"}
        if rest:
            out["extensions"] = rest
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS)


__all__ = ["PersistedQueries", "PersistedQueryError", "PersistedQueryMiddleware", "load_allow_list",
           "sha256"]
