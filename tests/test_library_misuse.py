"""Embedding mistakes fail when the object is built, with a message naming the argument, instead
of answering every request with a 500 later (the brief: bad input changes nothing and says why)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import RESOURCE, make_config
from kavach.server import AuthorizationServer, LoginLimits
from kavach.starlette import KavachGuard, mount
from kavach.users import MemoryUsers, Users

from kavach_core.config import Config, Paths, ProtectedResource
from kavach_core.errors import ConfigurationError
from kavach_core.mcp_methods import McpScopeMap
from kavach_core.memory_store import MemoryStore

SECRET = b"s" * 32


def _users() -> Users:
    return Users(MemoryUsers(), log_n=10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"store": object()}, "store must be a kavachOS store"),
        ({"store": None}, "store must be a kavachOS store"),
        ({"store": "memory:"}, "store must be a kavachOS store"),
        ({"users": MemoryUsers()}, "users must be a Users"),
        ({"identify": "alice"}, "identify must be a function"),
        ({"clock": 123}, "clock must be a function"),
        ({"entropy": b"x"}, "entropy must be a function"),
        ({"router": 1}, "router must be a function"),
        ({"login_limits": {"per_user": 3}}, "login_limits must be a LoginLimits"),
        ({"scope_map": {}}, "scope_map must be a McpScopeMap"),
        ({"scope_map": None}, "scope_map must be a McpScopeMap"),
        ({"fetcher": "x"}, "fetcher must be a kavach.fetcher.DocumentFetcher"),
        ({"session_lifetime": -5}, "session_lifetime"),
        ({"session_lifetime": "8h"}, "session_lifetime"),
        ({"session_lifetime": 0}, "session_lifetime"),
        ({"session_lifetime": 3600.5}, "session_lifetime must be a whole number"),
        ({"keyring_ttl": -1}, "keyring_ttl"),
        ({"keyring_ttl": True}, "keyring_ttl"),
        ({"keyring_ttl": 1.5}, "keyring_ttl must be a whole number of seconds"),
        ({"login_url": "https://sso.example/login"}, "login_url must be a function"),
        ({"session_lifetime": True}, "session_lifetime must be a whole number"),
        ({"session_lifetime": 10**7}, "session_lifetime must be a whole number"),
        ({"keyring_ttl": 10**7}, "keyring_ttl must be a whole number of seconds"),
    ],
)
def test_authorization_server_refuses_arguments_it_cannot_use(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"store": MemoryStore(), "users": _users(), **kwargs}
    store = args.pop("store")
    with pytest.raises((TypeError, ValueError), match=match):
        AuthorizationServer(make_config(), store, **args)


def test_a_config_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError, match="config must be a Config"):
        AuthorizationServer({"issuer": "https://as.example.com"}, MemoryStore(), users=_users())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a Config, not NoneType"):
        AuthorizationServer(None, MemoryStore(), users=_users())  # type: ignore[arg-type]


def test_the_bounds_of_session_lifetime_and_keyring_ttl_are_kept_exactly() -> None:
    """Both are whole seconds below 10**7 (about 115 days): the largest such value is taken as
    given, and a keyring_ttl of 0 (read the keys on every request) is allowed where a session
    lifetime of 0 is not (see the refusals above). Unsaid, a session lasts eight hours."""
    assert AuthorizationServer(make_config(), MemoryStore(), users=_users()).cookies.session_lifetime == 8 * 3600
    top = 10**7 - 1
    server = AuthorizationServer(make_config(), MemoryStore(), users=_users(), session_lifetime=top, keyring_ttl=top)
    assert server.cookies.session_lifetime == top and server.keyring.ttl == top
    server = AuthorizationServer(make_config(), MemoryStore(), users=_users(), session_lifetime=1, keyring_ttl=0)
    assert server.cookies.session_lifetime == 1 and server.keyring.ttl == 0


def test_the_sign_in_limits_given_are_the_ones_used() -> None:
    """``login_limits=`` replaces the defaults (10 per account, 50 per address, 900 s) as given."""
    limits = LoginLimits(per_user=3, per_address=7, window=60)
    assert AuthorizationServer(make_config(), MemoryStore(), users=_users(), login_limits=limits).login_limits is limits
    assert AuthorizationServer(make_config(), MemoryStore(), users=_users()).login_limits == LoginLimits()


@pytest.mark.parametrize(
    "limits", [{"per_user": -1}, {"per_user": "10"}, {"window": 0}, {"per_address": True}, {"window": 1.5}]
)
def test_login_limits_are_whole_positive_numbers(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="LoginLimits"):
        LoginLimits(**limits)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lifetimes": {"access_token": 60}}, "lifetimes must be a Lifetimes"),
        ({"registration": "closed"}, "registration must be a RegistrationPolicy"),
        ({"registration": {"mode": "closed"}}, "registration must be a RegistrationPolicy"),
        ({"paths": {"token": "/t"}}, "paths must be a Paths"),
        ({"paths": Paths(token="/")}, "would shadow the issuer itself"),
        ({"paths": Paths(token="/.well-known/oauth-authorization-server")}, "would shadow a metadata document"),
        ({"paths": Paths(jwks="/.well-known/jwks.json")}, "would shadow the /.well-known/ documents"),
        ({"paths": Paths(token="/authorize/login")}, "would shadow the sign-in and consent forms"),
        ({"paths": Paths(token="/mcp")}, "would shadow protected resource https://as.example.com/mcp"),
        ({"service_documentation": "javascript:alert(1)"}, "service_documentation must be an http"),
    ],
)
def test_config_refuses_parts_of_the_wrong_kind_and_paths_that_collide(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Config(
            issuer="https://as.example.com",
            resources=[ProtectedResource("https://as.example.com/mcp")],
            secret=SECRET,
            **kwargs,
        )


def test_paths_under_an_issuer_path_are_checked_there() -> None:
    resources = [ProtectedResource("https://as.example.com/mcp")]
    config = Config(
        issuer="https://as.example.com/tenant", resources=resources, secret=SECRET, paths=Paths(token="/mcp")
    )  # /tenant/mcp: no clash with /mcp
    assert config.endpoint("token") == "https://as.example.com/tenant/mcp"
    with pytest.raises(ConfigurationError, match="metadata document"):
        Config(
            issuer="https://as.example.com/tenant",
            resources=resources,
            secret=SECRET,
            paths=Paths(token="/.well-known/openid-configuration"),
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per_tool": "no"}, "per_tool must be True or False"),
        ({"per_prompt": 1}, "per_prompt must be True or False"),
        ({"overrides": None}, "overrides must map method names"),
        ({"overrides": "tools/list"}, "overrides must map method names"),
        ({"overrides": [("tools/list",)]}, "overrides must map method names"),
        ({"overrides": {"tools/list": 5}}, "scopes must be a scope or a list of scopes"),
        ({"unknown_method_scopes": None}, "scopes must be a scope or a list of scopes"),
    ],
)
def test_scope_map_refuses_what_it_cannot_read(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        McpScopeMap(**kwargs)


def test_guard_refuses_a_required_that_is_not_a_function() -> None:
    server = AuthorizationServer(make_config(), MemoryStore(), users=_users())
    with pytest.raises(TypeError, match="required must be a function"):
        KavachGuard(lambda *a: None, server, RESOURCE, required=("tools:list",))  # type: ignore[arg-type]


def test_mount_refuses_an_app_without_routes() -> None:
    """``mount`` on the guard the README wraps the MCP app in (not a Starlette app): a TypeError saying
    what it needs and that the guard serves the authorization server already, not an AttributeError."""
    from starlette.applications import Starlette

    server = AuthorizationServer(make_config(), MemoryStore(), users=_users())
    app = Starlette()
    guarded = KavachGuard(app, server, RESOURCE)
    with pytest.raises(TypeError, match="mount adds routes to a Starlette or FastAPI app, not a KavachGuard"):
        mount(guarded, server)  # type: ignore[arg-type]
    mount(app, server)
    assert {getattr(route, "path", None) for route in app.router.routes} >= {"/token", "/authorize"}
