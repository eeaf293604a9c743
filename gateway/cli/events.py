"""``retailgraph events``: list and replay the dead-letter stream."""

from __future__ import annotations

import argparse
import asyncio

from gateway import config
from gateway.app import build


def run(args: argparse.Namespace) -> int:
    settings = config.for_command(args.config, args.demo_port, args.redis_url,
                                  "the event log")

    async def run() -> int:
        runtime = await build(settings, background=False)
        await runtime.start()
        try:
            if args.action == "dlq":
                letters = await runtime.events.dead_letters()
                for letter in letters:
                    print(f"{letter.id}  {letter.source:<9} {letter.received_at}  "
                          f"{letter.reason}")
                print(f"{len(letters)} dead letter(s)")
                return 0
            outcomes = await runtime.intake.replay_dead_letters()
            for letter, outcome in outcomes:
                print(f"{letter.id}  {letter.source:<9} {outcome}")
            kept = sum(1 for _, outcome in outcomes if outcome.startswith("kept"))
            print(f"{len(outcomes) - kept} replayed, {kept} kept")
            return 1 if kept else 0
        finally:
            await runtime.stop()

    return asyncio.run(run())
