"""Shared fixtures: a real Redis-protocol server, and a whole stack on real loopback ports.

Redis: ``REDIS_URL`` when set, else a private Valkey server started for the session (under
pytest-xdist, one per worker). Each test that asks for ``redis_url`` gets it flushed first.
Under pytest-xdist a ``REDIS_URL`` is shared by the workers, so each worker uses its own
database of it (worker ``gwN``: database N), and flushing one leaves the others alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.support import Stack, free_port


def worker_database(url: str) -> str:
    """``url`` with this xdist worker's own database number (unchanged outside xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{int(worker[2:])}"))


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Undo what ``retailgraph`` commands run in-process (``cli.main``) do to the root logger:
    its stderr handler would outlive the test's captured stderr, and later tests' servers
    would log into a closed file."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield worker_database(url)
        return
    from gateway.redis_server import start_server

    server = start_server(ports=free_port)
    try:
        yield str(server.connection_url)
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    """Four simulators and one gateway, all over real HTTP, sharing the test Redis."""
    with Stack(redis_url) as running:
        yield running
