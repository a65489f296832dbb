// node-oidc-provider configured for the kavachOS conformance kit (tests/test_conformance_peers.py,
// conformance/compare.py): authorization code + PKCE (required for every client), resource
// indicators (RFC 8707) for one resource, <issuer>/mcp, with JWT access tokens, dynamic client
// registration (RFC 7591), revocation, introspection, refresh tokens rotated on every use, and
// RFC 9207 iss. Sign-in and consent are the library's own development interactions (any
// username and password sign in). State lives in memory.
//
//   node server.mjs PORT
import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const resource = `${issuer}/mcp`;
const resourceScopes = 'tools:list tools:call resources:read';

const configuration = {
  clients: [],
  scopes: ['openid', 'offline_access', ...resourceScopes.split(' ')],
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (indicator !== resource) {
          throw new errors.InvalidTarget();
        }
        return { scope: resourceScopes, audience: resource, accessTokenFormat: 'jwt', accessTokenTTL: 600 };
      },
    },
  },
  pkce: { required: () => true },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => true,
  clientBasedCORS: () => true,
  ttl: { AuthorizationCode: 60, AccessToken: 600, RefreshToken: 14 * 24 * 3600, Grant: 14 * 24 * 3600,
         Interaction: 600, Session: 3600 },
};

const provider = new Provider(issuer, configuration);
provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
