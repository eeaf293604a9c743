"""``retailgraph serve``: the gateway against configured backends."""

from __future__ import annotations

import argparse
import sys

from gateway import config
from gateway.app import create_app, run_worker
from gateway.http.auth import Authenticator
from gateway.redis_server import EmbeddedRedis, start_server
from gateway.serving import (
    Workers,
    default_workers,
    make_server,
    run_together,
)
from gateway.serving import run as run_loop


def run(args: argparse.Namespace) -> int:
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
    workers = args.workers or default_workers()
    if workers == 1:
        server = make_server(create_app(settings), settings.host, settings.port,
                             ws_per_message_deflate=settings.ws_per_message_deflate)
        print(f"retailgraph serving http://{settings.host}:{settings.port}/graphql", flush=True)
        run_loop(run_together([[server]]), settings.event_loop)
        return 0
    embedded = None
    if not settings.redis_url:
        # One private Redis for all the workers (each would otherwise start its own).
        embedded = start_server(**EmbeddedRedis().options)
        settings.redis_url = str(embedded.connection_url)
    pool = Workers(workers, run_worker, (settings, *log_options(args)))
    print(f"retailgraph serving http://{settings.host}:{settings.port}/graphql "
          f"({workers} worker processes)", flush=True)
    try:
        run_loop(run_together([], [pool.run], on_stopping=[pool.stop]), settings.event_loop)
    finally:
        if embedded is not None:
            embedded.stop()
    return 1 if pool.failed else 0


def log_options(args: argparse.Namespace) -> tuple[str, str]:
    """What a worker process needs to log as its supervisor does."""
    return (args.log_format or ("json" if args.command == "serve" else "text"),
            args.log_level)


