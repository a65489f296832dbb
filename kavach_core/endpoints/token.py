"""The token endpoint: ``authorization_code`` and ``refresh_token`` grants.

RFC 6749 §3.2, §4.1.3, §5, §6; OAuth 2.1 §4.1.3, §4.3; RFC 7636 §4.6; RFC 8707 §2.2;
RFC 9700 §4.8 (PKCE downgrade), §4.14 (refresh token rotation). Every answer is
``Cache-Control: no-store`` (TK-01); a rejected request writes nothing, except the two
revocations the rules demand, a replayed code (TK-04) and a reused refresh token (TK-07), and
what looking its client up may write: a client ID metadata document seen for the first time is
charged to the registration rate limit and kept (:func:`kavach_core.clients.lookup`), whether
or not the request then succeeds.

The signing key is read (and made, when none signs or rotation is due) before the step that
spends the code (``ConsumeCode``) or rotates the refresh token (``RotateRefresh``): a request
that fails there (a store outage, no key of ``signing_alg``) leaves the code redeemable and the
refresh token current, so the client's retry is served, not taken for a replay.
"""

from __future__ import annotations

from .. import effects as fx
from .. import keys, pkce
from ..access_tokens import mint
from ..client_auth import authenticate, challenge_headers
from ..config import ProtectedResource
from ..context import Context
from ..drivers import Flow
from ..errors import OAuthError
from ..http import HttpRequest, Response, client_address, error_response, json_response
from ..jose import SigningKeyPair
from ..messages.token import TokenRequest, parse
from ..opaque import digest, parse_refresh_token, refresh_token
from ..records import Client, Grant, SigningKey
from ..resource_indicators import parse_resource
from ..scopes import format_scope, parse_scope, uncovered, within

SUPPORTED = ("authorization_code", "refresh_token")

RETRY_AFTER = "5"
"""``Retry-After`` seconds (RFC 9110 §10.2.3) of a 503 ``temporarily_unavailable``: the same wait
the adapters ask for when the store is down."""


def handle(ctx: Context, req: HttpRequest) -> Flow[Response]:
    try:
        msg = parse(req)
        if msg.grant_type not in SUPPORTED:
            raise OAuthError("unsupported_grant_type", "supported grant types: authorization_code, refresh_token")
        client = yield from authenticate(ctx, msg.credentials, client_address(req))
        if msg.grant_type not in client.grant_types:
            raise OAuthError("unauthorized_client", "this client may not use this grant type")
        if msg.grant_type == "authorization_code":
            return (yield from _authorization_code(ctx, client, msg))
        return (yield from _refresh(ctx, client, msg))
    except OAuthError as err:
        extra: tuple[tuple[str, str], ...] = challenge_headers(err)
        if err.status == 405:
            extra = (*extra, ("Allow", "POST"))
        if err.status == 503:
            extra = (*extra, ("Retry-After", RETRY_AFTER))
        return error_response(err, headers=extra)


def _one_resource(ctx: Context, requested: tuple[str, ...], held: tuple[str, ...]) -> ProtectedResource:
    """The single audience of the token to issue (RFC 8707 §2.2; TK-06)."""
    if len(requested) > 1:
        raise OAuthError("invalid_target", "ask for one resource per token request")
    if requested:
        uri = parse_resource(requested[0])
        if uri not in held:
            raise OAuthError("invalid_target", "the resource was not part of this grant")
    elif len(held) == 1:
        uri = held[0]
    else:
        raise OAuthError("invalid_target", "this grant covers several resources; name one")
    resource = ctx.config.resource(uri)
    if resource is None:
        raise OAuthError("invalid_target", "the resource is no longer protected by this server")
    return resource


def _scopes_for(resource: ProtectedResource, scopes: tuple[str, ...]) -> tuple[str, ...]:
    """The scopes of the token for ``resource``: those of ``scopes`` its catalogue covers (TK-06).
    None at all is ``invalid_scope``: RFC 6749 §3.3 has no empty scope, and nothing granted is
    for this resource (a grant stored before approval left such resources out, or a refresh
    narrowed to another resource's scopes)."""
    token_scopes = within(scopes, resource.scope_names)
    if not token_scopes:
        raise OAuthError("invalid_scope", "no scope of this grant or request is for this resource")
    return token_scopes


def _signing_key(ctx: Context) -> Flow[tuple[SigningKey, SigningKeyPair]]:
    """The key that will sign the access token (RFC 9068 §4), with its loaded pair.

    Read before the code is spent or the refresh token rotated, so that nothing the request
    cannot finish is committed: a consumed code's next use is a replay that revokes the grant
    (RFC 6749 §4.1.2, §10.5), and the store outage answered 503 must leave the step undone.
    :func:`~kavach_core.keys.current` may store a new key (none signs yet, or a successor is due),
    deciding again when its swap loses to another instance's; when the set still has no active
    key of this instance's ``signing_alg`` after :data:`~kavach_core.keys.ROTATE_ATTEMPTS` such
    losses (instances of another algorithm changing it each time), the answer is 503 (RFC 9110
    §15.6.4) ``temporarily_unavailable`` (RFC 6749 §4.1.2.1's code, as for a store outage) with
    ``Retry-After`` (RFC 9110 §10.2.3), and nothing more is written.
    """
    keyset = yield from keys.current(ctx)
    active = keyset.active(ctx.now, ctx.config.signing_alg)
    if active is None:
        raise OAuthError("temporarily_unavailable", "no signing key is available yet; try again later", status=503)
    return active, keys.load(active)


def _issue(
    ctx: Context,
    client: Client,
    grant: Grant,
    resource: ProtectedResource,
    scopes: tuple[str, ...],
    refresh: str | None,
    signer: tuple[SigningKey, SigningKeyPair],
) -> Response:
    """The RFC 6749 §5.1 answer: an RFC 9068 access token for ``scopes`` (:func:`_scopes_for`)
    signed by ``signer``, and ``refresh``."""
    active, pair = signer
    token, claims = mint(
        ctx,
        pair,
        subject=grant.subject,
        client_id=client.client_id,
        resource=resource.uri,
        scopes=scopes,
        grant_id=grant.grant_id,
        not_after=min(grant.expires_at, ctx.now + keys.token_lifetime(active)),  # never past the key's publication
    )
    body: dict[str, object] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": claims.expires_at - ctx.now,
        "scope": format_scope(scopes),
    }
    if refresh is not None:
        body["refresh_token"] = refresh
    return json_response(200, body, no_store=True)


def _authorization_code(ctx: Context, client: Client, msg: TokenRequest) -> Flow[Response]:
    """RFC 6749 §4.1.3 with PKCE (TK-03, TK-04, TK-05, TK-06)."""
    if msg.code is None:
        raise OAuthError("invalid_request", "code is required")
    if msg.code_verifier is None:
        raise OAuthError("invalid_request", "code_verifier is required (PKCE)")
    code_hash = digest(msg.code)
    record = yield fx.GetCode(code_hash)
    if record is None or record.client_id != client.client_id or ctx.now >= record.expires_at:
        raise OAuthError("invalid_grant", "the code is invalid, expired, or was issued to another client")
    if (record.redirect_uri_given or msg.redirect_uri is not None) and msg.redirect_uri != record.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    if not pkce.is_valid_verifier(msg.code_verifier):
        raise OAuthError("invalid_grant", "code_verifier is not 43 to 128 unreserved characters (RFC 7636 §4.1)")
    if not record.code_challenge or not pkce.verify(msg.code_verifier, record.code_challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    resource = _one_resource(ctx, msg.resources, record.resources)
    token_scopes = _scopes_for(resource, record.scopes)
    lifetimes = ctx.config.lifetimes
    refresh = refresh_token(ctx.config.secret, record.grant_id, 0)
    grant = Grant(
        grant_id=record.grant_id,
        subject=record.subject,
        client_id=client.client_id,
        resources=record.resources,
        scopes=record.scopes,
        created_at=ctx.now,
        expires_at=ctx.now + lifetimes.refresh_absolute,
        refresh_generation=0,
        refresh_hash=digest(refresh),
        refresh_expires_at=ctx.now + lifetimes.refresh_idle,
        rotated_at=ctx.now,
    )
    if not record.consumed:
        signer = yield from _signing_key(ctx)  # before the code is spent: a failure here leaves it redeemable
        if (yield fx.ConsumeCode(code_hash, grant)):
            issue_refresh = "refresh_token" in client.grant_types
            return _issue(ctx, client, grant, resource, token_scopes, refresh if issue_refresh else None, signer)
    # A replay of an otherwise valid redemption: revoke what the code produced (RFC 6749 §4.1.2).
    yield fx.RevokeGrant(record.grant_id, ctx.now)
    raise OAuthError("invalid_grant", "the code was already used; tokens issued from it are revoked")


def _refresh(ctx: Context, client: Client, msg: TokenRequest) -> Flow[Response]:
    """RFC 6749 §6 with rotation and reuse detection (TK-07, RFC 9700 §4.14.2)."""
    if msg.refresh_token is None:
        raise OAuthError("invalid_request", "refresh_token is required")
    parsed = parse_refresh_token(ctx.config.secret, msg.refresh_token)
    if parsed is None:
        raise _invalid_refresh()
    grant_id, generation = parsed
    grant = yield fx.GetGrant(grant_id)
    if grant is None or grant.revoked or grant.client_id != client.client_id or ctx.now >= grant.expires_at:
        raise _invalid_refresh()
    if generation == grant.refresh_generation and ctx.now >= grant.refresh_expires_at:
        # The current token idled out: refuse without a rotation effect (a rejection writes nothing).
        raise _invalid_refresh()
    lifetimes = ctx.config.lifetimes
    successor = refresh_token(ctx.config.secret, grant_id, generation + 1)
    rotate = fx.RotateRefresh(
        grant_id=grant_id,
        generation=generation,
        presented_hash=digest(msg.refresh_token),
        successor_hash=digest(successor),
        now=ctx.now,
        grace=ctx.config.refresh_grace,
        idle_expires_at=ctx.now + lifetimes.refresh_idle,
    )
    rotation: fx.Rotation | None = None
    if generation != grant.refresh_generation:
        # A superseded token: reuse detection comes first, whatever else the request says
        # (RFC 9700 §4.14.2); a retry within the grace window writes nothing.
        rotation = yield rotate
        _check_rotation(rotation)
    scopes = grant.scopes
    asked = parse_scope(msg.scope)
    if asked is not None:
        if uncovered(asked, grant.scopes):
            raise OAuthError("invalid_scope", "a refresh can only narrow the granted scope")
        scopes = asked
    resource = _one_resource(ctx, msg.resources, grant.resources)
    scopes = _scopes_for(resource, scopes)
    # Before the rotation, so a failure here leaves the presented token current; a superseded
    # token's rotation above wrote nothing unless it revoked ("retried" is no write).
    signer = yield from _signing_key(ctx)
    if rotation is None:
        rotation = yield rotate
        _check_rotation(rotation)
    assert rotation.grant is not None
    return _issue(ctx, client, rotation.grant, resource, scopes, successor, signer)


def _invalid_refresh() -> OAuthError:
    return OAuthError("invalid_grant", "the refresh token is invalid, expired or revoked")


def _check_rotation(rotation: fx.Rotation) -> None:
    if rotation.outcome == "reused":
        raise OAuthError("invalid_grant", "refresh token reuse detected; the grant is revoked")
    if rotation.outcome not in ("rotated", "retried") or rotation.grant is None:
        raise _invalid_refresh()
