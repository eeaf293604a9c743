"""Benchmark: live stock subscriptions across two gateway replicas.

Run (not part of the suite):

    python tests/benchmarks/bench_subscriptions.py                      # the full form
    python tests/benchmarks/bench_subscriptions.py --subscribers 200 --rate 200 --duration 15

    python tests/benchmarks/bench_subscriptions.py --subscribers 10000 --rate 500   # issue 15
    python tests/benchmarks/bench_subscriptions.py --subscribers 2000 --memory-only

Topology, all on loopback and all sharing the machine's cores: a private Valkey; the four
simulators in threads of this process (they serve the gateways' catalog load); ``--replicas``
gateway replicas (default 2) as ``retailgraph serve`` processes sharing that Valkey;
``--receivers`` receiver processes (default one per 2,500 subscribers) holding the
subscribers' WebSockets (plain ``websockets``, ``graphql-transport-ws``), spread evenly over
the replicas; and this process as the load generator, posting signed WMS webhooks (EPCIS
with the ``wms:balance`` extension, each a new on-hand of one warehouse cell) to replica A at
a fixed rate (open loop). ``--memory-only`` connects, subscribes, measures and stops.

Measured:
- latency: webhook acknowledged (the 2xx arrived here) -> change received by a subscriber,
  for every (change, subscriber watching it) pair; both ends read the same CLOCK_MONOTONIC.
  A negative value means the subscriber had it before the webhook's sender got its 2xx.
- memory per idle subscription: RSS of both gateway processes once every subscriber is
  connected and subscribed and idle, minus before any connected, divided by their number.
- dropped changes: for each subscriber, the changes of its SKUs that were acknowledged, minus
  those it received (each change is identified by its cell and its unique on-hand value);
  also duplicates, and changes delivered conflated (a subscriber that fell behind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SUBSCRIPTION = """subscription($skus: [ID!], $after: String) {
  stockChanged(skus: $skus, after: $after) { cursor sku locationId conflated
                                            stockLevel { onHand } } }"""
BASE_ON_HAND = 100_000


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the receiver process ------------------------------------------------------------------------

async def receive(plan: dict[str, Any], out: Path) -> None:
    import orjson
    import websockets

    subs = plan["subscribers"]
    records: list[list[tuple[float, str, str, int, bool]]] = [[] for _ in subs]
    errors: list[str] = []
    closed: list[int] = []
    gate = asyncio.Semaphore(50)
    connected = 0

    async def one(k: int, sub: dict[str, Any]) -> None:
        nonlocal connected
        url = sub["url"].replace("http://", "ws://") + "/graphql"
        async with gate:
            ws = await websockets.connect(
                url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                compression="deflate" if plan["compression"] else None,
                open_timeout=60, ping_interval=None, max_queue=None)
            await ws.send(orjson.dumps({"type": "connection_init"}).decode())
            ack = orjson.loads(await ws.recv())
            assert ack["type"] == "connection_ack", ack
            await ws.send(orjson.dumps({
                "id": "1", "type": "subscribe", "payload": {
                    "query": SUBSCRIPTION,
                    "variables": {"skus": sub["skus"], "after": plan["after"]}}}).decode())
        connected += 1
        mine = records[k]
        try:
            async for raw in ws:
                now = time.monotonic()
                msg = orjson.loads(raw)
                kind = msg["type"]
                if kind == "next" and "errors" not in msg["payload"]:
                    c = msg["payload"]["data"]["stockChanged"]
                    mine.append((now, c["sku"], c["locationId"], c["stockLevel"]["onHand"],
                                 c["conflated"]))
                elif kind == "ping":
                    await ws.send('{"type":"pong"}')
                elif kind != "pong":
                    errors.append(str(msg)[:300])
        except websockets.ConnectionClosed as exc:
            closed.append(exc.rcvd.code if exc.rcvd else -1)

    tasks = [asyncio.create_task(one(k, s)) for k, s in enumerate(subs)]
    while connected < len(subs):
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            raise RuntimeError(f"subscriber failed: {failed[0].exception()!r}")
        await asyncio.sleep(0.05)
        if int(time.monotonic()) % 5 == 0:
            note(f"receiver: {connected} connected")
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    payload = orjson.dumps({"records": records, "errors": errors[:20],
                            "error_count": len(errors), "closed": closed})
    await asyncio.to_thread(out.write_bytes, payload)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- the load generator ----------------------------------------------------------------------------

class Poster:
    """HTTP/1.1 POSTs over a pool of keep-alive connections, written by hand: the load
    generator shares the cores with everything it measures, so it must be cheap."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))

    async def close(self) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        reader, writer = await self.idle.get()
        try:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                         f"\r\n{head}\r\n".encode() + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            reader, writer = await asyncio.open_connection(self.host, self.port)
            raise
        finally:
            self.idle.put_nowait((reader, writer))
        return status


async def generate(replicas: Any, cells: list[tuple[int, int]], rate: float, duration: float,
                   seed: int) -> tuple[list[tuple[float, str, str, int, float]],
                                       dict[str, Any]]:
    """Post one signed WMS webhook per 1/rate s for ``duration`` s; never two at once for the
    same cell (the WMS numbers each cell's events; a later one overtaking an earlier one
    would be a gap the gateway heals, not what is measured here). When the gateway falls so
    far behind that half the cells wait for an answer, new events wait too (reported as
    ``max_schedule_lag_ms``, and the achieved rate drops below the asked one)."""
    from tests.helpers_webhooks import Signer

    signer = Signer(replicas.settings, replicas.world)
    rng = random.Random(seed)
    sequence: dict[tuple[int, int], int] = defaultdict(int)
    busy: set[tuple[int, int]] = set()
    freed = asyncio.Event()
    acked: list[tuple[float, str, str, int, float]] = []
    failures: dict[str, int] = defaultdict(int)
    late = 0.0
    round_trips: list[float] = []
    poster = Poster("127.0.0.1", replicas.ports[0], 64)
    await poster.open()

    async def post(cell: tuple[int, int]) -> None:
        sequence[cell] += 1
        seq = sequence[cell]
        on_hand = BASE_ON_HAND + seq
        delivery = signer.epcis([signer.epcis_event(cell[0], cell[1], on_hand, seq)])
        try:
            sent_at = time.monotonic()
            status = await poster.post("/webhooks/wms", delivery.body, delivery.headers)
            t = time.monotonic()
            round_trips.append((t - sent_at) * 1000)
            if status == 200:
                acked.append((t, replicas.world.items[cell[0]].sku,
                              replicas.world.warehouses[cell[1]].code, on_hand, sent_at))
            else:
                failures[str(status)] += 1
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            failures[type(exc).__name__] += 1
        finally:
            busy.discard(cell)
            freed.set()

    tasks: list[asyncio.Task[None]] = []
    total = int(rate * duration)
    cpu = time.process_time()
    start = time.monotonic()
    for k in range(total):
        due = start + k / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = max(late, -delay)
        while len(busy) > len(cells) // 2:  # overloaded: a backlog of half the cells
            freed.clear()
            await freed.wait()
        cell = rng.choice(cells)
        while cell in busy:
            cell = rng.choice(cells)
        busy.add(cell)
        tasks.append(asyncio.create_task(post(cell)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    await poster.close()
    return acked, {"sent": total, "elapsed": round(elapsed, 2), "failures": dict(failures),
                   "max_schedule_lag_ms": round(late * 1000, 1),
                   "generator_cpu_seconds": round(time.process_time() - cpu, 1),
                   "webhook_round_trip_ms": {
                       "p50": round(percentile(round_trips, 50), 2),
                       "p99": round(percentile(round_trips, 99), 2),
                       "max": round(max(round_trips, default=float("nan")), 2)}}


def warm_item_master(url: str, skus: list[str]) -> None:
    """Read every SKU's item master once, so the shared cache holds it (each delivered change
    reads the SKU's safety stock from there) and a cold cache's ERP reads are not measured."""
    import httpx

    with httpx.Client(timeout=60) as client:
        for start in range(0, len(skus), 25):
            aliases = " ".join(f'p{n}: product(sku: "{sku}") {{ sku safetyStock }}'
                               for n, sku in enumerate(skus[start:start + 25]))
            body = client.post(f"{url}/graphql", json={"query": f"{{ {aliases} }}"}).json()
            if body.get("errors"):
                raise RuntimeError(f"warm-up query failed: {body['errors'][:1]}")


# -- measurement helpers ---------------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def analyse(plan: dict[str, Any], acked: list[tuple[float, str, str, int, float]],
            results: dict[str, Any]) -> dict[str, Any]:
    by_sku: dict[str, list[tuple[float, str, int, float]]] = defaultdict(list)
    for t, sku, loc, on_hand, sent in acked:
        by_sku[sku].append((t, loc, on_hand, sent))
    latencies: list[float] = []
    from_sent: list[float] = []
    expected_total = received_total = dropped = duplicates = conflated = unexpected = 0
    worst: list[tuple[int, int]] = []
    for k, sub in enumerate(plan["subscribers"]):
        expected = {(loc, sku, on_hand): (t, sent) for sku in sub["skus"]
                    for t, loc, on_hand, sent in by_sku.get(sku, [])}
        seen: set[tuple[str, str, int]] = set()
        for t_recv, sku, loc, on_hand, was_conflated in results["records"][k]:
            key = (loc, sku, on_hand)
            conflated += bool(was_conflated)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if key in expected:
                t_ack, t_sent = expected[key]
                latencies.append((t_recv - t_ack) * 1000)
                from_sent.append((t_recv - t_sent) * 1000)
            else:
                unexpected += 1  # e.g. a change whose webhook did not get its 2xx here
        missing = len(set(expected) - seen)
        dropped += missing
        if missing:
            worst.append((missing, k))
        expected_total += len(expected)
        received_total += len(seen & set(expected))
    return {"deliveries_expected": expected_total, "deliveries_received": received_total,
            "dropped": dropped, "duplicates": duplicates, "conflated": conflated,
            "unexpected": unexpected, "subscribers_with_drops": len(worst),
            "latency_ms": {"p50": round(percentile(latencies, 50), 2),
                           "p90": round(percentile(latencies, 90), 2),
                           "p99": round(percentile(latencies, 99), 2),
                           "max": round(max(latencies, default=float("nan")), 2),
                           "min": round(min(latencies, default=float("nan")), 2),
                           "samples": len(latencies)},
            "sent_to_received_ms": {"p50": round(percentile(from_sent, 50), 2),
                                    "p99": round(percentile(from_sent, 99), 2),
                                    "max": round(max(from_sent, default=float("nan")), 2)}}


# -- main ----------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.redis_server import start_server
    from tests.e2e.test_replicas import Replicas

    server = None
    redis_url = args.redis_url
    if not redis_url:
        server = start_server()
        redis_url = str(server.connection_url)
    else:
        import redis

        redis.Redis.from_url(redis_url).flushall()
    rng = random.Random(args.seed)
    host = machine()
    try:
        tmp = tempfile.mkdtemp(prefix="bench-subscriptions-")  # kept: the replicas' logs
        note(f"work directory (replica logs): {tmp}")
        gateway: dict[str, Any] = {"max_subscriptions_per_principal": 0}
        if args.compression:
            gateway["ws_per_message_deflate"] = True  # else the server refuses it (default)
        with Replicas(redis_url, Path(tmp), args.replicas, skus=args.skus, stores=2,
                      warehouses=2, **gateway) as replicas:
            world = replicas.world
            cells = [(i, w) for i in range(args.skus) for w in range(len(world.warehouses))]
            skus = [world.items[i].sku for i in range(args.skus)]
            plan = {"compression": args.compression, "after": "0-0", "subscribers": [
                {"url": replicas.url(k % args.replicas), "skus": rng.sample(skus, args.watch)}
                for k in range(args.subscribers)]}
            n_receivers = args.receivers or max(1, -(-args.subscribers // 2500))
            parts = [Path(tmp) / f"plan-{r}.json" for r in range(n_receivers)]
            outs = [Path(tmp) / f"received-{r}.json" for r in range(n_receivers)]
            for r, part in enumerate(parts):  # subscriber k goes to receiver k % n
                part.write_text(json.dumps({**plan,
                                            "subscribers": plan["subscribers"][r::n_receivers]}))
            warm_item_master(replicas.url(0), skus)
            note("replicas ready, item master cached")
            time.sleep(2)
            before = [rss_kb(pid) for pid in replicas.pids()]
            receivers = [subprocess.Popen(
                [sys.executable, __file__, "--receiver", str(part), str(out)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
                for part, out in zip(parts, outs, strict=True)]
            try:
                t0 = time.monotonic()
                for receiver in receivers:
                    assert receiver.stdout is not None
                    line = receiver.stdout.readline().decode().strip()
                    if line != "READY":
                        raise RuntimeError(f"receiver failed: {line!r}")
                connect_s = time.monotonic() - t0
                note(f"{args.subscribers} subscribers connected in {connect_s:.1f} s "
                     f"({n_receivers} receiver processes)")
                time.sleep(args.settle)  # idle, subscribed
                after = [rss_kb(pid) for pid in replicas.pids()]
                watched = [*replicas.pids(), *(r.pid for r in receivers)]
                cpu_before = [cpu_seconds(pid) for pid in watched]
                if args.memory_only:
                    acked: list[tuple[float, str, str, int, float]] = []
                    load: dict[str, Any] = {"sent": 0, "elapsed": 1.0}
                else:
                    acked, load = asyncio.run(generate(replicas, cells, args.rate,
                                                       args.duration, args.seed))
                    note(f"load done: {load}")
                cpu_used = [round(cpu_seconds(pid) - before_s, 1) for pid, before_s in
                            zip(watched, cpu_before, strict=True)]
                if not args.memory_only:
                    time.sleep(args.settle)  # let the last changes arrive
                for receiver in receivers:
                    assert receiver.stdin is not None
                    receiver.stdin.write(b"STOP\n")
                    receiver.stdin.flush()
                for receiver in receivers:
                    receiver.wait(300)
                note("receivers done")
            finally:
                for receiver in receivers:
                    if receiver.poll() is None:
                        receiver.kill()
                        receiver.wait(10)
            results: dict[str, Any] = {"records": [None] * args.subscribers, "errors": [],
                                       "error_count": 0, "closed": []}
            for r, out in enumerate(outs):
                part_results = json.loads(out.read_text())
                results["records"][r::n_receivers] = part_results["records"]
                results["errors"] += part_results["errors"]
                results["error_count"] += part_results["error_count"]
                results["closed"] += part_results["closed"]
            replica_cpu = cpu_used[:args.replicas]
            report = {
                "machine": host,
                "params": {k: getattr(args, k) for k in (
                    "subscribers", "rate", "duration", "skus", "watch", "compression",
                    "replicas", "memory_only")} | {"receivers": n_receivers},
                "load": load, "acknowledged": len(acked), "logs": tmp,
                "achieved_rate": round(len(acked) / load["elapsed"], 1),
                "connect_seconds": round(connect_s, 1),
                "rss_kb_before": before, "rss_kb_subscribed": after,
                "cpu_seconds_during_load": {
                    **{f"replica_{k}": c for k, c in enumerate(replica_cpu)},
                    "receivers": round(sum(cpu_used[args.replicas:]), 1)},
                "kb_per_idle_subscription": round((sum(after) - sum(before))
                                                  / args.subscribers, 1),
                "receiver_errors": results["error_count"], "closed": results["closed"],
                **analyse(plan, acked, results)}
            if results["errors"]:
                report["receiver_error_sample"] = results["errors"][:3]
            return report
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500, help="webhook events per second")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load")
    parser.add_argument("--skus", type=int, default=1000, help="SKUs in the world (x 2 "
                        "warehouses = cells that change)")
    parser.add_argument("--watch", type=int, default=3, help="SKUs each subscriber watches")
    parser.add_argument("--compression", action="store_true",
                        help="subscribers negotiate permessage-deflate (default: off)")
    parser.add_argument("--settle", type=float, default=5, help="idle seconds before "
                        "measuring memory and after the load")
    parser.add_argument("--replicas", type=int, default=2, help="gateway processes")
    parser.add_argument("--receivers", type=int, default=0, help="subscriber client "
                        "processes (default: one per 2,500 subscribers)")
    parser.add_argument("--memory-only", action="store_true", help="connect, subscribe, "
                        "measure memory per idle subscription; no load")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default="", help="default: a private Valkey")
    parser.add_argument("--json", default="", help="also write the report here")
    parser.add_argument("--receiver", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        plan = json.loads(Path(args.receiver[0]).read_text())
        asyncio.run(receive(plan, Path(args.receiver[1])))
        return
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
