"""One validated configuration object.

Every field is checked at construction; a bad value raises :class:`ConfigurationError` whose
message says what to change. Defaults follow the design: code 60 s, access token 10 min,
refresh token 14 days idle and 90 days absolute, refresh grace window 10 s.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from .errors import ConfigurationError
from .memo import Memo
from .resource_indicators import canonical_resource, host_problem, resource_path
from .scopes import is_valid_scope

LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})
SIGNING_ALGORITHMS = ("ES256", "RS256", "EdDSA")
KEY_PREPUBLISH = 3600
"""Seconds before the active signing key stops signing at which its successor is generated and
published (:data:`kavach_core.keys.PREPUBLISH`); no key signs for less (``Lifetimes.signing_key``)."""
MAX_LIFETIME = 100 * 366 * 86400
"""The longest lifetime accepted (about a century): expiry times stay well inside 64-bit integers."""
MAX_RATE_LIMIT = 1_000_000
MAX_RATE_WINDOW = 366 * 86400
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ISSUER_PATH = re.compile(r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@]+)*")
"""An issuer's path: ``/``-separated segments of RFC 3986 ``pchar`` without percent-encoding."""
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def is_whole_number(value: object) -> bool:
    """True for an ``int`` that is not a ``bool`` (so not ``True``, ``1.0``, NaN or infinity)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_host_name(host: object) -> bool:
    """True for a well-formed host: a DNS name (RFC 1123 §2.1 labels of letters, digits, ``-`` and
    ``_``, at most 253 characters, no trailing dot) or an IPv4 or IPv6 address (brackets optional)."""
    if not isinstance(host, str) or not host:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    if len(host) > 253 or not host.isascii():
        return False
    return all(_LABEL.fullmatch(label) for label in host.lower().split("."))


def string_list(value: object, what: str) -> tuple[str, ...]:
    """``value`` (a list, tuple or set of strings) as a tuple; a bare string is refused, not split
    into characters. ``what`` names the setting in the :class:`ConfigurationError`."""
    if not isinstance(value, list | tuple | set | frozenset) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{what} must be a list of strings")
    return tuple(value)


def redact(location: str) -> str:
    """``location`` without a password, for messages and the banner (also when it is malformed).

    The user information ends at the last ``@`` before the first ``/`` (libpq ends its search
    for it at a ``/`` only), or, with none there, at the last ``@`` before any ``?``: a password
    holding an unescaped ``@``, ``#``, ``?`` or ``/`` is hidden whole, however a driver splits
    it. Query parameters carrying a password are hidden too (:data:`_PASSWORD_PARAMETER`).
    """
    scheme, sep, rest = location.partition("://")
    if not sep:
        return location
    at = rest.split("/", 1)[0].rfind("@")
    if at < 0:
        at = rest.split("?", 1)[0].rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:***{rest[at:]}"
    before, mark, query = rest.partition("?")
    if mark:  # libpq and redis-py also take the password as a query parameter
        rest = before + mark + _PASSWORD_PARAMETER.sub(r"\1***", query)
    return f"{scheme}://{rest}"


_PASSWORD_PARAMETER = re.compile(r"((?:^|&)(?:password|passwd|pass|sslpassword)=)[^&]*", re.IGNORECASE)
"""A query parameter carrying a password, as PostgreSQL (``password``, ``sslpassword``) and Redis
URLs (``password``) spell them; its value is hidden."""


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and the IPv4/IPv6 loopback addresses (GN-01): ``127.0.0.0/8`` and
    ``::1`` as IP literals (RFC 1122 §3.2.1.3, RFC 4291 §2.5.3), bracketed or not. A name that
    merely begins like one (``127.0.0.1.example.net`` is any DNS name) is not loopback."""
    if host is None:
        return False
    host = host.lower()
    if host[:1] == "[" and host[-1:] == "]":
        host = host[1:-1]
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ScopeCatalogue = Mapping[str, str] | tuple[tuple[str, str], ...] | list[str] | tuple[str, ...]


_CATALOGUE_FORM = "resource scopes must be a mapping of scope -> description or a list of scopes"


def _scope_map(value: ScopeCatalogue) -> tuple[tuple[str, str], ...]:
    """The catalogue as (scope, description) pairs; anything but strings is refused."""
    if isinstance(value, Mapping):
        items: list[object] = list(value.items())
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigurationError(_CATALOGUE_FORM)
    pairs = []
    for item in items:
        if isinstance(item, str):
            pairs.append((item, ""))
        elif (
            isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], str)
        ):
            pairs.append((item[0], item[1]))
        else:
            raise ConfigurationError(_CATALOGUE_FORM + " (every scope and description a string)")
    return tuple(pairs)


def _default_scopes(value: Any) -> tuple[str, ...]:
    return string_list(value, "resource default_scopes")


DEFAULT_MCP_SCOPES: tuple[tuple[str, str], ...] = (
    ("tools:list", "See the list of tools"),
    ("tools:call", "Run any tool"),
    ("resources:list", "See the list of resources"),
    ("resources:read", "Read resources"),
    ("prompts:list", "See the list of prompts"),
    ("prompts:get", "Use prompts"),
)
"""A catalogue that fits an MCP server exposing tools, resources and prompts."""

NARROW_WORDING = {
    "tools:call": "Run the tool \u201c{}\u201d",
    "prompts:get": "Use the prompt \u201c{}\u201d",
}
"""How a scope narrowed to one named item is described at consent (``tools:call:search``): only
the families the MCP scope map narrows by name (:class:`~kavach_core.mcp_methods.McpScopeMap`'s
``per_tool`` and ``per_prompt``). A resource URI cannot be one scope segment, so no scope names
one resource; any other narrower scope is described by its catalogue parent, "limited to" the rest."""


@attrs.frozen
class ProtectedResource:
    """One MCP server this authorization server issues tokens for (RFC 8707, RFC 9728).

    ``uri`` is stored canonical (RS-05). ``scopes`` is the catalogue: scope -> description
    shown at consent. ``default_scopes`` are granted when a client asks for none; when empty
    (the default), ``tools:list`` and ``tools:call`` where the catalogue has them, else the whole catalogue.
    """

    uri: str = attrs.field(converter=str)
    scopes: tuple[tuple[str, str], ...] = attrs.field(default=DEFAULT_MCP_SCOPES, converter=_scope_map)
    default_scopes: tuple[str, ...] = attrs.field(default=(), converter=_default_scopes)
    name: str = ""
    _described: Memo[str, str] = attrs.field(init=False, factory=lambda: Memo(256), eq=False, repr=False)
    """What :meth:`describe` answered for the last few scopes (requests name the same ones)."""
    _names: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    """:attr:`scope_names`, taken from the catalogue once (every token request asks for them)."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigurationError("resource name must be a string")
        try:
            canonical = canonical_resource(self.uri)
        except ValueError as exc:
            raise ConfigurationError(f"resource {self.uri!r}: {exc}; give an absolute https URI") from exc
        object.__setattr__(self, "uri", canonical)
        names = [s for s, _ in self.scopes]
        object.__setattr__(self, "_names", tuple(names))
        if not names:
            raise ConfigurationError(f"resource {canonical}: give at least one scope in its catalogue")
        for scope in names:
            if not is_valid_scope(scope):
                raise ConfigurationError(f"resource {canonical}: scope {scope!r} is not a valid scope token")
        if len(set(names)) != len(names):
            raise ConfigurationError(f"resource {canonical}: a scope is listed twice")
        if not self.default_scopes:
            preferred = tuple(s for s in ("tools:list", "tools:call") if s in names)
            object.__setattr__(self, "default_scopes", preferred or tuple(names))
        for scope in self.default_scopes:
            if scope not in names:
                raise ConfigurationError(f"resource {canonical}: default scope {scope!r} is not in its catalogue")

    @property
    def scope_names(self) -> tuple[str, ...]:
        return self._names

    def describe(self, scope: str) -> str:
        """The consent description of ``scope`` (AZ-11).

        A catalogue scope describes itself. A narrower scope it covers (``tools:call:search``
        under ``tools:call``) is described for what it is, never with the wider wording.
        """
        found = self._described.get(scope)
        return found if found is not None else self._described.put(scope, self._description(scope))

    def _description(self, scope: str) -> str:
        best = ""
        best_parts: list[str] = []
        wanted = scope.split(":")
        for name, text in self.scopes:
            parts = name.split(":")
            if wanted[: len(parts)] == parts and len(parts) > len(best_parts):
                best, best_parts = text, parts
        if not best_parts or len(best_parts) == len(wanted):
            return best
        rest = ":".join(wanted[len(best_parts) :])
        family = ":".join(best_parts)
        if family in NARROW_WORDING:
            return NARROW_WORDING[family].format(rest)
        return f"{best} (limited to {rest})" if best else ""

    @property
    def path(self) -> str:
        return resource_path(self.uri)


@attrs.frozen
class Lifetimes:
    """Lifetimes in seconds."""

    code: int = 60
    access_token: int = 600
    refresh_idle: int = 14 * 86400
    refresh_absolute: int = 90 * 86400
    consent: int = 600
    signing_key: int = 30 * 86400
    """How long a key signs before a new one takes over; it stays published a while longer."""
    client_secret: int = 0
    """0: client secrets issued at registration do not expire (RFC 7591 §3.2.1)."""
    metadata_document_min: int = 60
    metadata_document_max: int = 86400

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(Lifetimes):
            value = getattr(self, field.name)
            if not is_whole_number(value) or not 0 <= value <= MAX_LIFETIME:
                raise ConfigurationError(
                    f"lifetime {field.name} must be a whole number of seconds between 0 and {MAX_LIFETIME}"
                )
        if not 1 <= self.code <= 600:
            raise ConfigurationError("lifetime code must be between 1 and 600 seconds (AZ-09)")
        if not 1 <= self.access_token <= 86400:
            raise ConfigurationError("lifetime access_token must be between 1 second and 1 day")
        if self.refresh_idle < 1 or self.refresh_absolute < self.refresh_idle:
            raise ConfigurationError("lifetime refresh_absolute must be >= refresh_idle >= 1")
        if self.consent < 1:
            raise ConfigurationError("lifetime consent must be at least 1 second")
        if self.signing_key < self.access_token:
            raise ConfigurationError("lifetime signing_key must be at least the access token lifetime")
        if self.signing_key < KEY_PREPUBLISH:
            raise ConfigurationError(
                f"lifetime signing_key must be at least {KEY_PREPUBLISH} seconds: a key's successor is published"
                " that long before it signs, so verifiers caching the key set know it in time"
            )
        if self.metadata_document_max < self.metadata_document_min:
            raise ConfigurationError("metadata_document_max must be >= metadata_document_min")


def _token_hashes(value: Any) -> tuple[str, ...]:
    """SHA-256 hex digests, lower-cased; anything else is refused without being echoed (it may
    be a token pasted in place of its digest)."""
    hashes = tuple(h.strip().lower() for h in string_list(value, "registration initial_access_token_hashes"))
    for number, digest in enumerate(hashes, 1):
        if not _SHA256_HEX.fullmatch(digest):
            raise ConfigurationError(
                f"registration initial_access_token_hashes: entry {number} is not a SHA-256 hex digest "
                "(64 hex characters); list the digests of the tokens, never the tokens"
            )
    return hashes


def _lower_hosts(value: Any) -> tuple[str, ...] | None:
    """Redirect URI hosts, lower-cased, brackets dropped from IPv6 literals (as ``urlsplit`` gives them)."""
    if value is None:
        return None
    hosts = tuple(h.strip().lower() for h in string_list(value, "registration allowed_redirect_hosts"))
    for host in hosts:
        if not is_host_name(host):
            raise ConfigurationError(f"registration allowed_redirect_hosts: {host!r} is not a host name")
    return tuple(h[1:-1] if h.startswith("[") else h for h in hosts)


@attrs.frozen
class RegistrationPolicy:
    """Dynamic client registration (RFC 7591; RG-03).

    ``mode``: ``open`` (anyone may register), ``token`` (an initial access token is required,
    RFC 7591 §3) or ``closed`` (no registration endpoint).
    ``initial_access_token_hashes``: SHA-256 hex digests of the accepted initial access tokens.
    ``rate_limit``: registrations per ``rate_window`` seconds per client address; 0 disables.
    ``allowed_redirect_hosts``: when set, redirect URI hosts must be in it (loopback always allowed).
    """

    mode: str = "open"
    initial_access_token_hashes: tuple[str, ...] = attrs.field(default=(), converter=_token_hashes)
    rate_limit: int = 20
    rate_window: int = 3600
    allowed_redirect_hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_lower_hosts)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in ("open", "token", "closed"):
            raise ConfigurationError("registration mode must be one of open, token, closed")
        if self.mode == "token" and not self.initial_access_token_hashes:
            raise ConfigurationError("registration mode token needs initial_access_token_hashes (SHA-256 hex digests)")
        if not is_whole_number(self.rate_limit) or not 0 <= self.rate_limit <= MAX_RATE_LIMIT:
            raise ConfigurationError(
                f"registration rate_limit must be a whole number between 0 and {MAX_RATE_LIMIT} (0 disables it)"
            )
        if not is_whole_number(self.rate_window) or not 1 <= self.rate_window <= MAX_RATE_WINDOW:
            raise ConfigurationError(
                f"registration rate_window must be a whole number of seconds between 1 and {MAX_RATE_WINDOW}"
            )


@attrs.frozen
class Paths:
    """Endpoint paths, relative to the issuer (so an issuer with a path prefixes them)."""

    authorization: str = "/authorize"
    token: str = "/token"
    registration: str = "/register"
    revocation: str = "/revoke"
    introspection: str = "/introspect"
    jwks: str = "/jwks.json"

    def __attrs_post_init__(self) -> None:
        seen = set()
        for field in attrs.fields(Paths):
            value = getattr(self, field.name)
            if not isinstance(value, str):
                raise ConfigurationError(f"path {field.name} must be a string")
            if not value.startswith("/") or "?" in value or "#" in value or " " in value:
                raise ConfigurationError(f"path {field.name} must start with / and have no query")
            if value in seen:
                raise ConfigurationError(f"path {value} is used twice")
            seen.add(value)


def _resources(value: Any) -> tuple[ProtectedResource, ...]:
    """Protected resources, each given as itself or as its URI; a bare string is refused, not split."""
    if not isinstance(value, list | tuple):
        raise ConfigurationError("resources must be a list of protected resources (or their URIs)")
    out = []
    for item in value:
        if isinstance(item, ProtectedResource):
            out.append(item)
        elif isinstance(item, str):
            out.append(ProtectedResource(item))
        else:
            raise ConfigurationError("resources must be a list of protected resources (or their URIs)")
    return tuple(out)


@attrs.frozen
class Config:
    """Everything the protocol core needs to know about one authorization server.

    ``secret`` (at least 32 bytes) keys the derivation of refresh tokens; keep it as secret as
    the signing keys and the same on every instance. ``allow_insecure_http`` permits an
    ``http`` issuer that is not on loopback (GN-01); leave it off outside a lab.
    """

    issuer: str
    resources: tuple[ProtectedResource, ...] = attrs.field(converter=_resources)
    secret: bytes = attrs.field(repr=False)
    lifetimes: Lifetimes = attrs.field(factory=Lifetimes)
    registration: RegistrationPolicy = attrs.field(factory=RegistrationPolicy)
    signing_alg: str = "ES256"
    refresh_grace: int = 10
    allow_insecure_http: bool = False
    paths: Paths = attrs.field(factory=Paths)
    client_id_metadata_documents: bool = True
    service_documentation: str | None = None

    def __attrs_post_init__(self) -> None:
        for flag in ("allow_insecure_http", "client_id_metadata_documents"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigurationError(f"{flag} must be true or false")
        for name, kind in (("lifetimes", Lifetimes), ("registration", RegistrationPolicy), ("paths", Paths)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigurationError(f"{name} must be a {kind.__name__} (kavach_core.config.{kind.__name__})")
        issuer = self.issuer
        if not isinstance(issuer, str) or not issuer:
            raise ConfigurationError("issuer must be an absolute https URL")
        shown = redact(issuer)  # messages repeat the issuer, but never a password written into it
        try:
            parts = urlsplit(issuer)
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"issuer {shown!r} is not a valid URL (check the host and port)") from exc
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigurationError(f"issuer {shown!r} must be an absolute https URL")
        if port == 0 or parts.netloc.endswith(":"):
            raise ConfigurationError(f"issuer {shown!r}: give a port between 1 and 65535, or none")
        if host_problem(parts.netloc, parts.hostname) is not None:
            raise ConfigurationError(f"issuer {shown!r}: the host is not a valid host name or address")
        if parts.query or "?" in issuer or parts.fragment or "#" in issuer:
            raise ConfigurationError(f"issuer {shown!r} must have no query or fragment (RFC 8414 §2)")
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(f"issuer {shown!r} must not carry user information")
        if issuer.endswith("/"):
            raise ConfigurationError(f"issuer {shown!r}: remove the trailing slash")
        if issuer != issuer.strip() or any(ord(c) <= 0x20 for c in issuer):
            raise ConfigurationError(f"issuer {shown!r} must not contain spaces")
        if not _ISSUER_PATH.fullmatch(parts.path) or re.search(r"/\.\.?(?:/|$)|//", parts.path):
            raise ConfigurationError(
                f"issuer {shown!r}: write its path with letters, digits and - . _ ~ ! $ & ' ( ) * + , ; = : @ /"
                " only, without percent-escapes, dot segments or empty segments (requests arrive with their"
                " paths decoded, so the endpoints under such a path would never be found)"
            )
        # urlsplit lower-cases the scheme, so compare the issuer's own spelling of it.
        if not issuer.startswith(parts.scheme + ":") or parts.netloc != parts.netloc.lower():
            raise ConfigurationError(f"issuer {shown!r}: write the scheme and host in lower case")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname) and not self.allow_insecure_http:
            raise ConfigurationError(
                f"issuer {shown!r} uses http on a non-loopback host; use https (or set allow_insecure_http for a lab)"
            )
        if not self.resources:
            raise ConfigurationError("give at least one protected resource (the MCP server URL)")
        uris = [r.uri for r in self.resources]
        if len(set(uris)) != len(uris):
            raise ConfigurationError("a protected resource is listed twice")
        for resource in self.resources:
            rparts = urlsplit(resource.uri)
            if rparts.scheme == "http" and not is_loopback_host(rparts.hostname) and not self.allow_insecure_http:
                raise ConfigurationError(f"resource {resource.uri} uses http on a non-loopback host; use https")
        if not isinstance(self.secret, bytes) or len(self.secret) < 32:
            raise ConfigurationError("secret must be at least 32 random bytes")
        if not isinstance(self.signing_alg, str) or self.signing_alg not in SIGNING_ALGORITHMS:
            raise ConfigurationError(f"signing_alg must be one of {', '.join(SIGNING_ALGORITHMS)}")
        if not is_whole_number(self.refresh_grace) or not 0 <= self.refresh_grace <= 300:
            raise ConfigurationError(
                "refresh_grace must be a whole number of seconds between 0 and 300 (0 disables it)"
            )
        docs = self.service_documentation
        if docs is not None and (not isinstance(docs, str) or not docs.lower().startswith(("https://", "http://"))):
            raise ConfigurationError("service_documentation must be an http(s) URL (RFC 8414 §2)")
        self._check_paths()

    def _check_paths(self) -> None:
        """No endpoint path may shadow a metadata document, the sign-in and consent forms under
        the authorization endpoint, or a protected resource served on the issuer's origin."""
        prefix = self.issuer_path
        endpoints = {prefix + str(getattr(self.paths, f.name)): f.name for f in attrs.fields(Paths)}
        taken = {prefix or "/": "the issuer itself"}
        for well_known in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
            taken[well_known + prefix] = "a metadata document"
        taken[prefix + "/.well-known/openid-configuration"] = "a metadata document"
        forms = prefix + self.paths.authorization
        for form in ("/login", "/consent", "/decision"):
            taken[forms + form] = "the sign-in and consent forms"
        origin = self.issuer[: len(self.issuer) - len(prefix)]
        for resource in self.resources:
            if resource.uri.startswith(origin + "/") or resource.uri == origin:
                path = resource_path(resource.uri) or "/"
                taken[path] = f"protected resource {resource.uri}"
                taken["/.well-known/oauth-protected-resource" + resource_path(resource.uri)] = "a metadata document"
        for path, name in endpoints.items():
            if path in taken or path.startswith("/.well-known/"):
                clash = taken.get(path, "the /.well-known/ documents")
                raise ConfigurationError(f"path {name} ({path}) would shadow {clash}")

    # -- derived values ---------------------------------------------------------------

    def endpoint(self, name: str) -> str:
        """The absolute URL of an endpoint: the issuer followed by its path."""
        return self.issuer + str(getattr(self.paths, name))

    @property
    def issuer_path(self) -> str:
        return urlsplit(self.issuer).path

    def resource(self, uri: str) -> ProtectedResource | None:
        """The protected resource whose canonical URI is ``uri`` (already canonical)."""
        for resource in self.resources:
            if resource.uri == uri:
                return resource
        return None

    @property
    def default_resource(self) -> ProtectedResource | None:
        """The resource granted when a client names none: only when there is exactly one."""
        return self.resources[0] if len(self.resources) == 1 else None

    @property
    def scopes_supported(self) -> tuple[str, ...]:
        seen: list[str] = []
        for resource in self.resources:
            for scope in resource.scope_names:
                if scope not in seen:
                    seen.append(scope)
        return tuple(seen)
