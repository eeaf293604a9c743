// npm graphql-ws: a live subscription that goes offline and resumes by cursor, as an app
// should: remember the cursor of the last change received, and subscribe again with
// `after: <that cursor>` (graphql-ws' own retry would resend the first `after`).
// Config: ws, key, query (a subscription with $after and a `cursor` in the result), variables
// (with after: the starting cursor), field (the subscription field), before (changes to take
// before going offline), total (changes to take in all).
// Emits: "next" per change (the field's value), "offline" once disconnected; waits for one
// line on stdin before reconnecting. Result: every change received, in order.
import WebSocket from 'ws';
import { createClient } from 'graphql-ws';
import { config, connectionParams, deadline, finish, emit, nextInput } from './lib.mjs';

const received = [];

async function take(after, count) {
  const client = createClient({
    url: config.ws, webSocketImpl: WebSocket, connectionParams, retryAttempts: 0, lazy: true,
  });
  const changes = client.iterate({ query: config.query, variables: { ...config.variables, after } });
  try {
    while (count-- > 0) {
      const { value, done } = await Promise.race([changes.next(), deadline(30000, 'a change')]);
      if (done) throw new Error('the subscription completed early');
      if (value.errors) throw new Error(JSON.stringify(value.errors));
      const change = value.data[config.field];
      received.push(change);
      emit('next', change);
    }
  } finally {
    await changes.return?.();
    await client.dispose();
  }
  return received.at(-1).cursor;
}

const last = await take(config.variables.after, config.before);
emit('offline', last);
await nextInput();
await take(last, config.total - config.before);
finish(received);
