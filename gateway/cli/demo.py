"""``retailgraph demo``: four simulated backends and the gateway."""

from __future__ import annotations

import argparse
import asyncio

from gateway import demo


def run(args: argparse.Namespace) -> int:
    asyncio.run(demo.run(demo.DemoOptions(
        host=args.host, port=args.port, seed=args.seed, skus=args.skus, stores=args.stores,
        warehouses=args.warehouses, activity=args.activity, auth=args.auth,
        reconcile_interval=args.reconcile_interval)))
    return 0
