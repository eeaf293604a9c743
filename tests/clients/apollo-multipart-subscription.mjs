// @apollo/client 4: a subscription over HTTP with HttpLink, which speaks Apollo's multipart
// subscription protocol (Accept: multipart/mixed;subscriptionSpec=1.0), as GraphiQL and
// Apollo apps do without a WebSocket. Config: http, key, query, variables, count, persisted
// (true: through PersistedQueryLink, hash first). Messages: "subscribed", "next" each
// result. Result: {results, requests} (requests: what each HTTP request sent).
import { createHash } from 'node:crypto';
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { config, emit, finish, headers } from './lib.mjs';

const requests = [];
async function recording(uri, options) {
  const body = JSON.parse(options.body);
  requests.push({ hashOnly: body.query === undefined, hasHash: !!body.extensions?.persistedQuery });
  return fetch(uri, options);
}
let link = new HttpLink({ uri: config.http, headers, fetch: recording });
if (config.persisted) {
  const sha256 = (text) => createHash('sha256').update(text).digest('hex');
  link = new PersistedQueryLink({ sha256 }).concat(link);
}
const client = new ApolloClient({ link, cache: new InMemoryCache() });
const results = [];
await new Promise((resolve, reject) => {
  const subscription = client
    .subscribe({ query: gql(config.query), variables: config.variables ?? {} })
    .subscribe({
      next: (result) => {
        results.push({ data: result.data ?? null, error: result.error?.message ?? null,
          codes: result.error?.errors?.map((e) => e.extensions?.code) ?? [] });
        emit('next', results.at(-1));
        if (results.length >= config.count) {
          subscription.unsubscribe();
          resolve();
        }
      },
      error: reject,
      complete: resolve,
    });
  emit('subscribed');
});
finish({ results, requests });
