"""The ``kavach`` command: serve a protected MCP server, manage users, clients, grants and keys.

::

    kavach serve [--host H] [--port P] [--issuer URL] [--db FILE | --store URL] [--upstream URL] [--config FILE]
    kavach users add NAME [--password-stdin] | users list | users remove NAME
    kavach clients add --name N --redirect-uri URI [...] [--confidential] | list | show ID | revoke ID
    kavach grants list [--subject S] [--client ID] | grants revoke (--subject S | --grant ID)
    kavach keys list | keys rotate
    kavach conformance --issuer URL [...]      (the conformance kit, package kavach_conformance)

Every command takes ``--db FILE`` (an SQLite file, default ``./kavach.db``) or ``--store URL``
(``postgresql://...``, ``redis://...``, ``sqlite:///path``; also ``KAVACH_STORE`` or ``store =``
in the TOML file): several ``kavach serve`` processes on one PostgreSQL or Redis store share
everything, and the other commands act on that shared state. A PostgreSQL or Redis store needs
``KAVACH_STORE_KEY`` (see ``docs/deployment.md``).

Settings come from flags, then ``KAVACH_*`` environment variables, then a TOML file, then
defaults (:mod:`kavach.settings`). Bad input is one line on stderr and exit status 2, never a
traceback. A change made whose report then cannot be written (a full disk) is one line on stderr
saying that the change was made, and exit status 1. This module only composes: every OAuth rule
lives in :mod:`kavach_core`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import getpass
import ipaddress
import json
import logging
import os
import shlex
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import attrs

from kavach_core import effects as fx
from kavach_core import keys as keyset
from kavach_core.config import redact
from kavach_core.context import Context
from kavach_core.drivers import StoreUnavailable
from kavach_core.errors import OAuthError
from kavach_core.records import Client, Grant
from kavach_core.scopes import format_scope

from .instance import Instance, InstanceError, check_issuer, sqlite_file, store_kind
from .settings import MCP_PATH, Settings, SettingsError, resolve, unread_variables
from .users import normalize_username, valid_password, valid_username

EXIT_BROKEN_PIPE = 141
"""What a shell reports for a command ended by SIGPIPE (128 + 13), as for any filter whose reader left."""
PROG = "kavach"
EXIT_BAD_INPUT = 2
EXIT_NOT_REPORTED = 1
"""A change was made and stays made, but the line saying so could not be written to standard output."""


class CliError(Exception):
    """Bad input: printed as one line on stderr, exit status 2."""


class _Unreported(Exception):
    """A change made whose report could not be written: one line on stderr saying it was made, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2, and no abbreviated options:
    ``--por 1`` is refused, not taken as ``--port 1`` (nor, once a longer option is added, as another)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kavachos")
    except PackageNotFoundError:
        return "unknown"


# -- the parser ----------------------------------------------------------------------------


def _common() -> _Parser:
    common = _Parser(add_help=False)
    where = common.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="FILE", help="the SQLite database (default ./kavach.db; KAVACH_DB)")
    where.add_argument(
        "--store",
        metavar="URL",
        help="the store instead of --db: postgresql://..., redis://... or sqlite:///PATH (KAVACH_STORE;"
        " PostgreSQL and Redis need KAVACH_STORE_KEY)",
    )
    common.add_argument("--config", metavar="FILE", help="a TOML settings file (KAVACH_CONFIG)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog=PROG,
        description="kavachOS: an OAuth 2.1 authorization server and guard for MCP servers.",
        epilog="Run 'kavach COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"kavach {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="run the authorization server and a protected MCP server at /mcp",
        description="Run the authorization server and, at /mcp, the built-in demo MCP server or a "
        "streaming proxy to --upstream, guarded by kavachOS.",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; KAVACH_HOST)")
    serve.add_argument("--port", type=_port_arg, help="port to listen on (default 8000; KAVACH_PORT)")
    serve.add_argument(
        "--issuer",
        metavar="URL",
        help="the issuer URL (default http://HOST:PORT, 127.0.0.1 for 0.0.0.0 or ::; KAVACH_ISSUER)",
    )
    serve.add_argument(
        "--upstream", metavar="URL", help="proxy /mcp to this MCP server (Streamable HTTP; KAVACH_UPSTREAM)"
    )
    serve.add_argument(
        "--allow-insecure-http",
        action="store_true",
        default=None,
        help="accept an http issuer that is not on loopback (a lab only; KAVACH_ALLOW_INSECURE_HTTP)",
    )
    serve.add_argument(
        "--document-allow-host",
        action="append",
        dest="document_allow_hosts",
        metavar="HOST",
        help="fetch client metadata documents only from this host (.example.com: its subdomains; repeat; "
        "KAVACH_DOCUMENT_ALLOW_HOSTS, comma separated)",
    )
    serve.add_argument(
        "--document-deny-host",
        action="append",
        dest="document_deny_hosts",
        metavar="HOST",
        help="never fetch client metadata documents from this host (repeat; "
        "KAVACH_DOCUMENT_DENY_HOSTS, comma separated)",
    )
    serve.add_argument(
        "--document-ca-bundle",
        metavar="FILE",
        help="trust these CAs (PEM) when fetching client metadata documents (KAVACH_DOCUMENT_CA_BUNDLE)",
    )
    serve.add_argument(
        "--document-allow-loopback",
        action="store_true",
        default=None,
        help="DEVELOPMENT ONLY: fetch client metadata documents from loopback addresses "
        "(KAVACH_DOCUMENT_ALLOW_LOOPBACK)",
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=("critical", "error", "warning", "info", "debug"),
        help="log level (default info; KAVACH_LOG_LEVEL)",
    )
    serve.add_argument(
        "--trusted-proxies",
        metavar="ADDRESSES",
        help="load balancers (IP addresses or networks, comma separated) whose X-Forwarded-For names the client "
        "for the per-address limits (KAVACH_TRUSTED_PROXIES; default: none, the socket peer is the client)",
    )
    serve.add_argument(
        "--allowed-origins",
        metavar="ORIGINS",
        help="web origins (comma separated, e.g. https://app.example.com; '*' for any) of browser pages that may call "
        "/mcp besides the issuer's and loopback ones (KAVACH_ALLOWED_ORIGINS); a request from another is refused 403",
    )
    serve.set_defaults(handler=cmd_serve, parser=serve)

    users = commands.add_parser("users", help="manage the local sign-in accounts", description="Local accounts.")
    users_cmds = users.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    add = users_cmds.add_parser("add", parents=[common], help="create a user (or change its password)")
    add.add_argument("name", help="the username")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.set_defaults(handler=cmd_users_add, parser=add)
    lst = users_cmds.add_parser("list", parents=[common], help="list users")
    lst.set_defaults(handler=cmd_users_list, parser=lst)
    rm = users_cmds.add_parser("remove", parents=[common], help="delete a user and revoke their grants")
    rm.add_argument("name", help="the username")
    rm.set_defaults(handler=cmd_users_remove, parser=rm)

    clients = commands.add_parser("clients", help="manage OAuth clients", description="Registered OAuth clients.")
    clients_cmds = clients.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    cadd = clients_cmds.add_parser("add", parents=[common], help="pre-register a client")
    cadd.add_argument("--name", required=True, help="the name people see at consent")
    cadd.add_argument(
        "--redirect-uri",
        required=True,
        action="append",
        dest="redirect_uris",
        metavar="URI",
        help="a redirect URI (repeat for several)",
    )
    cadd.add_argument("--confidential", action="store_true", help="issue a client secret (client_secret_basic)")
    cadd.add_argument("--scope", help="limit the client to these scopes (space separated)")
    cadd.set_defaults(handler=cmd_clients_add, parser=cadd)
    clst = clients_cmds.add_parser("list", parents=[common], help="list clients")
    clst.set_defaults(handler=cmd_clients_list, parser=clst)
    cshow = clients_cmds.add_parser("show", parents=[common], help="show one client as JSON")
    cshow.add_argument("client_id", metavar="ID")
    cshow.set_defaults(handler=cmd_clients_show, parser=cshow)
    crev = clients_cmds.add_parser("revoke", parents=[common], help="delete a client and revoke its grants")
    crev.add_argument("client_id", metavar="ID")
    crev.set_defaults(handler=cmd_clients_revoke, parser=crev)

    grants = commands.add_parser("grants", help="list or revoke what people granted", description="Grants.")
    grants_cmds = grants.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    glst = grants_cmds.add_parser("list", parents=[common], help="list grants")
    glst.add_argument("--subject", help="only this user's grants")
    glst.add_argument("--client", help="only this client's grants")
    glst.set_defaults(handler=cmd_grants_list, parser=glst)
    grev = grants_cmds.add_parser("revoke", parents=[common], help="revoke grants and every token issued under them")
    which = grev.add_mutually_exclusive_group(required=True)
    which.add_argument("--subject", help="every grant of this user")
    which.add_argument("--grant", metavar="ID", help="one grant")
    grev.set_defaults(handler=cmd_grants_revoke, parser=grev)

    keys = commands.add_parser("keys", help="list or rotate the token signing keys", description="Signing keys.")
    keys_cmds = keys.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    klst = keys_cmds.add_parser("list", parents=[common], help="list signing keys")
    klst.set_defaults(handler=cmd_keys_list, parser=klst)
    krot = keys_cmds.add_parser("rotate", parents=[common], help="start signing with a new key now")
    krot.set_defaults(handler=cmd_keys_rotate, parser=krot)

    conformance = commands.add_parser(
        "conformance",
        help="check an OAuth authorization server over HTTP against the spec checklist",
        description="Black-box conformance kit (kavach_conformance): a table of rule ids and a JSON report.",
    )
    try:
        from kavach_conformance.cli import add_arguments as _conformance_arguments
    except ImportError:  # an install without the kit: the command says so instead of breaking the CLI
        conformance.set_defaults(handler=_no_conformance_kit, parser=conformance)
    else:
        _conformance_arguments(conformance)
        conformance.set_defaults(handler=cmd_conformance, parser=conformance)

    for group in (users, clients, grants, keys):
        group.set_defaults(handler=None, group=group, parser=group)
    return parser


def _port_arg(text: str) -> int:
    if not (text.isascii() and text.isdigit()):  # int() would take "8_000" and other scripts' digits
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and 65535")
    return value


# -- helpers -------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        name: getattr(args, name, None)
        for name in (
            "host",
            "port",
            "issuer",
            "db",
            "store",
            "upstream",
            "config",
            "allow_insecure_http",
            "log_level",
            "trusted_proxies",
            "allowed_origins",
        )
    }
    documents = {
        key: getattr(args, f"document_{key}", None)
        for key in ("allow_hosts", "deny_hosts", "ca_bundle", "allow_loopback")
    }
    documents = {k: v for k, v in documents.items() if v is not None}
    if documents:
        flags["documents"] = documents
    return resolve(flags)


@contextlib.contextmanager
def _instance(args: argparse.Namespace, *, creates: bool = False) -> Iterator[Instance]:
    """The instance ``args`` configures, closed when the block ends (also on an error).

    Only a command that ``creates`` (``serve``, adding a user or a client, rotating keys) may make
    a new SQLite database; the others refuse a path with no database, so a mistyped ``--db`` is an
    error instead of a new, empty database and a misleading "no users yet". A store in memory is
    refused: what a command wrote there would be gone when it ends."""
    settings = _settings(args)
    check_issuer(settings)  # the settings' own errors come first
    location = settings.store or settings.db
    kind = store_kind(location)
    path = sqlite_file(location) if kind == "sqlite" else None
    if kind == "memory" or path == ":memory:":
        raise CliError(f"{location} keeps nothing once this command ends; give the --db or --store kavach serve uses")
    if not creates and path is not None and not path.endswith(("/", os.sep)) and _no_database(path):
        raise CliError(
            f"no database at {os.path.abspath(path)} (kavach serve, users add, clients add or keys rotate makes one)"
        )
    instance = Instance(settings, creates=creates)
    try:
        yield instance
    finally:
        instance.close()


def _no_database(path: str) -> bool:
    """Nothing at ``path``, or an empty file, which SQLite would make a new database of (a name
    too long, or a path through a file, is the store's to explain)."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISREG(found.st_mode) and found.st_size == 0


def _when(ts: int | None) -> str:
    """A stored time, in UTC; one no calendar date can show (a damaged row's, say) as its number,
    so that listing the rest still works."""
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return f"{ts} (not a date)"


def _shown(value: object) -> str:
    """``value`` for a terminal: characters that are not printable (escape sequences, newlines,
    format characters) written as escapes, so stored text cannot drive the terminal or fake rows
    (subjects come from an application's own login, names from registrations)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _report(done: str) -> None:
    """Write ``done``, the line saying what a command changed, after the change is stored. When it
    cannot be written (a full disk), :class:`_Unreported`: the change stands, so the command says
    so and exits 1, not 2 (bad input: nothing was done). ``clients add`` instead writes its report
    first and stores nothing when that fails: the secret it shows cannot be shown again."""
    try:
        print(done, flush=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise _Unreported(f"done, but this report of it could not be written ({reason}): {done}") from None


def _table(rows: Sequence[Sequence[str]], headings: Sequence[str]) -> None:
    rows = [[_shown(cell) for cell in row] for row in rows]
    widths = [max(len(str(r[i])) for r in [headings, *rows]) for i in range(len(headings))]
    for row in [headings, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# -- users ---------------------------------------------------------------------------------


def _read_password(from_stdin: bool) -> str:
    try:
        return _password(from_stdin)
    except EOFError:  # Ctrl-D at the prompt
        raise CliError("no password given") from None
    except UnicodeError:  # bytes the locale's encoding cannot read, or lone surrogates it let through
        raise CliError("the password is not valid UTF-8 text") from None


def _password(from_stdin: bool) -> str:
    if sys.stdin is None:
        raise CliError("standard input is closed; give the password on it with --password-stdin")
    if from_stdin:
        if sys.stdin.isatty():  # the terminal would echo what is typed
            raise CliError("--password-stdin reads a pipe; on a terminal leave it out to be asked without echo")
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
        if not password:
            raise CliError("no password on stdin")
        password.encode("utf-8")  # a surrogate from undecodable input raises UnicodeEncodeError here
        return password
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for a password; use --password-stdin")
    first = getpass.getpass("Password: ")
    if not first:
        raise CliError("the password is empty")
    if getpass.getpass("Password (again): ") != first:
        raise CliError("the passwords do not match")
    return first


def cmd_users_add(args: argparse.Namespace) -> int:
    name = valid_username(args.name)  # a name that cannot be a user's is refused before the store
    password = valid_password(_read_password(args.password_stdin))  # before the store: a refusal creates nothing
    with _instance(args, creates=True) as instance:
        existed = instance.users.store.get_hash(name) is not None
        instance.users.add(name, password)  # both checked above
        _report(f"{'changed the password of' if existed else 'created'} user {name!r}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    with _instance(args) as instance:
        names = instance.users.store.usernames()
        where = _store_option(instance)
    if not names:  # the hint names this command's store: typed without it, it would add to another
        print(f"no users yet; create one with: {_command()} users add NAME{where}", file=sys.stderr)
    for name in names:
        print(name)
    return 0


def _revoke_subject(instance: Instance, subject: str) -> int:
    """Revoke every grant of ``subject`` and drop its codes not yet redeemed, in one step
    (:class:`~kavach_core.effects.RevokeSubject`: a code issued before must not become a grant
    after); returns how many grants were revoked."""
    return int(instance.run(_one(fx.RevokeSubject(subject, int(time.time())))))


def _one(effect: fx.Effect) -> Any:
    """A flow of one effect, for the operator's direct actions."""
    return (yield effect)


def cmd_users_remove(args: argparse.Namespace) -> int:
    subject = valid_username(args.name)  # a name that cannot be a user's is refused before the store
    with _instance(args) as instance:
        if instance.users.store.get_hash(subject) is None:
            raise CliError(f"no user named {args.name!r}")
        # Grants first: if the store fails before the user is removed, the same command can be
        # run again. Then once more: an approval whose session was checked before the removal may
        # store its code after the first revocation (a later check of its session stops it
        # sending that code only when the check comes after the removal; see the server's
        # approval), so the second revocation drops the code or revokes the grant it became.
        revoked = _revoke_subject(instance, subject)
        instance.users.remove(args.name)
        try:
            revoked += _revoke_subject(instance, subject)
        except InstanceError as exc:
            raise CliError(
                f"removed user {subject!r}, but revoking what they were granted since failed: {exc};"
                f" run: {_command()} grants revoke --subject {shlex.quote(subject)}{_store_option(instance)}"
            ) from exc
    _report(f"removed user {subject!r}; revoked {revoked} grant{'s' if revoked != 1 else ''}")
    return 0


# -- clients -------------------------------------------------------------------------------


def cmd_clients_add(args: argparse.Namespace) -> int:
    from kavach_core.endpoints.registration import build_client
    from kavach_core.messages.registration import parse_metadata

    if not args.name:
        raise CliError("--name must not be empty")
    if args.scope is not None and not args.scope:  # "" would register a client with no scope limit
        raise CliError("--scope needs at least one scope (leave it out to allow every scope offered)")

    metadata: dict[str, Any] = {
        "client_name": args.name,
        "redirect_uris": args.redirect_uris,
        "token_endpoint_auth_method": "client_secret_basic" if args.confidential else "none",
    }
    if args.scope is not None:
        metadata["scope"] = args.scope
    # Checked against the settings before the store is opened: a refused client creates nothing.
    # The operator vets the clients it adds: the self-registration allowlist of redirect hosts
    # (RG-03) is not theirs to pass; every other redirect URI rule is.
    config = check_issuer(_settings(args))
    config = attrs.evolve(config, registration=attrs.evolve(config.registration, allowed_redirect_hosts=None))
    context = Context(config, int(time.time()), os.urandom)
    try:
        client, body = build_client(context, parse_metadata(metadata))
    except OAuthError as exc:
        raise CliError(f"{exc.error}: {exc.description}") from exc
    client = attrs.evolve(client, kind="static")
    shown = [f"client_id: {client.client_id}"]
    if "client_secret" in body:
        shown.append(f"client_secret: {body['client_secret']}")
    try:  # written out before anything is stored or made: a secret nobody read must not be a live client's
        if sys.stdout is None:
            raise OSError("standard output is closed")
        sys.stdout.write("\n".join(shown) + "\n")
        sys.stdout.flush()
    except OSError as exc:
        _discard_output()
        raise CliError(f"could not write the new client's details, so it was not stored: {exc}") from None
    try:
        with _instance(args, creates=True) as instance:
            instance.run(_one(fx.PutClient(client)))
    except (CliError, SettingsError, InstanceError, StoreUnavailable) as exc:
        raise CliError(f"{exc} (so the client above was not stored)") from exc
    if "client_secret" in body:
        print("(the secret is shown only now; it is stored as a hash)", file=sys.stderr)
    return 0


def _clients(instance: Instance) -> tuple[Client, ...]:
    return tuple(instance.run(_one(fx.ListClients())))


def cmd_clients_list(args: argparse.Namespace) -> int:
    with _instance(args) as instance:
        clients = _clients(instance)
    if not clients:
        print("no clients registered", file=sys.stderr)
        return 0
    rows = [
        (c.client_id, c.kind, c.token_endpoint_auth_method, c.client_name or "-", " ".join(c.redirect_uris))
        for c in sorted(clients, key=lambda c: (c.issued_at, c.client_id))
    ]
    _table(rows, ("CLIENT_ID", "KIND", "AUTH", "NAME", "REDIRECT_URIS"))
    return 0


def _client_json(client: Client) -> dict[str, Any]:
    out: dict[str, Any] = {
        "client_id": client.client_id,
        "client_name": client.client_name,
        "kind": client.kind,
        "redirect_uris": list(client.redirect_uris),
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "grant_types": list(client.grant_types),
        "response_types": list(client.response_types),
        "scope": format_scope(client.scope) if client.scope is not None else None,
        "client_id_issued_at": client.issued_at,
        "client_secret_expires_at": client.secret_expires_at if client.is_confidential else None,
    }
    for name in ("client_uri", "logo_uri", "tos_uri", "policy_uri", "contacts", "software_id", "software_version"):
        if name in client.meta:
            out[name] = client.meta[name]
    return out


def cmd_clients_show(args: argparse.Namespace) -> int:
    with _instance(args) as instance:
        client = instance.run(_one(fx.GetClient(args.client_id)))
    if client is None:
        raise CliError(f"no client with id {args.client_id!r}")
    print(json.dumps(_client_json(client), indent=2))
    return 0


def cmd_clients_revoke(args: argparse.Namespace) -> int:
    with _instance(args) as instance:
        existed = instance.run(_one(fx.DeleteClient(args.client_id, int(time.time()))))
    if not existed:
        raise CliError(f"no client with id {args.client_id!r}")
    _report(f"deleted client {args.client_id} and revoked its grants")
    return 0


# -- grants --------------------------------------------------------------------------------


def _status(grant: Grant, now: int) -> str:
    if grant.revoked_at is not None:
        return "revoked"
    if grant.expires_at <= now:
        return "expired"
    return "active"


def _as_username(subject: str) -> str | None:
    """``subject`` as a local username is kept (``' alice '`` is user ``alice``), when that differs."""
    try:
        username = normalize_username(subject)
    except ValueError:
        return None
    return None if username == subject else username


def _grants_of(instance: Instance, subject: str | None, client_id: str | None = None) -> tuple[Grant, ...]:
    """The grants of ``subject`` as given or, when it has none, as a local username is kept;
    subjects from an application's own login stay as given."""
    found = tuple(instance.run(_one(fx.ListGrants(subject=subject, client_id=client_id))))
    username = None if found or subject is None else _as_username(subject)
    if username is None:
        return found
    return tuple(instance.run(_one(fx.ListGrants(subject=username, client_id=client_id))))


def cmd_grants_list(args: argparse.Namespace) -> int:
    with _instance(args) as instance:
        grants = _grants_of(instance, args.subject, args.client)
    if not grants:
        print("no grants", file=sys.stderr)
        return 0
    now = int(time.time())
    rows = [
        (g.grant_id, g.subject, g.client_id, format_scope(g.scopes), _when(g.created_at), _status(g, now))
        for g in sorted(grants, key=lambda g: (g.created_at, g.grant_id))
    ]
    _table(rows, ("GRANT_ID", "SUBJECT", "CLIENT_ID", "SCOPES", "CREATED", "STATUS"))
    return 0


def cmd_grants_revoke(args: argparse.Namespace) -> int:
    with _instance(args) as instance:
        if args.grant is not None:
            grant = instance.run(_one(fx.GetGrant(args.grant)))
            if grant is None:
                raise CliError(f"no grant with id {args.grant!r}")
            revoked = 1 if instance.run(_one(fx.RevokeGrant(grant.grant_id, int(time.time())))) else 0
        else:
            # As ``grants list``: the subject as given or, when that revokes nothing, as a local username.
            revoked = _revoke_subject(instance, args.subject)
            username = None if revoked else _as_username(args.subject)
            if username is not None:
                revoked = _revoke_subject(instance, username)
    _report(f"revoked {revoked} grant{'s' if revoked != 1 else ''}")
    return 0


# -- keys ----------------------------------------------------------------------------------


def cmd_keys_list(args: argparse.Namespace) -> int:
    with _instance(args) as instance:
        records = tuple(instance.run(_one(fx.GetSigningKeys())))
    if not records:
        print("no signing keys yet (one is made when the first token is signed)", file=sys.stderr)
        return 0
    now = int(time.time())
    # The key signing now for each algorithm in the set: which one the servers sign with is their
    # signing_alg, which this command is not given (and during a rolling change, instances differ).
    signing = {key.kid for key in keyset.KeySet(records).signing(now)}
    rows = []
    for record in records:
        if record.kid in signing:
            state = "active"
        elif record.publish_until > now:
            state = "published"
        else:
            state = "expired"
        rows.append(
            (
                record.kid,
                record.alg,
                _when(record.created_at),
                _when(record.signs_until),
                _when(record.publish_until),
                state,
            )
        )
    _table(rows, ("KID", "ALG", "CREATED", "SIGNS_UNTIL", "PUBLISHED_UNTIL", "STATE"))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """New keys for the algorithms signing now (the servers' ``signing_alg``, which this command
    need not be given), or for ``signing_alg`` alone when it is given (``KAVACH_SIGNING_ALG`` or the
    file): during a rolling change, that withdraws the other algorithm's key from signing."""
    with _instance(args, creates=True) as instance:
        ctx = instance.context()
        named = (instance.config.signing_alg,) if "signing_alg" in instance.settings.given else None
        try:
            keys = instance.run(keyset.rotate(ctx, named))
        except keyset.KeyRotationError as exc:
            raise CliError(str(exc)) from exc
        signing = keys.signing(ctx.now)
    if not signing:
        raise CliError("the rotation did not produce an active key")
    now_signing = ", ".join(f"{k.kid} ({k.alg})" for k in sorted(signing, key=lambda k: k.alg))
    _report(f"now signing with key {now_signing}; earlier keys stay published until their tokens expire")
    return 0


# -- serve ---------------------------------------------------------------------------------


def listen_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts, so a busy port is one clear line.

    It is made with ``IPPROTO_TCP`` named explicitly: accepted connections inherit the protocol
    number, and asyncio turns Nagle's algorithm off (``TCP_NODELAY``) only on sockets that report
    it. A listener made with protocol 0 (what some resolvers return) would leave every response
    written in two parts waiting about 40 ms for the client's delayed ACK on a kept-alive connection.
    """
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {host!r}: {exc.strerror}") from exc
    family, kind, _, _, address = infos[0]
    sock = socket.socket(family, kind, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"port {port} on {host} is already in use; pick another with --port") from exc
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def _command() -> str:
    """How to run this command again: the path it was started by when that was a path
    (``.venv/bin/kavach`` as the README has it, the environment not activated), else ``kavach``."""
    typed = sys.argv[0] if sys.argv else ""
    return typed if os.path.basename(typed) == PROG and os.sep in typed else PROG


def _store_option(instance: Instance) -> str:
    """The option naming this instance's store in a command to type next (none for the default
    database); a URL's password is left out."""
    settings = instance.settings
    if settings.store:
        return f" --store {shlex.quote(redact(settings.store))}"
    return "" if settings.db == "kavach.db" else f" --db {shlex.quote(os.path.abspath(instance.path))}"


def _banner(settings: Settings, instance: Instance) -> None:
    mcp_url = settings.resource_url
    where = "the built-in demo MCP server (tools echo and add)"
    if settings.upstream:
        where = f"a proxy to {redact(settings.upstream)}"
    kind, _, data = instance.describe().partition(": ")
    lines = [
        "kavachOS is running.",
        f"  MCP server URL (paste into your MCP client): {mcp_url}",
        f"  Issuer (authorization server):               {settings.issuer_url}",
        f"  Serving at /mcp:                             {where}",
        f"  Data ({kind}):{' ' * max(1, 37 - len(kind))}{data}",
    ]
    if settings.trusted_proxies:
        lines.append(f"  Client address from X-Forwarded-For of:      {', '.join(settings.trusted_proxies)}")
    if settings.allowed_origins:
        lines.append(f"  Browser pages may call /mcp also from:       {', '.join(settings.allowed_origins)}")
    if not instance.users.store.usernames():
        add = f"  {_command()} users add NAME{_store_option(instance)}"
        if instance.kind == "memory" or instance.path == ":memory:":  # no other process can reach it
            lines += ["", "No users, and none can be added to a store in memory: give a --db or --store."]
        else:
            lines += ["", "No users yet. Create a login for the sign-in page with:", add]
    lines += ["", "Press Ctrl-C to stop."]
    print("\n".join(lines), flush=True)


MCP_ALLOW_HEADERS = ("Authorization", "Content-Type", "Mcp-Session-Id", "MCP-Protocol-Version", "Last-Event-ID")
MCP_EXPOSE_HEADERS = ("WWW-Authenticate", "Mcp-Session-Id", "MCP-Protocol-Version")


def _cross_origin(app: Any) -> Any:
    """``/mcp`` for MCP clients in a browser on another origin (the Fetch standard's CORS): a
    preflight is answered before the guard (it carries no token), and every answer, the guard's
    401/403 challenges included, lets the page read it. Any origin, never credentials: the token
    travels in ``Authorization``, so no cookie of this origin is ever sent or needed (as MD-04
    does for the authorization server's endpoints). Which origins may then call is
    :func:`kavach.origins.require_origin`'s to decide, inside this (so its 403 is readable too)."""
    from starlette.middleware.cors import CORSMiddleware

    return CORSMiddleware(
        app,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=list(MCP_ALLOW_HEADERS),
        expose_headers=list(MCP_EXPOSE_HEADERS),
        max_age=7200,
    )


def build_app(instance: Instance, fetch_policy: Any) -> Any:
    """The Starlette app: the authorization server's paths and, at ``/mcp``, the guarded MCP server,
    fetching client metadata documents under ``fetch_policy`` (:meth:`Settings.fetch_policy`)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Route

    from .origins import OriginPolicy, require_origin
    from .server import AuthorizationServer
    from .starlette import KavachEndpoint, KavachGuard, mount

    settings = instance.settings
    from .fetcher import DocumentFetcher

    fetcher = DocumentFetcher(fetch_policy)
    server = AuthorizationServer(
        instance.config, instance.store, users=instance.users, fetcher=fetcher, login_limits=settings.login_limits()
    )
    startup: list[Callable[[], contextlib.AbstractAsyncContextManager[None]]] = []
    closers: list[Callable[[], Any]] = [fetcher.aclose]
    inner: Any
    if settings.upstream:
        from .proxy import UpstreamProxy

        proxy = UpstreamProxy(settings.upstream)
        inner = proxy
        closers.append(proxy.aclose)
    else:
        from .demo import DemoApp

        demo = DemoApp()
        inner = demo.app
        startup.append(demo.lifespan)
    policy = OriginPolicy(settings.issuer_url, settings.allowed_origins)
    guard = _cross_origin(require_origin(KavachGuard(inner, server, settings.resource_url), policy))

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        import anyio

        async with contextlib.AsyncExitStack() as stack:
            for enter in startup:
                await stack.enter_async_context(enter())
            async with anyio.create_task_group() as tg:
                tg.start_soon(_purge_forever, instance)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
            for close in closers:
                await close()
            aclose = getattr(instance.store, "aclose", None)
            if aclose is not None:  # the event loop's connection pool (PostgreSQL, Redis)
                with contextlib.suppress(Exception):
                    await aclose()

    app = Starlette(routes=[Route(MCP_PATH, guard)], lifespan=lifespan)
    mount(app, server)
    # Every other path is the core's to answer (a JSON 404 or 405), never Starlette's: its
    # trailing-slash redirect builds the Location from the client's Host header.
    app.router.redirect_slashes = False
    app.router.default = KavachEndpoint(server)
    return app


async def _purge_forever(instance: Instance, every: float = 600.0) -> None:
    """Drop expired codes, consents, grants and revocation entries now and then."""
    import anyio

    while True:
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(instance.store.purge, int(time.time()))
        await anyio.sleep(every)


def _quiet_stop_class() -> type[Any]:
    import uvicorn

    class QuietStop(uvicorn.Server):
        """uvicorn's server, except that a stop asked for by Ctrl-C or SIGTERM ends in exit
        status 0 after the graceful shutdown (uvicorn would raise the signal again)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return QuietStop


def _no_conformance_kit(args: argparse.Namespace) -> int:
    raise CliError("the conformance kit (package kavach_conformance) is not installed; reinstall kavachos")


def cmd_conformance(args: argparse.Namespace) -> int:
    from kavach_conformance.cli import run

    return int(run(args))


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    check_issuer(settings)
    fetch_policy = settings.fetch_policy()  # e.g. a CA bundle that cannot be read: refused before anything is written
    settings.login_limits()  # [sign_in] out of range: refused before anything is written too
    sock = listen_socket(settings.host, settings.port)
    try:
        instance = Instance(settings)
    except BaseException:
        sock.close()
        raise
    try:
        try:
            import uvicorn

            from .proxy import redacted_target

            app = build_app(instance, fetch_policy)
            server_class = _quiet_stop_class()
        except ImportError as exc:
            raise CliError(f"kavach serve needs {exc.name or 'its extras'}: pip install 'kavachos[mcp]'") from exc
        config = uvicorn.Config(
            app,
            log_level=settings.log_level,
            lifespan="on",
            timeout_graceful_shutdown=5,
            server_header=False,
            # X-Forwarded-For only from the configured proxies, and then only for the client's
            # address (the per-address limits): every URL comes from the issuer, never a header.
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=forwarded_allow_ips(settings.trusted_proxies),
        )
        access_log = logging.getLogger("uvicorn.access")
        redacting = _RedactedTargets(redacted_target)
        access_log.addFilter(redacting)
        _banner(settings, instance)
        try:
            server_class(config).run(sockets=[sock])
        finally:
            access_log.removeFilter(redacting)
    finally:
        sock.close()
        instance.close()
    return 0


class _RedactedTargets(logging.Filter):
    """uvicorn's access log with the value of every credential in a query redacted
    (:func:`kavach.proxy.redacted_target`): a client sending its token, refresh token, code or
    secret in the URL (which no endpoint reads there) must not leave it in the server's log
    (RFC 6750 §5.3). uvicorn logs the target as its third argument."""

    def __init__(self, redact_target: Callable[[str], str]) -> None:
        super().__init__()
        self.redact_target = redact_target

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str):
            record.args = (*args[:2], self.redact_target(args[2]), *args[3:])
        return True


def forwarded_allow_ips(proxies: Iterable[str]) -> list[str]:
    """uvicorn's ``forwarded_allow_ips`` for the trusted ``proxies`` (checked addresses and
    networks): each IPv4 entry also in its IPv4-mapped IPv6 form (RFC 4291 §2.5.5.2), as a
    dual-stack listener (``--host ::``) sees an IPv4 balancer; uvicorn compares addresses as
    they come, so without it the balancer would not be recognised and every client behind it
    would share one per-address count."""
    out: list[str] = []
    for entry in proxies:
        out.append(entry)
        network = ipaddress.ip_network(entry, strict=False)
        if isinstance(network, ipaddress.IPv4Network):
            mapped = f"::ffff:{network.network_address}"
            out.append(mapped if "/" not in entry else f"{mapped}/{96 + network.prefixlen}")
    return out


# -- entry point ---------------------------------------------------------------------------


def _not_text(words: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """What, among the arguments and the ``KAVACH_*`` variables, is not UTF-8 text (Python
    keeps undecodable bytes as lone surrogates, which no store or URL accepts), or ``None``."""

    def broken(text: str) -> bool:
        return any("\ud800" <= c <= "\udfff" for c in text)

    for word in words:
        if broken(word):
            return f"the argument {word.encode('utf-8', 'surrogateescape')!r}"
    for name, value in environ.items():
        if name.startswith("KAVACH_") and broken(value):
            return f"the environment variable {name}"
    return None


def _reports_elsewhere(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> bool:
    """Whether a command needs no standard output: ``serve`` (its banner is a courtesy) and
    ``conformance --json FILE`` (the report is the file, the verdict the exit status)."""
    return handler is cmd_serve or (handler is cmd_conformance and getattr(args, "json", None) is not None)


def main(argv: Sequence[str] | None = None) -> int:
    # The PostgreSQL pool logs each failed reconnection; a store outage is reported once, as one
    # line (commands) or as 503 answers and the "store unavailable" log line (serve).
    logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())
    parser = build_parser()
    words = sys.argv[1:] if argv is None else list(argv)
    unreadable = _not_text(words, dict(os.environ))
    if unreadable is not None:
        sys.stderr.write(f"{PROG}: error: {unreadable} is not valid UTF-8 text\n")
        return EXIT_BAD_INPUT
    try:
        args, extra = parser.parse_known_args(words)
    except SystemExit:  # argparse wrote --help's or --version's text, or its one-line error
        try:
            if sys.stdout is not None:
                sys.stdout.flush()  # here, so a text that cannot be written fails as any output does
        except OSError as exc:
            return _output_failed(exc)
        raise
    if extra:  # named by the command that was given them, whose --help lists what it takes
        (getattr(args, "parser", None) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    for name in unread_variables(os.environ):
        sys.stderr.write(f"{PROG}: warning: {name} is not a variable kavach reads; it changes nothing\n")
    handler = getattr(args, "handler", None)
    if handler is None:
        group = getattr(args, "group", None)
        (group or parser).print_help(sys.stderr)
        return EXIT_BAD_INPUT
    if sys.stdout is None and not _reports_elsewhere(handler, args):  # closed: what it says would go nowhere
        sys.stderr.write(f"{PROG}: error: standard output is closed, so nothing was done (its report would be lost)\n")
        return EXIT_BAD_INPUT
    try:
        status = int(handler(args))
        if sys.stdout is not None:
            sys.stdout.flush()  # output that cannot be written (a full disk) fails here, handled below
        return status
    except (CliError, SettingsError, InstanceError, StoreUnavailable) as exc:  # a store outage: users' own calls
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_BAD_INPUT
    except _Unreported as exc:  # the change stands: say so, and not as bad input
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        _discard_output()
        return EXIT_NOT_REPORTED
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except OSError as exc:  # the output could not be written
        return _output_failed(exc)


def _discard_output() -> None:
    """Standard output goes to ``/dev/null`` from here on: what is still buffered for a reader that
    left, or a disk that is full, goes nowhere at exit instead of failing a second time under the
    one line that reported the first failure."""
    if sys.stdout is not None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def _output_failed(exc: OSError) -> int:
    """The exit status once standard output could not be written: a reader that went away
    (``| head``) ends the command quietly with the status a shell shows for SIGPIPE; any other
    failure (a full disk, a closed stdout) is one line on stderr, exit status 2."""
    _discard_output()
    if isinstance(exc, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    sys.stderr.write(f"{PROG}: error: cannot write the output: {exc.strerror or exc}\n")
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
