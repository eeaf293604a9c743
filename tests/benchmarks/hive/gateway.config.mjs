// Hive Gateway in proxy mode in front of retailgraph, with its response cache (in memory,
// shared by every caller: session null). tests/benchmarks/bench_http.py passes UPSTREAM
// (retailgraph's /graphql) and API_KEY (sent upstream on every forwarded request).
import { defineConfig } from '@graphql-hive/gateway';

export const gatewayConfig = defineConfig({
  proxy: {
    endpoint: process.env.UPSTREAM,
    headers: { 'x-api-key': process.env.API_KEY },
  },
  responseCaching: {
    session: () => null,
    ttl: 60_000,
    includeExtensionMetadata: true,
  },
  logging: 'error',
});
