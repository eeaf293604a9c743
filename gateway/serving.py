"""Run several uvicorn servers in one event loop and stop them together on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Generator, Sequence

import uvicorn


class Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`run_together`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(app: object, host: str, port: int) -> Server:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            ws="websockets-sansio", lifespan="on")
    return Server(config)


async def run_together(stages: Sequence[Sequence[Server]],
                       background: Sequence[Callable[[], Awaitable[None]]] = (),
                       on_started: Callable[[], None] | None = None) -> None:
    """Start each stage's servers once the previous stage accepts connections, then serve
    until a signal arrives or any server stops, and shut everything down gracefully."""
    loop = asyncio.get_running_loop()
    servers = [s for stage in stages for s in stage]

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks: list[asyncio.Task[None]] = []
    extra: list[asyncio.Task[None]] = []
    try:
        for stage in stages:
            tasks += [asyncio.create_task(s.serve()) for s in stage]
            while not all(s.started for s in stage):
                if any(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.02)
        if not any(t.done() for t in tasks):
            extra = [asyncio.create_task(job()) for job in background]
            if on_started is not None:
                on_started()
            await asyncio.wait(tasks + extra, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop()
        for task in extra:
            task.cancel()
        await asyncio.gather(*tasks, *extra, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
