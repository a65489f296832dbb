"""The JWK Set endpoint: the public signing keys (RFC 7517 §5; RFC 8414 §2 ``jwks_uri``).

Serves every key still published (:meth:`kavach_core.keys.KeySet.published`): the active key,
a successor published ahead of its first signature, and retired keys until the tokens they
signed have expired. The first request on an empty store creates the signing key
(:func:`kavach_core.keys.current`), decided once cluster-wide.

Caching: ``Cache-Control: public, max-age=300`` (:data:`kavach_core.keys.JWKS_MAX_AGE`). Five
minutes spares verifiers a fetch per token, and a successor is published at least that long
before any instance signs with it, whatever clock skew is allowed
(:data:`kavach_core.keys.SUCCESSOR_LEAD`; usually :data:`kavach_core.keys.PREPUBLISH`, one hour),
so a scheduled successor is in every cache before it signs. After an explicit ``kavach keys
rotate``, or a first key made when none could sign, a verifier that meets an unknown ``kid``
should refetch (RFC 7515 §4.1.4, RFC 8414 §2 "jwks_uri").

``GET`` and ``HEAD`` only (RFC 9110 §9.3.1, §9.3.2); any other method gets 405 with ``Allow``.
Served as ``application/json``, which every JWKS client accepts (``application/jwk-set+json``,
RFC 7517 §8.5.1, trips some). CORS headers and preflight (MD-04) are the router's concern.
"""

from __future__ import annotations

from .. import keys
from ..context import Context
from ..drivers import Flow
from ..errors import OAuthError
from ..http import HttpRequest, Response, error_response, json_response

MAX_AGE = keys.JWKS_MAX_AGE
CACHE_CONTROL = ("Cache-Control", f"public, max-age={MAX_AGE}")


def handle(ctx: Context, req: HttpRequest) -> Flow[Response]:
    """``GET``/``HEAD`` the public JWK Set of ``keys.current(ctx)``; never a private member."""
    method = req.method.upper()
    if method not in ("GET", "HEAD"):
        err = OAuthError("invalid_request", "use GET to fetch the key set", status=405)
        return error_response(err, headers=(("Allow", "GET, HEAD"),))
    keyset = yield from keys.current(ctx)
    return json_response(200, keyset.jwks(ctx.now), headers=(CACHE_CONTROL,))  # the router drops a HEAD's content
