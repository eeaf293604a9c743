"""The simulators checked against the vendors' official client libraries, not our connector.

- Shopify, Node: ``@shopify/shopify-api`` (pinned in tests/vendor_sdks/package-lock.json) runs
  GraphQL Admin 2026-10 requests through its own client (``shopify_admin.mjs requests``) and
  validates the simulator's webhooks with ``shopify.webhooks.validate`` (``... webhooks``).
  The library only speaks https, so the simulator is served over TLS with a certificate made
  here and trusted through ``NODE_EXTRA_CA_CERTS``.
- Shopify, Python: ``ShopifyAPI`` (``shopify.GraphQL()`` and its REST resources).
- Square, Python: ``squareup`` (``square.Square(base_url=...)``), API version 2026-09-16.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.simulators.commerce import create_app as commerce_app
from gateway.simulators.webhooks import DeliveryOptions
from gateway.simulators.world import World
from resolvers.settings import BackendSettings
from tests.integration.test_commerce import SECRET, TOKEN
from tests.nodejs import NODE, needs_node, node_env, npm_install
from tests.support import ServerThread, free_port, serve

VENDOR_SDKS = Path(__file__).resolve().parents[1] / "vendor_sdks"
WORLD = World(seed=7, skus=30, stores=3, warehouses=2)
L1 = int(WORLD.warehouses[0].shopify_id or 0)
LOC1 = f"gid://shopify/Location/{L1}"
GQL = "/admin/api/2026-10/graphql.json"
READ = """query($sku: String!) { productVariants(first: 1, query: $sku) { nodes { id sku
  inventoryItem { id inventoryLevel(locationId: "LOC1") { id
    quantities(names: ["available", "on_hand", "committed"]) { name quantity } } } } } }
    """.replace("LOC1", LOC1)
SET = """mutation($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id changes { name delta quantityAfterChange } }
    userErrors { code field message } } }"""


def set_input(index: int, quantity: int, change_from: int | None) -> dict[str, Any]:
    return {"name": "available", "reason": "correction",
            "referenceDocumentUri": "gid://retailgraph/SyncAction/sdk",
            "quantities": [{"inventoryItemId": "gid://shopify/InventoryItem/"
                            f"{WORLD.item(index).shopify_inventory_item_id}",
                            "locationId": LOC1, "quantity": quantity,
                            "changeFromQuantity": change_from}]}


def commerce_settings() -> BackendSettings:
    return BackendSettings(name="commerce", format="shopify", base_url="", token=TOKEN,
                           webhook_secret=SECRET)


# -- TLS for the Node library (it always speaks https) ----------------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "retailgraph-test-shop")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def node_shopify_env(server: ServerThread | None, cert: str) -> dict[str, str]:
    return {**node_env(), "NODE_EXTRA_CA_CERTS": cert, "SHOPIFY_TOKEN": TOKEN,
            "SHOPIFY_SECRET": SECRET,
            "SHOPIFY_SHOP": f"127.0.0.1:{server.port}" if server else "unused.myshopify.com"}


def node_requests(server: ServerThread, cert: str,
                  requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run requests through @shopify/shopify-api's GraphQL client; one outcome each."""
    assert NODE is not None
    npm_install(VENDOR_SDKS)
    done = subprocess.run([NODE, "shopify_admin.mjs", "requests"], cwd=VENDOR_SDKS,
                          env=node_shopify_env(server, cert), input=json.dumps(requests),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


@pytest.fixture
def https_shop(tls: tuple[str, str]) -> Iterator[tuple[ServerThread, httpx.Client]]:
    app = commerce_app(WORLD, commerce_settings(), "", DeliveryOptions(backoff=0.01))
    with serve(app, tls=tls) as server, httpx.Client(
            base_url=server.url, verify=ssl.create_default_context(cafile=tls[0]), timeout=10,
            headers={"X-Shopify-Access-Token": TOKEN}) as http:
        yield server, http


@needs_node
def test_shopify_node_library_reads_writes_and_replays(
        https_shop: tuple[ServerThread, httpx.Client], tls: tuple[str, str]) -> None:
    server, http = https_shop
    item = WORLD.item(2)
    first = http.post(GQL, json={"query": READ, "variables": {"sku": f"sku:{item.sku}"}}).json()
    level = first["data"]["productVariants"]["nodes"][0]["inventoryItem"]["inventoryLevel"]
    available = level["quantities"][0]["quantity"]
    key = str(uuid.uuid4())
    results = node_requests(server, tls[0], [
        {"query": READ, "variables": {"sku": f"sku:{item.sku}"}},
        {"query": SET, "variables": {"key": key,
                                     "input": set_input(2, available - 2, available)}},
        {"query": SET, "variables": {"key": key,
                                     "input": set_input(2, available - 2, available)}},
        {"query": SET, "variables": {"key": str(uuid.uuid4()),
                                     "input": set_input(2, 0, available)}},
        {"query": SET.replace(" @idempotent(key: $key)", "").replace(", $key: String!", ""),
         "variables": {"input": set_input(2, 0, None)}},
        {"query": "{ products(first: 1) { nodes { id title variants(first: 1) { nodes { "
                  "id price } } } } }"},
    ])
    read, applied, replayed, stale, keyless, products = results
    variant = read["data"]["productVariants"]["nodes"][0]
    assert variant["sku"] == item.sku
    assert {q["name"]: q["quantity"] for q in variant["inventoryItem"]["inventoryLevel"][
        "quantities"]}["available"] == available
    assert read["extensions"]["cost"]["throttleStatus"]["restoreRate"] == 100
    assert applied["data"]["inventorySetQuantities"]["userErrors"] == []
    assert replayed["data"] == applied["data"]
    assert stale["data"]["inventorySetQuantities"]["userErrors"][0]["code"] == \
        "CHANGE_FROM_QUANTITY_STALE"
    assert keyless["error"]["name"] == "GraphqlQueryError"
    assert "@idempotent" in keyless["error"]["message"]
    assert products["data"]["products"]["nodes"][0]["variants"]["nodes"][0]["price"] == \
        str(WORLD.item(0).online_price)
    writes = http.get("/_sim/shop/writes").json()
    assert writes["byKey"] == {key: 1}
    after = http.post(GQL, json={"query": READ, "variables": {"sku": f"sku:{item.sku}"}}).json()
    level = after["data"]["productVariants"]["nodes"][0]["inventoryItem"]["inventoryLevel"]
    assert level["quantities"][0]["quantity"] == available - 2


@needs_node
def test_shopify_node_library_sees_throttling_and_retries_through_an_outage(
        https_shop: tuple[ServerThread, httpx.Client], tls: tuple[str, str]) -> None:
    server, http = https_shop
    http.post("/_sim/shop/throttle", json={"restoreRate": 0, "currentlyAvailable": 12})
    throttled = node_requests(server, tls[0], [
        {"query": SET, "variables": {"key": "a", "input": set_input(3, 1, None)}},
        {"query": SET, "variables": {"key": "b", "input": set_input(3, 2, None)}},
    ])
    assert throttled[0]["data"]["inventorySetQuantities"]["userErrors"] == []
    error = throttled[1]["error"]
    assert error["name"] == "GraphqlQueryError"
    assert error["message"] == "Throttled"
    assert error["body"]["errors"]["graphQLErrors"][0]["extensions"]["code"] == "THROTTLED"
    assert error["body"]["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] == 2
    assert http.get("/_sim/shop/writes").json()["byKey"] == {"a": 1}
    http.post("/_sim/shop/throttle", json={"restoreRate": 100, "currentlyAvailable": 2000})
    # Down until the library's second request has been refused once; then up again: its own
    # retries (503 is retriable, 1 s apart) get through. (Ended by what happened, not after
    # a time: a node starting slowly on a loaded machine would miss a timed outage.)
    http.post("/_sim/outage", json={"seconds": 300})
    refused_before_retrying = 1  # the first request, without retries, is refused once
    ended = threading.Event()

    def end_outage_after_the_retrying_request_was_refused() -> None:
        with httpx.Client(base_url=server.url, timeout=10,
                          verify=ssl.create_default_context(cafile=tls[0])) as own:
            while not ended.is_set():
                if own.get("/_sim/outage").json()["refused"] > refused_before_retrying:
                    own.post("/_sim/outage", json={"seconds": 0})
                    return
                ended.wait(0.02)

    watcher = threading.Thread(target=end_outage_after_the_retrying_request_was_refused)
    refused_at_start = http.get("/_sim/outage").json()["refused"]
    refused_before_retrying += refused_at_start
    watcher.start()
    try:
        outage = node_requests(server, tls[0], [
            {"query": "{ shop { name } }"},
            {"query": "{ shop { name } }", "retries": 3},
        ])
    finally:
        ended.set()
        watcher.join()
        http.post("/_sim/outage", json={"seconds": 0})
    assert outage[0]["error"]["name"] == "HttpInternalError"
    assert outage[0]["error"]["status"] == 503
    assert outage[1]["data"] == {"shop": {"name": "RetailGraph Demo"}}
    assert http.get("/_sim/outage").json()["refused"] >= refused_at_start + 2


@needs_node
def test_shopify_node_library_validates_every_webhook_the_shop_sends(tls: tuple[str, str]) -> None:
    assert NODE is not None
    npm_install(VENDOR_SDKS)
    port = free_port()
    with subprocess.Popen([NODE, "shopify_admin.mjs", "webhooks", str(port)],
                          cwd=VENDOR_SDKS, env=node_shopify_env(None, tls[0]),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as receiver:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "listening"
        app = commerce_app(WORLD, commerce_settings(), f"http://127.0.0.1:{port}/hooks",
                           DeliveryOptions(backoff=0.01))
        item = WORLD.item(4)
        with serve(app) as server, httpx.Client(base_url=server.url, timeout=10, headers={
                "X-Shopify-Access-Token": TOKEN}) as http:
            body = http.post(GQL, json={"query": SET, "variables": {
                "key": "hook-1", "input": set_input(4, 3, None)}}).json()
            assert body["data"]["inventorySetQuantities"]["userErrors"] == []
            http.post("/admin/api/2025-01/inventory_levels/set.json", json={
                "location_id": L1, "inventory_item_id": item.shopify_inventory_item_id,
                "available": 4})
            http.post("/_sim/shop/admin-edit", json={"sku": item.sku, "location_id": L1,
                                                     "available": 5})
            http.post(GQL, json={"query": """mutation($p: ProductUpdateInput!) {
                productUpdate(product: $p) { userErrors { message } } }""", "variables": {
                "p": {"id": f"gid://shopify/Product/{item.shopify_product_id}",
                      "title": "Renamed"}}})
            assert http.post("/_sim/webhooks/drain").json() == {"pending": 0}
            history = http.get("/_sim/webhooks").json()["deliveries"]
        assert [d["status"] for d in history] == [200, 200, 200, 200]
        lines = [json.loads(receiver.stdout.readline()) for _ in history]
        receiver.kill()
    assert all(line["valid"] for line in lines), lines
    assert [line["topic"] for line in lines] == ["INVENTORY_LEVELS_UPDATE"] * 3 + [
        "PRODUCTS_UPDATE"]
    assert {line["domain"] for line in lines} == {"retailgraph-7.myshopify.com"}
    assert [json.loads(line["body"]).get("available") for line in lines[:3]] == [3, 4, 5]


# -- ShopifyAPI (Python) -----------------------------------------------------------------------

@pytest.fixture
def shopify_session(monkeypatch: pytest.MonkeyPatch
                    ) -> Iterator[tuple[ServerThread, httpx.Client]]:
    import shopify

    app = commerce_app(WORLD, commerce_settings(), "", DeliveryOptions(backoff=0.01))
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=10, headers={
            "X-Shopify-Access-Token": TOKEN}) as http:
        # The library's own settings for a shop off myshopify.com (its tests use them): the
        # shop name is what comes before the first dot, then ".<myshopify_domain>:<port>".
        monkeypatch.setattr(shopify.Session, "protocol", "http")
        monkeypatch.setattr(shopify.Session, "myshopify_domain", "0.0.1")
        monkeypatch.setattr(shopify.Session, "port", server.port)
        session = shopify.Session("127", "2026-10", TOKEN)
        assert session.site == f"http://127.0.0.1:{server.port}/admin/api/2026-10"
        shopify.ShopifyResource.activate_session(session)
        try:
            yield server, http
        finally:
            shopify.ShopifyResource.clear_session()


def test_shopify_python_library_graphql_and_rest_agree(
        shopify_session: tuple[ServerThread, httpx.Client]) -> None:
    import shopify

    _, http = shopify_session
    item = WORLD.item(6)
    graphql = shopify.GraphQL()
    assert graphql.endpoint.endswith(GQL)
    read = json.loads(graphql.execute(READ, {"sku": f"sku:{item.sku}"}))
    level = read["data"]["productVariants"]["nodes"][0]["inventoryItem"]["inventoryLevel"]
    available = level["quantities"][0]["quantity"]
    variables = {"key": "py-1", "input": set_input(6, available + 7, available)}
    first = json.loads(graphql.execute(SET, variables))
    second = json.loads(graphql.execute(SET, variables))
    assert first["data"] == second["data"]
    assert first["data"]["inventorySetQuantities"]["userErrors"] == []
    # The same level through the library's REST resources (API version of the session).
    rest = shopify.InventoryLevel.find(inventory_item_ids=item.shopify_inventory_item_id,
                                       location_ids=L1)
    assert [lv.available for lv in rest] == [available + 7]
    assert http.get("/_sim/shop/writes").json()["byKey"] == {"py-1": 1}


# -- squareup (Python) -----------------------------------------------------------------------

SQUARE_TOKEN = "square-sdk-token"


@pytest.fixture
def square_sim() -> Iterator[tuple[Any, httpx.Client]]:
    from square import Square

    from gateway.simulators.pos import create_app as pos_app

    settings = BackendSettings(name="pos", format="square", base_url="", token=SQUARE_TOKEN,
                               webhook_secret="square-secret")
    app = pos_app(WORLD, settings, "", DeliveryOptions(backoff=0.01))
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=10) as http, \
            httpx.Client(timeout=10) as transport:
        # The SDK sends its own Square-Version; make the simulator insist on the current one.
        http.post("/_sim/square", json={"require_version": "2026-09-16"})
        yield Square(token=SQUARE_TOKEN, base_url=server.url, httpx_client=transport), http


def _occurred(minutes_ago: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)).isoformat()


def test_squareup_batch_changes_are_idempotent_and_timestamp_ordered(
        square_sim: tuple[Any, httpx.Client]) -> None:
    client, http = square_sim
    vid, store = WORLD.item(2).square_variation_id, WORLD.stores[0].square_id
    count = {"type": "PHYSICAL_COUNT", "physical_count": {
        "catalog_object_id": vid, "state": "IN_STOCK", "location_id": store,
        "quantity": "30", "occurred_at": _occurred(10)}}
    # a JSON body as Square documents it: the SDK's own TypedDict knows no "location_id"
    sale: dict[str, Any] = {"type": "ADJUSTMENT", "adjustment": {
        "catalog_object_id": vid, "from_state": "IN_STOCK", "to_state": "SOLD",
        "location_id": store, "quantity": "2", "occurred_at": _occurred(5)}}
    first = client.inventory.batch_create_changes(idempotency_key="sdk-1",
                                                  changes=[count, sale])
    again = client.inventory.batch_create_changes(idempotency_key="sdk-1",
                                                  changes=[count, sale])
    assert first == again
    assert [(c.state, c.quantity) for c in first.counts or [] if c.state == "IN_STOCK"] == [
        ("IN_STOCK", "28")]
    # A sale that happened before the count but arrives now is already in that count.
    late = {"type": "ADJUSTMENT", "adjustment": {**sale["adjustment"],
                                                 "occurred_at": _occurred(20)}}
    client.inventory.batch_create_changes(idempotency_key="sdk-2", changes=[late])
    counts = client.inventory.batch_get_counts(catalog_object_ids=[vid], location_ids=[store],
                                              states=["IN_STOCK"])
    assert [c.quantity for c in counts] == ["28"]
    from square.core.api_error import ApiError

    with pytest.raises(ApiError) as refused:
        client.inventory.batch_create_changes(idempotency_key="sdk-1", changes=[late])
    assert refused.value.status_code == 400
    assert refused.value.errors[0].code == "IDEMPOTENCY_KEY_REUSED"
    versions = http.get("/_sim/square").json()["square_versions"]
    assert set(versions) == {"2026-09-16"}


def test_squareup_catalog_upsert_and_version_mismatch(
        square_sim: tuple[Any, httpx.Client]) -> None:
    from square.core.api_error import ApiError

    client, _ = square_sim
    vid = WORLD.item(3).square_variation_id
    current = client.catalog.object.get(object_id=vid).object
    assert current is not None
    body = current.model_dump(exclude_none=True)
    body["item_variation_data"]["name"] = "Renamed by sync"
    body["item_variation_data"]["price_money"] = {"amount": 4200, "currency": "NOK"}
    done = client.catalog.object.upsert(idempotency_key="cat-1", object=body)
    assert done.catalog_object is not None
    assert done.catalog_object.version > current.version
    assert done.catalog_object.item_variation_data.name == "Renamed by sync"
    with pytest.raises(ApiError) as stale:
        client.catalog.object.upsert(idempotency_key="cat-2", object=body)  # old version
    assert stale.value.status_code == 400
    assert [(e.category, e.code) for e in stale.value.errors] == [
        ("INVALID_REQUEST_ERROR", "VERSION_MISMATCH")]
    reread = client.catalog.object.get(object_id=vid).object
    assert reread is not None
    assert reread.version == done.catalog_object.version


def test_squareup_searches_events_by_cursor(square_sim: tuple[Any, httpx.Client]) -> None:
    client, _ = square_sim
    vid, store = WORLD.item(4).square_variation_id, WORLD.stores[1].square_id
    for n in range(3):
        client.inventory.batch_create_changes(idempotency_key=f"ev-{n}", changes=[{
            "type": "PHYSICAL_COUNT", "physical_count": {
                "catalog_object_id": vid, "state": "IN_STOCK", "location_id": store,
                "quantity": str(10 + n), "occurred_at": _occurred(1)}}])
    query = {"filter": {"event_types": ["inventory.count.updated"],
                        "created_at": {"start_at": _occurred(60)}}}
    seen: list[Any] = []
    page = client.events.search_events(limit=2, query=query)
    while True:
        seen += page.events or []
        if not page.cursor:
            break
        page = client.events.search_events(limit=2, query=query, cursor=page.cursor)
    assert [e.type for e in seen] == ["inventory.count.updated"] * 3
    quantities = [e.data.object["inventory_counts"][0]["quantity"] for e in seen]
    assert quantities == ["12", "11", "10"]  # newest first


def test_squareup_backs_off_on_429_and_honours_retry_after(
        square_sim: tuple[Any, httpx.Client]) -> None:
    from square.core.api_error import ApiError

    client, http = square_sim
    http.post("/_sim/square", json={"rate_limit_next": 1, "retry_after": 1})
    started = time.monotonic()
    locations = client.locations.list()  # the SDK retries a 429 after Retry-After
    assert time.monotonic() - started >= 1.0
    assert len(locations.locations or []) == len(WORLD.stores)
    http.post("/_sim/square", json={"rate_limit_next": 1, "retry_after": 0})
    with pytest.raises(ApiError) as limited:
        client.locations.list(request_options={"max_retries": 0})
    assert limited.value.status_code == 429
    assert [(e.category, e.code) for e in limited.value.errors] == [
        ("RATE_LIMIT_ERROR", "RATE_LIMITED")]
