"""``retailgraph schema``: print the GraphQL schema (SDL)."""

from __future__ import annotations

import argparse
import sys

from schema import federation_sdl, sdl


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(federation_sdl() if args.federation else sdl())
    return 0
