"""Rate limiting per client: a token bucket in the shared Redis, across replicas, with the
standard ``RateLimit-*`` headers and 429; let through when Redis is unreachable."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.http.ratelimit import RateLimiter, RateLimitMiddleware, TokenBucket
from tests.support import Stack, free_port, serve

PER_MINUTE = 4
KEYS = {"one": "client-one-key-000000", "two": "client-two-key-000000"}
QUERY = {"query": "{ locations { id } }"}


@pytest.fixture(scope="module")
def limited(redis_server_url: str) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    stack = Stack(redis_server_url, replicas=2)
    stack.settings.rate_limit_per_minute = PER_MINUTE
    stack.settings.api_keys = {name: {"key": key, "scopes": ["stock:read"]}
                               for name, key in KEYS.items()}
    with stack:
        yield stack


def call(stack: Stack, client: str, replica: int) -> httpx.Response:
    return httpx.post(f"{stack.gateways[replica].url}/graphql", json=QUERY,
                      headers={"authorization": f"Bearer {KEYS[client]}"}, timeout=30)


def test_each_client_has_a_bucket_shared_by_every_replica(limited: Stack) -> None:
    remaining = []
    for i in range(PER_MINUTE):
        response = call(limited, "one", replica=i % 2)
        assert response.status_code == 200, response.text
        assert response.headers["ratelimit-limit"] == str(PER_MINUTE)
        assert int(response.headers["ratelimit-reset"]) > 0
        remaining.append(int(response.headers["ratelimit-remaining"]))
    assert remaining == [3, 2, 1, 0]
    refused = call(limited, "one", replica=1)
    assert refused.status_code == 429
    assert refused.headers["ratelimit-remaining"] == "0"
    # One token comes back every 60/4 = 15 s.
    assert 1 <= int(refused.headers["retry-after"]) <= 15
    (error,) = refused.json()["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert "4 requests per minute" in error["message"]
    # Another client is not affected.
    other = call(limited, "two", replica=0)
    assert other.status_code == 200
    assert other.headers["ratelimit-remaining"] == "3"
    # Unauthenticated requests are refused before they could spend anyone's tokens.
    anonymous = httpx.post(f"{limited.url}/graphql", json=QUERY, timeout=30)
    assert anonymous.status_code == 401
    assert call(limited, "two", replica=1).headers["ratelimit-remaining"] == "2"
    # Liveness and webhooks are not rate limited.
    assert all(httpx.get(f"{limited.url}/healthz", timeout=10).status_code == 200
               for _ in range(PER_MINUTE + 1))


def test_bucket_arithmetic(redis_url: str) -> None:
    async def run() -> list[tuple[bool, int, int, int]]:
        client = aioredis.Redis.from_url(redis_url)
        bucket = TokenBucket(per_minute=3)
        try:
            out = []
            for _ in range(4):
                d = await bucket.take(client, "ip:10.0.0.1")
                out.append((d.allowed, d.remaining, d.reset_seconds, d.retry_after_seconds))
            return out
        finally:
            await client.aclose()

    results = asyncio.run(run())
    assert [r[:2] for r in results] == [(True, 2), (True, 1), (True, 0), (False, 0)]
    # Empty after 3 requests: full again in 60 s, the next token in 20 s.
    assert 59 <= results[-1][2] <= 60
    assert 19 <= results[-1][3] <= 20


def test_requests_go_through_when_redis_is_down() -> None:
    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"data": {"ok": True}})

    # No retries: redis-py's default retry (backoff of seconds per request) is its own, not
    # what is tested here; the gateway's client has its own deadlines
    # (tests/e2e/test_sick_redis.py).
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                          retry=Retry(NoBackoff(), 0))
    limiter = RateLimiter(dead, per_minute=1)
    app = RateLimitMiddleware(Starlette(routes=[Route("/graphql", hello, methods=["POST"])]),
                              limiter=limiter)
    with serve(app) as server:
        for _ in range(3):
            response = httpx.post(f"{server.url}/graphql", json=QUERY, timeout=10)
            assert response.status_code == 200
            assert "ratelimit-limit" not in response.headers
