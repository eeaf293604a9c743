"""Run several uvicorn servers in one event loop and stop them together on SIGINT/SIGTERM;
run one of them in several worker processes sharing its port (:class:`Workers`)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn
from starlette.types import ASGIApp

STOP_GRACE_SECONDS = 5.0
log = logging.getLogger("retailgraph.serving")


class Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`run_together`."""

    bound: list[socket.socket] | None = None  # serve on these instead of binding host:port

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await super().serve(sockets if sockets is not None else self.bound)


def make_server(app: ASGIApp, host: str, port: int, *,
                ws_per_message_deflate: bool = False,
                sockets: Sequence[socket.socket] = ()) -> Server:
    """A uvicorn server for ``app`` on ``host:port``, or on ``sockets`` (already bound) if
    given; permessage-deflate only when asked (the gateway's ``ws_per_message_deflate``
    setting): uvicorn would accept it from every client."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            ws="websockets-sansio", lifespan="on",
                            ws_per_message_deflate=ws_per_message_deflate)
    server = Server(config)
    server.bound = list(sockets) or None
    return server


def run(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run ``main`` to completion on a new event loop of the kind ``event_loop`` names
    (``Settings.event_loop``: "uvloop" or "asyncio")."""
    if event_loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        asyncio.run(main)


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that other processes may bind too
    (``SO_REUSEPORT``): the kernel spreads new connections over those that listen. It
    listens once its server has started (asyncio listens when it starts serving), so a
    worker still starting up is given no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def default_workers() -> int:
    """Worker processes when none are asked for: one per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A worker gets SIGKILL when its supervisor dies, however it dies (``kill -9``
    included): no worker outlives it, holding the port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _worker(target: Callable[..., None], args: tuple[Any, ...], parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        return
    # Forked from the supervisor: nothing of its event loop's signal handling is ours.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Ctrl+C reaches the whole process group: while starting up a worker ignores it (the
    # supervisor then asks it to stop, SIGTERM); once serving, both stop it gracefully.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    target(*args)


class Workers:
    """``count`` processes, each running ``target(*args)`` (a server that binds its port
    with :func:`shared_port_socket`) and building everything itself from its arguments (the
    one composition root, ``gateway.app.build``, in its lifespan). ``method`` "fork" (from a
    thread of the supervisor that runs no event loop, so a worker starts its own): the
    imported code is shared, not imported again per worker, which on a busy machine is most
    of a start-up; for a supervisor that holds nothing a worker could trip over (``serve``:
    no connection, no server of its own). "spawn": a fresh interpreter (the demo, whose
    supervisor runs the simulators).

    :meth:`run` (a background job of :func:`run_together`) supervises them until it is
    asked to stop (:meth:`stop`: SIGTERM to every worker, each stopping gracefully) or
    cancelled: a worker that dies is restarted, unless it dies within ``RESTART_WINDOW``
    seconds of its start, which ends the run (and so the command)."""

    RESTART_WINDOW = 10.0

    def __init__(self, count: int, target: Callable[..., None], args: tuple[Any, ...],
                 method: str = "fork") -> None:
        self.count = count
        self.target = target
        self.args = args
        self.context = multiprocessing.get_context(method)
        self.procs: list[BaseProcess] = []
        self.started: list[float] = []
        self.stopping = False
        self.failed = False

    def _spawn(self) -> BaseProcess:
        process: type[BaseProcess] = self.context.Process  # type: ignore[attr-defined]
        proc = process(target=_worker, args=(self.target, self.args, os.getpid()),
                       daemon=False)
        proc.start()
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    async def run(self) -> None:
        try:
            for _ in range(self.count):
                self.procs.append(await asyncio.to_thread(self._spawn))
                self.started.append(time.monotonic())
            while not self.stopping:
                await asyncio.sleep(0.2)
                for n, proc in enumerate(self.procs):
                    if proc.is_alive() or self.stopping:
                        continue
                    if time.monotonic() - self.started[n] < self.RESTART_WINDOW:
                        log.error("worker %s exited with %s within %.0f s of its start; "
                                  "stopping", proc.pid, proc.exitcode, self.RESTART_WINDOW)
                        self.failed = True
                        return
                    log.warning("worker %s exited with %s; starting another", proc.pid,
                                proc.exitcode)
                    self.procs[n] = await asyncio.to_thread(self._spawn)
                    self.started[n] = time.monotonic()
        finally:
            self.stop()
            await asyncio.shield(asyncio.to_thread(self._join))

    def stop(self) -> None:
        """Ask every worker to stop (SIGTERM: each finishes gracefully)."""
        self.stopping = True
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    def _join(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_SECONDS * 3
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)


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

