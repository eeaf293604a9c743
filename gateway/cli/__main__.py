"""``python -m gateway.cli``: the ``retailgraph`` command."""

from gateway.cli import main

raise SystemExit(main())
