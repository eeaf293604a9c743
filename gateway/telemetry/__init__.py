"""OpenTelemetry traces and metrics, and Prometheus text on ``GET /metrics``.

Traces are off unless the standard variables say where to send them: ``OTEL_TRACES_EXPORTER``
(``otlp``, ``console`` or ``none``), or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; OTLP over HTTP/protobuf). The exporter itself reads the
rest (headers, timeouts, ``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME``, ...). With tracing off
no span object is ever created. Metrics are always kept for ``/metrics`` and also exported
over OTLP when ``OTEL_METRICS_EXPORTER=otlp`` or an OTLP metrics endpoint is set.

Spans: one per GraphQL operation (``query ProductStock``: kind SERVER, continuing the
caller's ``traceparent``), one per stock/master cache lookup (``retailgraph.cache`` hit, miss
or partial), one per backend HTTP call (``retailgraph.backend``; the W3C ``traceparent`` is
injected into the request), and per webhook ``webhook <source>`` with ``webhook.apply`` and
``webhook.publish`` inside. No per-field spans: Strawberry's tracing extension makes every
field async, which costs about 4x; operation-level spans cost nothing per field.

Metrics (Prometheus names): ``retailgraph_http_requests_total`` / ``..._duration_seconds``
(route, method, status), ``retailgraph_graphql_operations_total`` / ``..._duration_seconds``
(operation, type, outcome), ``retailgraph_cache_lookups_total`` (layer, source, result: the
hit ratio), ``retailgraph_backend_duration_seconds`` and ``retailgraph_backend_errors_total``
(backend), ``retailgraph_webhooks_total`` (source, result, reason), ``retailgraph_subscribers``,
``retailgraph_sync_lag_seconds`` (source: event time at the source to applied here),
``retailgraph_ratelimit_rejected_total`` and ``retailgraph_event_loop_lag_seconds`` (the
longest the event loop was late over the last 10 s: while it is late, every request on this
process waits, ``/healthz`` too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from gateway.http.asgi import is_stream_response

if TYPE_CHECKING:
    from gateway.events.envelope import Envelope
    from resolvers.types import StockView

log = logging.getLogger("retailgraph.telemetry")

SERVICE_NAME = "retailgraph"
TRACER_NAME = "retailgraph"
MAX_OPERATION_NAMES = 200
_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
_LAG_SECONDS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0]
_propagator = TraceContextTextMapPropagator()
# Set while a webhook is taken in, so applies there (not the log consumer's) measure lag.
_INTAKE: ContextVar[str | None] = ContextVar("retailgraph_intake", default=None)


class Instruments:
    """Every metric the gateway records."""

    def __init__(self, meter: Meter, observe_subscribers: Callable[[], int],
                 observe_loop_lag: Callable[[], float] = lambda: 0.0) -> None:
        self.http_requests = meter.create_counter(
            "retailgraph.http.requests", unit="{request}", description="HTTP requests served.")
        self.http_duration = meter.create_histogram(
            "retailgraph.http.duration", unit="s", description="HTTP request latency.",
            explicit_bucket_boundaries_advisory=_SECONDS)
        self.operations = meter.create_counter(
            "retailgraph.graphql.operations", unit="{operation}",
            description="GraphQL operations executed (response-cache hits are not executed).")
        self.operation_duration = meter.create_histogram(
            "retailgraph.graphql.duration", unit="s", description="GraphQL operation latency.",
            explicit_bucket_boundaries_advisory=_SECONDS)
        self.cache_lookups = meter.create_counter(
            "retailgraph.cache.lookups", unit="{lookup}",
            description="Cache lookups by layer (response, stock, master) and result.")
        self.backend_duration = meter.create_histogram(
            "retailgraph.backend.duration", unit="s", description="Backend HTTP call latency.",
            explicit_bucket_boundaries_advisory=_SECONDS)
        self.backend_errors = meter.create_counter(
            "retailgraph.backend.errors", unit="{error}",
            description="Backend calls that failed (error status or no answer).")
        self.webhooks = meter.create_counter(
            "retailgraph.webhooks", unit="{delivery}", description="Webhook deliveries.")
        self.sync_lag = meter.create_histogram(
            "retailgraph.sync.lag", unit="s",
            description="From an event at the source to its application here.",
            explicit_bucket_boundaries_advisory=_LAG_SECONDS)
        self.sync_actions = meter.create_counter(
            "retailgraph.sync.actions", unit="{action}",
            description="Sync actions finished or retried, by target and status.")
        self.sync_latency = meter.create_histogram(
            "retailgraph.sync.push.latency", unit="s",
            description="From the receipt of the event that caused a sync action to the "
                        "target's confirmation of the write.",
            explicit_bucket_boundaries_advisory=_LAG_SECONDS)
        self.rate_limited = meter.create_counter(
            "retailgraph.ratelimit.rejected", unit="{request}",
            description="Requests refused by the rate limit.")

        def subscribers(options: CallbackOptions) -> Iterator[Observation]:
            yield Observation(observe_subscribers())

        meter.create_observable_gauge(
            "retailgraph.subscribers", callbacks=[subscribers], unit="{subscriber}",
            description="Open subscriptions on this process.")

        def loop_lag(options: CallbackOptions) -> Iterator[Observation]:
            yield Observation(observe_loop_lag())

        meter.create_observable_gauge(
            "retailgraph.event_loop.lag", callbacks=[loop_lag], unit="s",
            description="The longest the event loop was late to run a timer over the last "
                        f"{LoopLag.window:g} s: every request on this process waited as long.")


class Telemetry:
    """A tracer (or none) and the meters; :func:`current` is the one in use."""

    def __init__(self, tracer_provider: TracerProvider | None = None,
                 metric_readers: Sequence[MetricReader] = (), *, prometheus: bool = True,
                 resource: Resource | None = None) -> None:
        self.tracer_provider = tracer_provider
        self.tracer = tracer_provider.get_tracer(TRACER_NAME) if tracer_provider else None
        self.registry = CollectorRegistry(auto_describe=True)
        readers = list(metric_readers)
        if prometheus:
            readers.append(PrometheusMetricReader(registry=self.registry,
                                                  scope_info_enabled=False))
        self.meter_provider = MeterProvider(
            metric_readers=readers,
            resource=resource or Resource.create({"service.name": SERVICE_NAME}))
        self.m = Instruments(self.meter_provider.get_meter(TRACER_NAME), _subscriber_count,
                             _loop_lag)
        self._names: set[str] = set()

    def operation_label(self, name: str | None) -> str:
        """Operation names are chosen by clients: keep the label set bounded."""
        if not name:
            return "anonymous"
        if name in self._names:
            return name
        if len(self._names) < MAX_OPERATION_NAMES:
            self._names.add(name)
            return name
        return "other"

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _wanted(env: Mapping[str, str], kind: str, endpoint_vars: Sequence[str]) -> list[str]:
    named = env.get(f"OTEL_{kind}_EXPORTER")
    if named is None:
        return ["otlp"] if any(env.get(v) for v in endpoint_vars) else []
    return [x.strip() for x in named.split(",") if x.strip() and x.strip() != "none"]


def from_env(environ: Mapping[str, str] | None = None) -> Telemetry:
    """Telemetry as the standard ``OTEL_*`` variables ask; tracing off unless they do."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry()
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {"service.name": SERVICE_NAME})
    if env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
        log.warning("only OTLP over http/protobuf is supported; using it")
    tracer_provider = None
    traces = _wanted(env, "TRACES", ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if traces:
        tracer_provider = TracerProvider(resource=resource)
        for name in traces:
            if name == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            elif name == "console":
                tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            else:
                log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console)", name)
    readers: list[MetricReader] = []
    for name in _wanted(env, "METRICS", ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",)):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif name != "prometheus":  # /metrics is always there
            log.warning("OTEL_METRICS_EXPORTER=%s is not supported (otlp, prometheus)", name)
    return Telemetry(tracer_provider, readers, resource=resource)


_current: Telemetry | None = None
_runtimes: list[Any] = []


def current() -> Telemetry:
    global _current
    if _current is None:
        _current = from_env()
    return _current


def configure(telemetry: Telemetry | None) -> Telemetry | None:
    """Use ``telemetry`` from now on (tests pass in-memory exporters); returns the previous
    one. ``None`` goes back to :func:`from_env` on next use."""
    global _current
    previous, _current = _current, telemetry
    return previous


def watch(runtime: Any) -> None:
    """Observe a running gateway's gauges (subscribers) until :func:`unwatch`."""
    _runtimes.append(runtime)


def unwatch(runtime: Any) -> None:
    with contextlib.suppress(ValueError):
        _runtimes.remove(runtime)


def _subscriber_count() -> int:
    total = 0
    for runtime in list(_runtimes):
        feed = getattr(runtime, "feed", None)
        total += len(getattr(feed, "subscribers", ()))
    return total


def _loop_lag() -> float:
    return max((getattr(r, "loop_lag", NO_LAG).worst() for r in list(_runtimes)), default=0.0)


class LoopLag:
    """How late the event loop runs a timer: a task sleeps ``interval`` seconds over and
    over and records how much later than asked it woke up. Anything holding the loop (a
    hostile request parsed, validated or converted without yielding) shows here, for every
    request on the process waited as long. :meth:`worst` is the largest lag of the last
    ``window`` seconds (``retailgraph_event_loop_lag_seconds``)."""

    interval = 0.1
    window = 10.0

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            woke = loop.time()
            self.samples.append((woke, max(0.0, woke - asked)))
            while self.samples[0][0] < woke - self.window:
                self.samples.popleft()

    def worst(self) -> float:
        return max((lag for _, lag in self.samples), default=0.0)


NO_LAG = LoopLag()


def trace_ids() -> tuple[str, str] | None:
    """The current trace and span id as hex, for logs."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# -- GraphQL operations -----------------------------------------------------------------------

def _operation_type(execution_context: Any) -> str:
    try:
        return str(execution_context.operation_type.value)
    except (RuntimeError, AttributeError, AssertionError):
        return "unknown"


class OperationTelemetry(SchemaExtension):
    """One span and one metric sample per operation; nothing per field."""

    def on_operation(self) -> Iterator[None]:
        t = current()
        start = time.perf_counter()
        span = None
        token = None
        if t.tracer is not None:
            request = getattr(self.execution_context.context, "request", None)
            parent = _propagator.extract(request.headers) if request is not None else None
            span = t.tracer.start_span("graphql.operation", context=parent, kind=SpanKind.SERVER)
            token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            yield
        finally:
            ec = self.execution_context
            kind = _operation_type(ec)
            name = t.operation_label(ec.operation_name)
            errors = getattr(ec.result, "errors", None) or ()
            labels = {"operation": name, "type": kind, "outcome": "error" if errors else "ok"}
            t.m.operations.add(1, labels)
            t.m.operation_duration.record(time.perf_counter() - start, labels)
            if span is not None:
                span.update_name(f"{kind} {name}")
                span.set_attribute("graphql.operation.type", kind)
                span.set_attribute("graphql.operation.name", name)
                if errors:
                    codes = sorted({str((e.extensions or {}).get("code")) for e in errors})
                    span.set_attribute("graphql.error.codes", codes)
                    if getattr(ec.result, "data", None) is None:
                        span.set_status(Status(StatusCode.ERROR, codes[0]))
                span.end()
            if token is not None:
                otel_context.detach(token)


# -- cache lookups and backend calls ----------------------------------------------------------

class CacheLookup:
    __slots__ = ("layer", "requested", "source", "span")

    def __init__(self, span: Any, source: str, layer: str, requested: int) -> None:
        self.span = span
        self.source = source
        self.layer = layer
        self.requested = requested

    def hits(self, hits: int) -> None:
        misses = max(0, self.requested - hits)
        add = current().m.cache_lookups.add
        if hits:
            add(hits, {"layer": self.layer, "source": self.source, "result": "hit"})
        if misses:
            add(misses, {"layer": self.layer, "source": self.source, "result": "miss"})
        if self.span is not None:
            self.span.set_attribute("retailgraph.cache",
                                    "hit" if not misses else "miss" if not hits else "partial")
            self.span.set_attribute("retailgraph.cache.hits", hits)
            self.span.set_attribute("retailgraph.cache.misses", misses)


@contextlib.contextmanager
def cache_lookup(source: str, requested: int, layer: str = "stock") -> Iterator[CacheLookup]:
    """A read through the Redis cache in front of ``source``; call ``.hits(n)`` when known."""
    tracer = current().tracer
    if tracer is None:
        yield CacheLookup(None, source, layer, requested)
        return
    with tracer.start_as_current_span(
            f"{layer} {source}", attributes={"retailgraph.backend": source,
                                             "retailgraph.cache.layer": layer,
                                             "retailgraph.cache.requested": requested}) as span:
        yield CacheLookup(span, source, layer, requested)


class TracedTransport(httpx.AsyncBaseTransport):
    """Wraps a backend's transport: a CLIENT span and latency/error metrics per call, and the
    W3C ``traceparent`` header so the backend can continue the trace."""

    def __init__(self, inner: httpx.AsyncBaseTransport, backend: str) -> None:
        self.inner = inner
        self.backend = backend

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t = current()
        start = time.perf_counter()
        span = None
        if t.tracer is not None:
            span = t.tracer.start_span(
                f"{request.method} {self.backend}", kind=SpanKind.CLIENT, attributes={
                    "retailgraph.backend": self.backend, "retailgraph.cache": "miss",
                    "http.request.method": request.method, "url.path": request.url.path,
                    "server.address": request.url.host})
            _propagator.inject(request.headers, context=trace.set_span_in_context(span))
        outcome = "error"
        try:
            response = await self.inner.handle_async_request(request)
        except Exception as exc:
            outcome = type(exc).__name__
            if span is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, outcome))
            raise
        else:
            outcome = f"{response.status_code // 100}xx"
            if span is not None:
                span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            return response
        finally:
            labels = {"backend": self.backend, "method": request.method, "status": outcome}
            t.m.backend_duration.record(time.perf_counter() - start, labels)
            if not outcome[0].isdigit() or outcome[0] in "45":
                t.m.backend_errors.add(1, {"backend": self.backend, "kind": outcome})
            if span is not None:
                span.end()

    async def aclose(self) -> None:
        await self.inner.aclose()


class ResolverTelemetry:
    """The resolvers' :class:`resolvers.abc.Observer`: cache lookups and backend calls traced
    and counted by the :func:`current` telemetry."""

    def cache_lookup(self, source: str, requested: int,
                     layer: str = "stock") -> contextlib.AbstractContextManager[CacheLookup]:
        return cache_lookup(source, requested, layer)

    def backend_transport(self, inner: httpx.AsyncBaseTransport,
                          backend: str) -> httpx.AsyncBaseTransport:
        return TracedTransport(inner, backend)


# -- webhooks ---------------------------------------------------------------------------------

def _webhook_outcome(response: Response) -> tuple[str, str]:
    try:
        body = orjson.loads(bytes(response.body))
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    if response.status_code < 300:
        status = str(body.get("status", "accepted")).replace("-", "_")
        return (status if status in ("accepted", "duplicate", "dead_lettered")
                else "accepted"), ""
    reason = str(body.get("reason", ""))[:40] or str(response.status_code)
    return ("unavailable" if response.status_code >= 500 else "rejected"), reason


async def traced_webhook(request: Request, handler: Callable[[Request], Awaitable[Response]],
                         known: Container[str]) -> Response:
    """Run the webhook intake under a ``webhook <source>`` span and count the outcome."""
    backend = request.path_params.get("backend", "")
    source = backend if backend in known else "unknown"
    t = current()
    token = _INTAKE.set(source)
    try:
        if t.tracer is None:
            response = await handler(request)
        else:
            with t.tracer.start_as_current_span(
                    f"webhook {source}", kind=SpanKind.SERVER,
                    context=_propagator.extract(request.headers),
                    attributes={"retailgraph.webhook.source": source}) as span:
                response = await handler(request)
                result, reason = _webhook_outcome(response)
                span.set_attribute("http.response.status_code", response.status_code)
                span.set_attribute("retailgraph.webhook.result", result)
                if response.status_code >= 500:
                    span.set_status(Status(StatusCode.ERROR, reason))
    finally:
        _INTAKE.reset(token)
    result, reason = _webhook_outcome(response)
    t.m.webhooks.add(1, {"source": source, "result": result, "reason": reason})
    return response


class ApplierTelemetry:
    """The applier's telemetry (a ``gateway.events.applier.ApplierObserver``): ``apply`` and
    ``publish`` traced inside a webhook's span (the log consumer's re-applies start no traces
    of their own), and the sync lag of events applied at intake."""

    @contextlib.contextmanager
    def applying(self, entry_id: str, envelope: Envelope) -> Iterator[None]:
        t = current()
        if _INTAKE.get() is not None:
            lag = (datetime.now(UTC) - envelope.occurred_at).total_seconds()
            t.m.sync_lag.record(max(0.0, lag), {"source": envelope.source})
        if t.tracer is None or not trace.get_current_span().is_recording():
            yield
            return
        with t.tracer.start_as_current_span("webhook.apply", attributes={
                "retailgraph.event.kind": str(envelope.kind.value),
                "retailgraph.event.source": envelope.source,
                "retailgraph.event.id": entry_id}):
            yield

    @contextlib.contextmanager
    def publishing(self, entry_id: str) -> Iterator[None]:
        tracer = current().tracer
        if tracer is None or not trace.get_current_span().is_recording():
            yield
            return
        with tracer.start_as_current_span("webhook.publish",
                                          attributes={"retailgraph.event.id": entry_id}):
            yield

    async def published(self, entry_id: str, envelope: Envelope,
                        cell: StockView | None) -> None:
        pass


# -- HTTP -------------------------------------------------------------------------------------

def _route(path: str) -> str:
    if path == "/graphql":
        return "graphql"
    if path.startswith("/webhooks/"):
        return "webhooks"
    return {"/healthz": "healthz", "/metrics": "metrics"}.get(path, "other")


class HttpMetrics:
    """Counts and times every HTTP request. A streamed answer (an SSE or multipart
    subscription: gateway/http/streams.py) lasts as long as its subscription, so it is counted
    under its own route, ``graphql_stream``, not among the requests it would skew, and it is
    recorded when the stream ends (also when the client goes away)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        streamed = False

        async def observe(message: Message) -> None:
            nonlocal status, streamed
            if message["type"] == "http.response.start":
                status = message["status"]
                streamed = is_stream_response(message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            t = current()
            route = _route(scope["path"])
            if streamed:
                route += "_stream"
            labels = {"route": route, "method": scope["method"], "status": str(status)}
            t.m.http_requests.add(1, labels)
            t.m.http_duration.record(time.perf_counter() - start, labels)


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: Prometheus text exposition."""
    return Response(current().render(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["ApplierTelemetry", "HttpMetrics", "LoopLag", "OperationTelemetry", "ResolverTelemetry",
           "Telemetry", "TracedTransport", "cache_lookup", "configure", "current", "from_env",
           "metrics_endpoint", "trace_ids", "traced_webhook", "unwatch", "watch"]
