// A second subgraph for the federation test: product reviews and shelf checks. It extends
// retailgraph's entities -- Product (by sku), Location (by id) and StockLevel (by
// sku + location { id }) -- the way another team's service would in a company supergraph.
//
//   node reviews.mjs --port 4001 --data reviews.json
//
// reviews.json: {"reviews": {"<sku>": [{"id", "stars", "body"}]},
//                "shelfChecks": [{"id", "sku", "location", "note", "checkedAt"}],
//                "footfall": {"<location id>": <visitors>}}
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { graphql, parse } from "graphql";
import { buildSubgraphSchema } from "@apollo/subgraph";

const { values: opts } = parseArgs({
  options: { port: { type: "string" }, host: { type: "string", default: "127.0.0.1" },
             data: { type: "string" } },
});
const data = JSON.parse(readFileSync(opts.data, "utf8"));

const typeDefs = parse(`
  extend schema @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key"])

  "A customer review of a product (reviews subgraph)."
  type Review {
    id: ID!
    stars: Int!
    body: String!
    product: Product!
  }

  type Product @key(fields: "sku") {
    sku: ID!
    "Average stars of its reviews; null without reviews."
    rating: Float
    reviewCount: Int!
    reviews: [Review!]!
  }

  type Location @key(fields: "id") {
    id: ID!
    "Visitors counted this week."
    footfall: Int
  }

  type StockLevel @key(fields: "sku location { id }") {
    sku: ID!
    location: Location!
    "When staff last counted this shelf."
    lastShelfCheck: String
  }

  "A store colleague's check of one shelf."
  type ShelfCheck {
    id: ID!
    note: String!
    stockLevel: StockLevel!
  }

  type Query {
    "Products by average rating, best first."
    topRated(first: Int! = 3): [Product!]!
    shelfChecks: [ShelfCheck!]!
  }
`);

const reviewsOf = (sku) => data.reviews[sku] ?? [];
const rating = (sku) => {
  const list = reviewsOf(sku);
  return list.length ? list.reduce((sum, r) => sum + r.stars, 0) / list.length : null;
};
const checkOf = (sku, location) =>
  data.shelfChecks.find((c) => c.sku === sku && c.location === location);

const resolvers = {
  Query: {
    topRated: (_, { first }) =>
      Object.keys(data.reviews)
        .sort((a, b) => rating(b) - rating(a) || a.localeCompare(b))
        .slice(0, first)
        .map((sku) => ({ sku })),
    shelfChecks: () =>
      data.shelfChecks.map((c) => ({
        id: c.id, note: c.note, stockLevel: { sku: c.sku, location: { id: c.location } },
      })),
  },
  Product: {
    __resolveReference: (ref) => ({ sku: ref.sku }),
    rating: (p) => rating(p.sku),
    reviewCount: (p) => reviewsOf(p.sku).length,
    reviews: (p) => reviewsOf(p.sku).map((r) => ({ ...r, product: { sku: p.sku } })),
  },
  Location: {
    __resolveReference: (ref) => ({ id: ref.id }),
    footfall: (l) => data.footfall[l.id] ?? null,
  },
  StockLevel: {
    __resolveReference: (ref) => ({ sku: ref.sku, location: { id: ref.location.id } }),
    lastShelfCheck: (s) => checkOf(s.sku, s.location.id)?.checkedAt ?? null,
  },
};

const schema = buildSubgraphSchema([{ typeDefs, resolvers }]);

const server = createServer(async (req, res) => {
  if (req.method !== "POST") {
    res.writeHead(405).end();
    return;
  }
  let raw = "";
  for await (const chunk of req) raw += chunk;
  const { query, variables, operationName } = JSON.parse(raw);
  const result = await graphql({ schema, source: query, variableValues: variables,
                                 operationName });
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify(result));
});
server.listen(Number(opts.port), opts.host, () => {
  console.log(`reviews subgraph ready at http://${opts.host}:${opts.port}/graphql`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
