"""Run several uvicorn servers in one event loop and stop them together on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any

import uvicorn
from starlette.types import ASGIApp

STOP_GRACE_SECONDS = 5.0


class Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`run_together`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(app: ASGIApp, host: str, port: int, *,
                ws_per_message_deflate: bool = False) -> Server:
    """A uvicorn server; permessage-deflate only when asked (the gateway's
    ``ws_per_message_deflate`` setting): uvicorn would accept it from every client."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            ws="websockets-sansio", lifespan="on",
                            ws_per_message_deflate=ws_per_message_deflate)
    return Server(config)


async def run_together(stages: Sequence[Sequence[Server]],
                       background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
                       on_started: Callable[[], None] | None = None,
                       on_stopping: Sequence[Callable[[], None]] = ()) -> None:
    """Start each stage's servers once the previous stage accepts connections, then serve
    until a signal arrives or any server stops, and shut everything down gracefully: the
    background jobs first, then the stages in reverse order (a later stage uses the earlier
    ones: the demo's gateway calls its simulators), so nothing in use disappears first.
    ``on_stopping`` asks the background jobs to finish what they are doing (the demo's
    activity completes its request instead of cutting it off); those still running after
    ``STOP_GRACE_SECONDS`` are cancelled."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    staged: list[list[asyncio.Task[None]]] = []
    extra: list[asyncio.Task[None]] = []

    def over() -> bool:
        return stopping.is_set() or any(t.done() for tasks in staged for t in tasks)

    try:
        for stage in stages:
            staged.append([asyncio.create_task(s.serve()) for s in stage])
            while not all(s.started for s in stage):
                if over():
                    break
                await asyncio.sleep(0.02)
        if not over():
            extra = [asyncio.create_task(job()) for job in background]
            if on_started is not None:
                on_started()
            signalled = asyncio.create_task(stopping.wait())
            await asyncio.wait([*(t for tasks in staged for t in tasks), *extra, signalled],
                               return_when=asyncio.FIRST_COMPLETED)
            signalled.cancel()
    finally:
        for ask in on_stopping:
            ask()
        if extra:
            await asyncio.wait(extra, timeout=STOP_GRACE_SECONDS)
        for task in extra:
            task.cancel()
        await asyncio.gather(*extra, return_exceptions=True)
        for stage, tasks in reversed(list(zip(stages, staged, strict=False))):
            for server in stage:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

