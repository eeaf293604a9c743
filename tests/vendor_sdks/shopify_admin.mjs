// Shopify's official Node library (@shopify/shopify-api) against the commerce simulator.
//
//   node shopify_admin.mjs requests      stdin: [{query, variables?, retries?}, ...]
//       Runs each through the library's GraphQL Admin client (API version 2026-10) and
//       prints one JSON array: {data, extensions} or {error: {name, message, ...}} per request.
//   node shopify_admin.mjs webhooks PORT
//       Listens on 127.0.0.1:PORT; each POST is checked with shopify.webhooks.validate (the
//       library's HMAC and header check) and answered 200 (valid) or 401; one JSON line per
//       delivery on stdout. Prints "listening" first.
//
// Environment: SHOPIFY_SHOP (host:port of the simulator; the library always speaks https, so
// the simulator serves TLS with a certificate in NODE_EXTRA_CA_CERTS), SHOPIFY_TOKEN (the
// Admin API access token), SHOPIFY_SECRET (the app's client secret: the webhook key).
import '@shopify/shopify-api/adapters/node';
import {createServer} from 'node:http';
import {LogSeverity, Session, shopifyApi} from '@shopify/shopify-api';

const shopify = shopifyApi({
  apiKey: 'retailgraph-sync',
  apiSecretKey: process.env.SHOPIFY_SECRET ?? 'unused',
  adminApiAccessToken: process.env.SHOPIFY_TOKEN,
  isCustomStoreApp: true,
  isEmbeddedApp: false,
  scopes: ['read_inventory', 'write_inventory', 'read_products', 'write_products'],
  hostName: 'localhost',
  // 13.1.0 (the last release for Node 20) predates the ApiVersion.October26 constant; the
  // client takes the version string as is and checks it against the dates it supports.
  apiVersion: '2026-10',
  logger: {level: LogSeverity.Error, log: async () => {}},
});

function describe(err) {
  const out = {name: err.constructor?.name ?? 'Error', message: err.message};
  if (err.response?.status !== undefined) out.status = err.response.status;
  if (err.response?.code !== undefined) out.status = err.response.code;
  if (err.body !== undefined) out.body = err.body;
  return out;
}

async function requests() {
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  const session = new Session({id: 'offline', shop: process.env.SHOPIFY_SHOP, state: '',
    isOnline: false, accessToken: process.env.SHOPIFY_TOKEN});
  const client = new shopify.clients.Graphql({session});
  const results = [];
  for (const {query, variables, retries} of JSON.parse(input)) {
    try {
      const response = await client.request(query, {variables, retries});
      results.push({data: response.data, extensions: response.extensions});
    } catch (err) {
      results.push({error: describe(err)});
    }
  }
  process.stdout.write(JSON.stringify(results));
}

function webhooks(port) {
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      let check;
      try {
        check = await shopify.webhooks.validate({rawBody, rawRequest: req, rawResponse: res});
      } catch (err) {
        check = {valid: false, reason: `threw: ${err.message}`};
      }
      res.statusCode = check.valid ? 200 : 401;
      res.end();
      process.stdout.write(JSON.stringify({...check, body: rawBody}) + '\n');
    });
  });
  server.listen(port, '127.0.0.1', () => process.stdout.write('listening\n'));
}

const [mode, arg] = process.argv.slice(2);
if (mode === 'requests') await requests();
else if (mode === 'webhooks') webhooks(Number(arg));
else {
  process.stderr.write('usage: node shopify_admin.mjs requests | webhooks PORT\n');
  process.exit(2);
}
