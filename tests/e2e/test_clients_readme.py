"""The README's client examples, run as written against a running gateway with auth on.

``tests/clients/readme-live-stock.mjs`` (Apollo Client 4 with GraphQLWsLink) and
``tests/clients/readme_live_stock.py`` (Python gql) are shown verbatim in the README; these
tests check that they are, run them as a user would (plain ``node`` / ``python``, the token in
``RETAILGRAPH_TOKEN``), change stock through the simulators, and compare every line they
print with the simulators' truth. The Apollo example also outlives a gateway restart and
resumes after its last cursor: each change is printed once, none is missed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import create_app
from tests.e2e.test_clients import changing
from tests.e2e.test_subscriptions import Live, cursor_key
from tests.nodejs import CLIENTS, NODE, ClientScript, needs_node, node_env, npm_install
from tests.support import ServerThread, Stack, fresh_stack

README = Path(__file__).resolve().parents[2] / "README.md"
READER = "readme-reader-key-000001"
KEYS = {"reader": {"key": READER, "scopes": ["stock:read"]}}
PRODUCT = """query($sku: ID!) { product(sku: $sku) { name
  stock(locationIds: ["ST001", "WH01"]) { location { id } available } } }"""


@pytest.fixture(scope="module")
def stack(redis_server_url: str) -> Iterator[Stack]:
    with fresh_stack(redis_server_url, KEYS, skus=30) as running:
        yield running


@pytest.fixture(scope="module")
def live(stack: Stack, redis_server_url: str) -> Iterator[Live]:
    with changing(stack, redis_server_url) as running:
        yield running


def env_for(stack: Stack) -> dict[str, str]:
    return {**node_env(), "RETAILGRAPH_URL": f"{stack.url}/graphql",
            "RETAILGRAPH_TOKEN": READER}


def stock_line(stack: Stack, sku: str) -> tuple[str, str]:
    body = stack.graphql(PRODUCT, {"sku": sku}, headers={"X-API-Key": READER})
    product = body["data"]["product"]
    return product["name"], ", ".join(f"{s['location']['id']} {s['available']}"
                                      for s in product["stock"])


@pytest.mark.parametrize(("name", "fence"), [("readme-live-stock.mjs", "js"),
                                             ("readme_live_stock.py", "python")])
def test_the_readme_shows_each_example_as_tested(name: str, fence: str) -> None:
    example = (CLIENTS / name).read_text(encoding="utf-8")
    assert f"```{fence}\n{example}```" in README.read_text(encoding="utf-8")


@needs_node
async def test_the_apollo_example_follows_a_product_and_resumes_after_a_restart(
        stack: Stack, live: Live) -> None:
    assert NODE is not None
    npm_install(CLIENTS)
    i = live.sku(0, at_least=10)
    sku = live.world.items[i].sku
    argv = [NODE, str(CLIENTS / "readme-live-stock.mjs"), sku]

    async def changed(left: int, line: str | None = None) -> str:
        line = line or await app.message("line")
        _, stock = stock_line(stack, sku)
        assert stock.startswith(f"ST001 {left}, ")
        assert re.fullmatch(rf"\d+-\d+ ST001 changed: {stock}", line), line
        return line

    async with ClientScript("readme-live-stock.mjs", argv=argv, env=env_for(stack)) as app:
        name, stock = stock_line(stack, sku)
        assert await app.message("line") == f"{name}: {stock}"
        first = await changed(await live.sale(i, 0, 2))
        # The gateway stops (its sockets close with 1012); a sale while it is down; it
        # starts again on the same port, and the app subscribes after its last cursor.
        old = stack.gateways[0]
        old.stop()
        ended = await app.message("line")
        assert ended == (f"subscription ended (Socket closed with event 1012 ); resuming "
                         f"after {first.split()[0]}")
        while_down = await live.sale(i, 0, 1)
        stack.gateways[0] = ServerThread(create_app(stack.settings), old.port).start()
        line = await app.message("line", seconds=60)
        while line.startswith("subscription ended"):  # tried while it was still down
            line = await app.message("line", seconds=60)
        missed = await changed(while_down, line)
        last = await changed(await live.sale(i, 0, 3))
    printed = [m["value"] for m in app.run.messages]
    changes = [x for x in printed[1:] if not x.startswith("subscription ended")]
    assert changes == [first, missed, last]  # each change once, none missed
    cursors = [x.split()[0] for x in changes]
    assert sorted(set(cursors), key=cursor_key) == cursors
    assert app.run.stderr == ""


async def test_the_gql_example_prints_the_product_then_its_changes(stack: Stack,
                                                                   live: Live) -> None:
    i = live.sku(0, at_least=5)
    sku = live.world.items[i].sku
    argv = [sys.executable, str(CLIENTS / "readme_live_stock.py"), sku, "2"]
    env = {**env_for(stack), "PYTHONUNBUFFERED": "1"}  # piped: print each line at once
    async with ClientScript("readme_live_stock.py", argv=argv, env=env) as app:
        name, stock = stock_line(stack, sku)
        assert await app.message("line") == f"{name}: {stock}"
        seen = []
        for quantity in (1, 2):
            left = await live.sale(i, 0, quantity)
            line = await app.message("line")
            assert re.fullmatch(rf"\d+-\d+ ST001 available {left}", line), line
            seen.append(line.split()[0])
        run = await app.finish()
    assert run.returncode == 0, run.stderr
    assert sorted(seen, key=cursor_key) == seen
