"""At-least-once webhook delivery, the way the real vendors do it.

Each simulator hands a payload to its :class:`WebhookSender`; worker tasks POST it to the
gateway, signing every attempt with the simulator's scheme and retrying with exponential
backoff until a 2xx. For tests, deliveries can be duplicated and reordered on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

log = logging.getLogger("retailgraph.simulators.webhooks")

# (body, attempt number starting at 0, delivery id) -> headers to send with that attempt
Signer = Callable[[bytes, int, str], dict[str, str]]


@dataclass(slots=True)
class DeliveryRecord:
    """One finished delivery, kept for inspection (``GET /_sim/webhooks``)."""

    delivery_id: str
    topic: str
    body: bytes
    headers: dict[str, str]
    attempts: int
    status: int | None
    duplicate: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"delivery_id": self.delivery_id, "topic": self.topic,
                "body": self.body.decode(), "headers": self.headers, "attempts": self.attempts,
                "status": self.status, "duplicate": self.duplicate}


@dataclass(slots=True)
class DeliveryOptions:
    """Fault knobs; all off by default."""

    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    drop_rate: float = 0.0  # never sent at all: a lost webhook, for gap tests
    delay_seconds: float = 0.0  # each delivery waits this long first: a slow webhook
    max_attempts: int = 8
    backoff: float = 0.2
    concurrency: int = 1


@dataclass(slots=True)
class _Pending:
    delivery_id: str
    topic: str
    body: bytes
    duplicate: bool = False


class WebhookSender:
    """Queue of outgoing webhooks with retries; started and stopped by the app lifespan."""

    def __init__(self, url: str, sign: Signer, options: DeliveryOptions | None = None,
                 seed: int = 0) -> None:
        self.url = url
        self.sign = sign
        self.options = options or DeliveryOptions()
        self.history: deque[DeliveryRecord] = deque(maxlen=2000)
        self.failed: deque[DeliveryRecord] = deque(maxlen=2000)
        self.dropped: deque[_Pending] = deque(maxlen=2000)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._rng = random.Random(seed)
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._in_flight = 0
        self.sent_total = 0

    def send(self, topic: str, delivery_id: str, payload: Any) -> None:
        """Queue ``payload`` (JSON-serialisable) for delivery; never blocks the caller."""
        if not self.url:
            return
        body = orjson.dumps(payload)
        if self._rng.random() < self.options.drop_rate:
            self.dropped.append(_Pending(delivery_id, topic, body))
            return
        self._queue.put_nowait(_Pending(delivery_id, topic, body))
        if self._rng.random() < self.options.duplicate_rate:
            self._queue.put_nowait(_Pending(delivery_id, topic, body, duplicate=True))

    async def start(self) -> None:
        if self._workers:
            return
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=1.0))
        self._workers = [asyncio.create_task(self._work())
                         for _ in range(max(1, self.options.concurrency))]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def drain(self) -> None:
        """Wait until everything queued so far has been delivered or given up."""
        await self._queue.join()

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self._in_flight

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            self._in_flight += 1
            try:
                if self._rng.random() < self.options.reorder_rate:
                    # Hold this one back so deliveries queued after it overtake it.
                    await asyncio.sleep(0.05 + self._rng.random() * 0.2)
                if self.options.delay_seconds > 0:
                    await asyncio.sleep(self.options.delay_seconds)
                await self._deliver(item)
            finally:
                self._in_flight -= 1
                self._queue.task_done()

    async def _deliver(self, item: _Pending) -> None:
        assert self._client is not None
        status: int | None = None
        headers: dict[str, str] = {}
        attempt = 0
        for attempt in range(self.options.max_attempts):
            headers = {"Content-Type": "application/json",
                       **self.sign(item.body, attempt, item.delivery_id)}
            try:
                response = await self._client.post(self.url, content=item.body, headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                log.debug("webhook %s attempt %d failed: %s", item.delivery_id, attempt, exc)
                status = None
            if status is not None and 200 <= status < 300:
                break
            if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
                break  # the receiver rejected it; retrying the same bytes cannot help
            await asyncio.sleep(self.options.backoff * 2**attempt)
        record = DeliveryRecord(item.delivery_id, item.topic, item.body, headers, attempt + 1,
                                status, item.duplicate)
        self.sent_total += 1
        self.history.append(record)
        if status is None or not 200 <= status < 300:
            log.warning("webhook %s to %s gave up with status %s", item.topic, self.url, status)
            self.failed.append(record)
