// @apollo/client 4 with BatchHttpLink: queries issued together go out as one POST holding a
// JSON array, and each result comes back to its own query. Config: http, key, operations
// ([{query, variables}]), persisted (true: PersistedQueryLink in front). Result: {results
// (per operation: data, error codes), requests (the JSON bodies sent), responses (status and
// x-retailgraph-cache of each)}.
import { createHash } from 'node:crypto';
import { ApolloClient, InMemoryCache, gql } from '@apollo/client';
import { BatchHttpLink } from '@apollo/client/link/batch-http';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { config, finish, headers } from './lib.mjs';

const requests = [];
const responses = [];
async function recording(uri, options) {
  requests.push(JSON.parse(options.body));
  const response = await fetch(uri, options);
  responses.push({ status: response.status, cache: response.headers.get('x-retailgraph-cache') });
  return response;
}
let link = new BatchHttpLink({ uri: config.http, headers, batchMax: 10, batchInterval: 50,
  fetch: recording });
if (config.persisted) {
  const sha256 = (text) => createHash('sha256').update(text).digest('hex');
  link = new PersistedQueryLink({ sha256 }).concat(link);
}
const client = new ApolloClient({ link, cache: new InMemoryCache() });

async function run(operations) {
  const settled = await Promise.all(operations.map((op) => client.query({
    query: gql(op.query), variables: op.variables ?? {}, fetchPolicy: 'network-only',
    errorPolicy: 'all',
  })));
  return settled.map((r) => ({
    data: r.data ?? null,
    codes: r.error?.errors?.map((e) => e.extensions?.code) ?? (r.error ? [r.error.message] : []),
  }));
}
const results = [];
for (let round = 0; round < (config.rounds ?? 1); round++) {
  results.push(await run(config.operations));
}
finish({ results, requests, responses });
