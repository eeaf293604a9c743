// npm graphql-sse (distinct connections mode): a subscription over Server-Sent Events that
// survives dropped connections. Each result carries its change's cursor (the SSE event id,
// also in extensions.cursor); when the connection drops, the app subscribes again with the
// standard Last-Event-ID header and gets exactly what it missed, then live changes.
// Config: http, key, query, variables, total (results to collect before finishing).
// Messages: "connected" {lastEventId} on each connection, "next" each result, "dropped"
// (the error) when a connection is lost; after "dropped" the script waits for one stdin line
// (the test changes stock meanwhile) before it reconnects.
import { createClient } from 'graphql-sse';
import { config, describe, emit, finish, headers, nextInput } from './lib.mjs';

let lastEventId = null;
const client = createClient({
  url: config.http,
  // Called on every connection attempt: resume after the last event received.
  headers: () => (lastEventId ? { ...headers, 'Last-Event-ID': lastEventId } : headers),
  retryAttempts: 0,
});
const received = [];

function connection() {
  return new Promise((resolve) => {
    const dispose = client.subscribe(
      { query: config.query, variables: config.variables ?? {} },
      {
        next: (result) => {
          lastEventId = result.extensions?.cursor ?? lastEventId;
          received.push(result);
          emit('next', result);
          if (received.length >= config.total) {
            dispose();
            resolve('done');
          }
        },
        error: (error) => resolve(describe(error)),
        complete: () => resolve('complete'),
      },
      { connected: () => emit('connected', { lastEventId }) },
    );
  });
}

for (;;) {
  const end = await connection();
  if (end === 'done') break;
  emit('dropped', end);
  await nextInput();
}
client.dispose();
finish(received);
