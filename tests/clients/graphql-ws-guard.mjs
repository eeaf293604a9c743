// npm graphql-ws meets the WebSocket protections (tests/e2e/test_ws_guard.py): `count` queries
// on one client, each answered or refused (a refusal is the protocol's `error` message,
// which graphql-ws raises as a list of GraphQL errors); then a subscription with a token
// that expires while the socket is open, until the server closes the socket.
// Config: ws, key, query, count, expiringKey, subscription.
// Result: {outcomes: [{data: bool, codes} | {refused: [{code, retryAfter}]}],
//          close: {code, reason}}.
import WebSocket from 'ws';
import { createClient } from 'graphql-ws';
import { config, deadline, describe, finish } from './lib.mjs';

function connect(key, on = {}) {
  return createClient({
    url: config.ws,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: `Bearer ${key}` },
    retryAttempts: 0,
    lazy: true,
    on,
  });
}

const outcomes = [];
const queries = connect(config.key);
for (let n = 0; n < config.count; n += 1) {
  try {
    const { value } = await Promise.race([
      queries.iterate({ query: config.query }).next(), deadline(20000, 'query')]);
    outcomes.push({ data: value.data != null,
                    codes: (value.errors ?? []).map((e) => e.extensions?.code) });
  } catch (errors) {
    if (!Array.isArray(errors)) throw errors;
    outcomes.push({ refused: errors.map((e) => ({ code: e.extensions?.code,
                                                  retryAfter: e.extensions?.retryAfter })) });
  }
}
await queries.dispose();

let closed;
const gone = new Promise((resolve) => { closed = resolve; });
const expiring = connect(config.expiringKey, {
  closed: (event) => closed({ code: event.code, reason: event.reason }),
});
expiring.iterate({ query: config.subscription }).next().catch((error) => describe(error));
const close = await Promise.race([gone, deadline(30000, 'the socket to close')]);
finish({ outcomes, close });
