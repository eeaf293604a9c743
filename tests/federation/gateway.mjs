// A real federation gateway (@apollo/gateway on @apollo/server) in front of the subgraphs of
// a composed supergraph. Credentials the client sends (Authorization, X-API-Key) are
// forwarded to every subgraph, so retailgraph applies its own permissions.
//
//   node gateway.mjs --supergraph supergraph.graphql --port 4000
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ApolloGateway, RemoteGraphQLDataSource } from "@apollo/gateway";
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";

const { values: opts } = parseArgs({
  options: { supergraph: { type: "string" }, port: { type: "string" },
             host: { type: "string", default: "127.0.0.1" } },
});
const FORWARDED = ["authorization", "x-api-key"];

const gateway = new ApolloGateway({
  supergraphSdl: readFileSync(opts.supergraph, "utf8"),
  buildService: ({ url }) => new RemoteGraphQLDataSource({
    url,
    willSendRequest({ request, context }) {
      for (const name of FORWARDED) {
        const value = context.headers?.[name];
        if (value) request.http.headers.set(name, value);
      }
    },
  }),
});
const server = new ApolloServer({ gateway, introspection: true });
const { url } = await startStandaloneServer(server, {
  listen: { host: opts.host, port: Number(opts.port) },
  context: async ({ req }) => ({ headers: req.headers }),
});
console.log(`federation gateway ready at ${url}`);
process.on("SIGTERM", async () => {
  await server.stop();
  process.exit(0);
});
