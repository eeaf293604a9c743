// urql 6 with @urql/exchange-graphcache 9 and no `keys`, `resolvers` or schema: the
// normalised cache as an app starts out with it. Graphcache's development build (NODE_ENV is
// not "production") warns on console for every object it cannot key ("Invalid key: ... You
// have to request `id` or `_id` fields ..."); lib.mjs sends every console call to stderr, and
// the test asserts there was none.
// 1. `query` (network-only), emits "ready" with its data, then waits for a line on stdin (the
//    test changes stock meanwhile);
// 2. `levelQuery` (network-only): another root field returning the same entity;
// 3. `query` again, cache-only: answered from the normalised cache alone, so it shows what
//    step 2 wrote only if both results were stored as one entity (`__typename` + `id`).
// Config: http, key, query, variables, levelQuery, levelVariables. Result: {level, cached}.
import { Client, fetchExchange, gql } from '@urql/core';
import { cacheExchange } from '@urql/exchange-graphcache';
import { config, emit, finish, headers, nextInput } from './lib.mjs';

const client = new Client({
  url: config.http,
  exchanges: [cacheExchange({}), fetchExchange],
  fetchOptions: { headers },
});

async function ask(query, variables, requestPolicy) {
  const { data, error } = await client.query(gql(query), variables, { requestPolicy })
    .toPromise();
  if (error) throw new Error(`${requestPolicy} query failed: ${error.message}`);
  return data;
}

emit('ready', await ask(config.query, config.variables, 'network-only'));
await nextInput();
const level = await ask(config.levelQuery, config.levelVariables, 'network-only');
const cached = await ask(config.query, config.variables, 'cache-only');
finish({ level, cached });
