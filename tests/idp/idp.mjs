// A real OpenID provider (panva's OpenID-certified oidc-provider) for mtlsd's
// end-to-end JWT tests. See README.md beside this file.
//
//   node idp.mjs --keys keys.json [--port 0] [--ttl 300] [--short-ttl 2] [--alg RS256] [--exit-with-stdin]
//   node idp.mjs --generate keys.json --key RS256:kid-1 [--key ES256:kid-2 ...] [--keep old.json]
//
// Serving mode prints exactly one JSON line on stdout once it is listening;
// everything else (oidc-provider's notices and warnings included) goes to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

// oidc-provider prints its NOTICEs with console.info, on stdout: keep stdout for the ready line.
for (const name of ['log', 'info', 'debug']) {
  console[name] = (...args) => console.error(...args);
}

const USAGE = `usage:
  node idp.mjs --keys FILE [--port N] [--ttl SECS] [--short-ttl SECS] [--alg ALG] [--exit-with-stdin]
  node idp.mjs --generate FILE (--key ALG[:KID])... [--keep OLDFILE]
  node idp.mjs --generate FILE --alg ALG --kid KID [--keep OLDFILE]
ALG: RS256 PS256 ES256 EdDSA`;

function fail(message) {
  console.error(`idp: ${message}\n${USAGE}`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      keys: { type: 'string' },
      ttl: { type: 'string', default: '300' },
      'short-ttl': { type: 'string', default: '2' },
      alg: { type: 'string' },
      kid: { type: 'string' },
      generate: { type: 'string' },
      key: { type: 'string', multiple: true, default: [] },
      keep: { type: 'string' },
      'exit-with-stdin': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  }));
} catch (e) {
  fail(e.message);
}
if (args.help) {
  console.error(USAGE);
  process.exit(0);
}

// --- key generation -------------------------------------------------------

function generateJwk(alg, kid) {
  let pair;
  switch (alg) {
    case 'RS256':
    case 'PS256':
      pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      break;
    case 'ES256':
      pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      break;
    case 'EdDSA':
      pair = crypto.generateKeyPairSync('ed25519');
      break;
    default:
      fail(`unsupported --alg ${alg}`);
  }
  // alg and use pin each key to one JWS algorithm, which oidc-provider's key selection honours.
  return { ...pair.privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

if (args.generate !== undefined) {
  const specs = [...args.key];
  if (args.alg !== undefined || args.kid !== undefined) {
    specs.push(`${args.alg ?? fail('--kid needs --alg')}${args.kid ? `:${args.kid}` : ''}`);
  }
  if (specs.length === 0) fail('--generate needs at least one --key ALG[:KID]');
  const keys = specs.map((spec) => {
    const [alg, kid = `${alg.toLowerCase()}-${crypto.randomBytes(4).toString('hex')}`] = spec.split(':');
    return generateJwk(alg, kid);
  });
  // Read the old file before writing: --keep may name the file being rewritten (rotation).
  if (args.keep !== undefined) keys.push(...JSON.parse(fs.readFileSync(args.keep, 'utf8')).keys);
  const kids = new Set(keys.map((k) => k.kid));
  if (kids.size !== keys.length) fail('duplicate kid in the generated key set');
  fs.writeFileSync(args.generate, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
  process.exit(0);
}

// --- serving --------------------------------------------------------------

const seconds = (name) => {
  const value = Number(args[name]);
  if (!Number.isSafeInteger(value) || value < 1) fail(`--${name} must be a positive integer`);
  return value;
};
const port = Number(args.port);
if (!Number.isSafeInteger(port) || port < 0 || port > 65535) fail('--port must be 0..65535');
const ttl = seconds('ttl');
const shortTtl = seconds('short-ttl');
if (args.keys === undefined) fail('--keys FILE is required');
let keys;
try {
  ({ keys } = JSON.parse(fs.readFileSync(args.keys, 'utf8')));
} catch (e) {
  fail(`cannot read the keys file: ${e.message}`);
}
if (!Array.isArray(keys) || keys.length === 0) fail(`${args.keys} has no keys`);
// Tokens are signed with the first key whose alg is `alg`: by default the first key's.
const alg = args.alg ?? keys[0].alg ?? fail('the first key has no "alg"; pass --alg');

// Resource indicators (the token request's `resource`, which becomes the JWT's `aud`)
// that this IdP serves: any URN under urn:mtlsd:. Anything else is invalid_target.
const RESOURCE_PREFIX = 'urn:mtlsd:';
const SCOPES = ['api:read', 'api:write'];

// client_credentials clients (client_secret_basic) and the fixed claims their tokens carry.
const CLIENTS = {
  'mtlsd-test': { groups: ['dev'], org: { team: 'payments' } },
  'mtlsd-admin': { groups: ['admins', 'dev'], org: { team: 'platform' } },
  'mtlsd-plain': {},
  'mtlsd-short': { groups: ['dev'], org: { team: 'payments' } },
};
const ttlFor = (clientId) => (clientId === 'mtlsd-short' ? shortTtl : ttl);

const server = http.createServer();
server.on('error', (e) => {
  console.error(`idp: ${e.message}`);
  process.exit(1);
});
// Bind first: the issuer names the port actually bound (node sets SO_REUSEADDR, so a
// restart can take the same port straight back).
await new Promise((resolve) => { server.listen(port, '127.0.0.1', resolve); });
const bound = server.address().port;
const issuer = `http://127.0.0.1:${bound}`;

const { default: Provider, errors } = await import('oidc-provider');

const provider = new Provider(issuer, {
  clients: Object.keys(CLIENTS).map((clientId) => ({
    client_id: clientId,
    client_secret: `${clientId}-secret`,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: SCOPES.join(' '),
  })),
  clientDefaults: {
    grant_types: ['client_credentials'],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: alg,
  },
  jwks: { keys },
  scopes: ['openid', ...SCOPES],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No `resource` in the request: no resource server, so an opaque (non-JWT) token.
      defaultResource: (_ctx, _client, oneOf) => oneOf,
      getResourceServerInfo: (_ctx, resourceIndicator, client) => {
        if (!resourceIndicator.startsWith(RESOURCE_PREFIX)) {
          throw new errors.InvalidTarget(`resource must start with ${RESOURCE_PREFIX}`);
        }
        return {
          scope: SCOPES.join(' '),
          audience: resourceIndicator,
          accessTokenTTL: ttlFor(client.clientId),
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg } },
        };
      },
    },
  },
  extraTokenClaims: (_ctx, token) => structuredClone(CLIENTS[token.clientId]),
  ttl: {
    ClientCredentials: (_ctx, token, client) => token.resourceServer?.accessTokenTTL ?? ttlFor(client.clientId),
  },
  // Fixed cookie keys silence a warning; no flow here sets cookies.
  cookies: { keys: ['mtlsd-test-idp-cookie-key'] },
  clockTolerance: 0,
});
provider.on('server_error', (_ctx, e) => console.error('idp: server_error', e));

server.on('request', provider.callback());

const ready = {
  ready: true,
  issuer,
  port: bound,
  jwks_uri: `${issuer}/jwks`,
  token_endpoint: `${issuer}/token`,
};
process.stdout.write(`${JSON.stringify(ready)}\n`);

const exit = () => {
  server.closeAllConnections();
  process.exit(0);
};
process.on('SIGTERM', exit);
process.on('SIGINT', exit);
if (args['exit-with-stdin']) {
  // The parent holds our stdin open: when it goes (even killed outright), so do we.
  process.stdin.on('end', exit).on('error', exit).resume();
}
