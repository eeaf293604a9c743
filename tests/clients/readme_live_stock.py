"""live_stock.py: a product's stock, then its changes as they happen.

pip install 'gql[aiohttp,websockets]'
"""
import asyncio
import os
import sys

from gql import Client, GraphQLRequest
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.websockets import WebsocketsTransport

URL = os.environ.get("RETAILGRAPH_URL", "http://127.0.0.1:8000/graphql")
TOKEN = os.environ.get("RETAILGRAPH_TOKEN")  # with `retailgraph demo --auth`
AUTH = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}

LOG = """query Log($sku: ID!) { stockEvents(skus: [$sku], first: 100) { endCursor hasMore } }"""
PRODUCT = """query Product($sku: ID!) { product(sku: $sku) {
  name stock(locationIds: ["ST001", "WH01"]) { location { id } available } } }"""
CHANGES = """subscription Changes($sku: ID!, $after: String) {
  stockChanged(skus: [$sku], after: $after) { cursor locationId stockLevel { available } } }"""


async def main(sku: str, changes: int) -> None:
    # HTTP; gql fetches the schema and checks each request against it before sending.
    http = AIOHTTPTransport(url=URL, headers=AUTH)
    async with Client(transport=http, fetch_schema_from_transport=True) as session:
        # Where the change log ends now (page on while hasMore, for a long log), then the
        # product, at least that current.
        log = await session.execute(GraphQLRequest(LOG, variable_values={"sku": sku}))
        data = await session.execute(GraphQLRequest(PRODUCT, variable_values={"sku": sku}))
    stock = ", ".join(f"{s['location']['id']} {s['available']}" for s in data["product"]["stock"])
    print(f"{data['product']['name']}: {stock}")
    # WebSocket (graphql-transport-ws; subprotocols=[WebsocketsTransport.APOLLO_SUBPROTOCOL]
    # for the legacy graphql-ws), after that cursor: nothing since is missed.
    after = log["stockEvents"]["endCursor"]
    ws = WebsocketsTransport(url=URL.replace("http", "ws", 1), init_payload=AUTH)
    async with Client(transport=ws) as session:
        request = GraphQLRequest(CHANGES, variable_values={"sku": sku, "after": after})
        async for data in session.subscribe(request):
            change = data["stockChanged"]
            print(f"{change['cursor']} {change['locationId']} available "
                  f"{change['stockLevel']['available']}")
            changes -= 1
            if changes == 0:
                break


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "SKU-000042",
                     int(sys.argv[2]) if len(sys.argv) > 2 else -1))
