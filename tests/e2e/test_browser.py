"""A real browser against a running gateway: GraphiQL offline, CORS, WebSocket origins.

Debian's ``chromium`` driven by Playwright (the Python package, pointed at
``/usr/bin/chromium``; it never downloads a browser). ``.ci/run`` installs chromium where it
is missing; elsewhere these tests are skipped, with the reason, when it is not installed.

- GraphiQL is served from the package: every request the page makes (scripts, styles,
  fonts, the schema, queries, the WebSocket) goes to the gateway's own 127.0.0.1 port; any
  other request is recorded and aborted, and so is any Content-Security-Policy violation or
  console error. It runs a query and a live subscription (a sale in the Square simulator,
  whose webhook reaches the gateway, shows up in GraphiQL's result pane), with the
  credential typed into its Headers tab. The screenshot of that live result is written to
  ``tests/artefacts/run/`` (git-ignored); ``tests/artefacts/graphiql-subscription.png`` is
  the one the README shows.
- A page served from a second loopback port listed in ``cors_origins`` queries over
  ``fetch`` (reading the exposed ``x-retailgraph-cache`` and RateLimit headers, and a 401)
  and subscribes over WebSocket with the graphql-ws browser client (the vendored file); the
  same page from an unlisted port is refused on both, and the log names ``cors_origins``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse
from starlette.routing import Route as StarletteRoute
from websockets.typing import Origin, Subprotocol

from gateway.config import ConfigError, Settings, apply_env, browser_origins
from gateway.http import graphiql
from tests.support import ServerThread, Stack, serve

CHROMIUM = Path("/usr/bin/chromium")
# As the machine notes prescribe: without the background-networking flags Chromium tries
# Google's hosts at every start.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTEFACTS = Path(__file__).resolve().parents[1] / "artefacts" / "run"
ROOT = Path(__file__).resolve().parents[2]
KEY = "browser-reader-key-000001"
LIMIT_PER_MINUTE = 100_000

STOCK_LEVEL = """query($sku: ID!, $loc: ID!) {
  stockLevel(sku: $sku, locationId: $loc) { available } }"""
SUBSCRIPTION = """subscription($skus: [ID!], $locs: [ID!]) {
  stockChanged(skus: $skus, locationIds: $locs) { sku locationId source
    stockLevel { available } } }"""
WITH_CURSOR = SUBSCRIPTION.replace("sku locationId", "cursor sku locationId")

ORIGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>a shop on another origin</title>
<link rel="icon" href="data:,">
<script src="/graphql-ws.min.js"></script>
<script>
window.events = [];
window.wsClosed = null;
window.wsError = null;
window.connected = false;
window.query = async (gateway, body, headers) => {
  try {
    const response = await fetch(gateway + "/graphql", {method: "POST",
      headers: Object.assign({"content-type": "application/json"}, headers),
      body: JSON.stringify(body)});
    const exposed = {};
    for (const name of ["x-retailgraph-cache", "ratelimit-limit", "ratelimit-remaining",
                        "www-authenticate"]) {
      exposed[name] = response.headers.get(name);
    }
    return {status: response.status, headers: exposed, body: await response.json()};
  } catch (error) {
    return {error: String(error)};
  }
};
// A streamed subscription over HTTP (graphql-sse or Apollo multipart), read with fetch.
window.stream = {status: null, text: "", error: null, done: false, controller: null};
window.openStream = (gateway, accept, body, headers) => {
  const controller = new AbortController();
  window.stream = {status: null, text: "", error: null, done: false, controller: controller};
  const state = window.stream;
  fetch(gateway + "/graphql", {method: "POST", signal: controller.signal,
    headers: Object.assign({"content-type": "application/json", "accept": accept}, headers),
    body: JSON.stringify(body)}).then(async (response) => {
      state.status = response.status;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const {value, done} = await reader.read();
        if (done) { state.done = true; return; }
        state.text += decoder.decode(value, {stream: true});
      }
    }).catch((error) => { state.error = String(error); });
};
window.closeStream = () => window.stream.controller.abort();
window.subscribe = (gateway, key, query, variables) => {
  const client = graphqlWs.createClient({
    url: gateway.replace(/^http/, "ws") + "/graphql",
    connectionParams: {Authorization: "Bearer " + key},
    lazy: false, retryAttempts: 0,
    on: {connected: () => { window.connected = true; },
         closed: (event) => { window.wsClosed = event.code; }}});
  client.subscribe({query: query, variables: variables}, {
    next: (value) => window.events.push(value),
    error: (error) => { window.wsError = String((error && error.code) || error); },
    complete: () => {}});
};
</script></head><body>shop</body></html>
"""


# -- fixtures ----------------------------------------------------------------------------------

def _origin_app() -> Starlette:
    """A web shop's page on its own origin, loading the vendored graphql-ws browser client."""
    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(ORIGIN_PAGE)

    async def client(request: Request) -> FileResponse:
        return FileResponse(graphiql.STATIC / "graphql-ws.min.js",
                            media_type="text/javascript")

    return Starlette(routes=[StarletteRoute("/", index),
                             StarletteRoute("/graphql-ws.min.js", client)])


class Origins:
    def __init__(self) -> None:
        self.listed = ServerThread(_origin_app())
        self.unlisted = ServerThread(_origin_app())


@pytest.fixture(scope="module")
def origins() -> Iterator[Origins]:
    running = Origins()
    running.listed.start()
    running.unlisted.start()
    try:
        yield running
    finally:
        running.listed.stop()
        running.unlisted.stop()


@pytest.fixture(scope="module")
def stack(redis_server_url: str, origins: Origins) -> Iterator[Stack]:
    import redis

    flusher = redis.Redis.from_url(redis_server_url)
    flusher.flushdb()
    flusher.close()
    running = Stack(redis_server_url, skus=20)
    running.settings.api_keys = {"reader": {"key": KEY, "scopes": ["stock:read"]}}
    running.settings.rate_limit_per_minute = LIMIT_PER_MINUTE
    running.settings.cors_origins = [origins.listed.url]
    with running:
        yield running


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        reason = "Debian chromium is not installed (apt-get install -y chromium; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                          timeout=120_000)  # 2 shared cores under load
    try:
        yield launched
    finally:
        launched.close()


class Watched:
    """A page whose every request, WebSocket, console error and CSP violation is recorded;
    with ``guard``, requests to any host but 127.0.0.1 are aborted (Playwright's routing
    holds back streamed response bodies, so pages reading SSE or multipart streams go
    without)."""

    def __init__(self, browser: Browser, guard: bool = True) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 720})
        self.context.set_default_timeout(60_000)
        self.urls: list[str] = []
        self.foreign: list[str] = []
        self.errors: list[str] = []
        if guard:
            self.context.route("**/*", self._route)
        self.context.add_init_script("""window.__violations = [];
            document.addEventListener('securitypolicyviolation',
              (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));""")
        self.page: Page = self.context.new_page()
        self.page.on("request", lambda request: self.urls.append(request.url))
        self.page.on("websocket", lambda ws: self.urls.append(ws.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda message: self.errors.append(message.text)
                     if message.type == "error" else None)

    def _route(self, route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("() => window.__violations")
        return found

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    page = Watched(browser)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def shop(browser: Browser) -> Iterator[Watched]:
    """A page for the web shop on another origin (no routing: it reads streams)."""
    page = Watched(browser, guard=False)
    try:
        yield page
    finally:
        page.close()


# -- helpers -----------------------------------------------------------------------------------

def _subscribers(stack: Stack) -> set[Any]:
    app: Any = stack.gateways[0].server.config.app
    return set(app.state.runtime.feed.subscribers)


def _wait_registered(stack: Stack, before: set[Any]) -> None:
    deadline = time.monotonic() + 30
    while not _subscribers(stack) - before:
        assert time.monotonic() < deadline, "the subscription was never registered"
        time.sleep(0.05)


def _available(stack: Stack, sku: str, loc: str) -> int:
    body = stack.graphql(STOCK_LEVEL, {"sku": sku, "loc": loc},
                         headers={"Authorization": f"Bearer {KEY}"})
    assert "errors" not in body, body
    available: int = body["data"]["stockLevel"]["available"]
    return available


def _cell(stack: Stack, i: int) -> tuple[str, str]:
    return stack.world.items[i].sku, stack.world.stores[0].code


def _set_editor(page: Page, selector: str, text: str) -> None:
    """Type into one of GraphiQL's CodeMirror editors (as a paste would)."""
    page.evaluate("([selector, text]) => document.querySelector(selector).CodeMirror"
                  ".setValue(text)", [selector, text])


def _result(page: Page) -> Any:
    text = page.evaluate("() => document.querySelector('.result-window .CodeMirror')"
                         ".CodeMirror.getValue()").strip()
    return json.loads(text) if text else None


def _wait_result(page: Page, check: Any, what: str, within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            result = _result(page)
        except ValueError:  # the pane is being rewritten
            result = None
        if result is not None and check(result):
            return result
        assert time.monotonic() < deadline, f"GraphiQL never showed {what}; it shows {result}"
        page.wait_for_timeout(100)


def _assert_stayed_home(page: Watched, port: int) -> None:
    """Nothing left 127.0.0.1:PORT: no other host, no CSP violation, no console error."""
    assert page.urls, "the page made no request at all"
    assert page.foreign == []
    assert {(urlsplit(u).hostname, urlsplit(u).port) for u in page.urls} == {("127.0.0.1", port)}
    assert page.violations() == []
    assert page.errors == []


# -- GraphiQL ----------------------------------------------------------------------------------

QUERY_EDITOR = ".graphiql-query-editor .CodeMirror"
HEADERS_EDITOR = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"


def _open_graphiql(watched: Watched, stack: Stack) -> Page:
    page = watched.page
    page.goto(f"{stack.url}/graphql")
    page.wait_for_selector(".graphiql-execute-button", timeout=60_000)
    # Without a credential the schema cannot be read (auth is on): the page's own 401s are
    # expected console errors, so start counting after the credential is in.
    page.get_by_role("button", name="Headers").click()
    _set_editor(page, HEADERS_EDITOR, json.dumps({"Authorization": f"Bearer {KEY}"}))
    watched.errors.clear()
    with page.expect_response(lambda r: "IntrospectionQuery" in (r.request.post_data or "")
                              and r.status == 200, timeout=30_000):
        page.click("[aria-label='Re-fetch GraphQL schema']")
    return page


def test_graphiql_runs_a_query_offline(watched: Watched, stack: Stack) -> None:
    page = _open_graphiql(watched, stack)
    sku, loc = _cell(stack, 0)
    truth = _available(stack, sku, loc)
    _set_editor(page, QUERY_EDITOR, f'{{ stockLevel(sku: "{sku}", locationId: "{loc}") '
                                    "{ sku available } }")
    page.click(".graphiql-execute-button")
    result = _wait_result(page, lambda r: "data" in r or "errors" in r, "the query's answer")
    assert result == {"data": {"stockLevel": {"sku": sku, "available": truth}},
                      "extensions": result.get("extensions")}, result
    assert result["extensions"]["freshness"]["responseCache"] in ("miss", "hit")
    _assert_stayed_home(watched, stack.gateways[0].port)


def test_graphiql_shows_a_live_subscription(watched: Watched, stack: Stack) -> None:
    page = _open_graphiql(watched, stack)
    sku, loc = _cell(stack, 1)
    _set_editor(page, QUERY_EDITOR, f"""subscription {{
  stockChanged(skus: ["{sku}"], locationIds: ["{loc}"]) {{
    sku locationId source
    movement {{ type quantity }}
    previous {{ available }}
    stockLevel {{ available }}
  }}
}}""")
    before = _subscribers(stack)
    page.click(".graphiql-execute-button")
    _wait_registered(stack, before)
    after = stack.sale(1, 0, 1)
    result = _wait_result(page, lambda r: "data" in r, "the stock change")
    first = result["data"]["stockChanged"]
    assert (first["sku"], first["locationId"], first["source"]) == (sku, loc, "pos")
    assert first["stockLevel"] == {"available": after}
    # A second sale replaces the shown event: the subscription stays live, and this change
    # knows its movement and the level before it.
    second = stack.sale(1, 0, 2)
    assert second == after - 2
    shown = _wait_result(page, lambda r: r.get("data", {}).get("stockChanged", {}).get(
        "stockLevel", {}).get("available") == second, "the second change")
    assert shown["data"]["stockChanged"] == {
        "sku": sku, "locationId": loc, "source": "pos", "movement": {"type": "SALE", "quantity": 2},
        "previous": {"available": after}, "stockLevel": {"available": second}}
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "graphiql-subscription.png"))
    sockets = [u for u in watched.urls if u.startswith("ws")]
    assert sockets == [f"ws://127.0.0.1:{stack.gateways[0].port}/graphql"]
    _assert_stayed_home(watched, stack.gateways[0].port)
    page.click(".graphiql-execute-button")  # stop: the gateway lets the subscription go
    deadline = time.monotonic() + 30
    while _subscribers(stack) - before:
        assert time.monotonic() < deadline, "stopping in GraphiQL left the subscription"
        time.sleep(0.05)


# -- a page on another origin ------------------------------------------------------------------

def _origin_page(watched: Watched, server: ServerThread) -> Page:
    watched.page.goto(server.url + "/")
    watched.page.wait_for_function("() => typeof graphqlWs === 'object'")
    return watched.page


def test_listed_origin_queries_over_fetch(shop: Watched, stack: Stack,
                                          origins: Origins) -> None:
    page = _origin_page(shop, origins.listed)
    sku, loc = _cell(stack, 2)
    body = {"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": loc}}
    auth = {"Authorization": f"Bearer {KEY}"}
    first = page.evaluate("([gw, body, headers]) => query(gw, body, headers)",
                          [stack.url, body, auth])
    assert first["status"] == 200, first
    assert first["body"]["data"] == {"stockLevel": {"available": _available(stack, sku, loc)}}
    # Exposed: the page can read the RateLimit headers, and x-retailgraph-cache on the
    # cached answer to the same request (the response-cache path).
    assert first["headers"]["ratelimit-limit"] == str(LIMIT_PER_MINUTE)
    assert int(first["headers"]["ratelimit-remaining"]) > 0
    second = page.evaluate("([gw, body, headers]) => query(gw, body, headers)",
                           [stack.url, body, auth])
    assert second["status"] == 200
    assert second["body"]["data"] == first["body"]["data"]
    assert second["headers"]["x-retailgraph-cache"] == "hit"
    # Refusals carry the CORS headers too, so the page can read why.
    denied = page.evaluate("([gw, body]) => query(gw, body, {})", [stack.url, body])
    assert denied["status"] == 401
    assert denied["body"]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert denied["headers"]["www-authenticate"].startswith("Bearer")
    assert shop.errors == ["Failed to load resource: the server responded with a status "
                              "of 401 (Unauthorized)"]


def test_listed_origin_subscribes_over_websocket(shop: Watched, stack: Stack,
                                                 origins: Origins) -> None:
    page = _origin_page(shop, origins.listed)
    sku, loc = _cell(stack, 3)
    before = _subscribers(stack)
    page.evaluate("([gw, key, query, variables]) => subscribe(gw, key, query, variables)",
                  [stack.url, KEY, SUBSCRIPTION, {"skus": [sku], "locs": [loc]}])
    _wait_registered(stack, before)
    after = stack.sale(3, 0, 1)
    page.wait_for_function("() => window.events.length > 0", timeout=30_000)
    events = page.evaluate("() => window.events")
    assert [event["data"] for event in events] == [{"stockChanged": {
        "sku": sku, "locationId": loc, "source": "pos", "stockLevel": {"available": after}}}]
    assert set(events[0]["extensions"]) == {"cursor"}  # each result names its change's cursor
    assert page.evaluate("() => [window.connected, window.wsClosed, window.wsError]") == [
        True, None, None]


SSE = "text/event-stream"
MULTIPART = "multipart/mixed;subscriptionSpec=1.0,application/json"


def _sse_events(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """``(id, data)`` of each ``next`` event of a graphql-sse stream."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, sep, value = line.partition(":")
            if sep and name:
                fields[name] = value.removeprefix(" ")
        if fields.get("event") == "next":
            out.append((fields.get("id"), json.loads(fields["data"])))
    return out


def _multipart_payloads(text: str) -> list[dict[str, Any]]:
    """The ``payload`` of each part of an Apollo multipart subscription (keep-alives ``{}``
    left out)."""
    out = []
    for part in text.split("--graphql"):
        _head, sep, body = part.partition("\r\n\r\n")
        body = body.strip()
        if sep and body.startswith("{"):
            parsed = json.loads(body)
            if "payload" in parsed:
                out.append(parsed["payload"])
    return out


def _stream(page: Page, stack: Stack, accept: str, i: int,
            headers: dict[str, str] | None = None) -> None:
    sku, loc = _cell(stack, i)
    page.evaluate("([gw, accept, body, headers]) => openStream(gw, accept, body, headers)",
                  [stack.url, accept, {"query": WITH_CURSOR,
                                       "variables": {"skus": [sku], "locs": [loc]}},
                   {"Authorization": f"Bearer {KEY}", **(headers or {})}])


def _stream_text(page: Page, contains: str) -> str:
    page.wait_for_function("(want) => window.stream.text.includes(want) || window.stream.error",
                           arg=contains)
    state = page.evaluate("() => [window.stream.status, window.stream.error, window.stream.text]")
    assert state[:2] == [200, None], state
    text: str = state[2]
    return text


def _close_stream(page: Page, stack: Stack, before: set[Any]) -> None:
    page.evaluate("() => closeStream()")
    deadline = time.monotonic() + 30
    while _subscribers(stack) - before:
        assert time.monotonic() < deadline, "closing the stream left the subscription behind"
        time.sleep(0.05)


def test_listed_origin_subscribes_over_sse_and_resumes_with_last_event_id(
        shop: Watched, stack: Stack, origins: Origins) -> None:
    """graphql-sse from another origin: the stream's headers pass CORS, each event's id is
    the change's cursor, and Last-Event-ID (a non-safelisted header) resumes after it."""
    page = _origin_page(shop, origins.listed)
    sku, loc = _cell(stack, 5)
    before = _subscribers(stack)
    _stream(page, stack, SSE, 5)
    _wait_registered(stack, before)
    first = stack.sale(5, 0, 1)
    text = _stream_text(page, f'"available":{first}')
    ((cursor, data),) = _sse_events(text)
    assert data["data"]["stockChanged"]["cursor"] == cursor
    assert data["data"]["stockChanged"]["stockLevel"] == {"available": first}
    _close_stream(page, stack, before)
    missed = stack.sale(5, 0, 2)  # while no stream is open
    assert cursor is not None
    _stream(page, stack, SSE, 5, {"Last-Event-ID": cursor})
    text = _stream_text(page, f'"available":{missed}')
    events = _sse_events(text)
    assert [e[1]["data"]["stockChanged"]["stockLevel"]["available"] for e in events] == [missed]
    assert events[0][1]["data"]["stockChanged"]["sku"] == sku
    assert events[0][1]["data"]["stockChanged"]["locationId"] == loc
    _close_stream(page, stack, before)


def test_listed_origin_subscribes_over_multipart(shop: Watched, stack: Stack,
                                                 origins: Origins) -> None:
    page = _origin_page(shop, origins.listed)
    before = _subscribers(stack)
    _stream(page, stack, MULTIPART, 6)
    _wait_registered(stack, before)
    after = stack.sale(6, 0, 1)
    text = _stream_text(page, f'"available":{after}')
    payloads = _multipart_payloads(text)
    assert [p["data"]["stockChanged"]["stockLevel"] for p in payloads] == [{"available": after}]
    _close_stream(page, stack, before)


def test_unlisted_origin_is_refused_on_http_and_websocket(
        shop: Watched, stack: Stack, origins: Origins,
        caplog: pytest.LogCaptureFixture) -> None:
    page = _origin_page(shop, origins.unlisted)
    sku, loc = _cell(stack, 4)
    body = {"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": loc}}
    with caplog.at_level(logging.INFO):
        refused = page.evaluate("([gw, body, headers]) => query(gw, body, headers)",
                                [stack.url, body, {"Authorization": f"Bearer {KEY}"}])
        assert refused == {"error": "TypeError: Failed to fetch"}
        before = _subscribers(stack)
        for accept in (SSE, MULTIPART):  # streamed subscriptions are refused the same way
            _stream(page, stack, accept, 4)
            page.wait_for_function("() => window.stream.error !== null")
            assert page.evaluate("() => [window.stream.error, window.stream.text]") == [
                "TypeError: Failed to fetch", ""]
        assert _subscribers(stack) - before == set()
        page.evaluate("([gw, key, query, variables]) => subscribe(gw, key, query, variables)",
                      [stack.url, KEY, SUBSCRIPTION, {"skus": [sku], "locs": [loc]}])
        page.wait_for_function("() => window.wsClosed !== null", timeout=30_000)
    assert page.evaluate("() => [window.connected, window.wsClosed, window.events]") == [
        False, 1006, []]
    assert _subscribers(stack) - before == set()
    messages = [r.getMessage() for r in caplog.records]
    refusal = [m for m in messages if "refused" in m and origins.unlisted.url in m]
    assert refusal == [f"WebSocket from origin '{origins.unlisted.url}' to "
                       f"'127.0.0.1:{stack.gateways[0].port}' refused: it is not in "
                       "cors_origins (RETAILGRAPH_CORS_ORIGINS)"]
    assert not [m for m in messages if "allowed_origins" in m]


# -- CORS over plain HTTP (every path, no browser needed) ------------------------------------------

def _preflight(url: str, origin: str, headers: str = "authorization, content-type"
               ) -> httpx.Response:
    return httpx.options(url, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                       "Access-Control-Request-Headers": headers}, timeout=10)


def test_preflight_needs_no_credential_and_costs_no_token(redis_url: str) -> None:
    shop = "http://127.0.0.1:9"
    running = Stack(redis_url, skus=5)
    running.settings.api_keys = {"reader": {"key": KEY, "scopes": ["stock:read"]}}
    running.settings.rate_limit_per_minute = 3
    running.settings.cors_origins = [shop]
    with running:
        wanted = ("authorization, x-api-key, content-type, accept, last-event-id, "
                  "x-graphql-event-stream-token, traceparent")
        for _ in range(10):
            answer = _preflight(f"{running.url}/graphql", shop, wanted)
            assert answer.status_code == 200, answer.text
            assert answer.headers["access-control-allow-origin"] == shop
            assert answer.headers["access-control-allow-credentials"] == "true"
            assert set(wanted.split(", ")) <= set(
                answer.headers["access-control-allow-headers"].lower().split(", "))
            assert "ratelimit-remaining" not in answer.headers
        # All three tokens are still there for the real requests.
        query = {"query": "{ locations { id } }"}
        answers = [httpx.post(f"{running.url}/graphql", json=query, timeout=10,
                              headers={"Origin": shop, "X-API-Key": KEY}) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["ratelimit-remaining"] for a in answers[:3]] == ["2", "1", "0"]
        limited = answers[3]
        assert limited.headers["access-control-allow-origin"] == shop
        exposed = set(limited.headers["access-control-expose-headers"].split(", "))
        assert {"x-retailgraph-cache", "ratelimit-limit", "ratelimit-remaining",
                "ratelimit-reset", "retry-after"} <= exposed


def test_cors_covers_graphql_only(stack: Stack, origins: Origins) -> None:
    shop = origins.listed.url
    refused = _preflight(f"{stack.url}/graphql", origins.unlisted.url)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    unknown_header = _preflight(f"{stack.url}/graphql", shop, "x-not-a-header")
    assert unknown_header.status_code == 400
    # Webhooks and probes are not for browsers: no preflight succeeds (405; /metrics asks
    # for its credential first), no CORS header.
    for path, status in (("/webhooks/pos", 405), ("/healthz", 405), ("/readyz", 405),
                         ("/metrics", 401)):
        answer = _preflight(f"{stack.url}{path}", shop)
        assert answer.status_code == status, (path, answer.status_code)
        assert "access-control-allow-origin" not in answer.headers
        plain = httpx.get(f"{stack.url}{path}", headers={"Origin": shop}, timeout=10)
        assert "access-control-allow-origin" not in plain.headers, path


def _handshake(stack: Stack | ServerThread, origin: str | None,
               protocol: str = "graphql-transport-ws") -> int:
    """A WebSocket handshake with this ``Origin``: 101 (and an ack) or the refusal's status."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = stack.url.replace("http", "ws") + "/graphql"
    try:
        with connect(url, subprotocols=[Subprotocol(protocol)],
                     origin=Origin(origin) if origin else None, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "connection_init",
                                "payload": {"Authorization": f"Bearer {KEY}"}}))
            assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def test_hostile_preflights_get_400_and_change_nothing(stack: Stack, origins: Origins) -> None:
    shop = origins.listed.url
    url = f"{stack.url}/graphql"
    probes = [
        {"Origin": shop, "Access-Control-Request-Method": "DELETE"},
        {"Origin": shop, "Access-Control-Request-Method": "POST",
         "Access-Control-Request-Headers": ", ".join(f"x-h{i}" for i in range(2000))},
        {"Origin": shop, "Access-Control-Request-Method": "POST",
         "Access-Control-Request-Private-Network": "true"},
        {"Origin": shop + "/", "Access-Control-Request-Method": "POST"},
        {"Origin": shop.upper(), "Access-Control-Request-Method": "POST"},
        {"Origin": "null", "Access-Control-Request-Method": "POST"},
    ]
    for headers in probes:
        answer = httpx.options(url, headers=headers, timeout=10)
        assert answer.status_code == 400, (headers, answer.status_code)  # a browser stops here
        assert answer.text.startswith("Disallowed CORS")
        if headers["Origin"] != shop:
            assert "access-control-allow-origin" not in answer.headers
    odd = httpx.post(url, json={"query": "{ __typename }"}, timeout=10, headers={
        b"origin": "http://\u00e9vil.example".encode(), b"authorization": f"Bearer {KEY}".encode()})
    assert odd.status_code == 200
    assert "access-control-allow-origin" not in odd.headers
    assert httpx.get(f"{stack.url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
def test_websocket_origins_without_a_browser(stack: Stack, origins: Origins, protocol: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """The handshake check on its own, on both subprotocols: listed, own and absent origins
    pass; others (hostile ones included) get 403, one short log line each."""
    hostile = ["http://evil.example", "null", "http://[", "https://" + "a" * 5000 + ".example",
               f"http://127.0.0.1:{stack.gateways[0].port}.evil.example"]
    with caplog.at_level(logging.WARNING, logger="retailgraph.cors"):
        assert _handshake(stack, None, protocol) == 101
        assert _handshake(stack, origins.listed.url, protocol) == 101
        assert _handshake(stack, stack.url, protocol) == 101  # GraphiQL's own origin
        for origin in hostile:
            assert _handshake(stack, origin, protocol) == 403, origin
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == [
        f"WebSocket from origin {o!r} to '127.0.0.1:{stack.gateways[0].port}' refused: it is "
        "not in cors_origins (RETAILGRAPH_CORS_ORIGINS)" for o in hostile[:2]]
    assert len(messages) == len(hostile)
    assert all(len(m) < 600 for m in messages)
    assert httpx.get(f"{stack.url}/healthz", timeout=10).status_code == 200


def test_any_origin(stack: Stack) -> None:
    """cors_origins = ["*"]: a page on any origin may call /graphql and open its WebSocket."""
    from gateway.app import create_app

    settings = dataclasses.replace(stack.settings, cors_origins=["*"])
    with serve(create_app(settings)) as gateway:
        answer = _preflight(f"{gateway.url}/graphql", "https://any.example")
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://any.example"
        assert _handshake(gateway, "https://any.example") == 101


# -- settings ----------------------------------------------------------------------------------

def test_cors_origins_setting() -> None:
    env = {"RETAILGRAPH_CORS_ORIGINS": " https://Shop.Example.com:443, http://127.0.0.1:5173 ,"}
    settings = apply_env(Settings(), env)
    assert settings.cors_origins == ["https://Shop.Example.com:443", "http://127.0.0.1:5173"]
    assert browser_origins(settings) == {"https://shop.example.com", "http://127.0.0.1:5173"}
    assert browser_origins(Settings()) == frozenset()
    assert browser_origins(Settings(cors_origins=["*"])) == {"*"}
    for bad in ("shop.example.com", "https://shop.example.com/app", "null"):
        with pytest.raises(ConfigError, match=r"^cors_origins: .* is not an origin"):
            browser_origins(Settings(cors_origins=[bad]))
    with pytest.raises(ConfigError, match=r"^cors_origins must be a list"):
        browser_origins(Settings(cors_origins="https://a.example"))  # type: ignore[arg-type]


def test_serve_check_names_the_origins_and_refuses_bad_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import main

    for name in list(os.environ):
        if name.startswith("RETAILGRAPH_"):
            monkeypatch.delenv(name)
    example = ROOT / "retailgraph.example.toml"
    assert main(["serve", "--config", str(example), "--check"]) == 0
    assert "browsers: GraphiQL on; other origins (cors_origins): none" in capsys.readouterr().out
    monkeypatch.setenv("RETAILGRAPH_CORS_ORIGINS", "https://Shop.example.com, http://[::1]:3000")
    assert main(["serve", "--config", str(example), "--check"]) == 0
    assert ("other origins (cors_origins): http://[::1]:3000, https://shop.example.com"
            in capsys.readouterr().out)
    bad = tmp_path / "bad.toml"
    bad.write_text(example.read_text().replace("cors_origins = []",
                                               'cors_origins = ["shop.example.com/app"]'))
    monkeypatch.delenv("RETAILGRAPH_CORS_ORIGINS")
    assert main(["serve", "--config", str(bad), "--check"]) == 2
    assert "cors_origins: 'shop.example.com/app' is not an origin" in capsys.readouterr().err


def test_default_is_same_origin_only(redis_url: str) -> None:
    running = Stack(redis_url, skus=5)
    assert running.settings.cors_origins == []
    with running:
        assert _preflight(f"{running.url}/graphql", "http://127.0.0.1:9").status_code == 400
        assert _handshake(running, "http://127.0.0.1:9") == 403
        assert _handshake(running, running.url) == 101


# -- the vendored assets -----------------------------------------------------------------------

def test_vendored_assets_are_the_pinned_tarballs_files() -> None:
    manifest = json.loads((graphiql.STATIC / "manifest.json").read_text())
    listed = {"manifest.json", "retailgraph-graphiql.js"}
    for name, package in manifest["packages"].items():
        assert package["integrity"].startswith("sha512-"), name
        assert package["version"], name
        assert package["license"] == "MIT", name
        licences = [dest for dest in package["files"] if dest.startswith("LICENSE.")]
        assert licences == [f"LICENSE.{name}.txt"], name
        for dest, entry in package["files"].items():
            data = (graphiql.STATIC / dest).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], dest
            listed.add(dest)
    assert {p.name for p in graphiql.STATIC.iterdir()} == listed
    # Nothing the page loads names another host (source-map comments aside, which browsers
    # only follow with developer tools open).
    assert "http" not in graphiql.PAGE
    ours = (graphiql.STATIC / "retailgraph-graphiql.js").read_text()
    assert "://" not in ours


def test_graphiql_page_and_assets(stack: Stack) -> None:
    page = httpx.get(f"{stack.url}/graphql", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 200
    assert page.text == graphiql.PAGE
    assert page.headers["content-security-policy"] == graphiql.CSP
    for name in ("graphiql.min.js", "graphiql.min.css", "react.production.min.js",
                 "react-dom.production.min.js", "graphql-ws.min.js", "retailgraph-graphiql.js",
                 "LICENSE.graphiql.txt", "manifest.json"):
        asset = httpx.get(f"{stack.url}/graphql/static/{name}", timeout=10)
        assert asset.status_code == 200, name
        assert asset.content == (graphiql.STATIC / name).read_bytes(), name
    for probe in ("../__init__.py", "..%2f__init__.py", "%2e%2e/vendor.py", "nope.js"):
        assert httpx.get(f"{stack.url}/graphql/static/{probe}", timeout=10).status_code == 404


def test_graphiql_false_serves_neither_page_nor_assets(redis_url: str) -> None:
    running = Stack(redis_url, skus=5)
    running.settings.graphiql = False
    with running:
        page = httpx.get(f"{running.url}/graphql", headers={"Accept": "text/html"}, timeout=10)
        assert page.text != graphiql.PAGE
        asset = httpx.get(f"{running.url}/graphql/static/graphiql.min.js", timeout=10)
        assert asset.status_code == 404


def test_pyproject_packages_the_assets() -> None:
    """package-data covers every static file, so a wheel (not only an editable install)
    serves GraphiQL."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["gateway.http.graphiql"]
    package = graphiql.STATIC.parent
    covered = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    assert covered == set(graphiql.STATIC.iterdir())
