"""A hypothesis state machine that interleaves register / authorize / approve / deny / redeem /
refresh / revoke / introspect / the passing of time against the in-memory store, through the
router, and compares every answer with a small model.

Invariants checked after every step (and inside the rules):

- a code yields tokens at most once; a replay that is otherwise valid revokes its grant (TK-04);
- a superseded refresh token never works again: outside the grace window it revokes its family,
  inside it returns the very same successor (TK-07);
- every token of a revoked grant is inactive (``IsTokenRevoked`` and introspection agree, RV-01, IN-01);
- an error response changes no state, apart from the documented revocations (TK-04, TK-07),
  whose only change is the grant's ``revoked_at`` (GN-03).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import attrs
from conftest import OTHER_RESOURCE, RESOURCE, Harness, basic, make_config, s256
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition, rule
from oauth_flows import jwt_parts, location_params, snapshot

from kavach_core import effects as fx
from kavach_core.config import RegistrationPolicy
from kavach_core.endpoints import authorize
from kavach_core.http import HttpRequest, Response
from kavach_core.messages.authorization import ConsentRequired
from kavach_core.router import route

REDIRECT = "https://app.example.com/cb"
GRACE = 10
CODE_LIFETIME = 60


@attrs.define
class ClientInfo:
    client_id: str
    method: str
    secret: str | None


@attrs.define
class TicketInfo:
    ticket: str
    client: ClientInfo
    verifier: str
    resources: tuple[str, ...]
    created_at: int


@attrs.define
class CodeInfo:
    code: str
    client: ClientInfo
    verifier: str
    issued_at: int
    resources: tuple[str, ...]


@attrs.define
class RefreshInfo:
    token: str
    grant_id: str
    generation: int
    client: ClientInfo
    resources: tuple[str, ...]


@attrs.define
class AccessInfo:
    token: str
    jti: str
    grant_id: str
    client: ClientInfo
    expires_at: int


@attrs.define
class Family:
    current: int = 0
    rotated_at: int = 0
    revoked: bool = False
    tokens: dict[int, str] = attrs.Factory(dict)


class OAuthMachine(RuleBasedStateMachine):
    clients = Bundle("clients")
    tickets = Bundle("tickets")
    codes = Bundle("codes")
    refresh_tokens = Bundle("refresh_tokens")
    access_tokens = Bundle("access_tokens")

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(make_config(registration=RegistrationPolicy(rate_limit=0), refresh_grace=GRACE))
        self.used_tickets: set[str] = set()
        self.redeemed: dict[str, int] = {}
        self.code_grant: dict[str, str] = {}
        self.families: dict[str, Family] = {}
        self.revoked_jtis: set[str] = set()
        self.issued_access: list[AccessInfo] = []
        self.counter = 0

    # -- plumbing ----------------------------------------------------------------------------

    def send(
        self, method: str, path: str, *, query: Any = (), form: Any = None, json_body: Any = None, headers: Any = ()
    ) -> Any:
        hdrs = list(headers)
        body = b""
        if form is not None:
            body = urlencode(list(form)).encode()
            hdrs.append(("Content-Type", "application/x-www-form-urlencoded"))
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.append(("Content-Type", "application/json"))
        req = HttpRequest(method, path, list(query), hdrs, body)
        return self.h.run(route(self.h.ctx(), req))

    def authed(self, client: ClientInfo, form: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[Any]]:
        if client.method == "client_secret_basic":
            assert client.secret is not None
            return form, [basic(client.client_id, client.secret)]
        if client.method == "client_secret_post":
            assert client.secret is not None
            return [*form, ("client_id", client.client_id), ("client_secret", client.secret)], []
        return [*form, ("client_id", client.client_id)], []

    def token_call(self, client: ClientInfo, form: list[tuple[str, str]]) -> Response:
        full, headers = self.authed(client, form)
        resp = self.send("POST", "/token", form=full, headers=headers)
        assert isinstance(resp, Response)
        assert resp.header("cache-control") == "no-store"
        return resp

    def assert_unchanged(self, before: dict[str, Any], resp: Any) -> None:
        assert snapshot(self.h) == before, f"an error response changed state: {resp}"

    def assert_only_revoked(self, before: dict[str, Any], grant_id: str) -> None:
        """The documented revocation: the only change is this grant's ``revoked_at``."""
        after = snapshot(self.h)
        was = before["grants"][grant_id]
        now = after["grants"][grant_id]
        assert now.revoked_at is not None
        assert attrs.evolve(now, revoked_at=was.revoked_at) == was
        before_grants = {k: v for k, v in before["grants"].items() if k != grant_id}
        after_grants = {k: v for k, v in after["grants"].items() if k != grant_id}
        assert before_grants == after_grants
        assert {k: v for k, v in after.items() if k != "grants"} == {k: v for k, v in before.items() if k != "grants"}

    def fresh_verifier(self) -> str:
        self.counter += 1
        return f"verifier-{self.counter:04d}-" + "v" * 40

    def record_tokens(self, body: dict[str, Any], client: ClientInfo, resources: tuple[str, ...]) -> tuple[Any, ...]:
        header, claims = jwt_parts(body["access_token"])
        assert header["typ"] == "at+jwt"
        assert claims["client_id"] == client.client_id
        assert claims["aud"] in resources
        access = AccessInfo(body["access_token"], claims["jti"], claims["gid"], client, claims["exp"])
        self.issued_access.append(access)
        return (access,)

    # -- rules -------------------------------------------------------------------------------

    @initialize(target=clients)
    def first_client(self) -> ClientInfo:
        return self.register_client("none")

    @initialize(target=codes, method=st.sampled_from(["none", "client_secret_basic", "client_secret_post"]))
    def seeded_code(self, method: str) -> Any:
        """A code of a client of its own, so that redemption is reachable from the first step."""
        ticket = self.authorize_ok(self.register_client(method), (RESOURCE,), None)
        return self.approve(ticket)

    @initialize(target=refresh_tokens, method=st.sampled_from(["none", "client_secret_basic", "client_secret_post"]))
    def seeded_family(self, method: str) -> Any:
        """A redeemed code, so that refresh, reuse and revocation are reachable from the first step."""
        ticket = self.authorize_ok(self.register_client(method), (RESOURCE, OTHER_RESOURCE), "tools:list tools:call")
        code = self.approve(ticket)
        return self.redeem(code, None, code.client)

    @rule(target=clients, method=st.sampled_from(["none", "client_secret_basic", "client_secret_post"]))
    def register(self, method: str) -> ClientInfo:
        return self.register_client(method)

    def register_client(self, method: str) -> ClientInfo:
        resp = self.send(
            "POST",
            "/register",
            json_body={"redirect_uris": [REDIRECT], "client_name": "sm", "token_endpoint_auth_method": method},
        )
        assert resp.status == 201, resp.body
        body = resp.json()
        return ClientInfo(body["client_id"], method, body.get("client_secret"))

    @rule(
        target=tickets,
        client=clients,
        resources=st.sampled_from([(RESOURCE,), (OTHER_RESOURCE,), (RESOURCE, OTHER_RESOURCE)]),
        scope=st.sampled_from([None, "tools:list", "tools:call:search tools:list"]),
    )
    def authorize_ok(self, client: ClientInfo, resources: tuple[str, ...], scope: str | None) -> Any:
        verifier = self.fresh_verifier()
        query = [
            ("client_id", client.client_id),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("code_challenge", s256(verifier)),
            ("code_challenge_method", "S256"),
            ("state", "st"),
            *(("resource", r) for r in resources),
        ]
        if scope:
            query.append(("scope", scope))
        out = self.send("GET", "/authorize", query=query)
        assert isinstance(out, ConsentRequired), out
        return TicketInfo(out.ticket, client, verifier, resources, self.h.now)

    @rule(
        client=clients,
        problem=st.sampled_from(["plain", "scope", "resource", "redirect", "response_type", "client"]),
    )
    def authorize_bad(self, client: ClientInfo, problem: str) -> None:
        query = {
            "client_id": client.client_id,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "code_challenge": s256("x" * 43),
            "code_challenge_method": "S256",
            "resource": RESOURCE,
        }
        if problem == "plain":
            query["code_challenge_method"] = "plain"
        elif problem == "scope":
            query["scope"] = "admin"
        elif problem == "resource":
            query["resource"] = "https://elsewhere.example/mcp"
        elif problem == "redirect":
            query["redirect_uri"] = REDIRECT + "/evil"
        elif problem == "response_type":
            query["response_type"] = "token"
        else:
            query["client_id"] = "ghost-" + client.client_id
        before = snapshot(self.h)
        out = self.send("GET", "/authorize", query=list(query.items()))
        assert isinstance(out, Response) and out.status in (303, 400)
        if out.status == 303:
            assert out.header("location").startswith(REDIRECT + "?error=")  # type: ignore[union-attr]
        self.assert_unchanged(before, out)

    @rule(target=codes, ticket=tickets)
    def approve(self, ticket: TicketInfo) -> Any:
        before = snapshot(self.h)
        resp = self.h.run(authorize.approve(self.h.ctx(), ticket.ticket, "alice"))
        if self.ticket_gone(ticket, before):
            assert resp.status == 400 and resp.header("location") is None
            self.assert_unchanged(before, resp)
            return multiple()
        self.used_tickets.add(ticket.ticket)
        params = location_params(resp)
        assert params["state"] == "st"
        return CodeInfo(params["code"], ticket.client, ticket.verifier, self.h.now, ticket.resources)

    def ticket_gone(self, ticket: TicketInfo, before: dict[str, Any]) -> bool:
        """Used or expired (consent lifetime 600 s). Taking an expired ticket may drop its
        dead record, which is no change of meaning: it is removed from ``before`` too."""
        if ticket.ticket in self.used_tickets:
            return True
        if self.h.now >= ticket.created_at + 600:
            from kavach_core.opaque import digest

            before["pending"].pop(digest(ticket.ticket), None)
            self.used_tickets.add(ticket.ticket)
            return True
        return False

    @rule(ticket=tickets)
    def deny(self, ticket: TicketInfo) -> None:
        before = snapshot(self.h)
        resp = self.h.run(authorize.deny(self.h.ctx(), ticket.ticket))
        if self.ticket_gone(ticket, before):
            assert resp.status == 400 and resp.header("location") is None
            self.assert_unchanged(before, resp)
            return
        self.used_tickets.add(ticket.ticket)
        assert location_params(resp)["error"] == "access_denied"
        assert snapshot(self.h)["codes"] == before["codes"]

    @rule(
        target=refresh_tokens,
        code=codes,
        fault=st.sampled_from([None, None, "verifier", "client", "redirect"]),
        other=clients,
    )
    def redeem(self, code: CodeInfo, fault: str | None, other: ClientInfo) -> Any:
        caller = code.client
        form = [
            ("grant_type", "authorization_code"),
            ("code", code.code),
            ("code_verifier", code.verifier),
            ("redirect_uri", REDIRECT),
        ]
        if len(code.resources) > 1:
            form.append(("resource", code.resources[-1]))
        if fault == "verifier":
            form[2] = ("code_verifier", "w" * 50)
        elif fault == "redirect":
            form[3] = ("redirect_uri", REDIRECT + "x")
        elif fault == "client":
            if other.client_id == code.client.client_id:
                fault = None
            else:
                caller = other
        before = snapshot(self.h)
        resp = self.token_call(caller, form)
        expired = self.h.now >= code.issued_at + CODE_LIFETIME
        if fault is not None or expired:
            assert resp.status == 400 and resp.json()["error"] == "invalid_grant", resp.body
            self.assert_unchanged(before, resp)
            return multiple()
        if code.code in self.redeemed:
            assert resp.status == 400 and resp.json()["error"] == "invalid_grant"
            gid = self.code_grant[code.code]
            if not self.families[gid].revoked:
                self.assert_only_revoked(before, gid)
                event("code: replay revoked the grant")
            else:
                self.assert_unchanged(before, resp)
            self.families[gid].revoked = True
            self.redeemed[code.code] += 0
            return multiple()
        assert resp.status == 200, resp.body
        body = resp.json()
        self.redeemed[code.code] = 1
        self.record_tokens(body, caller, code.resources)
        gid = jwt_parts(body["access_token"])[1]["gid"]
        self.code_grant[code.code] = gid
        self.families[gid] = Family(0, self.h.now, False, {0: body["refresh_token"]})
        return RefreshInfo(body["refresh_token"], gid, 0, caller, code.resources)

    @rule(target=refresh_tokens, rt=refresh_tokens, narrow=st.booleans())
    def refresh(self, rt: RefreshInfo, narrow: bool) -> Any:
        family = self.families[rt.grant_id]
        form = [("grant_type", "refresh_token"), ("refresh_token", rt.token)]
        if len(rt.resources) > 1:
            form.append(("resource", rt.resources[0]))
        if narrow:
            form.append(("scope", "tools:list"))
        before = snapshot(self.h)
        resp = self.token_call(rt.client, form)
        now = self.h.now
        if family.revoked:
            assert resp.status == 400 and resp.json()["error"] == "invalid_grant"
            self.assert_unchanged(before, resp)
            return multiple()
        if rt.generation == family.current:
            assert resp.status == 200, resp.body
            body = resp.json()
            family.current += 1
            family.rotated_at = now
            family.tokens[family.current] = body["refresh_token"]
            assert body["refresh_token"] not in {t for g, t in family.tokens.items() if g != family.current}
        elif rt.generation == family.current - 1 and now - family.rotated_at <= GRACE:
            assert resp.status == 200, resp.body
            body = resp.json()
            assert body["refresh_token"] == family.tokens[family.current], "a retry gets the same successor"
            event("refresh: retried within grace")
            self.assert_unchanged({**before, "keys": snapshot(self.h)["keys"]}, resp)
        else:
            assert resp.status == 400 and resp.json()["error"] == "invalid_grant", resp.body
            self.assert_only_revoked(before, rt.grant_id)
            event("refresh: reuse revoked the family")
            family.revoked = True
            return multiple()
        if narrow:
            assert body["scope"] == "tools:list"
        self.record_tokens(body, rt.client, rt.resources)
        return RefreshInfo(body["refresh_token"], rt.grant_id, rt.generation + 1, rt.client, rt.resources)

    @rule(rt=refresh_tokens)
    def revoke_refresh(self, rt: RefreshInfo) -> None:
        form, headers = self.authed(rt.client, [("token", rt.token), ("token_type_hint", "refresh_token")])
        resp = self.send("POST", "/revoke", form=form, headers=headers)
        assert resp.status == 200, resp.body
        self.families[rt.grant_id].revoked = True

    @rule(at=access_tokens)
    def revoke_access(self, at: AccessInfo) -> None:
        form, headers = self.authed(at.client, [("token", at.token)])
        resp = self.send("POST", "/revoke", form=form, headers=headers)
        assert resp.status == 200, resp.body
        if self.h.now < at.expires_at:
            self.revoked_jtis.add(at.jti)

    @rule(rt=refresh_tokens, caller=clients)
    def introspect_refresh(self, rt: RefreshInfo, caller: ClientInfo) -> None:
        self.introspect(rt.token, caller, rt.client, self.refresh_active(rt))

    @rule(at=access_tokens, caller=clients)
    def introspect_access(self, at: AccessInfo, caller: ClientInfo) -> None:
        self.introspect(at.token, caller, at.client, self.access_active(at))

    def introspect(self, tok: str, caller: ClientInfo, owner: ClientInfo, active: bool) -> None:
        form, headers = self.authed(caller, [("token", tok)])
        before = snapshot(self.h)
        resp = self.send("POST", "/introspect", form=form, headers=headers)
        self.assert_unchanged(before, resp)
        if caller.method == "none":
            assert resp.status == 401
            return
        assert resp.status == 200, resp.body
        body = resp.json()
        expected = active and caller.client_id == owner.client_id
        assert body["active"] is expected, (body, active, caller, owner)
        if not expected:
            assert body == {"active": False}

    @rule(seconds=st.sampled_from([0, 0, 1, 5, 10, 11, 30, 61, 700]))
    def tick(self, seconds: int) -> None:
        self.h.now += seconds

    # -- the model's answers -------------------------------------------------------------------

    def refresh_active(self, rt: RefreshInfo) -> bool:
        family = self.families[rt.grant_id]
        return not family.revoked and rt.generation == family.current

    def access_active(self, at: AccessInfo) -> bool:
        return not self.families[at.grant_id].revoked and at.jti not in self.revoked_jtis and self.h.now < at.expires_at

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def codes_yield_tokens_at_most_once(self) -> None:
        assert all(n <= 1 for n in self.redeemed.values())
        consumed = [c for c in self.h.store.codes.values() if c.consumed]
        assert len(consumed) == len(self.redeemed)

    @invariant()
    def revoked_grants_match_the_model(self) -> None:
        for gid, family in self.families.items():
            grant = self.h.store.grants[gid]
            assert grant.revoked == family.revoked, gid
            if not family.revoked:
                assert grant.refresh_generation == family.current

    @invariant()
    def every_token_of_a_revoked_grant_is_inactive(self) -> None:
        for at in self.issued_access:
            revoked = self.h.store.perform(fx.IsTokenRevoked(at.jti, at.grant_id))
            if self.families[at.grant_id].revoked or at.jti in self.revoked_jtis:
                assert revoked, at
            else:
                assert not revoked, at

    @precondition(lambda self: bool(self.families))
    @invariant()
    def only_the_current_refresh_token_is_stored(self) -> None:
        from kavach_core.opaque import digest

        for gid, family in self.families.items():
            assert self.h.store.grants[gid].refresh_hash == digest(family.tokens[family.current])


OAuthMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_state_machine = OAuthMachine.TestCase
