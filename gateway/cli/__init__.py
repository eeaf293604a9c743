"""The ``retailgraph`` command line: the parser here, one module per command."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import sys
from collections.abc import Sequence

from gateway import config
from gateway.telemetry import logs


def _world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=42, help="same seed, same data and ids")
    p.add_argument("--skus", type=int, default=200)
    p.add_argument("--stores", type=int, default=8)
    p.add_argument("--warehouses", type=int, default=2)


class Parser(argparse.ArgumentParser):
    """Refuses an unknown option with the usage of the subcommand it was given to."""

    subcommands: dict[str, argparse.ArgumentParser]

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(parsed, "command", None)
            target = self.subcommands.get(command, self) if command else self
            target.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def _workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_workers, default=1, metavar="N",
                   help="gateway processes sharing the port (default 1: this process "
                        "alone; 0: one per core)")


def _workers(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (one per core) or more, not {value}")
    return value


def _logging_args(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--log-level", default=default if default is argparse.SUPPRESS else "INFO")
    p.add_argument("--log-format", choices=["text", "json"],
                   default=default if default is argparse.SUPPRESS else None,
                   help="json: one object per line with trace ids (default for serve)")


def build_parser() -> Parser:
    parser = Parser(
        prog="retailgraph",
        description="One always-current GraphQL endpoint over POS, WMS, ERP and e-commerce.")
    _logging_args(parser, None)
    # The same options after the subcommand (`retailgraph serve --log-format text`); absent
    # there, they leave what was given before it.
    logging_options = Parser(add_help=False)
    _logging_args(logging_options, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, parents=[logging_options])

    demo = add("demo", help="run four simulated backends and the gateway")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000,
                      help="gateway port; simulators use PORT+1..PORT+4 (pos, wms, erp, commerce)")
    _world_args(demo)
    demo.add_argument("--activity", type=float, default=0.0, metavar="EVENTS_PER_SEC",
                      help="background sales, orders, receipts and transfers (0 = none)")
    demo.add_argument("--auth", action="store_true",
                      help="require credentials and print a ready token for each role")
    _workers_arg(demo)
    demo.add_argument("--reconcile-interval", type=float, default=30.0, metavar="SECONDS",
                      help="a full reconciliation every SECONDS (0 = off)")

    serve = add("serve", help="run the gateway against configured backends")
    serve.add_argument("--config", required=True, help="TOML file (see retailgraph.example.toml)")
    serve.add_argument("--host", default=None, help="overrides [gateway].host")
    serve.add_argument("--port", type=int, default=None, help="overrides [gateway].port")
    serve.add_argument("--check", action="store_true",
                       help="validate the configuration, print it without secrets and exit")
    _workers_arg(serve)
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="serve even though no credentials are configured: anyone who can "
                            "reach the port can read everything")

    sim = add("sim", help="run one simulated backend alone")
    sim.add_argument("backend", choices=[name for name, _ in config.DEMO_ROLES])
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument("--config", default=None,
                     help="take token and webhook secret of this backend from a TOML file")
    sim.add_argument("--webhook-url", default="",
                     help="where to send webhooks (default: none are sent)")
    _world_args(sim)

    schema = add("schema", help="print the GraphQL schema (SDL)")
    schema.add_argument("--federation", action="store_true",
                        help="the Apollo Federation v2 subgraph SDL (@link, @key, _entities), "
                             "as served at { _service { sdl } }, e.g. for rover subgraph publish")

    events = add("events", help="inspect and replay the dead-letter stream")
    events.add_argument("action", choices=["dlq", "replay"],
                        help="dlq: list dead letters; replay: re-apply those that now can be")
    where = events.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the gateway's TOML config")
    where.add_argument("--demo-port", type=int, help="a running `retailgraph demo` on this port")
    events.add_argument("--redis-url", default=None,
                        help="Redis of the gateway (the demo prints it in its banner)")

    rec = add("reconcile", help="compare every system's view of every SKU x "
                         "location, repair the gateway's cache, write a report")
    where = rec.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the gateway's TOML config")
    where.add_argument("--demo-port", type=int, help="a running `retailgraph demo` on this port")
    rec.add_argument("--redis-url", default=None,
                     help="Redis of the gateway (the demo prints it in its banner)")
    rec.add_argument("--locations", default=None, help="only these location ids (a,b,...)")
    rec.add_argument("--skus", default=None, help="only these SKUs (a,b,...)")
    rec.add_argument("--output", default=None, metavar="report.json|report.csv",
                     help="write the report here (CSV if it ends in .csv; - for stdout)")
    rec.add_argument("--no-repair", action="store_true",
                     help="report cache drift without repairing it")
    sync = add("sync", help="the sync outbox: dead letters, replay, pause and resume a target")
    sync.add_argument("action", choices=["dlq", "replay", "pause", "resume", "status"],
                      help="dlq: list dead actions; replay [ID ...]: run dead actions again "
                           "(all when none named); pause|resume TARGET: hold a target's "
                           "pushes (they wait, in order) or let them go; status: pending and "
                           "dead per target")
    sync.add_argument("names", nargs="*", metavar="TARGET|ID",
                      help="the target (pause, resume) or action ids (replay)")
    where = sync.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the gateway's TOML config")
    where.add_argument("--demo-port", type=int, help="a running `retailgraph demo` on this port")
    sync.add_argument("--redis-url", default=None,
                      help="Redis of the gateway (the demo prints it in its banner)")
    parser.subcommands = dict(sub.choices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format or ("json" if args.command == "serve" else "text"),
                   args.log_level)
    # One line per backend request drowns everything else; failures are logged by us.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        # Each command's module (gateway/cli/<command>.py) is loaded once logging is set up, so
        # what importing it logs is formatted too, and a command loads only what it uses.
        command = importlib.import_module(f"gateway.cli.{args.command}")
        return int(command.run(args))
    except config.ConfigError as exc:
        print(f"retailgraph: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

