"""Persisted queries: Apollo's APQ flow across replicas (texts live in Redis), over POST and
GET, and the allow-list mode in which only listed operations run (admins excepted)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.config import ConfigError
from gateway.http.persisted import load_allow_list
from tests.support import Stack

QUERY = "query Stores { locations(type: STORE) { id name } }"
OTHER = "query Warehouses { locations(type: WAREHOUSE) { id } }"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def persisted(digest: str, version: int = 1) -> dict[str, Any]:
    return {"persistedQuery": {"version": version, "sha256Hash": digest}}


def post(url: str, payload: dict[str, Any], credential: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {credential}"} if credential else {}
    return httpx.post(f"{url}/graphql", json=payload, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def apq(redis_server_url: str) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    with Stack(redis_server_url, replicas=2) as stack:
        yield stack


def stored_hashes(stack: Stack) -> set[str]:
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        return {k.decode().removeprefix("rg:apq:") for k in client.scan_iter("rg:apq:*")}
    finally:
        client.close()


def test_automatic_persisted_query_flow(apq: Stack) -> None:
    digest = sha(QUERY)
    first = post(apq.url, {"extensions": persisted(digest)})
    assert first.status_code == 200
    (error,) = first.json()["errors"]
    assert error["message"] == "PersistedQueryNotFound"
    assert error["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    assert digest not in stored_hashes(apq)

    registered = post(apq.url, {"query": QUERY, "extensions": persisted(digest)})
    assert registered.status_code == 200
    expected = registered.json()["data"]
    assert [x["id"] for x in expected["locations"]] == ["ST001", "ST002", "ST003"]
    assert digest in stored_hashes(apq)

    for replica in (0, 1):
        again = post(apq.gateways[replica].url, {"extensions": persisted(digest)})
        assert again.status_code == 200
        assert again.json()["data"] == expected
    get = httpx.get(f"{apq.gateways[1].url}/graphql", timeout=30, params={
        "extensions": json.dumps(persisted(digest)), "operationName": "Stores"})
    assert get.status_code == 200, get.text
    assert get.json()["data"] == expected


def test_hashed_queries_share_the_response_cache(apq: Stack) -> None:
    """The request that registers a text and later hash-only requests share one entry."""
    text = 'query One { product(sku: "SKU-000003") { stock { onHand } } }'
    digest = sha(text)
    assert post(apq.url, {"query": text, "extensions": persisted(digest)}).status_code == 200
    # The miss stores its response just after answering: ask until it is served from there.
    for _ in range(200):
        hashed = post(apq.url, {"extensions": persisted(digest)})
        if hashed.headers.get("x-retailgraph-cache") == "hit":
            break
        time.sleep(0.01)
    assert hashed.headers.get("x-retailgraph-cache") == "hit"
    assert hashed.json()["data"]["product"]["stock"]


def test_bad_persisted_queries_are_refused_and_not_stored(apq: Stack) -> None:
    before = stored_hashes(apq)
    mismatch = post(apq.url, {"query": QUERY, "extensions": persisted(sha(OTHER))})
    assert mismatch.status_code == 400
    assert mismatch.json()["errors"][0]["message"] == "provided sha does not match query"
    for bad in (persisted(sha(QUERY), version=2), persisted("abc"),
                {"persistedQuery": "yes"}, persisted(sha(QUERY).upper())):
        response = post(apq.url, {"query": QUERY, "extensions": bad})
        assert response.status_code == 400, bad
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    # A text that does not validate (or is over a limit) is not registered.
    invalid = "{ locations { nope } }"
    refused = post(apq.url, {"query": invalid, "extensions": persisted(sha(invalid))})
    assert refused.status_code == 200
    assert refused.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    broken = "{ locations { id "
    assert post(apq.url, {"query": broken, "extensions": persisted(sha(broken))}).json()[
        "errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    assert stored_hashes(apq) == before
    later = post(apq.url, {"extensions": persisted(sha(invalid))})
    assert later.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


# -- allow-list ----------------------------------------------------------------------------------

READER, ADMIN = "reader-key-00000000000", "admin-key-000000000000"


@pytest.fixture(scope="module")
def listed(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    manifest = tmp_path_factory.mktemp("allow") / "operations.json"
    manifest.write_text(json.dumps({
        "format": "apollo-persisted-query-manifest", "version": 1,
        "operations": [{"id": sha(QUERY), "name": "Stores", "type": "query", "body": QUERY},
                       {"id": "stock-v1", "name": "Stock", "type": "query",
                        "body": 'query Stock { product(sku: "SKU-000001") { sku } }'}]}))
    stack = Stack(redis_server_url)
    stack.settings.allow_list_file = str(manifest)
    stack.settings.apq = False
    stack.settings.api_keys = {"reader": {"key": READER, "scopes": ["stock:read"]},
                               "admin": {"key": ADMIN, "scopes": ["admin"]}}
    with stack:
        yield stack


def test_allow_list_runs_only_listed_operations(listed: Stack) -> None:
    by_hash = post(listed.url, {"extensions": persisted(sha(QUERY))}, READER)
    assert by_hash.status_code == 200
    assert len(by_hash.json()["data"]["locations"]) == 3
    by_id = post(listed.url, {"query": 'query Stock { product(sku: "SKU-000001") { sku } }'},
                 READER)
    assert by_id.json()["data"] == {"product": {"sku": "SKU-000001"}}
    in_full = post(listed.url, {"query": QUERY}, READER)
    assert in_full.json()["data"] == by_hash.json()["data"]
    for payload in ({"query": OTHER}, {"extensions": persisted(sha(OTHER))},
                    {"query": OTHER, "extensions": persisted(sha(OTHER))}):
        refused = post(listed.url, payload, READER)
        assert refused.status_code == 403, payload
        assert refused.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_ALLOWED"
    # Admins may run anything (APQ is switched off on this gateway).
    assert post(listed.url, {"query": OTHER}, ADMIN).json()["data"]["locations"]
    hashed = post(listed.url, {"extensions": persisted(sha(OTHER))}, ADMIN)
    assert hashed.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_SUPPORTED"


def test_allow_list_file_formats(tmp_path: Path) -> None:
    plain = tmp_path / "map.json"
    plain.write_text(json.dumps({"my-id": QUERY}))
    assert load_allow_list(str(plain)) == {"my-id": QUERY, sha(QUERY): QUERY}
    texts = tmp_path / "list.json"
    texts.write_text(json.dumps([QUERY, OTHER]))
    assert set(load_allow_list(str(texts))) == {sha(QUERY), sha(OTHER)}
    for content in ("not json", "[]", json.dumps({"operations": [{"id": "x"}]})):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(ConfigError, match="allow_list_file"):
            load_allow_list(str(bad))
    with pytest.raises(ConfigError, match="allow_list_file"):
        load_allow_list(str(tmp_path / "missing.json"))
