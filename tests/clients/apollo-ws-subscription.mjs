// @apollo/client 4 as an app is set up for live data: queries over HttpLink, subscriptions
// over GraphQLWsLink (npm graphql-ws), one InMemoryCache with no typePolicies. The query's
// objects and the subscription's are normalised by id, so each change that arrives updates
// the cached query result without any code for it.
// Config: http, ws, key, query (+ variables), subscription (+ subscriptionVariables),
// field (the subscription field), count.
// Emits: "ready" once the query is cached, "next" per change. Result: {query, changes, cached}
// where cached is the query read back from the cache (cache-only) after the last change.
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { loadDevMessages, loadErrorMessages } from '@apollo/client/dev';
import { getMainDefinition } from '@apollo/client/utilities';
import WebSocket from 'ws';
import { createClient } from 'graphql-ws';
import { config, connectionParams, deadline, emit, finish, headers } from './lib.mjs';

loadDevMessages();
loadErrorMessages();

const ws = createClient({ url: config.ws, webSocketImpl: WebSocket, connectionParams,
                          retryAttempts: 0 });
const link = ApolloLink.split(
  ({ query }) => {
    const definition = getMainDefinition(query);
    return definition.kind === 'OperationDefinition' && definition.operation === 'subscription';
  },
  new GraphQLWsLink(ws),
  new HttpLink({ uri: config.http, headers }),
);
const client = new ApolloClient({ link, cache: new InMemoryCache() });

const query = gql(config.query);
const first = await client.query({ query, variables: config.variables });
emit('ready', first.data);

const changes = [];
await Promise.race([deadline(30000, `${config.count} changes`), new Promise((resolve, reject) => {
  const subscription = client.subscribe({
    query: gql(config.subscription), variables: config.subscriptionVariables,
  }).subscribe({
    next({ data, error }) {
      if (error) { reject(error); return; }
      changes.push(data[config.field]);
      emit('next', data[config.field]);
      if (changes.length === config.count) { subscription.unsubscribe(); resolve(); }
    },
    error: reject,
  });
})]);
const cached = client.readQuery({ query, variables: config.variables });
await ws.dispose();
finish({ query: first.data, changes, cached });
