"""``POST /webhooks/{backend}``: verify, normalise, log durably, apply, then acknowledge.

Answers, and what each means to the sender:

- 200 ``accepted`` / ``duplicate``: logged (now or before) and applied; every later query
  on every replica sees it. 202 ``dead-lettered``: logged to the DLQ, stop retrying.
- 401 wrong or missing signature, or a signed timestamp outside the tolerance (replay);
  400 malformed payload (the message names the problem); 413 body over the limit;
  404 unknown backend; 503 the event could not be recorded (Redis down): retry later.
  None of these changes any state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.config import Settings
from gateway.events.applier import Applier
from gateway.events.envelope import Envelope
from gateway.events.log import DeadLetter, EventLog
from gateway.http import limits
from gateway.http.asgi import receive_body
from gateway.intake import signatures
from gateway.intake.normalize import NORMALIZERS, Delivery, Malformed, Unappliable
from resolvers.errors import RetailgraphError
from resolvers.graph import RetailGraph
from resolvers.settings import BackendSettings

log = logging.getLogger("retailgraph.webhooks")


class Rejected(RetailgraphError):
    """A delivery we refuse (answered ``status``); ``reason`` is a short label for metrics."""

    code = "WEBHOOK_REJECTED"

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class IntakeStats:
    """Per-backend counters: accepted, duplicates, dead letters, rejects by reason."""

    accepted: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    rejected: dict[tuple[str, str], int] = field(default_factory=dict)

    def bump(self, counter: dict[Any, int], key: Any) -> None:
        counter[key] = counter.get(key, 0) + 1


def verify(backend: BackendSettings, body: bytes, headers: dict[str, str], url: str,
           tolerance: int, now: float | None = None) -> None:
    """Check the vendor's signature on the raw body; raise :class:`Rejected` (401) if wrong."""
    secrets = [s for s in (backend.webhook_secret, backend.webhook_previous_secret) if s]
    if not secrets:
        raise Rejected(401, "no_secret", f"no webhook secret is configured for {backend.name}")

    def need(name: str) -> str:
        value = headers.get(name)
        if not value:
            raise Rejected(401, "missing_signature", f"missing {name} header")
        return value

    if backend.format == "shopify":
        ok = signatures.shopify_verify(secrets, body, need("x-shopify-hmac-sha256"))
    elif backend.format == "square":
        ok = signatures.square_verify(secrets, backend.notification_url or url, body,
                                      need("x-square-hmacsha256-signature"))
    else:
        msg_id, signature = need("webhook-id"), need("webhook-signature")
        try:
            stamp = int(need("webhook-timestamp"))
        except ValueError as exc:
            raise Rejected(401, "bad_timestamp", "webhook-timestamp is not an integer") from exc
        if abs((now or time.time()) - stamp) > tolerance:
            raise Rejected(401, "replay", f"webhook-timestamp is more than {tolerance}s away "
                                          "from now (replayed or delayed delivery)")
        ok = signatures.standard_verify(secrets, msg_id, stamp, body, signature)
    if not ok:
        raise Rejected(401, "bad_signature", "signature does not match the body")


async def read_body(request: Request, limit: int) -> bytes:
    """The delivery's raw body (the signatures cover its exact bytes), at most ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, "too_large", f"body of {declared} bytes is over the {limit}-byte limit")
    chunks, state = await receive_body(request.receive, limit)
    if state == "over":
        raise Rejected(413, "too_large", f"body is over the {limit}-byte limit")
    if state == "gone":
        raise Rejected(400, "disconnected", "client disconnected before sending the body")
    return b"".join(chunks)


class SourceHealth(Protocol):
    """Per-source counters and gap detection (``gateway.reconcile.synchealth.SyncHealth``)."""

    async def received(self, backend: BackendSettings, payload: Any,
                       envelopes: Sequence[Envelope]) -> None: ...

    async def rejected(self, source: str, reason: str) -> None: ...

    async def dead_lettered(self, source: str) -> None: ...


class WebhookIntake:
    """The Starlette endpoint; one instance per app."""

    def __init__(self, settings: Settings, graph: RetailGraph, events: EventLog,
                 applier: Applier, health: SourceHealth) -> None:
        self.settings = settings
        self.graph = graph
        self.events = events
        self.applier = applier
        self.stats = IntakeStats()
        # Shared per-source counters and gap detection.
        self.health = health

    async def __call__(self, request: Request) -> Response:
        name = request.path_params["backend"]
        try:
            backend = self.settings.backends.get(name)
            if backend is None:
                raise Rejected(404, "unknown_backend", f"unknown backend {name!r}")
            return await self._accept(backend, request)
        except Rejected as exc:
            self.stats.bump(self.stats.rejected, (name, exc.reason))
            await self.health.rejected(name, exc.reason)
            log.info("webhook for %s rejected (%s): %s", name, exc.status, exc.message)
            return JSONResponse({"error": exc.message, "reason": exc.reason},
                                status_code=exc.status)

    async def _accept(self, backend: BackendSettings, request: Request) -> Response:
        body = await read_body(request, self.settings.max_body_bytes)
        headers = {k.lower(): v for k, v in request.headers.items()}
        # Only Square signs the URL; building it costs, so only for Square.
        url = str(request.url) if backend.format == "square" else ""
        verify(backend, body, headers, url, self.settings.webhook_tolerance_seconds)
        try:
            payload = limits.loads(body)
        except limits.NestedTooDeep as exc:
            raise Rejected(400, "malformed", f"body is {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise Rejected(400, "malformed", f"body is not valid JSON: {exc}") from exc
        delivery = Delivery(backend=backend, body=body, payload=payload, headers=headers,
                            received_at=datetime.now(UTC),
                            max_skew_seconds=self.settings.max_clock_skew_seconds)
        status, result = await self.ingest(delivery)
        return JSONResponse(result, status_code=status)

    async def ingest(self, delivery: Delivery) -> tuple[int, dict[str, Any]]:
        """Normalise, log durably and apply a verified delivery: the one path for live
        webhooks and for dead letters being replayed."""
        backend = delivery.backend
        catalog = self.graph.catalog
        if catalog is None:
            raise Rejected(503, "not_ready", "identity catalog not loaded yet; retry later")
        try:
            dedupe_id, envelopes = NORMALIZERS[backend.format](delivery, catalog.identity)
        except Malformed as exc:
            raise Rejected(400, "malformed", str(exc)) from exc
        except Unappliable as exc:
            return await self._dead_letter(backend, delivery, dict(delivery.headers), str(exc))
        if not dedupe_id:
            raise Rejected(400, "malformed", "delivery carries no event or delivery id")
        try:
            appended = await self.events.append(backend.name, dedupe_id, envelopes)
        except (RedisError, OSError) as exc:
            raise Rejected(503, "log_unavailable",
                           f"event log unavailable, retry later ({type(exc).__name__})") from exc
        if appended.new:
            entries = list(zip(appended.ids, envelopes, strict=True))
            self.stats.bump(self.stats.accepted, backend.name)
            # before applying: gaps show against the cache
            await self.health.received(backend, delivery.payload, envelopes)
        else:
            entries = await self._logged(appended.ids)
            self.stats.bump(self.stats.duplicates, backend.name)
        try:
            await self.applier.apply_all(entries)
        except (RedisError, OSError) as exc:
            # Logged durably and still pending (a sweeper applies it once Redis answers), but
            # not yet visible: no 2xx, so the sender retries, and the retry, a duplicate,
            # applies it again before it is acknowledged.
            log.warning("event %s logged but not applied yet: %s", dedupe_id, exc)
            raise Rejected(503, "apply_failed",
                           f"event logged but not yet applied, retry later "
                           f"({type(exc).__name__})") from exc
        return 200, {"status": "accepted" if appended.new else "duplicate",
                     "events": list(appended.ids)}

    async def replay_dead_letters(self) -> list[tuple[DeadLetter, str]]:
        """Re-apply every dead letter that now can be (e.g. after fixing a mapping).

        Returns each letter with its outcome; replayed letters leave the DLQ.
        """
        out = []
        for letter in await self.events.dead_letters():
            backend = self.settings.backends.get(letter.source)
            if backend is None:
                out.append((letter, f"kept: backend {letter.source!r} is not configured"))
                continue
            delivery = Delivery(backend=backend, body=letter.body,
                                payload=orjson.loads(letter.body), headers=letter.headers,
                                received_at=datetime.fromisoformat(letter.received_at),
                                max_skew_seconds=self.settings.max_clock_skew_seconds)
            try:
                status, result = await self.ingest(delivery)
            except Rejected as exc:
                out.append((letter, f"kept: {exc.message}"))
                continue
            if status == 200:
                await self.events.forget_dead_letter(letter)
                out.append((letter, f"replayed: {result['status']}"))
            else:
                out.append((letter, f"kept: {result.get('reason', 'still unappliable')}"))
        return out

    async def _logged(self, ids: tuple[str, ...]) -> list[tuple[str, Envelope]]:
        out = []
        for entry_id in ids:
            for found_id, envelope in await self.events.read_range(entry_id, entry_id):
                out.append((found_id, envelope))
        return out

    async def _dead_letter(self, backend: BackendSettings, delivery: Delivery,
                           headers: dict[str, str], reason: str) -> tuple[int, dict[str, Any]]:
        kept = {k: v for k, v in headers.items() if "signature" not in k and "hmac" not in k}
        dedupe_id = (headers.get("webhook-id") or headers.get("x-shopify-webhook-id")
                     or delivery.raw_ref)
        try:
            await self.events.dead_letter(backend.name, dedupe_id, reason,
                                          headers.get("x-shopify-topic", ""),
                                          delivery.received_at, delivery.body, kept)
        except (RedisError, OSError) as exc:
            raise Rejected(503, "log_unavailable",
                           f"event log unavailable, retry later ({type(exc).__name__})") from exc
        self.stats.bump(self.stats.dead_letters, backend.name)
        await self.health.dead_lettered(backend.name)
        log.warning("webhook for %s dead-lettered: %s", backend.name, reason)
        return 202, {"status": "dead-lettered", "reason": reason}
