// npm eventsource: the WHATWG EventSource, as browsers implement it, reading a subscription
// over graphql-sse (a GET with the operation in the query string). When its connection
// drops, EventSource reconnects by itself and sends the id of the last event it received as
// Last-Event-ID; the gateway resumes right after that change. Config: http, key, query,
// variables, total (results to collect). Messages: "open" on each connection, "next" each
// result ({id, result}), "error" when the connection is lost or cannot be made.
import { EventSource } from 'eventsource';
import { config, emit, finish, headers } from './lib.mjs';

const url = new URL(config.http);
url.searchParams.set('query', config.query);
url.searchParams.set('variables', JSON.stringify(config.variables ?? {}));
const received = [];
const source = new EventSource(url, {
  // Credentials as a header (a browser would use a cookie or a token in the URL).
  fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...headers } }),
});
source.addEventListener('open', () => emit('open'));
source.addEventListener('error', (event) => emit('error', event.message ?? 'error'));
source.addEventListener('next', (event) => {
  received.push({ id: event.lastEventId, result: JSON.parse(event.data) });
  emit('next', received.at(-1));
  if (received.length >= config.total) {
    source.close();
    finish(received);
  }
});
source.addEventListener('complete', () => {
  source.close();
  finish(received);
});
