"""``retailgraph sim``: one simulated backend alone."""

from __future__ import annotations

import argparse
import asyncio

from gateway import config
from gateway.demo import simulator_app
from gateway.serving import make_server, run_together
from gateway.simulators.world import World


def run(args: argparse.Namespace) -> int:
    if args.config:
        settings = config.load(args.config)
    else:
        settings = config.demo_settings(args.host, args.port - 1 - [
            n for n, _ in config.DEMO_ROLES].index(args.backend))
    backend = settings.backends[args.backend]
    backend.base_url = f"http://{args.host}:{args.port}"
    world = World(args.seed, args.skus, args.stores, args.warehouses)
    app = simulator_app(world, backend, args.webhook_url)
    server = make_server(app, args.host, args.port)
    target = args.webhook_url or "nowhere (no --webhook-url)"
    print(f"{args.backend} ({backend.format}) simulator on {backend.base_url}; "
          f"webhooks to {target}", flush=True)
    asyncio.run(run_together([[server]]))
    return 0
