"""The settings of one ``kavach`` process, from flags, ``KAVACH_*`` variables, a TOML file and defaults.

Precedence, highest first: command-line flags, environment variables, the TOML file
(``--config FILE`` or ``KAVACH_CONFIG``), the defaults below. Every problem is a
:class:`SettingsError` whose message is one line saying what to change; nothing here reads the
database or opens a socket. A key of the file that no setting has is refused; a ``KAVACH_*``
variable that none reads is warned about by the ``kavach`` command (:func:`unread_variables`).

The TOML file::

    host = "127.0.0.1"            # KAVACH_HOST
    port = 8000                   # KAVACH_PORT
    issuer = "https://auth.example.com"   # KAVACH_ISSUER; default http://<host>:<port>
    db = "kavach.db"              # KAVACH_DB; relative to this file's directory
    store = "postgresql://kavach@db.internal/kavach"   # KAVACH_STORE; instead of db (see below)
    upstream = "http://127.0.0.1:9000/mcp"   # KAVACH_UPSTREAM
    allow_insecure_http = false   # KAVACH_ALLOW_INSECURE_HTTP
    refresh_grace = 10            # KAVACH_REFRESH_GRACE
    signing_alg = "ES256"         # KAVACH_SIGNING_ALG
    log_level = "info"            # KAVACH_LOG_LEVEL
    trusted_proxies = ["10.0.0.5", "10.1.0.0/16"]   # KAVACH_TRUSTED_PROXIES (comma separated)
    allowed_origins = ["https://inspector.example"]  # KAVACH_ALLOWED_ORIGINS (comma separated); "*": any

    [lifetimes]                   # seconds; KAVACH_<NAME>_LIFETIME, e.g. KAVACH_ACCESS_TOKEN_LIFETIME
    access_token = 600            # 1 s to 1 day
    code = 60                     # 1 to 600 s
    refresh_idle = 1209600        # a refresh token unused this long expires (14 days)
    refresh_absolute = 7776000    # a refresh-token family ends this long after its grant (90 days)
    consent = 600                 # the sign-in and consent pages of one request
    signing_key = 2592000         # a key signs this long, then the next takes over (30 days)
    client_secret = 0             # a registered client's secret; 0: never expires
    metadata_document_min = 60    # a client metadata document is kept at least, and at most,
    metadata_document_max = 86400 # this long, whatever its Cache-Control says

    [resource]                    # the MCP server at <issuer origin>/mcp
    name = "My tools"
    default_scopes = ["tools:list", "tools:call"]   # KAVACH_DEFAULT_SCOPES (space separated)
    [resource.scopes]             # the catalogue: scope = "what the person is told at consent"
    "tools:list" = "See the list of tools"
    "tools:call" = "Run any tool"

    [registration]                # dynamic client registration (RFC 7591)
    mode = "open"                 # KAVACH_REGISTRATION: open | token | closed
    initial_access_token_hashes = ["<64 hex digits>"]   # mode token: SHA-256 of each accepted token
    rate_limit = 20               # registrations per client address per rate_window; 0: no limit
    rate_window = 3600            # seconds
    allowed_redirect_hosts = ["app.example.com"]   # when given, the only web hosts (loopback always)
                                  # clients register; not `kavach clients add`'s

    [sign_in]                     # the sign-in page's limits (kavach.server.LoginLimits)
    per_user = 10                 # password checks per account per window
    per_address = 50              # sign-in attempts, successful ones too, per client address per window
    window = 900                  # seconds, at most 366 days (as rate_window)

    [documents]                   # fetching client ID metadata documents (CM-02)
    allow_hosts = ["mcp-client.example.com", ".example.org"]   # KAVACH_DOCUMENT_ALLOW_HOSTS
    deny_hosts = [".internal.example.com", "203.0.113.0/24"]   # KAVACH_DOCUMENT_DENY_HOSTS
    ca_bundle = "/etc/ssl/extra-ca.pem"                        # KAVACH_DOCUMENT_CA_BUNDLE
    allow_loopback = false        # KAVACH_DOCUMENT_ALLOW_LOOPBACK; development only
    deadline = 5.0                # seconds for a whole fetch; also connect_timeout, read_timeout
    max_fetches = 16              # at once, in all; max_fetches_per_host = 4; max_bytes = 16384
    refusal_ttl = 30              # seconds a refused URL is answered from memory; refusal_cache_entries

Where the data lives: ``db`` (an SQLite file) or ``store`` (a URL for
:func:`kavach.stores.open_store`: ``postgresql://...``, ``redis://...``, ``sqlite:///path`` or a
file path; in this file a relative path, plain or after ``sqlite:///``, is relative to the file's
directory, like ``db``). They name the same thing, so a higher source's ``db`` replaces a lower source's
``store`` and the other way round; one source giving both is an error. A PostgreSQL or Redis
store also needs ``KAVACH_STORE_KEY`` in the environment (never in this file): see
``docs/deployment.md``.

``trusted_proxies``: the load balancers or reverse proxies (addresses or networks) whose
``X-Forwarded-For`` names the client, for the per-address limits (sign-in, registration). A
request from any other peer is counted by its socket address and its ``X-Forwarded-For`` is
ignored; with none configured (the default) no request's header is read.

``allowed_origins``: the web origins (``https://app.example.com``) of browser pages, besides the
issuer's own and loopback ones, that may call the MCP endpoint; ``"*"`` allows any (a token is
still required). A request carrying another ``Origin`` is refused with 403
(:mod:`kavach.origins`).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from kavach_core.config import (
    DEFAULT_MCP_SCOPES,
    Lifetimes,
    RegistrationPolicy,
    is_host_name,
    is_loopback_host,
    redact,
)
from kavach_core.errors import ConfigurationError
from kavach_core.resource_indicators import host_problem

from .origins import ANY as ANY_ORIGIN
from .origins import serialise

DEFAULT_HOST = "127.0.0.1"
_EVERY_INTERFACE = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - recognised here, never bound
DEFAULT_PORT = 8000
DEFAULT_DB = "kavach.db"
MCP_PATH = "/mcp"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

_TOP_KEYS = frozenset(
    {
        "host",
        "port",
        "issuer",
        "db",
        "store",
        "upstream",
        "allow_insecure_http",
        "refresh_grace",
        "signing_alg",
        "log_level",
        "trusted_proxies",
        "allowed_origins",
        "lifetimes",
        "resource",
        "registration",
        "sign_in",
        "documents",
    }
)
_LIFETIME_KEYS = tuple(f.name for f in attrs.fields(Lifetimes))
_RESOURCE_KEYS = frozenset({"name", "scopes", "default_scopes"})
_REGISTRATION_KEYS = frozenset(f.name for f in attrs.fields(RegistrationPolicy))
_SIGN_IN_KEYS = ("per_user", "per_address", "window")
_DOCUMENT_COUNTS = ("max_bytes", "max_fetches", "max_fetches_per_host", "refusal_cache_entries")
_DOCUMENT_SECONDS = ("deadline", "connect_timeout", "read_timeout", "refusal_ttl")
_DOCUMENT_KEYS = frozenset(
    {"allow_hosts", "deny_hosts", "ca_bundle", "allow_loopback", *_DOCUMENT_COUNTS, *_DOCUMENT_SECONDS}
)
MAX_CONFIG_BYTES = 1024 * 1024
"""The largest settings file read (1 MiB); a larger one is refused, not read."""
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_DECIMAL = re.compile(r"[+-]?[0-9]+")


class SettingsError(Exception):
    """A setting that cannot be used; the message is one line for the person at the terminal."""


def _bare_host(value: str) -> str:
    """The address to listen on, an IPv6 address given as a URL writes it (``[::1]``, RFC 3986
    §3.2.2) unbracketed: the socket wants it bare, and the issuer brackets it again."""
    if isinstance(value, str) and len(value) > 2 and value[0] == "[" and value[-1] == "]":
        return value[1:-1]
    return value


@attrs.frozen
class Settings:
    """Everything a ``kavach`` command needs, resolved and checked for form (not yet for meaning:
    :class:`kavach_core.config.Config` does that when the instance is built)."""

    host: str = attrs.field(default=DEFAULT_HOST, converter=_bare_host)
    port: int = DEFAULT_PORT
    issuer: str | None = None
    db: str = DEFAULT_DB
    store: str | None = None
    """A store URL or path (:func:`kavach.stores.open_store`); when set it replaces ``db``."""
    upstream: str | None = None
    allow_insecure_http: bool = False
    refresh_grace: int = 10
    signing_alg: str = "ES256"
    log_level: str = "info"
    trusted_proxies: tuple[str, ...] = ()
    """Addresses and networks whose ``X-Forwarded-For`` is believed (see the module docstring)."""
    allowed_origins: tuple[str, ...] = ()
    """Web origins whose pages may call the MCP endpoint, serialised, or ``*`` (module docstring)."""
    lifetimes: Mapping[str, int] = attrs.field(factory=dict)
    resource_name: str = "kavachOS demo MCP server"
    scopes: tuple[tuple[str, str], ...] = DEFAULT_MCP_SCOPES
    default_scopes: tuple[str, ...] = ()
    """Empty: the core derives them from the catalogue (``tools:list`` and ``tools:call`` when offered)."""
    registration: Mapping[str, Any] = attrs.field(factory=dict)
    documents: Mapping[str, Any] = attrs.field(factory=dict)
    """The metadata document fetcher's policy (:class:`kavach.fetcher.FetchPolicy` fields)."""
    sign_in: Mapping[str, int] = attrs.field(factory=dict)
    """The sign-in limits (:class:`kavach.server.LoginLimits` fields) given; the rest default."""
    config_file: str | None = None
    given: frozenset[str] = frozenset()
    """The settings a flag, the environment or the file gave; the others are defaults."""

    @property
    def issuer_url(self) -> str:
        """The issuer: as configured, else ``http://HOST:<port>`` for the address served on
        (development): ``127.0.0.1`` when that is every interface, loopback included. A host other
        than loopback makes an http issuer the configuration refuses, asking for ``--issuer``,
        rather than one naming an address the server does not answer on."""
        if self.issuer is not None:
            return self.issuer
        host = self.host.lower()
        if host in _EVERY_INTERFACE:
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def resource_url(self) -> str:
        """The MCP endpoint this server protects: the issuer's origin followed by ``/mcp``."""
        parts = urlsplit(self.issuer_url)
        return f"{parts.scheme}://{parts.netloc}{MCP_PATH}"

    def lifetimes_config(self) -> Lifetimes:
        try:
            return Lifetimes(**dict(self.lifetimes))
        except ConfigurationError as exc:
            raise SettingsError(str(exc)) from exc

    def registration_config(self) -> RegistrationPolicy:
        try:
            return RegistrationPolicy(**dict(self.registration))
        except ConfigurationError as exc:
            message = str(exc)
            raise SettingsError(message if message.startswith("registration") else f"registration: {message}") from exc
        except TypeError as exc:
            known = ", ".join(sorted(_REGISTRATION_KEYS))
            raise SettingsError(f"registration: unknown setting; the known ones are {known}") from exc

    def login_limits(self) -> Any:
        """The :class:`~kavach.server.LoginLimits` of ``[sign_in]``."""
        from .server import LoginLimits

        try:
            return LoginLimits(**dict(self.sign_in))
        except ValueError as exc:
            raise SettingsError(f"sign_in: {exc}") from exc

    def fetch_policy(self) -> Any:
        """The :class:`~kavach.fetcher.FetchPolicy` of ``[documents]`` and its flags."""
        from .fetcher import FetchPolicy, loopback_switch_problem

        try:
            policy = FetchPolicy(**dict(self.documents))
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"documents: {exc}") from exc
        problem = loopback_switch_problem(policy, self.issuer_url)
        if problem is None and policy.allow_loopback and not is_loopback_host(self.host):
            problem = (
                "fetching client metadata documents from loopback addresses is only for a server others"
                f" cannot reach, not one listening on {self.host}"
            )
        if problem is not None:
            raise SettingsError(f"--document-allow-loopback (documents.allow_loopback): {problem}")
        return policy


# -- conversions -------------------------------------------------------------------------


def _int(name: str, value: object, source: str) -> int:
    """A whole number: a TOML integer, or text of ASCII decimal digits with an optional sign (not
    ``8_000``, not other scripts' digits, which ``int()`` would accept)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        try:
            return int(value.strip(), 10)
        except ValueError:  # more digits than int() converts
            pass
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    raise SettingsError(f"{source}: {name} must be a whole number, not {shown}")


def _seconds(name: str, value: object, source: str) -> float:
    """A TOML integer or float of seconds, finite (``inf`` and ``nan`` are TOML floats too)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise SettingsError(f"{source}: {name} must be a number of seconds, not {value!r}")


def _bool(name: str, value: object, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise SettingsError(f"{source}: {name} must be true or false, not {value!r}")


def _str(name: str, value: object, source: str) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"{source}: {name} must be a string, not {value!r}")
    return value


def _listed(label: str, value: object, kind: str) -> list[str]:
    """The items of a list setting given as a TOML list of strings or a comma/space separated
    string (a flag, a variable); anything else is refused, saying it wants a list of ``kind``."""
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    raise SettingsError(f"{label} must be a list of {kind}")


def _proxies(label: str, value: object) -> tuple[str, ...]:
    """Trusted proxy addresses and networks (:func:`_listed`); ``label`` says where the value came from."""
    out: list[str] = []
    for item in _listed(label, value, "IP addresses or networks"):
        if item == "*":
            raise SettingsError(f"{label} cannot be '*': any client could then choose its own address")
        try:
            parsed = ipaddress.ip_network(item, strict=False) if "/" in item else ipaddress.ip_address(item)
        except ValueError:
            raise SettingsError(f"{label}: {item!r} is not an IP address or network") from None
        if isinstance(parsed, ipaddress.IPv4Network | ipaddress.IPv6Network) and parsed.prefixlen == 0:
            raise SettingsError(
                f"{label} cannot be {item!r}: it covers every address, so any client could choose its own address"
            )
        out.append(str(parsed))
    return tuple(out)


def _origins(label: str, value: object) -> tuple[str, ...]:
    """Allowed web origins (:func:`_listed`), each serialised (:func:`kavach.origins.serialise`)
    or ``*``; ``label`` says where the value came from."""
    out: list[str] = []
    for item in _listed(label, value, "origins like https://app.example.com"):
        normal = ANY_ORIGIN if item == ANY_ORIGIN else serialise(item.rstrip("/") if item.count("/") == 3 else item)
        if normal is None:
            raise SettingsError(f"{label}: {item!r} is not an origin (scheme://host[:port], http or https) or '*'")
        out.append(normal)
    return tuple(out)


def _port(value: int, source: str) -> int:
    if not 0 < value < 65536:
        raise SettingsError(f"{source}: port must be between 1 and 65535, not {value}")
    return value


def _scope_list(name: str, value: object, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SettingsError(f"{source}: {name} must be a list of scopes")


def _host_list(label: str, value: object, *, networks: bool = False) -> tuple[str, ...]:
    """Host names for the document fetcher's allow or deny list (CM-02): ``host``, ``.domain`` or
    ``*.domain`` (its subdomains), or an IP address, and with ``networks`` (the deny list) a
    network too (``203.0.113.0/24``); from a list, or a comma/space separated string. ``label``
    says where the value came from."""
    if isinstance(value, str):
        items = value.replace(",", " ").split()
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise SettingsError(f"{label} must be a list of host names")
    if not items:
        raise SettingsError(f"{label} names no host")
    for item in items:
        bare = item.removeprefix("*.") if item.startswith("*.") else item.removeprefix(".")
        if not is_host_name(bare.removesuffix(".")) and not (networks and _is_network(item)):
            raise SettingsError(f"{label}: {item!r} is not a host name (write host, .domain or *.domain)")
    return tuple(items)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


# -- the TOML file ------------------------------------------------------------------------


def read_toml(path: str) -> dict[str, Any]:
    """The parsed file, or a one-line :class:`SettingsError` (missing, unreadable, not TOML).

    Only a regular file of at most :data:`MAX_CONFIG_BYTES` is read: it is opened without
    blocking and checked by its descriptor, so a FIFO or a device (``/dev/zero``) is refused at
    once instead of hanging or being read forever.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as exc:
        raise SettingsError(f"config file {path!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise SettingsError(f"config file {path!r} is a directory") from exc
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL character in the path
        raise SettingsError(f"config file {path!r} is not a valid path") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SettingsError(f"config file {path!r} is a directory")
        if not stat.S_ISREG(mode):
            raise SettingsError(f"config file {path!r} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path!r}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise SettingsError(f"config file {path!r} is larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB")
    if data.startswith(b"\xef\xbb\xbf"):  # TOML has no byte-order mark; tomllib says "invalid statement"
        raise SettingsError(f"config file {path!r} starts with a byte-order mark: save it as UTF-8 without one")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SettingsError(f"config file {path!r} is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path!r} is not valid TOML: {exc}") from exc
    except RecursionError as exc:  # arrays or inline tables nested hundreds deep: the parser recurses
        raise SettingsError(f"config file {path!r} is not a kavachOS configuration: nested too deeply") from exc


def _from_toml(path: str) -> dict[str, Any]:
    data = read_toml(path)
    src = f"config file {path!r}"
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SettingsError(f"{src}: unknown setting {unknown[0]!r}")
    out: dict[str, Any] = {}
    base = Path(path).absolute().parent
    for key in ("host", "issuer", "upstream", "signing_alg", "log_level"):
        if key in data:
            out[key] = _str(key, data[key], src)
    if "db" in data:
        db = _str("db", data["db"], src)
        out["db"] = db if db == ":memory:" or os.path.isabs(db) else str(base / db)
    if "store" in data:
        out["store"] = _toml_store(_str("store", data["store"], src), base)
    if "port" in data:
        out["port"] = _port(_int("port", data["port"], src), src)
    if "refresh_grace" in data:
        out["refresh_grace"] = _int("refresh_grace", data["refresh_grace"], src)
    if "allow_insecure_http" in data:
        out["allow_insecure_http"] = _bool("allow_insecure_http", data["allow_insecure_http"], src)
    if "trusted_proxies" in data:
        out["trusted_proxies"] = _proxies(f"{src}: trusted_proxies", data["trusted_proxies"])
    if "allowed_origins" in data:
        out["allowed_origins"] = _origins(f"{src}: allowed_origins", data["allowed_origins"])
    if "lifetimes" in data:
        out["lifetimes"] = _whole_numbers(data["lifetimes"], "lifetimes", "lifetime", _LIFETIME_KEYS, src)
    if "resource" in data:
        out.update(_resource_table(data["resource"], src))
    if "registration" in data:
        out["registration"] = dict(_table(data["registration"], "registration", src, _REGISTRATION_KEYS))
    if "sign_in" in data:
        out["sign_in"] = _whole_numbers(data["sign_in"], "sign_in", "sign_in setting", _SIGN_IN_KEYS, src)
    if "documents" in data:
        out["documents"] = _documents_table(data["documents"], src, base)
    return out


def _table(table: object, name: str, src: str, known: Collection[str] | None = None) -> dict[str, Any]:
    """The TOML table ``[name]``: refused if it is not a table, or (given ``known``) if it holds a key
    not among them."""
    if not isinstance(table, dict):
        raise SettingsError(f"{src}: [{name}] must be a table")
    unknown = sorted(set(table) - set(known)) if known is not None else []
    if unknown:
        raise SettingsError(f"{src}: unknown {name} setting {unknown[0]!r}")
    return table


def _whole_numbers(table: object, name: str, what: str, keys: tuple[str, ...], src: str) -> dict[str, int]:
    """The TOML table ``[name]`` of whole numbers, each under one of ``keys`` (a ``what``)."""
    out: dict[str, int] = {}
    for key, value in _table(table, name, src).items():
        if key not in keys:
            raise SettingsError(f"{src}: unknown {what} {key!r} (known: {', '.join(keys)})")
        out[key] = _int(f"{name}.{key}", value, src)
    return out


def _toml_store(store: str, base: Path) -> str:
    """A store named in the file at ``base``: a relative SQLite path, plain or ``sqlite:///``, is
    relative to the file's directory (like ``db``); URLs and absolute paths are kept."""
    if store in (":memory:", "memory:"):
        return store
    if store[: len("sqlite:///")].lower() == "sqlite:///":  # the scheme in any letter case
        path = store[len("sqlite:///") :]
        if path in ("", ":memory:") or os.path.isabs(path):
            return store
        return "sqlite:///" + str(base / path)
    if "://" in store or os.path.isabs(store):
        return store
    return str(base / store)


def _documents_table(given: object, src: str, base: Path) -> dict[str, Any]:
    table = _table(given, "documents", src, _DOCUMENT_KEYS)
    out: dict[str, Any] = {}
    for key in ("allow_hosts", "deny_hosts"):
        if key in table:
            out[key] = _host_list(f"{src}: documents.{key}", table[key], networks=key == "deny_hosts")
    if "allow_loopback" in table:
        out["allow_loopback"] = _bool("documents.allow_loopback", table["allow_loopback"], src)
    if "ca_bundle" in table:
        bundle = _str("documents.ca_bundle", table["ca_bundle"], src)
        out["ca_bundle"] = bundle if os.path.isabs(bundle) else str(base / bundle)
    for key in _DOCUMENT_COUNTS:  # FetchPolicy checks the ranges
        if key in table:
            out[key] = _int(f"documents.{key}", table[key], src)
    for key in _DOCUMENT_SECONDS:
        if key in table:
            out[key] = _seconds(f"documents.{key}", table[key], src)
    return out


def _resource_table(given: object, src: str) -> dict[str, Any]:
    table = _table(given, "resource", src, _RESOURCE_KEYS)
    out: dict[str, Any] = {}
    if "name" in table:
        out["resource_name"] = _str("resource.name", table["name"], src)
    if "scopes" in table:
        scopes = table["scopes"]
        if isinstance(scopes, dict):
            pairs = tuple((str(k), _str(f"resource.scopes.{k}", v, src)) for k, v in scopes.items())
        elif isinstance(scopes, list) and all(isinstance(s, str) for s in scopes):
            pairs = tuple((s, "") for s in scopes)
        else:
            raise SettingsError(f"{src}: resource.scopes must be a table of scope = description")
        out["scopes"] = pairs
    if "default_scopes" in table:
        out["default_scopes"] = _scope_list("resource.default_scopes", table["default_scopes"], src)
    return out


# -- the environment ----------------------------------------------------------------------


_PLAIN_VARIABLES = ("host", "issuer", "db", "store", "upstream", "signing_alg", "log_level")
"""Settings read from ``KAVACH_<NAME>`` as they are written."""

ENVIRONMENT = frozenset(
    {f"KAVACH_{key.upper()}" for key in _PLAIN_VARIABLES}
    | {f"KAVACH_{key.upper()}_LIFETIME" for key in _LIFETIME_KEYS}
    | {
        "KAVACH_PORT",
        "KAVACH_REFRESH_GRACE",
        "KAVACH_ALLOW_INSECURE_HTTP",
        "KAVACH_TRUSTED_PROXIES",
        "KAVACH_ALLOWED_ORIGINS",
    }
    | {"KAVACH_DEFAULT_SCOPES", "KAVACH_REGISTRATION", "KAVACH_CONFIG", "KAVACH_STORE_KEY"}
    | {f"KAVACH_DOCUMENT_{key}" for key in ("ALLOW_HOSTS", "DENY_HOSTS", "CA_BUNDLE", "ALLOW_LOOPBACK")}
    | {"KAVACH_CONFORMANCE_PASSWORD", "KAVACH_CONFORMANCE_CLIENT_SECRET"}
)
"""Every ``KAVACH_*`` variable kavach reads (the settings below, the TOML file's path, the store key,
and the conformance kit's secrets, which ``kavach conformance`` reads)."""


def unread_variables(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The ``KAVACH_*`` names in ``environ`` that kavach does not read, sorted: a misspelt one
    (``KAVACH_ACESS_TOKEN_LIFETIME``) would otherwise leave its default in place unnoticed. Not
    refused, as a misspelt key of the TOML file is: an environment also carries variables meant
    for others."""
    return tuple(sorted(name for name in environ if name.startswith("KAVACH_") and name not in ENVIRONMENT))


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _PLAIN_VARIABLES:
        value = environ.get(f"KAVACH_{key.upper()}")
        if value:
            out[key] = value
    if environ.get("KAVACH_PORT"):
        out["port"] = _port(_int("KAVACH_PORT", environ["KAVACH_PORT"], "environment"), "KAVACH_PORT")
    if environ.get("KAVACH_REFRESH_GRACE"):
        out["refresh_grace"] = _int("KAVACH_REFRESH_GRACE", environ["KAVACH_REFRESH_GRACE"], "environment")
    if "KAVACH_ALLOW_INSECURE_HTTP" in environ:
        out["allow_insecure_http"] = _bool(
            "KAVACH_ALLOW_INSECURE_HTTP", environ["KAVACH_ALLOW_INSECURE_HTTP"], "environment"
        )
    if "KAVACH_TRUSTED_PROXIES" in environ:
        out["trusted_proxies"] = _proxies("KAVACH_TRUSTED_PROXIES", environ["KAVACH_TRUSTED_PROXIES"])
    if "KAVACH_ALLOWED_ORIGINS" in environ:
        out["allowed_origins"] = _origins("KAVACH_ALLOWED_ORIGINS", environ["KAVACH_ALLOWED_ORIGINS"])
    for key in _LIFETIME_KEYS:
        name = f"KAVACH_{key.upper()}_LIFETIME"
        if environ.get(name):
            out.setdefault("lifetimes", {})[key] = _int(name, environ[name], "environment")
    if environ.get("KAVACH_DEFAULT_SCOPES"):
        out["default_scopes"] = tuple(environ["KAVACH_DEFAULT_SCOPES"].split())
    if environ.get("KAVACH_REGISTRATION"):
        out["registration"] = {"mode": environ["KAVACH_REGISTRATION"]}
    documents: dict[str, Any] = {}
    for key in ("allow_hosts", "deny_hosts"):
        name = f"KAVACH_DOCUMENT_{key.upper()}"
        if environ.get(name):
            documents[key] = _host_list(name, environ[name], networks=key == "deny_hosts")
    if environ.get("KAVACH_DOCUMENT_CA_BUNDLE"):
        documents["ca_bundle"] = environ["KAVACH_DOCUMENT_CA_BUNDLE"]
    if "KAVACH_DOCUMENT_ALLOW_LOOPBACK" in environ:
        documents["allow_loopback"] = _bool(
            "KAVACH_DOCUMENT_ALLOW_LOOPBACK", environ["KAVACH_DOCUMENT_ALLOW_LOOPBACK"], "environment"
        )
    if documents:
        out["documents"] = documents
    return out


# -- putting it together ------------------------------------------------------------------


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Merge ``flags`` (``None`` values mean "not given") over the environment, the TOML file
    and the defaults."""
    env = os.environ if environ is None else environ
    given = {k: v for k, v in flags.items() if v is not None}
    config_file = given.pop("config", None) or env.get("KAVACH_CONFIG") or None
    merged: dict[str, Any] = {}
    if config_file:
        _place(merged, _from_toml(config_file), f"config file {config_file!r}")
    from_env = _from_env(env)
    for key in ("lifetimes", "registration", "documents"):
        if key in from_env and key in merged:
            from_env[key] = {**merged[key], **from_env[key]}
    _place(merged, from_env, "the environment (KAVACH_DB and KAVACH_STORE)")
    if given.get("allow_insecure_http") is False:
        given.pop("allow_insecure_http")
    if "documents" in given:
        flagged = dict(given["documents"])
        for key, flag in (("allow_hosts", "--document-allow-host"), ("deny_hosts", "--document-deny-host")):
            if key in flagged:
                flagged[key] = _host_list(flag, flagged[key], networks=key == "deny_hosts")
        given["documents"] = {**merged.get("documents", {}), **flagged}
    if "port" in given:
        given["port"] = _port(_int("port", given["port"], "--port"), "--port")
    if "trusted_proxies" in given:
        given["trusted_proxies"] = _proxies("--trusted-proxies", given["trusted_proxies"])
    if "allowed_origins" in given:
        given["allowed_origins"] = _origins("--allowed-origins", given["allowed_origins"])
    _place(merged, given, "--db and --store")
    named = frozenset(merged)
    level = str(merged.get("log_level", "info")).lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    merged["log_level"] = level
    if merged.get("db") == "":
        raise SettingsError("the database path is empty; give --db PATH")
    if merged.get("store") == "":
        raise SettingsError("the store is empty; give --store URL (postgresql://, redis://, sqlite:///) or --db PATH")
    if merged.get("upstream") is not None:
        merged["upstream"] = _check_upstream(str(merged["upstream"]))
    return Settings(config_file=config_file, given=named, **merged)


def _place(merged: dict[str, Any], layer: dict[str, Any], source: str) -> None:
    """``merged.update(layer)``, where ``db`` and ``store`` are one setting (where the data lives):
    a layer naming either replaces both below it; naming both at once is an error."""
    if "db" in layer and "store" in layer:
        raise SettingsError(f"{source}: give a database (db) or a store, not both")
    if "db" in layer:
        merged.pop("store", None)
    if "store" in layer:
        merged.pop("db", None)
    merged.update(layer)


def _check_upstream(url: str) -> str:
    """The MCP server to proxy to: an absolute http(s) URL (RFC 3986 §3) with a reachable port,
    written as a URI (printable ASCII, no spaces) with a host a request can name: anything else
    would start the server and then fail every proxied request."""
    shown = redact(url)  # never a password written into it
    if not url.isascii() or any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise SettingsError(
            f"upstream {shown!r} must be written as a URI: no spaces, control or non-ASCII characters "
            "(percent-encode them in the path)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SettingsError(f"upstream {shown!r} is not a valid URL (check the host and the port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"upstream {shown!r} must be an absolute http(s) URL of an MCP endpoint")
    if port == 0 or parts.netloc.endswith(":"):
        raise SettingsError(f"upstream {shown!r}: give a port between 1 and 65535, or none")
    if parts.fragment:
        raise SettingsError(f"upstream {shown!r} must not have a fragment")
    problem = host_problem(parts.netloc, parts.hostname)
    if problem is not None:
        raise SettingsError(f"upstream {shown!r}: {problem}")
    return url
