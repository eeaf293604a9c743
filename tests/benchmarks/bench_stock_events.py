"""Benchmark: stockEvents' cost follows what it returns, not the change stream's length
(issue 11).

Run (not part of the suite):  python tests/benchmarks/bench_stock_events.py
                                  [--entries 10000 100000] [--skus 5000] [--locations 50]

A private Valkey is filled with ``--entries`` published changes (the gateway's own
ChangePublisher: stream plus indexes) spread over ``--skus`` SKUs x ``--locations``
locations, all from each location's system of record. Then one ChangeFeed.history call per
row, the way ``stockEvents(first: 50)`` asks, timed over several runs (median):

- *no match*: a SKU that has no change at all (the hostile case: it used to scan everything);
- *one SKU*: a SKU with about entries/skus changes;
- *one location*: a page of 50 of a location's changes;
- each also through the stream scan the indexes replaced (``scan``), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.benchmarks import contract  # noqa: E402


async def fill(redis: object, entries: int, skus: int, locations: int) -> None:
    from gateway.events.changes import ChangePublisher
    from gateway.events.envelope import Envelope, EventKind
    from resolvers.types import Quantities

    publisher = ChangePublisher(redis, 86_400)
    rng = random.Random(3)
    at = datetime.now(UTC)
    batch = []
    for n in range(entries):
        sku, loc = f"SKU-{rng.randrange(1, skus):06d}", f"L{rng.randrange(locations):03d}"
        envelope = Envelope(id=f"e{n}", kind=EventKind.LEVEL_SNAPSHOT, source="wms",
                            system="epcis", topic="bench", source_event_id=f"s{n}",
                            delivery_id=f"d{n}", occurred_at=at, received_at=at,
                            source_version=n, sku=sku, location_id=loc,
                            quantities=Quantities(on_hand=n, available=n), full=True)
        batch.append(publisher(f"{n}-1", envelope, None))
        if len(batch) == 50:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)


async def timed(call: object, runs: int) -> tuple[float, int]:
    samples, found = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        page = await call()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
        found = len(page.changes)
    return statistics.median(samples), found


async def bench(url: str, entries: int, skus: int, locations: int,
                figures: list[dict[str, object]]) -> None:
    from redis import asyncio as aioredis

    from gateway.events.changes import ChangeFeed
    from resolvers.changes import make_filter

    redis = aioredis.Redis.from_url(url)
    await redis.flushall()
    began = time.perf_counter()
    await fill(redis, entries, skus, locations)
    print(f"\n{entries:,} changes over {skus:,} SKUs x {locations} locations "
          f"(published in {time.perf_counter() - began:.1f} s)")
    feed = ChangeFeed(redis)
    rows = {"no match": make_filter(["SKU-NOPE"], None),
            "one SKU": make_filter(["SKU-000001"], None),
            "one location": make_filter(None, ["L001"])}
    print(f"{'filter':14} {'found':>6} {'indexed ms':>11} {'scan ms':>9}")
    for name, accept in rows.items():
        indexed, found = await timed(lambda a=accept: feed.history(a, None, 50), 9)
        runs = 3 if entries > 50_000 else 5
        scanned, same = await timed(lambda a=accept: feed.history(lambda c: a(c), None, 50),
                                    runs)
        assert same == found
        print(f"{name:14} {found:>6} {indexed * 1000:>11.2f} {scanned * 1000:>9.1f}")
        figures.append(contract.figure(
            f"stockEvents(first: 50), {entries:,} changes, {name}", round(indexed * 1000, 2),
            "ms", None, None, note=f"{found} found; the stream scan it replaced "
                                   f"{scanned * 1000:.1f} ms"))
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--locations", type=int, default=50)
    parser.add_argument("--json", default="", help="also write the result here (contract.py)")
    args = parser.parse_args()
    from gateway.redis_server import start_server

    print(f"{platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"{__import__('os').cpu_count()} cores")
    server = start_server()
    figures: list[dict[str, object]] = []
    try:
        for entries in args.entries:
            asyncio.run(bench(str(server.connection_url), entries, args.skus, args.locations,
                              figures))
    finally:
        server.stop()
    contract.write(args.json, "stock_events", figures)


if __name__ == "__main__":
    main()
