"""The ``retailgraph`` command line."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
from collections.abc import Sequence

from gateway import config


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
    demo.add_argument("--reconcile-interval", type=float, default=30.0, metavar="SECONDS",
                      help="a full reconciliation every SECONDS (0 = off)")

    serve = add("serve", help="run the gateway against configured backends")
    serve.add_argument("--config", required=True, help="TOML file (see retailgraph.example.toml)")
    serve.add_argument("--host", default=None, help="overrides [gateway].host")
    serve.add_argument("--port", type=int, default=None, help="overrides [gateway].port")
    serve.add_argument("--check", action="store_true",
                       help="validate the configuration, print it without secrets and exit")
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
    parser.subcommands = dict(sub.choices)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.auth import Authenticator
    from gateway.serving import make_server, run_together

    settings = config.load(args.config)
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    if args.check:
        for name, b in settings.backends.items():
            print(f"{name}: format={b.format} base_url={b.base_url} timeout={b.timeout}s "
                  f"token={'set' if b.token else 'unset'} "
                  f"webhook_secret={'set' if b.webhook_secret else 'unset'}")
        for name, b in settings.backends.items():
            if not (b.webhook_secret or b.webhook_previous_secret):
                print(f"warning: backends.{name}.webhook_secret is not set: every webhook "
                      f"from {name} will be refused (401) and its changes reach the gateway "
                      f"only through reconciliation; set it (or "
                      f"RETAILGRAPH_{name.upper()}_WEBHOOK_SECRET)", file=sys.stderr)
        print(f"gateway: http://{settings.host}:{settings.port}/graphql")
        print(f"auth: {Authenticator(settings).describe()}; rate limit "
              f"{settings.rate_limit_per_minute}/min; limits depth {settings.max_depth}, "
              f"aliases {settings.max_aliases}, tokens {settings.max_tokens}, "
              f"cost {settings.max_cost}, page {settings.max_page_size}")
        print(f"browsers: GraphiQL {'on' if settings.graphiql else 'off'}; other origins "
              f"(cors_origins): {', '.join(sorted(config.browser_origins(settings))) or 'none'}")
        return 0
    if not Authenticator(settings).enabled and not args.insecure_no_auth:
        print("retailgraph: refusing to serve without auth: configure api_keys, jwt_secret "
              "(RETAILGRAPH_JWT_SECRET) or a JWKS, or pass --insecure-no-auth",
              file=sys.stderr)
        return 2
    server = make_server(create_app(settings), settings.host, settings.port)
    print(f"retailgraph serving http://{settings.host}:{settings.port}/graphql", flush=True)
    asyncio.run(run_together([[server]]))
    return 0


def _sim(args: argparse.Namespace) -> int:
    from gateway.demo import simulator_app
    from gateway.serving import make_server, run_together
    from gateway.simulators.world import World

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


def _events(args: argparse.Namespace) -> int:
    from gateway.app import Runtime
    from resolvers.graph import RetailGraph

    settings = config.for_command(args.config, args.demo_port, args.redis_url,
                                  "the event log")

    async def run() -> int:
        runtime = Runtime(settings, RetailGraph.from_settings(settings), background=False)
        await runtime.start()
        try:
            assert runtime.events is not None
            assert runtime.intake is not None
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


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import DemoOptions, run

    asyncio.run(run(DemoOptions(host=args.host, port=args.port, seed=args.seed, skus=args.skus,
                                stores=args.stores, warehouses=args.warehouses,
                                activity=args.activity, auth=args.auth,
                                reconcile_interval=args.reconcile_interval)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway import logs

    logs.configure(args.log_format or ("json" if args.command == "serve" else "text"),
                   args.log_level)
    # One line per backend request drowns everything else; failures are logged by us.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if args.command == "schema":
            from schema import federation_sdl, sdl

            sys.stdout.write(federation_sdl() if args.federation else sdl())
            return 0
        from gateway.reconcile import cli as _reconcile

        handler = {"demo": _demo, "serve": _serve, "sim": _sim, "events": _events,
                   "reconcile": _reconcile}[args.command]
        return handler(args)
    except config.ConfigError as exc:
        print(f"retailgraph: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
