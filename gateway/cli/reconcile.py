"""``retailgraph reconcile``: one reconciliation run from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway import config
from gateway.app import build
from gateway.reconcile.runner import Report, Scope


def run(args: argparse.Namespace) -> int:
    """``retailgraph reconcile``: one run against a gateway's backends and Redis, from the
    command line (same code as the periodic task); 1 when a backend could not be read."""
    settings = config.for_command(args.config, args.demo_port, args.redis_url,
                                  "the cache and event log")

    def listed(value: str | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(x.strip() for x in value.split(",") if x.strip())

    scope = Scope(skus=listed(args.skus), locations=listed(args.locations),
                  repair=not args.no_repair)

    async def run() -> Report:
        runtime = await build(settings, background=False)
        await runtime.start()
        try:
            return await runtime.reconciliation.run(scope)
        finally:
            await runtime.stop()

    report = asyncio.run(run())
    if args.output:
        body = report.to_csv().encode() if args.output.endswith(".csv") else report.to_json()
        if args.output == "-":
            sys.stdout.buffer.write(body + (b"" if body.endswith(b"\n") else b"\n"))
        else:
            with open(args.output, "wb") as fh:
                fh.write(body)
    print(report.summary_line(), flush=True)
    for source, error in sorted(report.errors.items()):
        print(f"  {source} could not be read: {error}", flush=True)
    return 1 if report.errors else 0
