"""Benchmark: Redis round trips and commands per acknowledged webhook.

Run (not part of the suite):  python tests/benchmarks/bench_intake_trips.py [--webhooks 200]

A private Valkey, a counting TCP proxy in front of it, and a :class:`tests.support.Stack`
(the four simulators and one gateway, in threads) whose gateway talks to Redis through the
proxy. With one webhook in flight, each is acknowledged before the next is sent, so what
the proxy counts while they run, minus what the gateway's background tasks do in the same
time when idle (measured just before), is the intake's own. ``--concurrency 1 16``: one webhook at a
time, then 16 in flight (where, with ``--batching``, concurrent commands share round trips).

- *round trips*: request flights (one write of the client answered by the server before it
  writes again: a single command, a pipeline or a script are each one);
- *commands*: ``INFO commandstats`` calls before/after (commands a Lua script runs count
  as well as the EVALSHA itself).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class CountingProxy:
    """Forwards loopback TCP to Redis, counting client flights and the time it runs."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flights = 0
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            # A flight starts when the client writes after the server last answered it.
            answered = [True]

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                           from_client: bool) -> None:
                try:
                    while data := await src.read(65536):
                        if from_client and answered[0]:
                            self.flights += 1
                            answered[0] = False
                        elif not from_client:
                            answered[0] = True
                        dst.write(data)
                        await dst.drain()
                except (ConnectionError, OSError):
                    pass
                finally:
                    dst.close()

            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

        async def start() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await server.serve_forever()

        self.loop.run_until_complete(start())


def commandstats(client: Any) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in client.info("commandstats").items()}


def measure(stack: Any, proxy: CountingProxy, server: Any, make: Any, count: int,
            idle: float, concurrency: int = 1) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.helpers_webhooks import post

    flights0 = proxy.flights
    time.sleep(idle)
    idle_rate = (proxy.flights - flights0) / idle
    before_cmds = commandstats(server)
    flights0, start = proxy.flights, time.perf_counter()
    deliveries = [make(n) for n in range(count)]

    def sender(k: int) -> None:
        with httpx.Client(timeout=30) as client:
            for delivery in deliveries[k::concurrency]:
                response = post(stack.url, delivery, client)
                assert response.status_code == 200, response.text

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(sender, range(concurrency)))
    elapsed = time.perf_counter() - start
    flights = proxy.flights - flights0 - idle_rate * elapsed
    after_cmds = commandstats(server)
    calls = {k: after_cmds.get(k, 0) - before_cmds.get(k, 0) for k in after_cmds}
    calls = {k: v for k, v in calls.items() if v and k not in ("info",)}
    return {"round_trips_per_event": round(flights / count, 1),
            "commands_per_event": round(sum(calls.values()) / count, 1),
            "idle_round_trips_per_s": round(idle_rate, 1),
            "commands": {k: round(v / count, 2) for k, v in sorted(calls.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=int, default=240,
                        help="per measurement (a multiple of 60: one per SKU each round)")
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16],
                        help="webhooks in flight at once (each value measured)")
    parser.add_argument("--batching", action="store_true",
                        help="redis_batching on (concurrent commands share round trips)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    import redis

    from gateway.redis_server import start_server
    from tests.helpers_webhooks import Signer
    from tests.support import Stack

    valkey = start_server()
    server = redis.Redis(host="127.0.0.1", port=valkey.port)
    proxy = CountingProxy(valkey.port)
    report: dict[str, Any] = {}
    try:
        stack = Stack(f"redis://127.0.0.1:{proxy.port}/0", skus=60)
        stack.settings.redis_batching = args.batching
        with stack:
            signer = Signer(stack.settings, stack.world)
            stack.drain_webhooks()
            kinds = {
                "erp stock.adjusted": lambda n: signer.erp(signer.erp_stock(
                    n % 60, stack.world.warehouses[0].code, n % 500, n + 1)),
                "wms (EPCIS balance)": lambda n: signer.epcis(
                    [signer.epcis_event(n % 60, 0, n % 500, n // 60 + 1)]),
            }
            base = 0
            for name, make in kinds.items():
                for concurrency in args.concurrency:
                    def made(n: int, make: Any = make, base: int = base) -> Any:
                        return make(base + n)

                    measure(stack, proxy, server, made, 60, 0.5)  # warm-up
                    base += 60
                    label = f"{name}, {concurrency} in flight"
                    report[label] = measure(stack, proxy, server,
                                            lambda n, made=made: made(60 + n),
                                            args.webhooks, args.idle, concurrency)
                    base += args.webhooks
                    print(label, json.dumps(report[label]), flush=True)
    finally:
        valkey.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
