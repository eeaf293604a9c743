// @apollo/client 4: HttpLink + InMemoryCache with no typePolicies, as an app starts out.
// Runs each operation in turn (network-only, so each is written to the cache), then reports
// the normalised cache. Apollo's development build warns on console when it cannot normalise
// or merge an object ("Cache data may be lost ..."); lib.mjs sends every console call to
// stderr, and the test asserts there was none.
// Config: http, key, operations: [{query, variables}], possibleTypes (optional: Apollo needs
// it to match fragments on several types of an interface, e.g. in `nodes`).
// Result: {results, cache}.
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { loadDevMessages, loadErrorMessages } from '@apollo/client/dev';
import { config, finish, headers } from './lib.mjs';

loadDevMessages();
loadErrorMessages();

const client = new ApolloClient({
  link: new HttpLink({ uri: config.http, headers }),
  cache: new InMemoryCache(config.possibleTypes ? { possibleTypes: config.possibleTypes } : {}),
});
const results = [];
for (const { query, variables } of config.operations) {
  const { data, error } = await client.query({
    query: gql(query), variables, fetchPolicy: 'network-only', errorPolicy: 'all',
  });
  results.push({ data, error: error ? String(error.message) : null });
}
finish({ results, cache: client.extract() });
