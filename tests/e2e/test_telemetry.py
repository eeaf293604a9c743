"""Telemetry: the spans and metrics a query and a webhook produce (in-memory exporter and
metric reader against a running stack), trace context reaching the backends over HTTP, OTLP
export to a collector, tracing off by default, and JSON logs with trace ids and no secrets."""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from strawberry.extensions import SchemaExtension

from gateway import telemetry
from gateway.telemetry import logs
from resolvers.connectors.http import BackendClient
from resolvers.connectors.http import auth_headers as backend_headers
from resolvers.settings import BackendSettings
from tests.support import Stack, serve

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
STOCK = "query ProductStock($sku: ID!) { product(sku: $sku) { stock { onHand } } }"
AGAIN = "query StockAgain($sku: ID!) { product(sku: $sku) { stock { available } } }"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def metrics() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture(scope="module")
def traced(redis_server_url: str, spans: InMemorySpanExporter,
           metrics: InMemoryMetricReader) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    previous = telemetry.configure(telemetry.Telemetry(provider, [metrics]))
    try:
        with Stack(redis_server_url) as stack:
            yield stack
    finally:
        telemetry.configure(previous)


def trace_of(spans: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]


def attr(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {}).get(name)


def points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    data = reader.get_metrics_data()
    out = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    out += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
    return out


def test_a_query_makes_one_operation_span_with_backend_and_cache_spans(
        traced: Stack, spans: InMemorySpanExporter) -> None:
    sku = traced.world.items[5].sku
    response = httpx.post(f"{traced.url}/graphql", timeout=30,
                          json={"query": STOCK, "variables": {"sku": sku}},
                          headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert "errors" not in response.json()
    trace = trace_of(spans, int(CLIENT_TRACE, 16))
    (operation,) = [s for s in trace if s.name == "query ProductStock"]
    assert operation.kind is SpanKind.SERVER
    assert operation.parent is not None
    assert operation.parent.span_id == int(CLIENT_SPAN, 16)  # the caller's trace goes on
    assert attr(operation, "graphql.operation.name") == "ProductStock"
    by_id = {s.context.span_id: s for s in trace}

    def under_operation(span: ReadableSpan) -> bool:
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            if span is operation:
                return True
        return False

    lookups = {s.name: s for s in trace if s.name.startswith("stock ")}
    assert set(lookups) == {"stock pos", "stock wms"}
    for name, lookup in lookups.items():
        assert under_operation(lookup)
        assert attr(lookup, "retailgraph.backend") == name.split()[1]
        assert attr(lookup, "retailgraph.cache") == "miss"
    calls = [s for s in trace if s.kind is SpanKind.CLIENT]
    assert {attr(s, "retailgraph.backend") for s in calls} >= {"pos", "wms", "erp"}
    for call in calls:
        assert under_operation(call)
        assert attr(call, "http.response.status_code") == 200
    pos_call = next(s for s in calls if attr(s, "retailgraph.backend") == "pos")
    assert pos_call.parent is not None
    assert by_id[pos_call.parent.span_id].name == "stock pos"
    # Read again (another shape, so not the response cache): served from the stock cache.
    again = httpx.post(f"{traced.url}/graphql", timeout=30,
                       json={"query": AGAIN, "variables": {"sku": sku}})
    assert "errors" not in again.json()
    (second,) = [s for s in spans.get_finished_spans() if s.name == "query StockAgain"]
    retry = trace_of(spans, second.context.trace_id)
    assert {attr(s, "retailgraph.cache") for s in retry if s.name.startswith("stock ")} == {
        "hit"}
    assert not [s for s in retry if s.kind is SpanKind.CLIENT
                and attr(s, "retailgraph.backend") in ("pos", "wms")]


def test_trace_context_reaches_the_backend_over_http(traced: Stack) -> None:
    seen: list[str] = []

    async def echo(request: Request) -> JSONResponse:
        seen.append(request.headers.get("traceparent", ""))
        return JSONResponse({"ok": True})

    tracer = telemetry.current().tracer
    assert tracer is not None
    with serve(Starlette(routes=[Route("/echo", echo)])) as backend:
        client = BackendClient(BackendSettings(name="erp", format="erp", base_url=backend.url),
                               observer=telemetry.ResolverTelemetry())

        async def call() -> None:
            try:
                with tracer.start_as_current_span("caller") as span:
                    await client.json("GET", "/echo")
                    expected.append(format(span.get_span_context().trace_id, "032x"))
            finally:
                await client.aclose()

        expected: list[str] = []
        asyncio.run(call())
    (header,) = seen
    version, trace_id, _span_id, flags = header.split("-")
    assert (version, trace_id) == ("00", expected[0])
    assert int(flags, 16) & 1  # sampled


def test_a_webhook_is_traced_from_intake_to_apply_to_publish(
        traced: Stack, spans: InMemorySpanExporter, metrics: InMemoryMetricReader) -> None:
    world = traced.world
    i = next(n for n in range(20, 60) if world.store_counts(n, 0)[0] >= 2)
    backend = traced.settings.backends["pos"]
    with httpx.Client(base_url=backend.base_url, headers=backend_headers(backend),
                      timeout=30) as pos:
        sold = pos.post("/v2/inventory/changes/batch-create", json={
            "idempotency_key": str(uuid.uuid4()), "changes": [{
                "type": "ADJUSTMENT", "adjustment": {
                    "catalog_object_id": world.items[i].square_variation_id,
                    "location_id": world.stores[0].square_id, "from_state": "IN_STOCK",
                    "to_state": "SOLD", "quantity": "1"}}]})
        assert sold.status_code == 200
    for _ in range(500):
        intake = [s for s in spans.get_finished_spans() if s.name == "webhook pos"]
        if intake:
            break
        time.sleep(0.02)
    (webhook,) = intake
    assert webhook.kind is SpanKind.SERVER
    assert attr(webhook, "retailgraph.webhook.result") == "accepted"
    inside = trace_of(spans, webhook.context.trace_id)
    (apply,) = [s for s in inside if s.name == "webhook.apply"]
    (publish,) = [s for s in inside if s.name == "webhook.publish"]
    assert apply.parent is not None
    assert apply.parent.span_id == webhook.context.span_id
    assert publish.parent is not None
    assert publish.parent.span_id == apply.context.span_id
    assert attr(apply, "retailgraph.event.source") == "pos"
    # Metrics of the same webhook.
    assert any(a == {"source": "pos", "result": "accepted", "reason": ""}
               for a, _ in points(metrics, "retailgraph.webhooks"))
    assert any(a == {"source": "pos"} and p.count >= 1
               for a, p in points(metrics, "retailgraph.sync.lag"))


def test_metrics_cover_requests_operations_cache_and_backends(
        traced: Stack, metrics: InMemoryMetricReader) -> None:
    sku = traced.world.items[6].sku
    for _ in range(2):
        httpx.post(f"{traced.url}/graphql", json={"query": STOCK, "variables": {"sku": sku}},
                   timeout=30)
    httpx.post(f"{traced.url}/webhooks/nobody", content=b"{}", timeout=30)
    operations = points(metrics, "retailgraph.graphql.operations")
    assert any(a == {"operation": "ProductStock", "type": "query", "outcome": "ok"}
               and p.value >= 1 for a, p in operations)
    assert any(a["operation"] == "ProductStock"
               for a, _ in points(metrics, "retailgraph.graphql.duration"))
    backend = points(metrics, "retailgraph.backend.duration")
    assert {a["backend"] for a, _ in backend} >= {"pos", "wms", "erp"}
    lookups = {(a["layer"], a["result"]) for a, _ in points(metrics, "retailgraph.cache.lookups")}
    assert {("stock", "miss"), ("stock", "hit")} <= lookups
    assert ("response", "miss") in lookups
    requests = points(metrics, "retailgraph.http.requests")
    assert any(a["route"] == "graphql" and a["status"] == "200" for a, _ in requests)
    assert any(a == {"source": "unknown", "result": "rejected", "reason": "unknown_backend"}
               for a, _ in points(metrics, "retailgraph.webhooks"))
    (subscribers,) = points(metrics, "retailgraph.subscribers")
    assert subscribers[1].value == 0
    text = httpx.get(f"{traced.url}/metrics", timeout=10)
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    for name in ("retailgraph_http_requests_total", "retailgraph_graphql_operations_total",
                 "retailgraph_backend_duration_seconds_bucket", "retailgraph_cache_lookups_total",
                 "retailgraph_webhooks_total", "retailgraph_subscribers"):
        assert name in text.text, name
    assert 'operation="ProductStock"' in text.text


def test_tracing_is_off_unless_configured() -> None:
    assert telemetry.from_env({}).tracer is None
    assert telemetry.from_env({"OTEL_TRACES_EXPORTER": "none",
                               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}).tracer is None
    assert telemetry.from_env({"OTEL_SDK_DISABLED": "true",
                               "OTEL_TRACES_EXPORTER": "otlp"}).tracer is None
    # Strawberry's tracing extension wraps every field (and makes it async); ours does not.
    assert telemetry.OperationTelemetry.resolve is SchemaExtension.resolve


def test_otlp_export_to_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    received: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/metrics": []}

    async def collect(request: Request) -> Response:
        assert request.headers["content-type"] == "application/x-protobuf"
        received[request.url.path].append(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(routes=[Route(path, collect, methods=["POST"]) for path in received])
    with serve(app) as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "retailgraph-test")
        t = telemetry.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                                "OTEL_METRICS_EXPORTER": "otlp",
                                "OTEL_SERVICE_NAME": "retailgraph-test"})
        assert t.tracer is not None
        with t.tracer.start_as_current_span("exported"):
            t.m.webhooks.add(1, {"source": "pos", "result": "accepted", "reason": ""})
        t.shutdown()
    (traces,) = received["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(traces)
    resource = request.resource_spans[0]
    names = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert names["service.name"] == "retailgraph-test"
    assert [s.name for s in resource.scope_spans[0].spans] == ["exported"]
    assert received["/v1/metrics"]
    exported = {m.name for body in received["/v1/metrics"]
                for r in ExportMetricsServiceRequest.FromString(body).resource_metrics
                for s in r.scope_metrics for m in s.metrics}
    assert "retailgraph.webhooks" in exported


def test_operation_names_are_a_bounded_label_set() -> None:
    t = telemetry.Telemetry(prometheus=False)
    labels = {t.operation_label(f"Op{i}") for i in range(telemetry.MAX_OPERATION_NAMES + 50)}
    assert len(labels) == telemetry.MAX_OPERATION_NAMES + 1
    assert "other" in labels
    assert t.operation_label(None) == "anonymous"
    assert t.operation_label("Op0") == "Op0"


def test_json_logs_carry_trace_ids_and_no_secrets() -> None:
    logs.protect(["configured-webhook-secret-42"])
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.Redactor())
    logger = logging.getLogger("retailgraph.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    provider = TracerProvider()
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    try:
        with provider.get_tracer("t").start_as_current_span("op") as span:
            logger.warning("auth header %s from %s", f"Bearer {jwt_like}", "10.0.0.1",
                           extra={"backend": "pos"})
            trace_id = format(span.get_span_context().trace_id, "032x")
        try:
            raise ValueError("token=abc123secret and configured-webhook-secret-42")
        except ValueError:
            logger.exception("failed with signature %s",
                             "v1,K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = (orjson.loads(line) for line in buffer.getvalue().splitlines())
    assert first["trace_id"] == trace_id
    assert len(first["span_id"]) == 16
    assert first["level"] == "WARNING"
    assert first["backend"] == "pos"
    assert first["message"] == "auth header Bearer [REDACTED] from 10.0.0.1"
    text = buffer.getvalue()
    for secret in (jwt_like, "abc123secret", "configured-webhook-secret-42", "K7gNU3sdo"):
        assert secret not in text, secret
    assert "ValueError" in second["exception"]
    assert "trace_id" not in second


def _lag_in(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("retailgraph_event_loop_lag_seconds"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("retailgraph_event_loop_lag_seconds is not in /metrics")


def test_event_loop_lag_is_measured(traced: Stack, metrics: InMemoryMetricReader) -> None:
    """A loop held for 0.6 s (what a hostile request did before issue 11) shows in
    retailgraph_event_loop_lag_seconds, on /metrics and through OpenTelemetry."""
    server = traced.gateways[0]
    assert server.loop is not None
    calm = _lag_in(httpx.get(f"{traced.url}/metrics", timeout=10).text)
    assert 0 <= calm < 0.5
    server.loop.call_soon_threadsafe(time.sleep, 0.6)  # hold the gateway's event loop
    deadline = time.monotonic() + 10
    while _lag_in(httpx.get(f"{traced.url}/metrics", timeout=10).text) < 0.5:
        assert time.monotonic() < deadline, "the held loop never showed as lag"
        time.sleep(0.1)
    ((_, point),) = points(metrics, "retailgraph.event_loop.lag")
    assert point.value >= 0.5
