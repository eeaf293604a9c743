"""``retailgraph demo``: four simulated backends and the gateway."""

from __future__ import annotations

import argparse

from gateway import demo
from gateway.config import demo_settings
from gateway.serving import run as run_loop


def run(args: argparse.Namespace) -> int:
    # The event loop the demo's settings name (RETAILGRAPH_EVENT_LOOP), here as in workers.
    run_loop(demo.run(demo.DemoOptions(
        host=args.host, port=args.port, seed=args.seed, skus=args.skus, stores=args.stores,
        warehouses=args.warehouses, activity=args.activity, auth=args.auth,
        reconcile_interval=args.reconcile_interval, workers=args.workers,
        log_format=args.log_format or "text", log_level=args.log_level)),
        demo_settings(args.host, args.port).event_loop)
    return 0
