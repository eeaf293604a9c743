"""Past one Redis: the gateway unchanged on a Redis Cluster, on TLS, and as an ACL user.

A local 3-master Redis Cluster on loopback (``redis-server --cluster-enabled yes`` x3 and
``redis-cli --cluster create``) serves two gateway replicas through
``redis+cluster://user:password@host:port``. Every node has the ACL user ``retailgraph``
with exactly the rules of ``docker/compose.yaml``, and the gateways connect as that user.
On it: webhooks to one replica read on the other, cached reads (response cache hits, and
their invalidation by an event whose cache entry lives on another node), and resume by
cursor (``stockEvents`` and a subscription ``after:`` a cursor). Each node's ``ACL LOG``
stays empty: no command the gateway needs is missing from the rules, none was swallowed.

Managed Redis: ``rediss://`` with a CA bundle (``?ssl_ca_certs=``) against a local
TLS-only ``redis-server`` with a throwaway CA, again as the ACL user.

Skipped, with the reason, only where ``redis-server`` (or ``redis-cli``) is not installed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from redis.cluster import RedisCluster

from resolvers.store.client import connect
from tests.e2e.test_deployment import (
    ENV_EXAMPLE,
    STOCK_CHANGED,
    STOCK_EVENTS,
    STOCK_LEVEL,
    Subscription,
    command,
    parse_env_file,
    wait_for,
)
from tests.support import Stack

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None,
    reason="redis-server and redis-cli are not installed: no local Redis Cluster or TLS "
           "server can be started (apt-get install redis-server)")

PRODUCT = """query($sku: ID!) { product(sku: $sku) { sku name price { amount } } }"""


def compose_acl() -> tuple[str, str, list[str]]:
    """The ACL user of docker/compose.yaml's Redis: (name, password, rules without it)."""
    argv = command("redis", parse_env_file(ENV_EXAMPLE))
    users = [i for i, a in enumerate(argv) if a == "--user"]
    for start in users:
        end = next((j for j in range(start + 1, len(argv)) if argv[j].startswith("--")),
                   len(argv))
        name, *rules = argv[start + 1:end]
        if name == "retailgraph":
            password = next(r[1:] for r in rules if r.startswith(">"))
            return name, password, rules
    raise AssertionError("docker/compose.yaml defines no `retailgraph` Redis user")


def bus_free_port() -> int:
    """A loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise AssertionError("no free port pair for a cluster node")


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]

    def admin(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)


def pings(node: Node) -> bool:
    return node.admin().ping()


def cluster_ok(node: Node) -> bool:
    info: dict[str, Any] = node.admin().cluster("info")
    return info.get("cluster_state") == "ok"


def start_node(directory: Path, port: int, *extra: str) -> Node:
    directory.mkdir(parents=True, exist_ok=True)
    user, _, rules = compose_acl()
    assert REDIS_SERVER is not None
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--logfile", str(directory / "redis.log"),
         *extra, "--user", user, *rules],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    node = Node(port, process)
    return node


def stop_node(node: Node) -> None:
    if node.process.poll() is None:
        node.process.terminate()
        try:
            node.process.wait(10)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(5)


@dataclass
class Cluster:
    nodes: list[Node]

    @property
    def url(self) -> str:
        user, password, _ = compose_acl()
        return f"redis+cluster://{user}:{quote(password, safe='')}@127.0.0.1:{self.nodes[0].port}"

    def flush(self) -> None:
        for node in self.nodes:
            with node.admin() as client:
                client.flushall()
                client.acl_log_reset()

    def denied(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for node in self.nodes:
            with node.admin() as client:
                out += client.acl_log()
        return out

    def keys_per_node(self) -> list[int]:
        out = []
        for node in self.nodes:
            with node.admin() as client:
                out.append(int(client.dbsize()))
        return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    nodes: list[Node] = []
    try:
        for n in range(3):
            port = bus_free_port()
            nodes.append(start_node(base / f"node{n}", port, "--cluster-enabled", "yes",
                                    "--cluster-config-file", str(base / f"node{n}" /
                                                                 "nodes.conf"),
                                    "--cluster-node-timeout", "5000"))
        for node in nodes:
            wait_for(f"redis node {node.port}", partial(pings, node), timeout=20)
        assert REDIS_CLI is not None
        created = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False)
        assert created.returncode == 0, created.stdout + created.stderr
        for node in nodes:
            wait_for("cluster_state:ok", partial(cluster_ok, node), timeout=30)
        yield Cluster(nodes)
    finally:
        for node in nodes:
            stop_node(node)


@pytest.fixture(scope="module")
def cluster_stack(cluster: Cluster) -> Iterator[Stack]:
    cluster.flush()
    with Stack(cluster.url, replicas=2, skus=60) as stack:
        yield stack


def graphql(stack: Stack, replica: int, query: str, variables: dict[str, Any]
            ) -> tuple[dict[str, Any], httpx.Headers]:
    response = httpx.post(f"{stack.gateways[replica].url}/graphql",
                          json={"query": query, "variables": variables}, timeout=30)
    body = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data, response.headers


def sell(stack: Stack, sku_index: int, units: int = 1) -> None:
    """A sale through the POS simulator's Square API; its webhook goes to replica 0."""
    world = stack.world
    item, store = world.items[sku_index], world.stores[0]
    with stack.sim("pos") as pos:
        response = pos.post("/v2/inventory/changes/batch-create", json={
            "idempotency_key": str(uuid.uuid4()), "changes": [{
                "type": "ADJUSTMENT", "adjustment": {
                    "catalog_object_id": item.square_variation_id,
                    "location_id": store.square_id, "from_state": "IN_STOCK",
                    "to_state": "SOLD", "quantity": str(units)}}]})
    assert response.status_code == 200, response.text


def acknowledged(stack: Stack, name: str) -> list[dict[str, Any]]:
    stack.drain_webhooks()
    with stack.sim(name) as sim:
        found: list[dict[str, Any]] = sim.get("/_sim/webhooks",
                                              params={"limit": "1000"}).json()["deliveries"]
    assert found, f"{name} sent no webhook"
    assert all(d["status"] == 200 for d in found), [d for d in found if d["status"] != 200]
    return found


def in_stock_skus(stack: Stack, count: int, at_least: int) -> list[int]:
    world = stack.world
    return [i for i in range(len(world.items)) if world.store_counts(i, 0)[0] >= at_least][
        :count]


def test_the_cluster_is_three_masters_and_the_gateway_is_the_acl_user(
        cluster: Cluster, cluster_stack: Stack) -> None:
    with cluster.nodes[0].admin() as admin:
        masters = [n for n in admin.cluster("nodes").values() if "master" in n["flags"]]
    assert len(masters) == 3
    for replica in (0, 1):
        ready = httpx.get(f"{cluster_stack.gateways[replica].url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
    # The user of docker/compose.yaml: its own keys and commands only.
    _, password, _ = compose_acl()
    user = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, username="retailgraph",
                        password=password)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.set("someone-elses:key", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.config_get("maxmemory", target_nodes=RedisCluster.RANDOM)
        assert user.set("rg:acl-probe", "x")
    finally:
        user.close()


def test_webhooks_and_cached_reads_across_replicas_on_a_cluster(
        cluster: Cluster, cluster_stack: Stack) -> None:
    stack = cluster_stack
    world = stack.world
    cluster.flush()
    a, b = in_stock_skus(stack, 2, 4)
    level_a = {"sku": world.items[a].sku, "loc": world.stores[0].code}
    first, _ = graphql(stack, 1, STOCK_LEVEL, level_a)
    again, headers = graphql(stack, 1, STOCK_LEVEL, level_a)
    assert headers.get("x-retailgraph-cache") == "hit", "no response cache hit on the cluster"
    assert again == first
    # An event to replica 0 invalidates replica 1's cached response: the response cache
    # ({rc} slot) and the stock entry ({s:<sku}} slot) are on different nodes.
    sell(stack, a, 2)
    acknowledged(stack, "pos")
    after, headers = graphql(stack, 1, STOCK_LEVEL, level_a)
    assert headers.get("x-retailgraph-cache") != "hit"
    assert after["stockLevel"]["available"] == first["stockLevel"]["available"] - 2
    # A cell nobody has read yet, and the other formats' scripts: a WMS cycle count and an
    # ERP item update (the item master entry), both read on the other replica.
    sell(stack, b)
    warehouse, item = world.warehouses[0], world.items[b]
    gtin = item.gtin14
    level_b = {"sku": item.sku, "loc": warehouse.code}
    with stack.sim("wms") as wms:
        captured = wms.post("/api/v1/events", json={
            "type": "ObjectEvent", "eventTime": dt.datetime.now(dt.UTC).isoformat(
                timespec="milliseconds"), "eventTimeZoneOffset": "+00:00",
            "action": "OBSERVE", "bizStep": "cycle_counting",
            "bizLocation": {"id": warehouse.sgln},
            "quantityList": [{"epcClass": f"urn:epc:idpat:sgtin:{gtin[1:7]}.{gtin[0]}"
                                          f"{gtin[7:13]}.*", "quantity": 4321, "uom": "EA"}]})
    assert captured.status_code == 202, captured.text
    with stack.sim("erp") as erp:
        patched = erp.patch(f"/api/v1/items/{item.sku}", json={"listPrice": "77.70"})
    assert patched.status_code == 200, patched.text
    for name in ("wms", "erp"):
        acknowledged(stack, name)
    assert graphql(stack, 1, STOCK_LEVEL, level_b)[0]["stockLevel"]["onHand"] == 4321
    product, _ = graphql(stack, 1, PRODUCT, {"sku": item.sku})
    assert product["product"]["price"]["amount"] == "77.70"
    # The keys really are spread over the masters, and no command was refused.
    assert sum(1 for n in cluster.keys_per_node() if n) >= 2, cluster.keys_per_node()
    assert cluster.denied() == []


def test_resume_by_cursor_on_a_cluster(cluster: Cluster, cluster_stack: Stack) -> None:
    stack = cluster_stack
    a, b = in_stock_skus(stack, 2, 6)[-2:]
    skus = [stack.world.items[i].sku for i in (a, b)]
    page, _ = graphql(stack, 1, STOCK_EVENTS, {"skus": skus, "after": None})
    cursor0 = page["stockEvents"]["endCursor"] or "0-0"
    for i in (a, b, a):
        sell(stack, i)
    acknowledged(stack, "pos")
    history, _ = graphql(stack, 0, STOCK_EVENTS, {"skus": skus, "after": cursor0})
    changes = history["stockEvents"]["changes"]
    assert [c["sku"] for c in changes] == [skus[0], skus[1], skus[0]]
    # Resume from the first change: exactly the two after it, on either replica.
    rest, _ = graphql(stack, 1, STOCK_EVENTS, {"skus": skus, "after": changes[0]["cursor"]})
    assert [c["cursor"] for c in rest["stockEvents"]["changes"]] == \
        [c["cursor"] for c in changes[1:]]

    async def subscribe() -> list[dict[str, Any]]:
        sub = await Subscription.open(stack.gateways[0].url, "", STOCK_CHANGED,
                                      {"skus": skus, "after": changes[0]["cursor"]})
        got: list[dict[str, Any]] = []
        try:
            while len(got) < 3:
                data = await sub.next()
                assert data is not None, "the subscription ended"
                got.append(data["stockChanged"])
                if len(got) == 2:
                    # Replayed the missed ones; now a live one.
                    await asyncio.to_thread(sell, stack, b)
        finally:
            await sub.close()
        return got

    pushed = asyncio.run(subscribe())
    assert [c["cursor"] for c in pushed[:2]] == [c["cursor"] for c in changes[1:]]
    assert pushed[2]["sku"] == skus[1]
    assert pushed[2]["cursor"] > changes[-1]["cursor"]
    assert cluster.denied() == []


def test_every_script_runs_on_one_slot(cluster: Cluster, cluster_stack: Stack) -> None:
    """The Lua scripts declare keys of one hash slot ({s:<sku>}, {ev}, {rc}); Redis Cluster
    refuses anything else (CROSSSLOT), so each ran above. Here: the key layout itself."""
    keys: list[bytes] = []
    for node in cluster.nodes:
        with node.admin() as admin:
            keys += list(admin.scan_iter(match="rg:*", count=1000))
    assert keys
    untagged = sorted(k.decode() for k in keys if b"{" not in k)
    # Only single-key families may go without a hash tag: rate-limit buckets, persisted
    # queries, and this module's own probe.
    assert all(k.startswith(("rg:rl:", "rg:apq:", "rg:acl-probe")) for k in untagged), untagged
    tags = {k[k.index(b"{") + 1:k.index(b"}")].decode() for k in keys if b"{" in k}
    assert {"ev", "rc"} <= tags
    assert any(t.startswith("s:") for t in tags)


# -- TLS (rediss://) -------------------------------------------------------------------------

def _self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("retailgraph test CA"))
          .issuer_name(name("retailgraph test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_managed_redis_over_tls_as_an_acl_user(tmp_path: Path) -> None:
    ca, cert, key = _self_signed(tmp_path)
    port = bus_free_port()
    node = start_node(tmp_path / "tls", 0, "--tls-port", str(port), "--tls-cert-file",
                      str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                      "--tls-auth-clients", "no")
    try:
        user, password, _ = compose_acl()
        url = (f"rediss://{user}:{quote(password, safe='')}@127.0.0.1:{port}/0"
               f"?ssl_ca_certs={ca}")

        async def reachable() -> bool:
            client = await connect(url)
            try:
                return bool(await client.ping())
            finally:
                await client.aclose()

        wait_for("TLS redis (or its exit)",
                 lambda: node.process.poll() is not None or asyncio.run(reachable()),
                 timeout=20)
        if node.process.poll() is not None:
            pytest.skip("this redis-server was built without TLS support")
        # Plain text to the TLS port is refused: the connection really is TLS.
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            redis.Redis(host="127.0.0.1", port=port, username=user, password=password,
                        socket_timeout=2).ping()
        with Stack(url, replicas=2, skus=30) as stack:
            i = in_stock_skus(stack, 1, 2)[0]
            level = {"sku": stack.world.items[i].sku, "loc": stack.world.stores[0].code}
            before, _ = graphql(stack, 1, STOCK_LEVEL, level)
            sell(stack, i)
            acknowledged(stack, "pos")
            after, _ = graphql(stack, 1, STOCK_LEVEL, level)
            assert after["stockLevel"]["available"] == before["stockLevel"]["available"] - 1
            ready = httpx.get(f"{stack.gateways[1].url}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
    finally:
        stop_node(node)
