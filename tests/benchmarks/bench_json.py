"""Benchmark: decoding the vendors' webhook payloads, and encoding what the ack path writes,
with orjson (what the gateway uses), msgspec and the standard library, side by side.

Run (not part of the suite; msgspec is not a dependency, install it to compare):

    python tests/benchmarks/bench_json.py [--rounds 20000]

Payloads: one of each kind the intake decodes (ERP ``stock.adjusted``, an EPCIS document of
one ObjectEvent with the ``wms:`` balance, a Square ``inventory.count.updated``, a Shopify
``inventory_levels/update``), built by ``tests.helpers_webhooks.Signer``; encoded: the same
values back (the ack path encodes dicts of that size: log envelopes, changes). Untyped
decoding (to dicts and lists: the normalisers take those), best of 5 runs of ``--rounds``
each, microseconds per call, one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def best_us(call: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            call()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()

    import orjson

    from gateway.config import demo_settings
    from gateway.simulators.world import World
    from tests.helpers_webhooks import Signer, now

    world = World(42, 20, 4, 2)
    signer = Signer(demo_settings(environ={}), world)
    bodies = {
        "ERP stock.adjusted": signer.erp(signer.erp_stock(3, "WH01", 12, 5)).body,
        "EPCIS document": signer.epcis([signer.epcis_event(3, 0, 12, 5)]).body,
        "Square count": signer.square("http://x/webhooks/pos",
                                      [signer.square_count(3, 0, 12, now())]).body,
        "Shopify level": signer.shopify(signer.shopify_level(3, 0, 12, now())).body,
    }
    decoders: dict[str, Callable[[bytes], Any]] = {"orjson": orjson.loads, "json": json.loads}
    encoders: dict[str, Callable[[Any], Any]] = {"orjson": orjson.dumps,
                                                 "json": lambda v: json.dumps(v).encode()}
    try:
        import msgspec

        decoders["msgspec"] = msgspec.json.Decoder().decode
        encoders["msgspec"] = msgspec.json.Encoder().encode
    except ImportError:
        print("msgspec not installed: compared without it", file=sys.stderr)
    print("| payload | bytes | " + " | ".join(f"{n} µs" for n in decoders) + " |")
    print("|---|---:|" + "---:|" * len(decoders))
    def timed(call: Callable[[Any], Any], value: Any) -> str:
        return f"{best_us(lambda: call(value), args.rounds):.2f}"

    for name, body in bodies.items():
        assert all(d(body) == orjson.loads(body) for d in decoders.values())
        cells = [timed(d, body) for d in decoders.values()]
        print(f"| decode {name} | {len(body)} | " + " | ".join(cells) + " |")
    for name, body in bodies.items():
        value = orjson.loads(body)
        cells = [timed(e, value) for e in encoders.values()]
        print(f"| encode {name} | {len(body)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
