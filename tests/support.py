"""Test helpers: run a real ASGI app on a real loopback port."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from starlette.types import ASGIApp

if TYPE_CHECKING:
    from redis.typing import StreamRangeResponse

    from gateway.simulators.world import World

# Loopback ports for test servers: below the kernel's ephemeral range (32768+ on Linux), so no
# outgoing connection takes one, and split between pytest-xdist workers (worker i of n gets
# the ports p with p % n == i), so two workers never pick the same one.
PORTS = range(20000, 32000)
_handed_out: set[int] = set()


def _worker_ports() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = PORTS.start + (index - PORTS.start) % count
    return range(start, PORTS.stop, count)


def _bind_fresh_port(listen: bool) -> socket.socket:
    """A socket bound to a port of this worker that this process has not handed out before:
    a port picked, released and picked again is the same number twice."""
    ports = _worker_ports()
    rng = random.SystemRandom()
    for _ in range(500):
        port = ports[rng.randrange(len(ports))]
        if port in _handed_out:
            continue
        sock = socket.socket()
        try:
            if listen:  # like uvicorn's own listening sockets
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            if listen:
                sock.listen(2048)
        except OSError:
            sock.close()
            continue
        _handed_out.add(port)
        return sock
    raise OSError(f"no free loopback port in {ports}")


def free_port() -> int:
    """A free loopback port for a server another process will bind (a subprocess, Redis).

    In-process servers take a :func:`listening_socket` instead: until the server binds a port
    picked here, another process may take it."""
    with _bind_fresh_port(listen=False) as sock:
        return int(sock.getsockname()[1])


def listening_socket() -> socket.socket:
    """A loopback socket already listening on a free port, for a :class:`ServerThread` to
    serve on: the port is held from the moment it is picked, so nothing else can take it."""
    return _bind_fresh_port(listen=True)


# Redis deadlines of the stacks the tests start. The defaults (250 ms for reads a request can
# do without, 2 s for the rest) are right for a Redis next to the gateway, and what they do
# when Redis misses them is tested with the defaults (tests/e2e/test_sick_redis.py); but on a
# loaded test machine a thread can wait that long for a core, and a cache read that misses
# its deadline rightly goes to the backend (which knows nothing of a test's own signed
# deliveries), a rate-limit token read lets its request through. The other tests assert what
# a working Redis gives, so their stacks wait longer for it.
TEST_REDIS_READ_TIMEOUT_MS = 5000
TEST_REDIS_WRITE_TIMEOUT_MS = 10000


class ErrorLog(logging.Handler):
    """Error records logged while installed by :func:`errors_logged` (the gateway's loggers
    propagate to the root; uvicorn's, where unhandled exceptions land, do not)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()} {r.exc_info[1] if r.exc_info else ''}"
                for r in self.records]


@contextmanager
def errors_logged() -> Iterator[ErrorLog]:
    """Collect every error logged (root and uvicorn loggers) inside the block."""
    collected = ErrorLog()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"),
               logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(collected)
    try:
        yield collected
    finally:
        for logger in loggers:
            logger.removeHandler(collected)


class ServerThread:
    """uvicorn serving ``app`` in a thread with its own event loop (works for any test loop)."""

    def __init__(self, app: ASGIApp, port: int | None = None,
                 tls: tuple[str, str] | None = None, sock: socket.socket | None = None) -> None:
        """``tls``: (certificate file, key file) to serve HTTPS instead of HTTP. Without
        ``port`` (binds that port: a restart on the same port) or ``sock`` (a
        :func:`listening_socket`), it serves on a fresh listening socket."""
        if sock is None and port is None:
            sock = listening_socket()
        self.app = app
        self.sock = sock
        self.port = int(sock.getsockname()[1]) if sock is not None else port or 0
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", ws="websockets-sansio",
                                ssl_certfile=tls[0] if tls else None,
                                ssl_keyfile=tls[1] if tls else None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        sockets = [self.sock] if self.sock is not None else None
        try:
            self.loop.run_until_complete(self.server.serve(sockets))
        except SystemExit:  # uvicorn exits when it cannot bind; start() reports it
            pass
        finally:
            self.loop.close()
            if self.sock is not None:
                self.sock.close()

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        stop_all([self])


def stop_all(servers: list[ServerThread]) -> None:
    """Ask every server to exit, then wait for them: they shut down side by side."""
    for server in servers:
        server.server.should_exit = True
    for server in servers:
        if server.thread.is_alive():
            server.thread.join(timeout=10)
        elif server.sock is not None:  # never started: give the port back
            server.sock.close()


@contextmanager
def serve(app: ASGIApp, port: int | None = None,
          tls: tuple[str, str] | None = None) -> Iterator[ServerThread]:
    server = ServerThread(app, port, tls).start()
    try:
        yield server
    finally:
        server.stop()


SQUARE_CHANGES = "/v2/inventory/changes/batch-create"


def square_sale(world: World, i: int, store: int, quantity: int) -> dict[str, Any]:
    """The Square API body of a sale of ``quantity`` of item ``i`` at store ``store``."""
    item, location = world.items[i], world.stores[store]
    return {"idempotency_key": str(uuid.uuid4()), "changes": [{
        "type": "ADJUSTMENT", "adjustment": {
            "catalog_object_id": item.square_variation_id, "location_id": location.square_id,
            "from_state": "IN_STOCK", "to_state": "SOLD", "quantity": str(quantity)}}]}


def in_stock_after(response: httpx.Response, variation_id: str) -> int:
    """The IN_STOCK count of ``variation_id`` in Square's answer to a change."""
    assert response.status_code == 200, response.text
    return next(int(c["quantity"]) for c in response.json()["counts"]
                if c["state"] == "IN_STOCK" and c["catalog_object_id"] == variation_id)


class Stack:
    """The four simulators and gateway replicas on loopback ports, like ``retailgraph demo``.

    ``Stack(redis_url, replicas=2)`` runs two gateways sharing one Redis; the simulators send
    their webhooks to the first.
    """

    def __init__(self, redis_url: str, *, seed: int = 7, skus: int = 60, stores: int = 3,
                 warehouses: int = 2, replicas: int = 1,
                 options: dict[str, Any] | None = None, sync: bool = False) -> None:
        from gateway.config import demo_settings
        from gateway.simulators.world import World

        self.world = World(seed, skus, stores, warehouses)
        # Held from here until the servers take them over in __enter__ (closed by __exit__).
        self.gateway_sockets = [listening_socket() for _ in range(replicas)]
        self.gateway_ports = [int(s.getsockname()[1]) for s in self.gateway_sockets]
        self.settings = demo_settings("127.0.0.1", self.gateway_ports[0], environ={})
        self.sim_sockets = {name: listening_socket() for name in self.settings.backends}
        for name, backend in self.settings.backends.items():
            backend.base_url = f"http://127.0.0.1:{self.sim_sockets[name].getsockname()[1]}"
        self.settings.redis_url = redis_url
        self.settings.redis_read_timeout_ms = TEST_REDIS_READ_TIMEOUT_MS
        self.settings.redis_write_timeout_ms = TEST_REDIS_WRITE_TIMEOUT_MS
        # Sync (gateway/sync/) is on in the demo; tests that want its pushes ask for it.
        self.settings.sync.enabled = sync
        self.options = options or {}
        self.sims: dict[str, ServerThread] = {}
        self.gateways: list[ServerThread] = []

    def __enter__(self) -> Stack:
        from gateway.app import create_app
        from gateway.demo import simulator_app, webhook_url
        from gateway.simulators.webhooks import DeliveryOptions

        try:
            for name, backend in self.settings.backends.items():
                app = simulator_app(self.world, backend, webhook_url(self.settings, name),
                                    DeliveryOptions(**self.options))
                self.sims[name] = ServerThread(app, sock=self.sim_sockets[name]).start()
            for sock in self.gateway_sockets:
                self.gateways.append(ServerThread(create_app(self.settings), sock=sock).start())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all(self.gateways)  # the gateways first: they call the simulators
        stop_all(list(self.sims.values()))
        for sock in [*self.gateway_sockets, *self.sim_sockets.values()]:
            sock.close()  # a no-op for those a server took over and closed

    @property
    def url(self) -> str:
        return self.gateways[0].url

    def graphql(self, query: str, variables: dict[str, Any] | None = None,
                replica: int = 0, headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = httpx.post(f"{self.gateways[replica].url}/graphql",
                              json={"query": query, "variables": variables or {}},
                              headers=headers, timeout=30)
        body: dict[str, Any] = response.json()
        return body

    def sim(self, name: str) -> httpx.Client:
        """An HTTP client for simulator ``name`` with its credentials."""
        from resolvers.connectors.http import auth_headers

        backend = self.settings.backends[name]
        return httpx.Client(base_url=backend.base_url, headers=auth_headers(backend), timeout=30)

    def sale(self, i: int, store: int, quantity: int) -> int:
        """Sell item ``i`` at store ``store`` in the Square simulator (its signed webhook
        reaches the gateway); returns the simulator's IN_STOCK count afterwards."""
        with self.sim("pos") as pos:
            response = pos.post(SQUARE_CHANGES, json=square_sale(self.world, i, store, quantity))
        return in_stock_after(response, self.world.items[i].square_variation_id)

    def requests(self, name: str) -> dict[str, int]:
        """Requests the simulator has served, by ``METHOD path``."""
        with self.sim(name) as client:
            counts: dict[str, int] = client.get("/_sim/stats").json()["requests"]
        return counts

    def reset_requests(self) -> None:
        for name in self.sims:
            with self.sim(name) as client:
                client.delete("/_sim/stats")

    def drain_webhooks(self) -> None:
        for name in self.sims:
            with self.sim(name) as client:
                client.post("/_sim/webhooks/drain")


@contextmanager
def fresh_stack(redis_url: str, api_keys: dict[str, Any] | None = None,
                **options: Any) -> Iterator[Stack]:
    """A running :class:`Stack` on a flushed Redis, with ``api_keys`` (for module- or
    class-scoped fixtures, which cannot use the per-test ``redis_url`` fixture)."""
    import redis

    flusher = redis.Redis.from_url(redis_url)
    try:
        flusher.flushdb()
    finally:
        flusher.close()
    running = Stack(redis_url, **options)
    if api_keys is not None:
        running.settings.api_keys = api_keys
    with running:
        yield running


def stream_entries(found: StreamRangeResponse | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """What XRANGE / XREVRANGE answered to a client without ``decode_responses``: each entry's
    id and fields as bytes (redis-py types them ``bytes | str | None``, for every client)."""
    assert found is not None, "no reply to a stream range"
    entries = []
    for entry_id, fields in found:
        assert isinstance(entry_id, bytes), entry_id
        assert fields is not None, entry_id
        raw = {}
        for name, value in fields.items():
            assert isinstance(name, bytes), name
            assert isinstance(value, bytes), (name, value)
            raw[name] = value
        entries.append((entry_id, raw))
    return entries


def texts(found: Iterable[object]) -> list[str]:
    """Members a ``decode_responses`` client answered (ZRANGE, SMEMBERS...), checked to be
    text: redis-py types them ``bytes | str`` (or score pairs), whatever the client."""
    members = []
    for member in found:
        assert isinstance(member, str), member
        members.append(member)
    return members


def text_fields(found: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash a ``decode_responses`` client answered (HGETALL), checked to be text."""
    fields = {}
    for name, value in found.items():
        assert isinstance(name, str), name
        assert isinstance(value, str), (name, value)
        fields[name] = value
    return fields
