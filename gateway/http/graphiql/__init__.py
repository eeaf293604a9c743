"""GraphiQL served entirely from the package: our page, the vendored assets, no other host.

``GET /graphql`` from a browser (``Accept: text/html``) answers :data:`PAGE`; its scripts and
styles come from ``/graphql/static/`` (this package's ``static/`` folder: GraphiQL, React,
ReactDOM and the graphql-ws client, pinned in ``static/manifest.json`` with their licences,
re-vendored by ``python -m gateway.http.graphiql.vendor``; plus our ``retailgraph-graphiql.js``).
The page's Content-Security-Policy lets it load and connect to its own origin only, so even
a vendored file that tried to reach another host could not.

Both are static and public (they run nothing); what the page sends carries the headers the
user typed into GraphiQL's Headers tab, on HTTP and in the WebSocket's ``connection_init``.
With ``graphiql = false`` neither is served.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
ASSETS_PATH = "/graphql/static"

# Relative URLs: the page is /graphql, so these resolve under /graphql/static/ behind any
# path prefix a proxy adds.
PAGE = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <title>retailgraph GraphiQL</title>
    <link rel="icon" href="data:," />
    <link rel="stylesheet" href="graphql/static/graphiql.min.css" />
    <style>
      body { margin: 0; height: 100vh; overflow: hidden; }
      #graphiql { height: 100vh; }
    </style>
  </head>
  <body>
    <div id="graphiql">Loading...</div>
    <script src="graphql/static/react.production.min.js"></script>
    <script src="graphql/static/react-dom.production.min.js"></script>
    <script src="graphql/static/graphiql.min.js"></script>
    <script src="graphql/static/graphql-ws.min.js"></script>
    <script src="graphql/static/retailgraph-graphiql.js"></script>
  </body>
</html>
"""

# GraphiQL (CodeMirror, Radix) sets inline styles; fonts are data: URLs in its CSS. 'self'
# covers ws:/wss: to the same host (CSP Level 3).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")


def page() -> HTMLResponse:
    """The GraphiQL page."""
    return HTMLResponse(PAGE, headers={"content-security-policy": CSP,
                                       "x-content-type-options": "nosniff",
                                       "cache-control": "no-cache"})


def assets() -> Mount:
    """The route serving ``static/`` at :data:`ASSETS_PATH`."""
    return Mount(ASSETS_PATH, app=StaticFiles(directory=STATIC), name="graphiql-static")
