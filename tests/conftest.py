"""Shared fixtures: a real Redis-protocol server, and a whole stack on real loopback ports.

Redis: ``REDIS_URL`` when set, else a private Valkey server started for the session. Each
test that asks for ``redis_url`` gets it flushed first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from tests.support import Stack


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from gateway.redis_server import start_server

    server = start_server()
    try:
        yield str(server.connection_url)
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    """Four simulators and one gateway, all over real HTTP, sharing the test Redis."""
    with Stack(redis_url) as running:
        yield running
