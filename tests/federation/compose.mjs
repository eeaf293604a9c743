// Composes a supergraph with the official composition library (@apollo/composition) from
// the subgraphs' SDL, fetched live from each one's `{ _service { sdl } }`.
//
//   node compose.mjs --out supergraph.graphql \
//     --subgraph retailgraph=http://127.0.0.1:8000/graphql \
//     --subgraph reviews=http://127.0.0.1:4001/graphql \
//     [--header "X-API-Key: ..."]
//
// Exit 0 with the supergraph written; exit 1 with every composition error printed.
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { composeServices } from "@apollo/composition";
import { parse } from "graphql";

const { values: opts } = parseArgs({
  options: {
    out: { type: "string" },
    subgraph: { type: "string", multiple: true },
    header: { type: "string", multiple: true, default: [] },
  },
});
const headers = { "content-type": "application/json" };
for (const h of opts.header) {
  const at = h.indexOf(":");
  headers[h.slice(0, at).trim()] = h.slice(at + 1).trim();
}

const services = [];
for (const spec of opts.subgraph) {
  const at = spec.indexOf("=");
  const name = spec.slice(0, at);
  const url = spec.slice(at + 1);
  const response = await fetch(url, {
    method: "POST", headers, body: JSON.stringify({ query: "{ _service { sdl } }" }),
  });
  const body = await response.json();
  if (!response.ok || body.errors || !body.data?._service?.sdl) {
    console.error(`${name}: no SDL from ${url}: ${response.status} ${JSON.stringify(body)}`);
    process.exit(1);
  }
  services.push({ name, url, typeDefs: parse(body.data._service.sdl) });
}

const result = composeServices(services);
if (result.errors) {
  for (const error of result.errors) console.error(`composition error: ${error.message}`);
  process.exit(1);
}
writeFileSync(opts.out, result.supergraphSdl);
console.log(`composed ${services.map((s) => s.name).join(" + ")} into ${opts.out} ` +
            `(${result.hints?.length ?? 0} hints)`);
