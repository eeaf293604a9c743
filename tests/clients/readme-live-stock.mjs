// live-stock.mjs: a product's stock, kept live. npm install @apollo/client graphql graphql-ws rxjs ws
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { getMainDefinition } from '@apollo/client/utilities';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

// Browsers and Node 22+ have a global WebSocket; on Node 20 give it one (Apollo's
// GraphQLWsLink refers to the global when a connection fails).
globalThis.WebSocket ??= WebSocket;

const url = process.env.RETAILGRAPH_URL ?? 'http://127.0.0.1:8000/graphql';
const token = process.env.RETAILGRAPH_TOKEN; // with `retailgraph demo --auth`
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const sku = process.argv[2] ?? 'SKU-000042';

const client = new ApolloClient({
  cache: new InMemoryCache(), // no typePolicies: each Node is stored once, by its id
  link: ApolloLink.split(
    ({ query }) => getMainDefinition(query).operation === 'subscription',
    // retryAttempts 0: on a dropped socket we subscribe again, after the last cursor seen
    new GraphQLWsLink(createClient({ url: url.replace(/^http/, 'ws'), connectionParams: auth,
                                     retryAttempts: 0 })),
    new HttpLink({ uri: url, headers: auth }),
  ),
});

const LOG = gql`query Log($sku: ID!, $after: String) {
  stockEvents(skus: [$sku], after: $after, first: 100) { endCursor hasMore } }`;
const PRODUCT = gql`query Product($sku: ID!) { product(sku: $sku) {
  id name stock(locationIds: ["ST001", "WH01"]) { id location { id } available } } }`;
const CHANGES = gql`subscription Changes($sku: ID!, $after: String) {
  stockChanged(skus: [$sku], after: $after) {
    cursor locationId stockLevel { id available } } }`;

// 1. Where the change log ends now (paged to its end), 2. the product, at least that current.
let cursor = null;
for (let more = true; more;) {
  const { data } = await client.query({ query: LOG, variables: { sku, after: cursor },
                                        fetchPolicy: 'network-only' });
  ({ endCursor: cursor, hasMore: more } = data.stockEvents);
}
const shown = () => client.readQuery({ query: PRODUCT, variables: { sku } }).product.stock
  .map((s) => `${s.location.id} ${s.available}`).join(', ');
const { data } = await client.query({ query: PRODUCT, variables: { sku } });
console.log(`${data.product.name}: ${shown()}`);

// 3. Every change after that cursor. Each one updates the cached product (same StockLevel
//    id); if the socket drops, subscribe again after the last cursor: no gap, no duplicate.
(function follow() {
  client.subscribe({ query: CHANGES, variables: { sku, after: cursor } }).subscribe({
    next({ data, error }) {
      if (error) { // Apollo Client 4 delivers errors, a dropped socket too, as a result
        console.log(`subscription ended (${error.message}); resuming after ${cursor}`);
        setTimeout(follow, 1000);
        return;
      }
      cursor = data.stockChanged.cursor;
      console.log(`${cursor} ${data.stockChanged.locationId} changed: ${shown()}`);
    },
  });
})();
