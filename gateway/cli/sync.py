"""``retailgraph sync dlq | replay [ID ...] | pause TARGET | resume TARGET | status``: the
outbox of a running gateway, steered from the command line (its Redis is all it needs)."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

from gateway import config
from resolvers.store.client import Deadlines, connect
from resolvers.store.outbox import Action, Outbox


def _line(action: Action) -> str:
    at = datetime.fromtimestamp((action.completed_ms or action.created_ms) / 1000, UTC)
    where = f"{action.sku}@{action.location_id}" if action.location_id else action.sku
    return (f"{action.id:>8}  {action.target:<9} {action.kind.value:<5} {where:<22} "
            f"desired={action.desired!r} attempts={action.attempts} "
            f"{at.isoformat(timespec='seconds')}  {action.error or ''}")


def run(args: argparse.Namespace) -> int:
    settings = config.for_command(args.config, args.demo_port, args.redis_url, "the outbox")
    targets = {b.name for b in settings.backends.values() if b.format in ("shopify", "square")}

    async def go() -> int:
        client = await connect(settings.redis_url, Deadlines.of(settings))
        outbox = Outbox(client, token="cli")
        try:
            if args.action == "dlq":
                dead = await outbox.dead(100_000)
                for action in dead:
                    print(_line(action))
                print(f"{len(dead)} dead action(s)")
                return 0
            if args.action == "replay":
                dead = await outbox.dead(100_000)
                wanted = set(args.names)
                chosen = [a for a in dead if not wanted or a.id in wanted]
                unknown = wanted - {a.id for a in chosen}
                for action in chosen:
                    await outbox.replay(action)
                    print(f"{action.id:>8}  {action.target:<9} replayed")
                print(f"{len(chosen)} replayed" + (f"; not dead: {', '.join(sorted(unknown))}"
                                                   if unknown else ""))
                return 1 if unknown else 0
            if args.action in ("pause", "resume"):
                if len(args.names) != 1 or args.names[0] not in targets:
                    print(f"retailgraph sync {args.action}: name one target of "
                          f"{', '.join(sorted(targets))}")
                    return 2
                target = args.names[0]
                await (outbox.pause(target) if args.action == "pause" else outbox.resume(target))
                print(f"{target} {'paused' if args.action == 'pause' else 'resumed'}")
                return 0
            paused = await outbox.paused()
            pending = await outbox.pending_by_target()
            dead_by = await outbox.dead_count()
            for target in sorted(targets):
                n, oldest = pending.get(target, (0, None))
                print(f"{target:<9} {'paused' if target in paused else 'running'}  "
                      f"pending={n} dead={dead_by.get(target, 0)}"
                      + (f" oldest={datetime.fromtimestamp(oldest / 1000, UTC).isoformat()}"
                         if oldest else ""))
            return 0
        finally:
            await client.aclose()

    return asyncio.run(go())
