"""Two gateway processes sharing one Redis: live stock across replicas, resume by cursor, and
a rolling restart that loses nothing.

Each replica is a real process (``python -m gateway.cli serve --config <toml>``); the four
simulators run in threads of the test process and send their signed webhooks to replica A.
Clients are plain ``websockets`` connections (:class:`tests.e2e.test_subscriptions.GraphQLWs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets

from gateway.config import Settings, demo_settings
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import World
from resolvers.connectors.http import auth_headers
from tests.e2e.test_subscriptions import (
    LEGACY_WS,
    STOCK_CHANGED,
    STOCK_EVENTS,
    TRANSPORT_WS,
    GraphQLWs,
    connected,
    cursor_key,
)
from tests.support import SQUARE_CHANGES, ServerThread, free_port, in_stock_after, square_sale

ROOT = Path(__file__).resolve().parents[2]
READY_QUERY = '{ stockLevel(sku: "SKU-000001", locationId: "WH01") { onHand } }'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(settings: Settings, path: Path, **gateway: Any) -> Path:
    """The TOML a replica is started with: the backends of ``settings`` and ``gateway``."""
    lines = ["[gateway]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in gateway.items()]
    for name, backend in settings.backends.items():
        lines += ["", f"[backends.{name}]", f'format = "{backend.format}"',
                  f"base_url = {_toml_value(backend.base_url)}",
                  f"token = {_toml_value(backend.token)}",
                  f"webhook_secret = {_toml_value(backend.webhook_secret)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Replicas:
    """Simulators in threads, gateway replicas as processes, one Redis.

    The simulators send webhooks to replica 0. ``gateway`` settings go into every replica's
    TOML (``redis_url`` and ``rate_limit_per_minute = 0`` are always set).
    """

    def __init__(self, redis_url: str, workdir: Path, replicas: int = 2, *, skus: int = 40,
                 stores: int = 3, warehouses: int = 2,
                 delivery: dict[str, DeliveryOptions] | None = None, **gateway: Any) -> None:
        self.world = World(7, skus, stores, warehouses)
        self.delivery = delivery or {}  # per simulator (backend name): its webhook delivery
        self.ports = [free_port() for _ in range(replicas)]
        self.settings = demo_settings("127.0.0.1", self.ports[0], environ={})
        for backend in self.settings.backends.values():
            backend.base_url = f"http://127.0.0.1:{free_port()}"
        self.workdir = workdir
        self.config = write_config(self.settings, workdir / "gateway.toml", host="127.0.0.1",
                                   redis_url=redis_url, rate_limit_per_minute=0, **gateway)
        self.sims: list[ServerThread] = []
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * replicas
        self.starts = [0] * replicas

    def url(self, k: int) -> str:
        return f"http://127.0.0.1:{self.ports[k]}"

    def __enter__(self) -> Replicas:
        from gateway.demo import simulator_app

        try:
            for name, backend in self.settings.backends.items():
                app = simulator_app(self.world, backend,
                                    f"{self.url(0)}/webhooks/{name}", self.delivery.get(name))
                port = int(backend.base_url.rsplit(":", 1)[1])
                self.sims.append(ServerThread(app, port).start())
            for k in range(len(self.ports)):
                self.start(k)
            for k in range(len(self.ports)):
                self.wait_ready(k)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for k in range(len(self.procs)):
            self.kill(k)
        for sim in self.sims:
            sim.stop()

    def start(self, k: int) -> None:
        """Start replica ``k`` (its output goes to ``replica-<k>-<n>.log`` in workdir)."""
        self.starts[k] += 1
        log = (self.workdir / f"replica-{k}-{self.starts[k]}.log").open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs[k] = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", "serve",
             "--config", str(self.config), "--port", str(self.ports[k]), "--insecure-no-auth"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def wait_ready(self, k: int, within: float = 60) -> None:
        """Until /healthz answers and a stock query is served (the catalog is loaded)."""
        deadline = time.monotonic() + within
        proc = self.procs[k]
        assert proc is not None
        with httpx.Client(timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"replica {k} exited with {proc.returncode}:\n"
                                         + self.output(k))
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url(k)}/healthz").status_code == 200:
                        body = client.post(f"{self.url(k)}/graphql",
                                           json={"query": READY_QUERY}).json()
                        if not body.get("errors") and body["data"]["stockLevel"]:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(f"replica {k} not ready:\n" + self.output(k))
                time.sleep(0.1)

    def output(self, k: int) -> str:
        path = self.workdir / f"replica-{k}-{self.starts[k]}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def terminate(self, k: int, within: float = 20) -> int:
        """SIGTERM replica ``k`` and wait for it to exit; its exit code."""
        proc = self.procs[k]
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(within)
        finally:
            self.kill(k)

    def kill(self, k: int) -> None:
        proc = self.procs[k]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.procs[k] = None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None]

    def sim(self, name: str) -> httpx.AsyncClient:
        backend = self.settings.backends[name]
        return httpx.AsyncClient(base_url=backend.base_url, headers=auth_headers(backend),
                                 timeout=30)


@pytest.fixture(scope="module")
def replicas(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Replicas]:
    """Both replicas for the module (each test uses its own SKUs); the rolling-restart test
    leaves them running too."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    with Replicas(redis_server_url, tmp_path_factory.mktemp("replicas")) as running:
        yield running


# -- helpers ---------------------------------------------------------------------------------

async def arrive(r: Replicas, i: int, warehouse: int = 0, quantity: int = 1,
                 events: int = 1) -> None:
    """Stock arrives at a warehouse, through the WMS simulator (one webhook per event)."""
    gtin = r.world.items[i].gtin14
    epc = f"urn:epc:idpat:sgtin:{gtin[1:7]}.{gtin[0]}{gtin[7:13]}.*"
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    event = {"type": "ObjectEvent", "eventTime": stamp, "eventTimeZoneOffset": "+00:00",
             "action": "ADD", "bizStep": "arriving",
             "bizLocation": {"id": r.world.warehouses[warehouse].sgln},
             "quantityList": [{"epcClass": epc, "quantity": quantity, "uom": "EA"}]}
    async with r.sim("wms") as wms:
        response = await wms.post("/api/v1/events", json={
            "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
            "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": stamp,
            "epcisBody": {"eventList": [event] * events}})
    assert response.status_code == 202, response.text


async def sale(r: Replicas, i: int, store: int, quantity: int) -> int:
    """A sale through the Square simulator; its IN_STOCK count afterwards."""
    async with r.sim("pos") as pos:
        response = await pos.post(SQUARE_CHANGES, json=square_sale(r.world, i, store, quantity))
    return in_stock_after(response, r.world.items[i].square_variation_id)


async def end_cursor(url: str, variables: dict[str, Any]) -> str:
    """Where the log ends now for these cells: subscribing after it misses nothing."""
    async with httpx.AsyncClient(timeout=30) as client:
        body = (await client.post(f"{url}/graphql", json={
            "query": STOCK_EVENTS, "variables": {**variables, "first": 100}})).json()
    assert "errors" not in body, body
    page = body["data"]["stockEvents"]
    assert page["hasMore"] is False
    cursor: str = page["endCursor"]
    return cursor


async def eventually(condition: Callable[[], bool], within: float = 30) -> None:
    for _ in range(int(within / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


@contextlib.asynccontextmanager
async def watching(url: str, protocol: str, variables: dict[str, Any]
                   ) -> AsyncIterator[tuple[GraphQLWs, str]]:
    """A subscription that starts where the log ends now (so nothing after is missed)."""
    after = await end_cursor(url, variables)
    async with connected(url, protocol) as client:
        yield client, await client.subscribe(STOCK_CHANGED, {**variables, "after": after})


# -- tests -----------------------------------------------------------------------------------

async def test_a_webhook_into_a_reaches_subscribers_on_b(replicas: Replicas) -> None:
    i = 3
    sku, store = replicas.world.items[i].sku, replicas.world.stores[0].code
    cell = {"skus": [sku], "locs": [store]}
    async with watching(replicas.url(1), TRANSPORT_WS, cell) as (on_b, op_b), \
            watching(replicas.url(1), LEGACY_WS, cell) as (legacy_b, op_legacy), \
            watching(replicas.url(0), TRANSPORT_WS, cell) as (on_a, op_a):
        level = await sale(replicas, i, 0, 1)  # the Square simulator posts to replica A
        [b] = await on_b.take(op_b, 1)
        [legacy] = await legacy_b.take(op_legacy, 1)
        [a] = await on_a.take(op_a, 1)
    assert (b["sku"], b["locationId"], b["stockLevel"]["available"]) == (sku, store, level)
    assert legacy == b
    assert a == b


async def test_reconnect_with_the_last_cursor_gets_exactly_what_was_missed(
        replicas: Replicas) -> None:
    i = 5
    cell = {"skus": [replicas.world.items[i].sku], "locs": [replicas.world.warehouses[0].code]}
    async with watching(replicas.url(0), TRANSPORT_WS, cell) as (watch, watch_op):
        async with watching(replicas.url(1), LEGACY_WS, cell) as (client, op):
            await arrive(replicas, i, events=2)
            seen = await client.take(op, 2)
        assert seen == await watch.take(watch_op, 2)
        last = seen[-1]["cursor"]
        await arrive(replicas, i, events=4)  # while the client is away
        missed = await watch.take(watch_op, 4)
        async with connected(replicas.url(1), TRANSPORT_WS) as client:
            op = await client.subscribe(STOCK_CHANGED, {**cell, "after": last})
            assert await client.take(op, 4) == missed
            await arrive(replicas, i)
            live = await watch.take(watch_op, 1)
            assert await client.take(op, 1) == live
    on_hand = [c["stockLevel"]["onHand"] for c in [*seen, *missed, *live]]
    assert on_hand == list(range(on_hand[0], on_hand[0] + 7))


async def history(url: str, variables: dict[str, Any], after: str) -> list[dict[str, Any]]:
    """Every change after ``after`` (stockEvents, page by page)."""
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            body = (await http.post(f"{url}/graphql", json={
                "query": STOCK_EVENTS, "variables": {**variables, "after": after,
                                                     "first": 100}})).json()
            assert "errors" not in body, body
            page = body["data"]["stockEvents"]
            out += page["changes"]
            after = page["endCursor"]
            if not page["hasMore"]:
                return out


async def _restart_while_following(
        replicas: Replicas, produce: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
        follow_on: Callable[[str, asyncio.Event], asyncio.Task[None]],
        got: list[dict[str, Any]], close_codes: list[int | None]) -> None:
    """With changes flowing: follow on B, SIGTERM B (the client moves to A), start B again
    (the client moves back to B), then stop producing."""
    stop = asyncio.Event()
    producer = asyncio.create_task(produce(stop))
    try:
        on_b = follow_on(replicas.url(1), asyncio.Event())
        await eventually(lambda: len(got) >= 3)
        exit_code = await asyncio.to_thread(replicas.terminate, 1)
        await asyncio.wait_for(on_b, 10)  # B closed the socket
        assert close_codes[:1] in ([1001], [1012]), close_codes
        assert exit_code == 0, replicas.output(1)

        moved = asyncio.Event()
        on_a = follow_on(replicas.url(0), moved)
        during = len(got)
        replicas.start(1)  # B comes back while changes keep flowing through A
        await asyncio.to_thread(replicas.wait_ready, 1)
        await eventually(lambda: len(got) >= during + 3)
        moved.set()
        await asyncio.wait_for(on_a, 10)

        follow_on(replicas.url(1), asyncio.Event())
        more = len(got)
        await eventually(lambda: len(got) >= more + 3)
    finally:
        stop.set()
        await asyncio.wait_for(producer, 30)


async def test_rolling_restart_loses_nothing(replicas: Replicas) -> None:
    """A client on B follows changes while B is stopped (SIGTERM) and started again: the
    socket is closed with 1012/1001, the client resumes on A with its cursor, later on B
    again, and its changes are exactly the log's, in order, none twice."""
    i = 7
    cell = {"skus": [replicas.world.items[i].sku], "locs": [replicas.world.warehouses[1].code]}
    start = await end_cursor(replicas.url(0), cell)
    produced = 0

    async def produce(stop: asyncio.Event) -> None:
        nonlocal produced
        while not stop.is_set():
            await arrive(replicas, i, warehouse=1)
            produced += 1
            await asyncio.sleep(0.03)

    got: list[dict[str, Any]] = []
    close_codes: list[int | None] = []

    async def follow(url: str, until: asyncio.Event) -> None:
        """Receive on ``url`` from the last cursor until the socket closes or ``until``."""
        async with connected(url, TRANSPORT_WS) as client:
            op = await client.subscribe(STOCK_CHANGED, {
                **cell, "after": got[-1]["cursor"] if got else start})
            try:
                while not until.is_set():
                    with contextlib.suppress(TimeoutError):
                        got.append((await client.next(op, within=0.2))["stockChanged"])
            except websockets.ConnectionClosed as exc:
                close_codes.append(exc.rcvd.code if exc.rcvd else None)

    followers: list[asyncio.Task[None]] = []

    def follow_on(url: str, until: asyncio.Event) -> asyncio.Task[None]:
        followers.append(asyncio.create_task(follow(url, until)))
        return followers[-1]

    try:
        await _restart_while_following(replicas, produce, follow_on, got, close_codes)
        # Everything produced is in the log; the client, on B again, gets all of it.
        async with replicas.sim("wms") as wms:
            assert (await wms.post("/_sim/webhooks/drain")).status_code == 200
        log = await history(replicas.url(0), cell, start)
        assert len(log) == produced
        await eventually(lambda: len(got) >= len(log))
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    assert [c["cursor"] for c in got] == [c["cursor"] for c in log]
    assert [cursor_key(c["cursor"]) for c in got] == sorted(cursor_key(c["cursor"]) for c in got)
    on_hand = [c["stockLevel"]["onHand"] for c in got]
    assert on_hand == list(range(on_hand[0], on_hand[0] + produced))
    assert len(close_codes) == 1  # the moves to A and back to B were the client's own
