"""The one configuration object: a TOML file, then ``RETAILGRAPH_*`` environment overrides.

Everything that runs (gateway, demo, simulators, CLI) reads a :class:`Settings`; the demo builds
one in memory and goes through the same overrides, so the simulators sign webhooks with exactly
the secrets the gateway verifies.

Environment overrides:
- ``RETAILGRAPH_<FIELD>`` for a top-level field (``RETAILGRAPH_REDIS_URL``, ``RETAILGRAPH_PORT``).
- ``RETAILGRAPH_<NAME>_<FIELD>`` for a field of backend NAME
  (``RETAILGRAPH_POS_WEBHOOK_SECRET``, ``RETAILGRAPH_WMS_BASE_URL``, ``RETAILGRAPH_ERP_TOKEN``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strawberry.http.websocket_origin import normalize_allowed_origins

from resolvers.errors import RetailgraphError
from resolvers.settings import BACKEND_FORMATS, BackendFormat, BackendSettings

ENV_PREFIX = "RETAILGRAPH_"
EVENT_LOOPS = ("uvloop", "asyncio")


class ConfigError(RetailgraphError, ValueError):
    """The configuration is incomplete or contradictory; the message names the setting."""

    code = "CONFIG_ERROR"


@dataclass(slots=True)
class SyncSettings:
    """``[sync]``: what retailgraph pushes back to the channels (gateway/sync/).

    The rules themselves live in :mod:`gateway.sync.rules`; these are their inputs.
    Env: ``RETAILGRAPH_SYNC_<FIELD>`` (``RETAILGRAPH_SYNC_ENABLED=false``).
    """

    # Push the systems of record's truth to the web shop and the POS catalog.
    enabled: bool = False
    # Units held back from the online channel at every location it sells from (on top of
    # the item's safety stock).
    buffer: int = 0
    # Per location: its own online buffer instead of ``buffer`` ({"WH01" = 5}).
    location_buffers: dict[str, int] = field(default_factory=dict)
    # Stores that ship or hold for collection: their stock is sold online too (the shop must
    # have them as locations). Warehouses always do, unless listed in exclude_locations.
    online_stores: list[str] = field(default_factory=list)
    exclude_locations: list[str] = field(default_factory=list)
    # Item master from the ERP: the name to the shop (the online price is the shop's) and the
    # POS catalog.
    items: bool = True
    # The store shelf price is the POS's (the merge table): an ERP item update renames the
    # POS catalog item but leaves its price, unless the ERP's list price is the shelf price.
    pos_price_from_erp: bool = False
    # Attempts of one action before it goes to the dead-letter list (retailgraph sync dlq).
    max_attempts: int = 20
    # Retry backoff: first delay, doubling up to the cap, with full jitter; a target's
    # Retry-After / THROTTLED delay is honoured when longer.
    retry_base_seconds: float = 0.25
    retry_cap_seconds: float = 30.0
    # One replica works on a target cell at a time, holding a Redis lease this long (renewed
    # while it works); a replica killed mid-push leaves it to expire.
    lease_seconds: float = 5.0
    # Cells pushed at once per replica (the shop takes their writes in shared calls).
    concurrency: int = 64


@dataclass(slots=True)
class Settings:
    """Gateway-wide settings."""

    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = ""
    # Deadlines of one Redis command, waiting for a pooled connection included. Read: what a
    # request can do without (cache lookups and fills, cached responses, persisted queries,
    # rate-limit tokens), answered from the backends instead (freshness cache
    # "unavailable"). Write: everything else; a webhook whose write misses it gets 503 (the
    # sender retries). The change feeds' blocking reads get their block time on top.
    redis_read_timeout_ms: int = 250
    redis_write_timeout_ms: int = 2000
    # Concurrent commands share round trips (resolvers/store/client.py, CommandBatcher); off
    # by default until it has run through more of the suite under load (see
    # tests/benchmarks/README.md, webhook intake).
    redis_batching: bool = False
    backends: dict[str, BackendSettings] = field(default_factory=dict)
    # Identifiers the systems' own catalogs cannot resolve: {"system:kind:value": "unified id"}.
    mapping_file: str = ""
    max_page_size: int = 100
    max_body_bytes: int = 1_048_576
    # A POST body to /graphql or /webhooks/* must arrive within this long (else 408); at most
    # max_concurrent_bodies are read at once per process (beyond: 503 with Retry-After,
    # unless the body came whole with the headers).
    body_timeout_seconds: float = 10.0
    max_concurrent_bodies: int = 64
    # The event loop each gateway process runs on: "uvloop" or "asyncio" (the standard one);
    # measured side by side in tests/benchmarks/README.md (webhook intake).
    event_loop: str = "asyncio"
    webhook_tolerance_seconds: int = 300
    # A delivery whose signed timestamps (the versions that order events) lie further ahead
    # of the gateway's clock than this is dead-lettered: it would outrank every later event.
    # Reconciliation repairs cached cells whose version lies further ahead than this.
    max_clock_skew_seconds: float = 300.0
    # false: every read goes to the backends and no response is cached (webhooks are still
    # logged and applied). For comparison and debugging.
    cache: bool = True
    # How often backend health is probed (down backends' cached values are served as stale).
    probe_interval_seconds: float = 2.0
    # How long stock changes stay replayable by cursor (subscriptions, stockEvents).
    change_retention_seconds: int = 86_400
    # A committed reservation keeps holding its units until the system of record shows the
    # order, or at the latest this long after the commit (or its own expiry, if later).
    reservation_commit_hold_seconds: int = 3600
    # Changes buffered per subscriber before it is switched to conflation (latest per cell).
    subscriber_buffer: int = 1000
    # Server keep-alive for WebSocket clients (protocol pings; legacy graphql-ws also "ka").
    ws_keepalive_seconds: float = 15.0
    # A WebSocket that has not sent connection_init by then is closed (4408), on both protocols.
    ws_init_timeout_seconds: float = 60.0
    # permessage-deflate on WebSockets (RFC 7692) when a client offers it. Off by default: it
    # roughly doubles the memory of an idle subscription (compressor state per socket) and costs
    # CPU per frame; turn it on for slow links carrying large results.
    ws_per_message_deflate: bool = False
    # Live subscriptions one caller (API key / JWT subject; address when auth is off) may hold
    # on one replica, across all its sockets and streams; 0 = no limit.
    max_subscriptions_per_principal: int = 200
    # Keep-alive on idle HTTP subscription streams: an SSE comment, an empty multipart part.
    stream_keepalive_seconds: float = 15.0
    # -- access (gateway/http/auth.py): auth is on as soon as any credential is configured --------
    # {name: {key = "..." | key_sha256 = "<hex>", scopes = [...], locations = [...]}};
    # env RETAILGRAPH_API_KEYS takes the same table as JSON.
    api_keys: dict[str, Any] = field(default_factory=dict)
    jwt_secret: str = ""  # HS256 shared secret (at least 32 characters)
    jwks_url: str = ""  # RS256/ES256 public keys, fetched and cached
    jwks_file: str = ""  # ... or read from a file
    jwt_audience: str = ""  # required `aud` when set
    jwt_issuer: str = ""  # required `iss` when set
    # Clock skew allowed on exp/nbf/iat; a WebSocket is closed (4403) at exp + this.
    jwt_leeway_seconds: int = 30
    # -- hostile queries (gateway/http/limits.py, ratelimit.py, persisted.py) ---------------------
    rate_limit_per_minute: int = 600  # per client, token bucket in Redis; 0 = off
    max_depth: int = 12
    max_aliases: int = 30
    max_tokens: int = 2000
    max_cost: int = 25_000
    max_batch_size: int = 10  # operations in one batched POST (a JSON array)
    introspection: bool = True
    graphiql: bool = True
    apq: bool = True  # automatic persisted queries
    allow_list_file: str = ""  # only these operations run (admins excepted)
    # -- browsers (gateway/http/cors.py): pages on these origins may use /graphql over HTTP (CORS)
    # and WebSocket; empty = same origin only; "*" = any. Env: comma-separated.
    cors_origins: list[str] = field(default_factory=list)
    # -- reconciliation (gateway/reconcile/runner.py, synchealth.py) -------------------------
    reconcile_interval_seconds: float = 0.0  # full reconciliation run every N s; 0 = off
    discrepancy_tolerance: int = 0  # units of disagreement that are not a discrepancy
    # A view changed at its source less than this long ago may still have its webhook on the
    # way: a cache behind it is LAGGING, not WRONG (it is repaired either way).
    sync_grace_seconds: float = 10.0
    # -- sync (gateway/sync/): [sync] in the TOML file ----------------------------------------
    sync: SyncSettings = field(default_factory=SyncSettings)

    def backend_for(self, fmt: BackendFormat) -> BackendSettings:
        """The backend speaking ``fmt``; each format plays one role in the merge rules."""
        for backend in self.backends.values():
            if backend.format == fmt:
                return backend
        raise ConfigError(f"no backend with format {fmt!r} is configured")

    def validate(self) -> Settings:
        missing = [f for f in BACKEND_FORMATS if all(b.format != f for b in self.backends.values())]
        if missing:
            raise ConfigError(f"backends missing for format(s): {', '.join(missing)}")
        for backend in self.backends.values():
            if backend.format not in BACKEND_FORMATS:
                raise ConfigError(
                    f"backends.{backend.name}.format: {backend.format!r} is not one of "
                    f"{', '.join(BACKEND_FORMATS)}"
                )
            if not backend.base_url:
                raise ConfigError(f"backends.{backend.name}.base_url is required")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(f"event_loop: {self.event_loop!r} is not one of "
                              f"{', '.join(EVENT_LOOPS)}")
        _check_access(self)
        browser_origins(self)
        return self


def browser_origins(settings: Settings) -> frozenset[str]:
    """``cors_origins`` as browsers send them in ``Origin`` (``https://Shop.example:443`` ->
    ``https://shop.example``); ``*`` stays ``*``."""
    if isinstance(settings.cors_origins, str) or not all(
            isinstance(origin, str) for origin in settings.cors_origins):
        raise ConfigError("cors_origins must be a list of origins (env: comma-separated)")
    normalized: set[str] = set()
    for origin in settings.cors_origins:
        try:
            normalized |= normalize_allowed_origins([origin])
        except ValueError as exc:
            raise ConfigError(f"cors_origins: {origin!r} is not an origin like "
                              "https://shop.example.com (scheme, host and optional port, no "
                              "path) or '*'") from exc
    return frozenset(normalized)


def _check_access(settings: Settings) -> None:
    """The access settings are well-formed (gateway/http/auth.py reads them)."""
    for name, entry in settings.api_keys.items():
        where = f"api_keys.{name}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a table with key, scopes and locations")
        if not isinstance(entry.get("key", entry.get("key_sha256")), str) or not (
                entry.get("key") or entry.get("key_sha256")):
            raise ConfigError(f"{where}: set key (or key_sha256, its hex SHA-256)")
        if "key" in entry and len(entry["key"]) < 16:
            raise ConfigError(f"{where}.key: use at least 16 characters")
        for listed in ("scopes", "locations"):
            value = entry.get(listed, [])
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise ConfigError(f"{where}.{listed} must be a list of strings")
        unknown = set(entry) - {"key", "key_sha256", "scopes", "locations"}
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    if settings.jwt_secret and len(settings.jwt_secret) < 32:
        raise ConfigError("jwt_secret: use at least 32 characters (HS256 needs a 256-bit key)")
    if settings.jwks_file and not Path(settings.jwks_file).is_file():
        raise ConfigError(f"jwks_file: {settings.jwks_file} not found")
    for limit in ("max_depth", "max_aliases", "max_tokens", "max_cost", "max_page_size",
                  "max_batch_size"):
        if getattr(settings, limit) < 1:
            raise ConfigError(f"{limit} must be at least 1")
    if settings.stream_keepalive_seconds <= 0:
        raise ConfigError("stream_keepalive_seconds must be more than 0")
    if settings.body_timeout_seconds <= 0:
        raise ConfigError("body_timeout_seconds must be more than 0")
    if settings.max_concurrent_bodies < 1:
        raise ConfigError("max_concurrent_bodies must be at least 1")
    for deadline in ("redis_read_timeout_ms", "redis_write_timeout_ms"):
        if getattr(settings, deadline) < 1:
            raise ConfigError(f"{deadline} must be at least 1 (milliseconds)")
    if settings.rate_limit_per_minute < 0:
        raise ConfigError("rate_limit_per_minute must be 0 (off) or more")
    if settings.max_subscriptions_per_principal < 0:
        raise ConfigError("max_subscriptions_per_principal must be 0 (no limit) or more")
    if settings.jwt_leeway_seconds < 0:
        raise ConfigError("jwt_leeway_seconds must be 0 or more")
    if settings.ws_init_timeout_seconds <= 0:
        raise ConfigError("ws_init_timeout_seconds must be more than 0")
    if not settings.max_clock_skew_seconds >= 0:  # also refuses NaN
        raise ConfigError("max_clock_skew_seconds must be 0 or more")
    _check_sync(settings.sync)


def _check_sync(sync: SyncSettings) -> None:
    if sync.buffer < 0:
        raise ConfigError("sync.buffer must be 0 or more")
    for loc, units in sync.location_buffers.items():
        if not isinstance(units, int) or isinstance(units, bool) or units < 0:
            raise ConfigError(f"sync.location_buffers.{loc} must be a whole number, 0 or more")
    for listed in ("online_stores", "exclude_locations"):
        value = getattr(sync, listed)
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"sync.{listed} must be a list of location ids")
    if sync.max_attempts < 1:
        raise ConfigError("sync.max_attempts must be at least 1")
    if not sync.retry_base_seconds > 0 or not sync.retry_cap_seconds >= sync.retry_base_seconds:
        raise ConfigError("sync.retry_base_seconds must be more than 0 and at most "
                          "sync.retry_cap_seconds")
    if not sync.lease_seconds > 0:
        raise ConfigError("sync.lease_seconds must be more than 0")
    if sync.concurrency < 1:
        raise ConfigError("sync.concurrency must be at least 1")


def _coerce(value: str, target: Any, setting: str) -> Any:
    if isinstance(target, str) and target.startswith("dict["):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"{setting}: not a JSON object ({exc})") from exc
        if not isinstance(parsed, dict):
            raise ConfigError(f"{setting}: not a JSON object")
        return parsed
    if target is bool or target == "bool":
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{setting}: {value!r} is not true or false")
    if target == "list[str]":
        return [item.strip() for item in value.split(",") if item.strip()]
    try:
        if target is int or target == "int":
            return int(value)
        if target is float or target == "float":
            return float(value)
    except ValueError as exc:
        raise ConfigError(f"{setting}: {value!r} is not a number") from exc
    return value


def _field_types(cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def _apply(obj: Any, values: Mapping[str, Any], where: str) -> None:
    types = _field_types(type(obj))
    for key, value in values.items():
        if key not in types or key in ("backends", "name", "sync"):
            raise ConfigError(f"{where}{key}: unknown setting")
        if isinstance(value, str):
            value = _coerce(value, types[key], where + key)
        setattr(obj, key, value)


def apply_env(settings: Settings, environ: Mapping[str, str] | None = None) -> Settings:
    """Apply ``RETAILGRAPH_*`` overrides in place and return ``settings``."""
    env = os.environ if environ is None else environ
    top = {f: t for f, t in _field_types(Settings).items() if f not in ("backends", "sync")}
    for f, t in top.items():
        raw = env.get(ENV_PREFIX + f.upper())
        if raw is not None:
            setattr(settings, f, _coerce(raw, t, ENV_PREFIX + f.upper()))
    sync_types = _field_types(SyncSettings)
    for f, t in sync_types.items():
        var = f"{ENV_PREFIX}SYNC_{f.upper()}"
        raw = env.get(var)
        if raw is not None:
            setattr(settings.sync, f, _coerce(raw, t, var))
    backend_fields = [f for f in _field_types(BackendSettings) if f != "name"]
    for backend in settings.backends.values():
        for f in backend_fields:
            var = f"{ENV_PREFIX}{backend.name.upper()}_{f.upper()}"
            raw = env.get(var)
            if raw is not None:
                setattr(backend, f, _coerce(raw, _field_types(BackendSettings)[f], var))
    return settings


def from_mapping(data: Mapping[str, Any]) -> Settings:
    """Build settings from a parsed TOML document (``[gateway]`` and ``[backends.NAME]``)."""
    settings = Settings()
    _apply(settings, data.get("gateway", {}), "gateway.")
    for name, raw in data.get("backends", {}).items():
        if not isinstance(raw, Mapping):
            raise ConfigError(f"backends.{name} must be a table")
        if "format" not in raw or "base_url" not in raw:
            raise ConfigError(f"backends.{name} needs 'format' and 'base_url'")
        backend = BackendSettings(name=name, format=raw["format"], base_url=raw["base_url"])
        _apply(backend, {k: v for k, v in raw.items() if k not in ("format", "base_url")},
               f"backends.{name}.")
        settings.backends[name] = backend
    sync = data.get("sync", {})
    if not isinstance(sync, Mapping):
        raise ConfigError("sync must be a table")
    _apply(settings.sync, sync, "sync.")
    unknown = set(data) - {"gateway", "backends", "sync"}
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    return settings


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read a TOML config file, apply environment overrides and validate."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return apply_env(from_mapping(data), environ).validate()


DEMO_ROLES: tuple[tuple[str, BackendFormat], ...] = (
    ("pos", "square"),
    ("wms", "epcis"),
    ("erp", "erp"),
    ("commerce", "shopify"),
)


def demo_settings(host: str = "127.0.0.1", port: int = 8000,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for ``retailgraph demo``: the four simulators on PORT+1..PORT+4."""
    # Local and open by default: no rate limit (credentials come from RETAILGRAPH_* or --auth).
    settings = Settings(host=host, port=port, rate_limit_per_minute=0,
                        sync=SyncSettings(enabled=True))
    for offset, (name, fmt) in enumerate(DEMO_ROLES, start=1):
        settings.backends[name] = BackendSettings(
            name=name, format=fmt, base_url=f"http://{host}:{port + offset}",
            token=f"demo-{name}-token", webhook_secret=f"demo-{name}-webhook-secret",
        )
    return apply_env(settings, environ).validate()


def for_command(config_path: str | None, demo_port: int | None, redis_url: str | None,
                what: str) -> Settings:
    """Settings of a one-shot command (``events``, ``reconcile``) run beside a gateway: its
    config file or a running demo's port, and the Redis holding ``what``."""
    settings = load(config_path) if config_path else demo_settings(port=demo_port or 8000)
    if redis_url:
        settings.redis_url = redis_url
    if not settings.redis_url:
        raise ConfigError(f"redis_url: {what} lives in the gateway's Redis; pass --redis-url "
                          "(the demo prints it)")
    return settings
