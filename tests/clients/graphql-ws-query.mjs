// npm graphql-ws: one query over a WebSocket (graphql-transport-ws), as a browser or
// mobile app runs it. Config: ws, key, query, variables. Result: the execution result.
import WebSocket from 'ws';
import { createClient } from 'graphql-ws';
import { config, connectionParams, deadline, finish } from './lib.mjs';

const client = createClient({
  url: config.ws,
  webSocketImpl: WebSocket,
  connectionParams,
  retryAttempts: 0,
  lazy: true,
});
const results = client.iterate({ query: config.query, variables: config.variables ?? {} });
const first = await Promise.race([results.next(), deadline(20000, 'query result')]);
await client.dispose();
finish(first.value);
