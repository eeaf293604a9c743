// retailgraph's GraphiQL page (ours; the other files here are vendored, see manifest.json).
// Queries and mutations go over HTTP to this page's URL, subscriptions over a graphql-ws
// WebSocket to the same URL. Both carry what is typed in the Headers tab: every HTTP request
// sends those headers, and the WebSocket sends them as its connection_init payload (a
// browser cannot set headers on a WebSocket), where the gateway reads Authorization or
// X-API-Key just as on HTTP.
(function () {
  "use strict";

  const httpUrl = window.location.href.split(/[?#]/)[0];
  const wsUrl = httpUrl.replace(/^http/, "ws");

  const EXAMPLE = `# retailgraph: one always-current GraphQL endpoint over
# the POS, WMS, ERP and e-commerce systems.
#
# Auth on? Put your credential in the Headers tab below:
#   {"Authorization": "Bearer <API key or JWT>"}
# then re-fetch the schema (the circular arrow, left).
# It goes with every query, and in connection_init for
# subscriptions. Run: Ctrl-Enter. Live stock, for example:
#   subscription { stockChanged { sku locationId
#     stockLevel { available } } }

{
  products(first: 5) {
    nodes { sku name price { amount currencyCode } }
  }
}
`;

  // One graphql-ws client per set of headers: a change of credential opens a new socket
  // with the new connection_init payload (and ends the subscriptions of the old one).
  let current = null;

  function fetcherFor(headers) {
    const key = JSON.stringify(headers || {});
    if (current === null || current.key !== key) {
      if (current !== null) {
        current.client.dispose();
      }
      const client = graphqlWs.createClient({
        url: wsUrl,
        connectionParams: headers || {},
        lazy: true,
      });
      current = {
        key: key,
        client: client,
        fetch: GraphiQL.createFetcher({ url: httpUrl, wsClient: client }),
      };
    }
    return current.fetch;
  }

  // The fetcher tells subscriptions (WebSocket) from the rest (HTTP) by the parsed document;
  // parse exactly what is sent (GraphiQL's own parse lags behind the editor while it waits
  // for the schema or a typing pause). A document that does not parse goes over HTTP, and
  // the gateway answers with the syntax error.
  function fetcher(params, options) {
    let documentAST = options && options.documentAST;
    try {
      documentAST = GraphiQL.GraphQL.parse(params.query);
    } catch (error) {
      documentAST = undefined;
    }
    const opts = Object.assign({}, options, { documentAST: documentAST });
    return fetcherFor(options && options.headers)(params, opts);
  }

  const root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: EXAMPLE,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      // Credentials typed in the Headers tab stay in this tab's memory, not localStorage.
      shouldPersistHeaders: false,
    }),
  );
})();
