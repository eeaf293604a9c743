"""The Redis client every store is given: one server or a Cluster, every command with a
deadline (:class:`Deadlines`), and what to do while Redis is sick (:func:`optional`,
:class:`Backoff`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("retailgraph.cache")

# -- the client: every command has a deadline ---------------------------------------------------

REDIS_MAX_CONNECTIONS = 100

# While Redis is not answering, the guard PINGs it: a refused connection is tried again after
# this long, doubling up to the cap.
PROBE_FIRST_SECONDS = 0.05
PROBE_MAX_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long one Redis command (or pipeline) may take, waiting for a pooled connection
    included. ``read``: what a request can do without (inside :func:`optional`: cache
    lookups and fills, cached responses, persisted queries, rate-limit tokens); it falls
    back to the backends. ``write``: everything else (the event log, applying events,
    subscriptions' replays, background work); a webhook answers 503. A blocking read
    (``XREAD BLOCK n``, the change feeds) gets n ms plus ``write``."""

    read: float = 0.25
    write: float = 2.0

    @classmethod
    def of(cls, settings: Any) -> Deadlines:
        return cls(settings.redis_read_timeout_ms / 1000, settings.redis_write_timeout_ms / 1000)


class RedisDeadlineExceeded(RedisTimeoutError):
    """A command missed its deadline (Redis frozen, overloaded or unreachable)."""


class RedisNotAnswering(RedisConnectionError):
    """Skipped without trying: Redis missed a deadline recently and has not answered since."""


_OPTIONAL: ContextVar[bool] = ContextVar("retailgraph_redis_optional", default=False)


@contextlib.contextmanager
def optional() -> Iterator[None]:
    """Commands inside are ones the caller can do without (it has a fallback, or the write
    only saves work later): the read deadline, and skipped at once while Redis is not
    answering."""
    token = _OPTIONAL.set(True)
    try:
        yield
    finally:
        _OPTIONAL.reset(token)


def _block_seconds(args: Sequence[Any]) -> float:
    """How long a blocking command (``XREAD ... BLOCK ms``) may wait by itself."""
    if _name(args) == "XREAD":
        for i, arg in enumerate(args[:-1]):
            if arg in (b"BLOCK", "BLOCK", b"block", "block"):
                return int(args[i + 1]) / 1000
    return 0.0


_T = TypeVar("_T")


class CommandGuard:
    """Runs every command of one client under its deadline, and keeps optional reads from
    waiting on a Redis that stopped answering.

    A command that misses its deadline (or cannot connect) fails alone, and starts a probe:
    a PING within the write deadline. If that misses too, Redis is *not answering*: optional
    commands fail at once (``RedisNotAnswering``: straight to their fallback) while the
    probe keeps PINGing (a thawing server's answer is seen at once) until Redis answers.
    Other commands are always tried, within the write deadline. A single slow command (a
    cold connection, a busy server) does not switch reads off; a frozen or unreachable
    server does, within the read plus the write deadline.
    """

    def __init__(self, deadlines: Deadlines,
                 ping: Callable[[], Awaitable[object]] | None = None) -> None:
        self.deadlines = deadlines
        self.ping = ping
        self.sick_since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    async def run(self, block: float, call: Callable[[], Awaitable[_T]], what: str) -> _T:
        if _OPTIONAL.get() and not block:
            if self.sick_since is not None:
                raise RedisNotAnswering(
                    f"Redis has not answered for {time.monotonic() - self.sick_since:.1f}s; "
                    f"{what} skipped")
            seconds = self.deadlines.read
        else:
            seconds = self.deadlines.write + block
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as budget:
                # At the deadline, the cancellation is scheduled for the loop's next turn
                # (reschedule to now): an answer that came in while the loop was busy has
                # already woken its reader, which runs first and keeps it.
                expiry = loop.call_at(loop.time() + seconds, budget.reschedule, -1.0)
                try:
                    result = await call()
                finally:
                    expiry.cancel()
        except TimeoutError:
            self._missed(what, None)
            raise RedisDeadlineExceeded(
                f"Redis {what} missed its {seconds * 1000:.0f} ms deadline") from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._missed(what, exc)
            raise
        if self.sick_since is not None:
            self._recovered()
        return result

    def _missed(self, what: str, exc: BaseException | None) -> None:
        if self.ping is not None and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._watch(what, exc))

    async def _watch(self, what: str, exc: BaseException | None) -> None:
        """PING until Redis answers; reads are skipped from the first PING it misses on."""
        assert self.ping is not None
        backoff = PROBE_FIRST_SECONDS
        while True:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.deadlines.write):
                    await self.ping()
            except (RedisError, OSError) as error:
                if self.sick_since is None:
                    self.sick_since = time.monotonic()
                    log.warning("Redis is not answering (%s: %s; then PING: %s): reads go to "
                                "the backends, webhooks get 503 until it does", what,
                                str(exc or "") or "deadline missed",
                                str(error) or "deadline missed")
                # A refused connection fails at once: do not spin.
                await asyncio.sleep(max(0.0, backoff - (time.monotonic() - started)))
                backoff = min(backoff * 2, PROBE_MAX_SECONDS)
                continue
            if self.sick_since is not None:
                self._recovered()
            return

    def _recovered(self) -> None:
        if self.sick_since is not None:
            log.warning("Redis answers again, after %.1fs", time.monotonic() - self.sick_since)
            self.sick_since = None

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


class Backoff:
    """How long a background loop (sweeper, change feeds, sync health) waits after Redis
    failed it: ``first`` seconds, doubling up to ``cap``, back to ``first`` once a round
    succeeds. The first failure is logged as a warning, the repeats at debug level, and the
    recovery once."""

    def __init__(self, what: str, first: float = 0.25, cap: float = 4.0) -> None:
        self.what = what
        self.first = first
        self.cap = cap
        self.failures = 0
        self._since = 0.0

    def failed(self, exc: BaseException) -> float:
        """The delay before the next try."""
        if self.failures == 0:
            self._since = time.monotonic()
            log.warning("%s paused: %s", self.what, exc)
        else:
            log.debug("%s still paused: %s", self.what, exc)
        delay: float = min(self.first * 2.0 ** min(self.failures, 16), self.cap)
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        if self.failures:
            log.warning("%s resumed after %.1fs", self.what, time.monotonic() - self._since)
            self.failures = 0


class GuardedPipeline(Pipeline):
    """A pipeline, run by the guard as one command."""

    guard: CommandGuard
    _block = 0.0

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self._block = max(self._block, _block_seconds(args))
        return super().execute_command(*args, **kwargs)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        block, self._block = self._block, 0.0
        return await self.guard.run(block, lambda: super(GuardedPipeline, self).execute(
            raise_on_error), f"pipeline of {len(self.command_stack)}")


# Never sent in a shared batch: they block, hold or change their connection's state.
_NOT_BATCHED = frozenset({
    "BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX", "BLMPOP", "BZMPOP",
    "WAIT", "WAITAOF", "WATCH", "UNWATCH", "MULTI", "EXEC", "DISCARD", "SUBSCRIBE",
    "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "SELECT", "AUTH", "HELLO", "CLIENT", "RESET",
    "QUIT", "SHUTDOWN"})


class CommandBatcher:
    """Commands that tasks issue in the same turn of the event loop, sent together as one
    pipeline (one write, one round trip) instead of one round trip each: under concurrent
    webhooks, their log appends, cache writes and publishes share the wire.

    Nothing changes for the caller: each command keeps its own deadline (the guard runs
    around waiting for its answer), its own result or error (a failing command fails
    alone), and the order in which it was issued; a task's next command is issued only
    after the answer to its previous one, so per task the order is the one it awaited.
    A lone command goes out by itself. Blocking commands, those that change their
    connection (:data:`_NOT_BATCHED`) and optional ones (:func:`optional`) never join a
    batch; a batch whose callers all gave up before it got a connection is not sent."""

    def __init__(self, client: GuardedRedis) -> None:
        self.client = client
        self.pending: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self.batches = 0  # batches of two or more sent (and their commands): for benchmarks
        self.batched = 0

    def submit(self, args: tuple[Any, ...], options: dict[str, Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((args, options, future))
        return future

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        batch = [entry for entry in batch if not entry[2].done()]  # given up on meanwhile
        if len(batch) == 1:
            batch[0][2].set_result(ALONE)  # its caller sends it, as if never batched
        elif batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            _batches_running.add(task)
            task.add_done_callback(_batches_running.discard)

            def given_up(_: asyncio.Future[Any]) -> None:
                # Every caller gave up (deadline) while the batch waits for a connection:
                # it is not sent at all, as their commands alone would not have been.
                if not task.done() and all(f.done() for _, _, f in batch):
                    task.cancel()

            for _, _, future in batch:
                future.add_done_callback(given_up)

    async def _send(self, batch: list[tuple[tuple[Any, ...], dict[str, Any],
                                            asyncio.Future[Any]]]) -> None:
        pool = self.client.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            # Only what is still awaited is sent (a caller may have given up meanwhile).
            live = [entry for entry in batch if not entry[2].done()]
            pipe = Pipeline(pool, self.client.response_callbacks, False, None)
            pipe.connection = conn  # released by the pipeline when done
            if not live:
                await pipe.reset()  # type: ignore[no-untyped-call]
                return
            self.batches += 1
            self.batched += len(live)
            for args, options, _ in live:
                pipe.execute_command(*args, **options)
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every command on it did
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


ALONE = object()  # a batch of one: its caller sends it by itself
_batches_running: set[asyncio.Task[None]] = set()


class GuardedRedis(aioredis.Redis):
    """redis-py's client with a :class:`CommandGuard` on every command and pipeline, and
    concurrent commands sent in shared batches (:class:`CommandBatcher`)."""

    guard: CommandGuard
    batcher: CommandBatcher | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        block = _block_seconds(args)
        name = _name(args)
        batcher = self.batcher
        # What a request can do without (optional(): cache reads, rate-limit tokens) goes out
        # at once: its short deadline counts from now, and waiting one loop turn for a
        # batch could spend it on our own busy loop rather than on Redis.
        if batcher is None or block or name in _NOT_BATCHED or _OPTIONAL.get():
            return await self.guard.run(block, lambda: self.direct(*args, **options), name)
        return await self.guard.run(0.0, lambda: self._batched(batcher, args, options), name)

    async def _batched(self, batcher: CommandBatcher, args: tuple[Any, ...],
                       options: dict[str, Any]) -> Any:
        answer = await _answer(batcher.submit(args, options))
        if answer is ALONE:
            return await self.direct(*args, **options)
        return answer

    async def direct(self, *args: Any, **options: Any) -> Any:
        """The command on a connection of its own (no batch)."""
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    async def unguarded_ping(self) -> object:
        return await super().execute_command("PING")  # type: ignore[no-untyped-call]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.guard.aclose()
        await super().aclose(close_connection_pool)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None,
                 ) -> GuardedPipeline:
        pipe = GuardedPipeline(self.connection_pool, self.response_callbacks, transaction,
                               shard_hint)
        pipe.guard = self.guard
        return pipe


class GuardedClusterPipeline(ClusterPipeline):
    guard: CommandGuard
    _block = 0.0
    _queued = 0

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self._block = max(self._block, _block_seconds(args))
        self._queued += 1
        return super().execute_command(*args, **kwargs)

    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        block, what = self._block, f"pipeline of {self._queued}"
        self._block, self._queued = 0.0, 0
        return await self.guard.run(block, lambda: super(GuardedClusterPipeline, self)
                                    .execute(raise_on_error, allow_redirections), what)


class GuardedCluster(RedisCluster):
    """redis-py's Cluster client with a :class:`CommandGuard` on every command."""

    guard: CommandGuard

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self.guard.run(_block_seconds(args), lambda: super(GuardedCluster, self)
                                    .execute_command(*args, **kwargs), _name(args))

    async def unguarded_ping(self) -> object:
        return await super().execute_command("PING")

    async def aclose(self) -> None:
        await self.guard.aclose()
        await super().aclose()

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None,
                 ) -> GuardedClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # type: ignore[return-value]
        pipe = GuardedClusterPipeline(self, transaction)  # type: ignore[abstract]
        pipe.guard = self.guard
        return pipe


async def _answer(future: asyncio.Future[Any]) -> Any:
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.cancel()  # deadline missed: not sent if still waiting for its batch
        raise


def _name(args: Sequence[Any]) -> str:
    first = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    return first.split(" ", 1)[0].upper()


async def connect(url: str, deadlines: Deadlines | None = None, batch: bool = False,
                  ) -> aioredis.Redis | RedisCluster:
    """A client for ``redis://``, ``rediss://`` (TLS), ``unix://`` or ``redis+cluster://``.

    Credentials (ACL user and password) go in the URL: ``redis://user:pass@host:6379/0``.
    Every command and pipeline runs under ``deadlines`` (see :class:`CommandGuard`);
    with ``batch``, concurrent commands share round trips (:class:`CommandBatcher`; one
    server only: a Cluster routes each command to its slot's node).
    """
    guard = CommandGuard(deadlines or Deadlines())
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        cluster_url = url.replace("+cluster", "", 1)
        cluster = cast("GuardedCluster", GuardedCluster.from_url(
            cluster_url, socket_timeout=None, socket_connect_timeout=2))
        cluster.guard = guard
        guard.ping = cluster.unguarded_ping
        async with asyncio.timeout(guard.deadlines.write * 5):
            await cluster.initialize()
        return cluster
    # redis-py's default pool refuses a command once 100 are in flight ("Too many
    # connections"): under a burst (webhooks in flight, hundreds of clients subscribing at
    # once) webhooks got 503s and subscriptions ended with INTERNAL. Wait for a connection;
    # the wait counts against the command's deadline, so a frozen Redis cannot hold the pool.
    # No socket timeout of redis-py's own (5 s by default): the guard's deadline is the one
    # bound, and redis-py's timed socket write (asyncio.wait_for on Python 3.11) could
    # swallow the guard's cancellation (CPython gh-86296) and leave a command waiting 5 s.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=REDIS_MAX_CONNECTIONS, timeout=None, socket_timeout=None,
        health_check_interval=10, socket_connect_timeout=2)
    client = cast("GuardedRedis", GuardedRedis.from_pool(pool))
    client.guard = guard
    if batch:
        client.batcher = CommandBatcher(client)
    guard.ping = client.unguarded_ping
    return client
