"""The ``kavach`` command, run as real subprocesses of the installed console script (issue 3).

Each command's happy path and its bad input: an unknown flag, an unknown user or client, an
unreadable database, a port in use, a bad issuer, a bad TOML file. Bad input is exactly one line
on stderr and exit status 2, never a traceback. ``kavach serve`` is started on free loopback
ports with temporary databases and always stopped; two of them on one database file agree on
the secret and the keys, so a token one issues works at the other (and so does its refresh
token). Settings precedence: flags over ``KAVACH_*`` over the TOML file over defaults.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import secrets
import select
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx
import pytest
from kavach.settings import SettingsError, resolve
from kavach_serve import Cli, free_port, kavach_command, serve
from mcp_messages import INITIALIZE
from person import Form, Person, forms
from public_client import PASSWORD, REDIRECT_URI, authorization, call_mcp, obtain_code, obtain_tokens, redeem, refresh
from store_records import code, grant

from kavach_core import effects as fx
from kavach_core.records import AuthorizationCode

TIMEOUT = 60


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAVACH_")}
    env.update(extra)
    return env


CLI = Cli(clean_env)
run, ok, bad = CLI.run, CLI.ok, CLI.bad


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "kavach.db")


# -- help and the parser -----------------------------------------------------------------------

COMMANDS = [
    [],
    ["serve"],
    ["users"],
    ["users", "add"],
    ["users", "list"],
    ["users", "remove"],
    ["clients"],
    ["clients", "add"],
    ["clients", "list"],
    ["clients", "show"],
    ["clients", "revoke"],
    ["grants"],
    ["grants", "list"],
    ["grants", "revoke"],
    ["keys"],
    ["keys", "list"],
    ["keys", "rotate"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kavach")
def test_help_everywhere(command: list[str]) -> None:
    out = ok([*command, "--help"])
    assert out.startswith("usage: kavach")


def test_serve_help_names_each_settings_variable() -> None:
    """Every option of ``kavach serve`` has a ``KAVACH_*`` variable too, and its help names one
    that kavach reads: a user who sees the flag learns where else it can be set."""
    import argparse
    import re

    from kavach.cli import build_parser
    from kavach.settings import ENVIRONMENT

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    options = [a for a in serve._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert len(options) > 10
    for action in options:
        named = set(re.findall(r"KAVACH_[A-Z_]+", action.help or ""))
        assert named and named <= ENVIRONMENT, (action.option_strings, action.help)


def test_version() -> None:
    assert ok(["--version"]).startswith("kavach ")


def test_python_m_kavach_is_the_command() -> None:
    """``python -m kavach`` runs the same command as the script: its version, and its one-line refusals."""
    module = [sys.executable, "-m", "kavach"]
    env = clean_env()
    shown = subprocess.run(
        [*module, "--version"], capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False
    )
    assert (shown.returncode, shown.stdout) == (0, ok(["--version"]))
    refused = subprocess.run(
        [*module, "users", "lis"], capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False
    )
    assert refused.returncode == 2 and refused.stderr.startswith("kavach users: error: argument ACTION: invalid")


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["serve", "--bogus"],
        ["users", "list", "--nope"],
        ["keys", "rotate", "-x"],
        ["frobnicate"],
        ["serve", "--port", "http"],
        ["serve", "--port", "70000"],
        ["serve", "--port", "8_000"],
        ["serve", "--port", "\u0661\u0662"],
        ["clients", "add", "--name", "x"],
        ["grants", "revoke"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_flags_are_one_line_and_status_2(args: list[str], db: str) -> None:
    bad([*args], "error")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["users", "add", "bob", "extra"], "kavach users add"),
        (["keys", "rotate", "--port", "80"], "kavach keys rotate"),
        (["serve", "stray"], "kavach serve"),
        (["users", "--bogus"], "kavach users"),
        (["--bogus"], "kavach"),
        (["keys", "list", "--d", "kavach.db"], "kavach keys list"),  # never taken for --db
        (["serve", "--conf", "kavach.toml"], "kavach serve"),  # nor for --config
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else a,
)
def test_an_argument_a_command_does_not_take_is_named_by_that_command(args: list[str], named: str) -> None:
    """The error, and the help it points to, are those of the command given the argument, whose
    --help lists what it takes; before, always the top level's."""
    line = bad(args, "unrecognized arguments")
    assert line.startswith(f"{named}: error: unrecognized arguments: ") and line.endswith(f"(see {named} --help)")


def test_a_group_without_action_shows_its_help() -> None:
    proc = run(["users"])
    assert proc.returncode == 2 and "usage: kavach users" in proc.stderr and "Traceback" not in proc.stderr


# -- users -------------------------------------------------------------------------------------


def test_users_add_list_remove(db: str) -> None:
    # Listing makes no database: a mistyped --db is an error, not a new empty database.
    hint = "(kavach serve, users add, clients add or keys rotate makes one)"  # every command that makes one
    assert bad(["users", "list", "--db", db], "no database at") == f"kavach: error: no database at {db} {hint}"
    assert not Path(db).exists()
    created = ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    assert "created user 'alice'" in created
    ok(["users", "add", "bob", "--db", db, "--password-stdin"], stdin="a second password\n")
    assert ok(["users", "list", "--db", db]).split() == ["alice", "bob"]
    changed = ok(["users", "add", "bob", "--db", db, "--password-stdin"], stdin="a third password\n")
    assert "changed the password" in changed
    assert "removed user 'bob'" in ok(["users", "remove", "bob", "--db", db])
    assert ok(["users", "list", "--db", db]).split() == ["alice"]
    ok(["users", "add", " Zed ", "--db", db, "--password-stdin"], stdin="a fourth password\n")
    assert "removed user 'Zed';" in ok(["users", "remove", " Zed ", "--db", db])  # the name as kept, as add says


def test_users_bad_input(db: str) -> None:
    ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    bad(["users", "remove", "nobody", "--db", db], "no user named 'nobody'")
    bad(["users", "add", "carol", "--db", db, "--password-stdin"], "no password", stdin="")
    bad(["users", "add", "carol", "--db", db], "--password-stdin", stdin="")  # no terminal to prompt on
    bad(["users", "add", "   ", "--db", db, "--password-stdin"], "username", stdin="pw\n")
    bad(
        ["users", "add", "carol", "--db", db, "--password-stdin"],
        "cannot contain the NUL",
        stdin="a password with\x00a NUL in it\n",
    )
    assert "carol" not in ok(["users", "list", "--db", db])


def _with_terminal(args: Sequence[str], answers: Sequence[tuple[str, str]]) -> tuple[int, str]:
    """Run ``kavach`` with a pseudo-terminal as stdin (``getpass`` reads it), typing each answer
    once its prompt has appeared on stderr (``getpass`` flushes what was typed earlier)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [*kavach_command(), *args],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        start_new_session=True,
    )
    os.close(terminal)
    seen = b""
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + TIMEOUT
        for prompt, answer in answers:
            while prompt.encode() not in seen:
                ready, _, _ = select.select([proc.stderr], [], [], 1.0)
                if ready:
                    chunk = os.read(proc.stderr.fileno(), 4096)
                    if not chunk:
                        break
                    seen += chunk
                assert time.monotonic() < deadline, f"no prompt {prompt!r}: {seen!r}"
            seen = seen.replace(prompt.encode(), b"<asked>", 1)
            time.sleep(0.2)
            os.write(controller, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=TIMEOUT)
        return proc.returncode, (seen + out + err).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(controller)


def test_users_add_prompts_twice_for_the_password(db: str) -> None:
    code, output = _with_terminal(
        ["users", "add", "dave", "--db", db], [("Password: ", PASSWORD), ("(again): ", PASSWORD)]
    )
    assert code == 0, output
    assert output.count("<asked>") == 2
    assert ok(["users", "list", "--db", db]).split() == ["dave"]
    code, output = _with_terminal(
        ["users", "add", "erin", "--db", db], [("Password: ", PASSWORD), ("(again): ", "something else")]
    )
    assert code == 2 and "do not match" in output and "Traceback" not in output


# -- clients -----------------------------------------------------------------------------------


def _client_id(output: str) -> str:
    return output.split("client_id:")[1].split()[0]


def test_clients_add_list_show_revoke(db: str) -> None:
    public = ok(
        [
            "clients",
            "add",
            "--db",
            db,
            "--name",
            "Desktop app",
            "--redirect-uri",
            REDIRECT_URI,
            "--redirect-uri",
            "http://[::1]:7000/cb",
        ]
    )
    assert "client_secret" not in public
    public_id = _client_id(public)
    confidential = run(
        [
            "clients",
            "add",
            "--db",
            db,
            "--name",
            "Web app",
            "--confidential",
            "--redirect-uri",
            "https://app.example.com/cb",
            "--scope",
            "tools:list",
        ],
        env=clean_env(),
    )
    assert confidential.returncode == 0, confidential.stderr
    secret = confidential.stdout.split("client_secret:")[1].split()[0]
    assert len(secret) >= 43 and "shown only now" in confidential.stderr
    web_id = _client_id(confidential.stdout)

    listing = ok(["clients", "list", "--db", db])
    assert public_id in listing and web_id in listing and "static" in listing and "client_secret_basic" in listing

    shown = json.loads(ok(["clients", "show", web_id, "--db", db]))
    assert shown["client_name"] == "Web app"
    assert shown["redirect_uris"] == ["https://app.example.com/cb"]
    assert shown["token_endpoint_auth_method"] == "client_secret_basic"
    assert shown["scope"] == "tools:list" and shown["kind"] == "static"
    assert secret not in json.dumps(shown) and "secret_hash" not in shown

    assert "deleted client" in ok(["clients", "revoke", public_id, "--db", db])
    assert public_id not in ok(["clients", "list", "--db", db])


def test_clients_bad_input(db: str) -> None:
    bad(["clients", "show", "nope", "--db", db], "no database at")
    bad(
        ["clients", "add", "--db", db, "--name", "x", "--redirect-uri", "http://example.com/cb"], "invalid_redirect_uri"
    )
    assert not Path(db).exists(), "a refused client is checked before the database is made"
    ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    bad(["clients", "show", "nope", "--db", db], "no client with id 'nope'")
    bad(["clients", "revoke", "nope", "--db", db], "no client with id 'nope'")
    bad(
        ["clients", "add", "--db", db, "--name", "x", "--redirect-uri", "http://example.com/cb"], "invalid_redirect_uri"
    )
    bad(
        ["clients", "add", "--db", db, "--name", "x", "--redirect-uri", "https://ok.example/cb#frag"],
        "invalid_redirect_uri",
    )
    bad(
        ["clients", "add", "--db", db, "--name", "x", "--redirect-uri", REDIRECT_URI, "--scope", "not:offered"], "scope"
    )


# -- keys --------------------------------------------------------------------------------------


def test_keys_list_and_rotate(db: str) -> None:
    bad(["keys", "list", "--db", db], "no database at")
    ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    assert "no signing keys" in run(["keys", "list", "--db", db]).stderr
    first = ok(["keys", "rotate", "--db", db]).split("key ")[1].split()[0]
    second = ok(["keys", "rotate", "--db", db]).split("key ")[1].split()[0]
    assert first != second
    rows = {line.split()[0]: line.split()[-1] for line in ok(["keys", "list", "--db", db]).splitlines()[1:]}
    assert rows == {second: "active", first: "published"}


def test_keys_list_shows_a_time_no_date_can_show_as_its_number(db: str) -> None:
    """A stored time beyond any calendar date (a damaged row) is listed as its number, the rest
    of the listing as usual; before, a traceback."""
    import sqlite3

    kid = ok(["keys", "rotate", "--db", db]).split("key ")[1].split()[0]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE signing_keys SET publish_until = 253402300800")
    conn.close()
    listing = ok(["keys", "list", "--db", db])
    assert kid in listing and "253402300800 (not a date)" in listing and "Traceback" not in listing


def test_keys_list_marks_the_key_signing_now_of_every_algorithm(db: str) -> None:
    """``kavach keys list`` is run without the servers' settings: the key of a deployment signing
    with RS256 is active (it was shown merely published, judged by the command's own ES256), and
    while instances differ in signing_alg (a rolling change), each algorithm's signing key is."""
    from kavach.instance import Instance

    from kavach_core import keys

    made = ok(["keys", "rotate", "--db", db], env=clean_env(KAVACH_SIGNING_ALG="RS256"))
    rs256 = made.split("key ")[1].split()[0]
    rows = {line.split()[0]: line.split()[-1] for line in ok(["keys", "list", "--db", db]).splitlines()[1:]}
    assert rows == {rs256: "active"}
    instance = Instance(resolve({"db": db}, {}))  # an ES256 instance starts a key of its own beside it
    try:
        es256 = instance.run(keys.current(instance.context())).active(int(time.time()), "ES256")
    finally:
        instance.close()
    rows = {line.split()[0]: line.split()[-1] for line in ok(["keys", "list", "--db", db]).splitlines()[1:]}
    assert rows == {rs256: "active", es256.kid: "active"}


def _key_algs(db: str) -> dict[str, tuple[str, str]]:
    """``kid -> (alg, state)`` of every key ``kavach keys list`` shows."""
    lines = ok(["keys", "list", "--db", db]).splitlines()[1:]
    return {line.split()[0]: (line.split()[1], line.split()[-1]) for line in lines}


def test_keys_rotate_without_signing_alg_rotates_the_algorithms_signing_now(db: str) -> None:
    """A plain ``kavach keys rotate`` (no signing_alg given) on a deployment signing with RS256
    starts a new RS256 key, not one of the command's default ES256 that no server signs with;
    during a rolling change it starts one of each algorithm signing. Given ``signing_alg``, it
    starts that algorithm's alone, withdrawing the others from signing."""
    ok(["keys", "rotate", "--db", db], env=clean_env(KAVACH_SIGNING_ALG="RS256"))
    said = ok(["keys", "rotate", "--db", db])
    assert "(RS256)" in said and "ES256" not in said
    active = {alg for alg, state in _key_algs(db).values() if state == "active"}
    assert active == {"RS256"}
    ok(["keys", "rotate", "--db", db], env=clean_env(KAVACH_SIGNING_ALG="EdDSA"))
    assert {alg for alg, state in _key_algs(db).values() if state == "active"} == {"EdDSA"}


def test_keys_rotate_without_the_servers_lifetime_keeps_its_tokens_keys_published(db: str) -> None:
    """The server's keys are made for hour-long tokens; ``kavach keys rotate`` run without its
    settings (600 s by default) still keeps the retired key published until such a token,
    signed just before, expires, and the new key is made for hour-long tokens too."""
    from kavach.stores import SQLiteStore

    from kavach_core import keys

    ok(["keys", "rotate", "--db", db], env=clean_env(KAVACH_ACCESS_TOKEN_LIFETIME="3600"))
    store = SQLiteStore(db)
    (made,) = store.perform(fx.GetSigningKeys())
    store.close()
    assert keys.token_lifetime(made) == 3600
    before = int(time.time())
    ok(["keys", "rotate", "--db", db])
    store = SQLiteStore(db)
    stored = {k.kid: k for k in store.perform(fx.GetSigningKeys())}
    store.close()
    retired = stored.pop(made.kid)
    assert retired.publish_until >= before + 3600 + keys.PUBLISH_MARGIN
    (fresh,) = stored.values()
    assert keys.token_lifetime(fresh) == 3600


# -- the database ------------------------------------------------------------------------------


def test_unreadable_database_is_one_line(tmp_path: Path) -> None:
    bad(["users", "list", "--db", str(tmp_path / "missing" / "kavach.db")], "no database at")
    bad(
        ["users", "add", "x", "--db", str(tmp_path / "missing" / "kavach.db"), "--password-stdin"],
        "does not exist",
        stdin=PASSWORD + "\n",
    )
    bad(["keys", "list", "--db", str(tmp_path)], "is a directory")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    bad(["clients", "list", "--db", str(garbage)], "garbage.db")
    bad(["serve", "--port", str(free_port()), "--db", str(garbage)], "garbage.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="file permissions do not bind root")
def test_database_without_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked.db"
    ok(["keys", "rotate", "--db", str(locked)])
    locked.chmod(0)
    try:
        bad(["users", "list", "--db", str(locked)], "locked.db")
    finally:
        locked.chmod(0o600)


def test_server_secret_is_made_once_and_kept(db: str) -> None:
    import sqlite3

    ok(["keys", "rotate", "--db", db])
    ok(["users", "list", "--db", db])
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT value FROM kavach_settings WHERE name = 'secret'").fetchall()
    finally:
        con.close()
    assert len(rows) == 1 and len(rows[0][0]) >= 32


# -- settings ----------------------------------------------------------------------------------


def test_settings_precedence_flags_env_toml_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "k.toml"
    toml.write_text(
        'port = 7001\nissuer = "https://toml.example"\ndb = "data/k.db"\nlog_level = "debug"\n'
        "[lifetimes]\naccess_token = 120\ncode = 30\n"
    )
    defaults = resolve({}, {})
    assert (defaults.port, defaults.issuer_url, defaults.db) == (8000, "http://127.0.0.1:8000", "kavach.db")
    from_toml = resolve({"config": str(toml)}, {})
    assert (from_toml.port, from_toml.issuer_url, from_toml.log_level) == (7001, "https://toml.example", "debug")
    assert from_toml.db == str(tmp_path / "data" / "k.db"), "a relative db is relative to the TOML file"
    assert from_toml.lifetimes_config().access_token == 120
    env = {"KAVACH_CONFIG": str(toml), "KAVACH_PORT": "7002", "KAVACH_ACCESS_TOKEN_LIFETIME": "5"}
    from_env = resolve({}, env)
    assert (from_env.port, from_env.issuer_url) == (7002, "https://toml.example")
    assert from_env.lifetimes_config().access_token == 5 and from_env.lifetimes_config().code == 30
    flagged = resolve({"port": 7003, "issuer": "https://flag.example", "db": None}, env)
    assert (flagged.port, flagged.issuer_url, flagged.resource_url) == (
        7003,
        "https://flag.example",
        "https://flag.example/mcp",
    )


@pytest.mark.parametrize(
    ("toml", "expect"),
    [
        ("port = [", "not valid TOML"),
        ("prot = 1", "unknown setting 'prot'"),
        ('port = "x"', "whole number"),
        ("[lifetimes]\nforever = 1", "unknown lifetime"),
        ("[resource]\nscopes = 3", "resource.scopes"),
        ("\ufeffport = 8000", "byte-order mark"),
        ("a = " + "[" * 1000 + "]" * 1000, "nested too deeply"),
        ("a = " + "{b = " * 3000 + "1" + "}" * 3000, "nested too deeply"),
    ],
)
def test_bad_toml_is_one_line(tmp_path: Path, toml: str, expect: str) -> None:
    path = tmp_path / "k.toml"
    path.write_text(toml)
    with pytest.raises(SettingsError, match="config file"):
        resolve({"config": str(path)}, {})
    bad(["keys", "list", "--config", str(path), "--db", str(tmp_path / "k.db")], expect)


def test_bytes_that_are_not_utf8_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    """A name, URI or path the shell passes as raw bytes (not UTF-8) is refused before anything
    runs: the stores cannot keep it, and a redirect URI holding it could never be matched."""
    db = str(tmp_path / "k.db")
    junk = "bad\udcff"  # how Python hands over the byte 0xff; subprocess sends it back as 0xff
    bad(["users", "add", junk, "--db", db, "--password-stdin"], "b'bad\\xff' is not valid UTF-8", stdin="pw\n")
    bad(["clients", "add", "--name", "x", "--redirect-uri", f"https://example.com/{junk}", "--db", db], "UTF-8")
    bad(["grants", "revoke", "--subject", junk, "--db", db], "UTF-8")
    bad(["keys", "list", "--db", db], "KAVACH_ISSUER is not valid UTF-8", env=clean_env(KAVACH_ISSUER=junk))
    assert not Path(db).exists()


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    bad(["users", "list", "--config", str(tmp_path / "nope.toml"), "--db", db], "does not exist")
    bad(["keys", "list", "--db", db], "whole number", env=clean_env(KAVACH_PORT="eighty"))
    bad(["keys", "list", "--db", db], "access_token", env=clean_env(KAVACH_ACCESS_TOKEN_LIFETIME="0"))
    toml = tmp_path / "scopes.toml"
    toml.write_text('[resource]\ndefault_scopes = ["tools:write"]\n')
    bad(["keys", "list", "--db", db, "--config", str(toml)], "default scope 'tools:write'")


# -- serve: bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "expect"),
    [
        ("http://example.com", "--allow-insecure-http"),
        ("not a url", "issuer"),
        ("https://example.com/", "trailing"),
        ("ftp://example.com", "https"),
        ("https://example.com?x=1", "query"),
        ("http://127.0.0.1:8000/t%7e1", "without percent-escapes"),
        ("http://127.0.0.1:8000/\u00e9", "percent-escapes"),
    ],
)
def test_gn_01_serve_refuses_a_bad_issuer(issuer: str, expect: str, db: str) -> None:
    bad(["serve", "--port", str(free_port()), "--db", db, "--issuer", issuer], expect)
    assert not Path(db).exists(), "nothing is written before the settings are accepted"


def test_serve_refuses_a_port_in_use(db: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        bad(["serve", "--port", str(port), "--db", db], f"port {port} on 127.0.0.1 is already in use")


def test_serve_refuses_a_bad_upstream(db: str) -> None:
    bad(["serve", "--port", str(free_port()), "--db", db, "--upstream", "ftp://x/mcp"], "upstream")


@pytest.mark.parametrize(
    "upstream",
    [
        "http://127.0.0.1:1/m\tcp",
        "http://127.0.0.1:1/m\ncp",
        "http://a b/mcp",
        "http://%zz/mcp",
        "http://127.0.0.1:1/caf\u00e9",
    ],
)
def test_serve_refuses_an_upstream_no_request_could_be_sent_to(upstream: str, db: str) -> None:
    """Accepted before, each started the server and then failed every proxied request with a 500."""
    bad(["serve", "--port", str(free_port()), "--db", db, "--upstream", upstream], "upstream")
    assert not Path(db).exists()


def test_store_passwords_in_the_query_are_hidden_from_messages() -> None:
    proc = run(
        ["users", "list", "--store", f"postgresql://127.0.0.1:{free_port()}/test?password=hunter2"],
        env=clean_env(KAVACH_STORE_KEY=base64.urlsafe_b64encode(b"k" * 32).decode()),
    )
    assert proc.returncode == 2 and "password=***" in proc.stderr and "hunter2" not in proc.stderr, proc.stderr


def test_serve_refuses_a_ca_bundle_it_cannot_use(tmp_path: Path, db: str) -> None:
    not_pem = tmp_path / "not-a-bundle.pem"
    not_pem.write_text("hello\n")
    bad(["serve", "--port", str(free_port()), "--db", db, "--document-ca-bundle", str(not_pem)], "no readable PEM")
    missing = str(tmp_path / "missing.pem")
    env = clean_env(KAVACH_DOCUMENT_CA_BUNDLE=missing)
    bad(["serve", "--port", str(free_port()), "--db", db], f"ca_bundle '{missing}' cannot be read", env=env)
    assert not Path(db).exists(), "nothing is written before the settings are accepted"


# -- serve: running ----------------------------------------------------------------------------


def test_serve_prints_where_to_connect_and_how_to_log_in() -> None:
    with serve() as served:
        banner = served.output()
        assert f"{served.mcp_url}" in banner
        assert f"Issuer (authorization server):               {served.issuer}" in banner
        assert served.db in banner
        assert "kavach users add NAME" in banner
        meta = httpx.get(f"{served.issuer}/.well-known/oauth-authorization-server", timeout=10).json()
        assert meta["issuer"] == served.issuer
        prm = httpx.get(f"{served.issuer}/.well-known/oauth-protected-resource/mcp", timeout=10).json()
        assert prm["resource"] == served.mcp_url and prm["authorization_servers"] == [served.issuer]
        challenge = httpx.post(served.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10)
        assert challenge.status_code == 401
        assert "resource_metadata=" in challenge.headers["www-authenticate"]
        # An MCP client in a browser page on another origin: the preflight passes (no token in
        # it), and the 401 challenge is readable there
        preflight = httpx.options(
            served.mcp_url,
            timeout=10,
            headers={
                "Origin": "https://inspector.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, mcp-session-id",
            },
        )
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in preflight.headers
        seen = httpx.post(
            served.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            timeout=10,
            headers={"Origin": "http://localhost:6274"},
        )  # an inspector on loopback: allowed
        assert seen.status_code == 401 and seen.headers["access-control-allow-origin"] == "*"
        assert "www-authenticate" in seen.headers["access-control-expose-headers"].lower()
        foreign = httpx.post(
            served.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            timeout=10,
            headers={"Origin": "https://inspector.example"},
        )  # not allowed: a readable 403
        assert foreign.status_code == 403 and foreign.headers["access-control-allow-origin"] == "*"
        assert foreign.json()["error"] == "origin_not_allowed"
        # Any other path is the server's own JSON 404: no redirect (built from a Host header)
        for method, path in (("POST", "/token/"), ("POST", "/mcp/"), ("GET", "/MCP"), ("GET", "//mcp")):
            other = httpx.request(method, served.issuer + path, headers={"Host": "evil.example"}, timeout=10)
            assert other.status_code == 404 and "location" not in other.headers, (path, other.headers)
            assert other.json() == {"error": "not_found"}


def test_serve_keeps_tokens_sent_in_the_url_out_of_its_access_log() -> None:
    """A client sending its token in the query (which no guard reads, RFC 6750 §2.3), or a refresh
    token and secret to the token endpoint (which reads only its form), leaves ``[redacted]`` in
    ``kavach serve``'s access log, however the parameter is spelt, and the rest of the line as it
    was (RFC 6750 §5.3, RFC 6749 §10.3, §10.5). Before, the whole token was logged."""
    with serve() as served:
        secrets_sent = ["SECRETONE", "SECRETTWO", "SECRETTHREE", "SECRETFOUR", "SECRETFIVE"]
        for query in ("access_token=SECRETONE&x=1", "x=2;ACCESS.TOKEN=SECRETTWO", "access%5Ftoken=SECRETTHREE&y=3"):
            answer = httpx.post(
                f"{served.mcp_url}?{query}", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10
            )
            assert answer.status_code == 401
        token_url = served.mcp_url.removesuffix("/mcp") + "/token"
        refused = httpx.get(f"{token_url}?grant_type=refresh_token&refresh_token=SECRETFOUR&client_secret=SECRETFIVE")
        assert refused.status_code == 405
        deadline = time.monotonic() + 10  # the hang guard: the log is written as each request ends
        while served.output().count("[redacted]") < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        log = served.output()
        assert not [secret for secret in secrets_sent if secret in log], log
        assert '"POST /mcp?access_token=[redacted]&x=1 HTTP/1.1" 401' in log, log
        assert "/mcp?x=2;ACCESS.TOKEN=[redacted] " in log and "/mcp?access%5Ftoken=[redacted]&y=3 " in log, log
        assert '"GET /token?grant_type=refresh_token&refresh_token=[redacted]&client_secret=[redacted] ' in log, log


def test_serve_with_a_user_does_not_ask_for_one(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    with serve(extra_args=["--db", db]) as served:
        assert "users add" not in served.output()


def test_serve_allows_an_insecure_issuer_only_when_forced() -> None:
    port = free_port()
    issuer = f"http://kavach.test:{port}"
    with serve(extra_args=["--issuer", issuer, "--allow-insecure-http"]) as served:
        # The runner probes its own port; the served issuer is the forced one.
        meta = httpx.get(f"http://127.0.0.1:{served.port}/.well-known/oauth-authorization-server", timeout=10)
        assert meta.json()["issuer"] == issuer


def test_serve_precedence_flag_over_env_over_toml(tmp_path: Path) -> None:
    """TOML says one issuer, ``KAVACH_ISSUER`` another: the environment wins; a flag beats both."""
    toml = 'issuer = "http://127.0.0.1:1"\n[lifetimes]\naccess_token = 77\n'
    with serve(config_toml=toml, extra_env={"KAVACH_ISSUER": "http://127.0.0.1:2"}) as served:
        meta = httpx.get(f"{served.issuer}/.well-known/oauth-authorization-server", timeout=10).json()
        assert meta["issuer"] == "http://127.0.0.1:2"
    with serve(
        config_toml=toml,
        extra_env={"KAVACH_ISSUER": "http://127.0.0.1:2"},
        extra_args=["--issuer", "http://localhost:3"],
    ) as served:
        meta = httpx.get(f"{served.issuer}/.well-known/oauth-authorization-server", timeout=10).json()
        assert meta["issuer"] == "http://localhost:3"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_cleanly(sig: signal.Signals) -> None:
    with serve() as served:
        served.proc.send_signal(sig)
        assert served.proc.wait(timeout=20) == 0
        assert "Traceback" not in served.output()


# -- a token end to end, grants, two processes on one database ---------------------------------


@pytest.fixture
def shared_db(tmp_path: Path) -> Iterator[str]:
    db = str(tmp_path / "shared.db")
    ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    yield db


def test_grants_list_and_revoke_end_to_end(shared_db: str) -> None:
    with serve(extra_args=["--db", shared_db]) as served:
        tokens = obtain_tokens(served.issuer, served.mcp_url)
        assert call_mcp(served.mcp_url, tokens["access_token"]).status_code == 200
        listing = ok(["grants", "list", "--db", shared_db, "--subject", " alice"])  # a username as typed
        assert "alice" in listing and tokens["client_id"] in listing and "active" in listing
        assert "no grants" in run(["grants", "list", "--db", shared_db, "--subject", "bob"]).stderr
        bad(["grants", "revoke", "--db", shared_db, "--grant", "nope"], "no grant with id 'nope'")
        assert "revoked 1 grant" in ok(["grants", "revoke", "--db", shared_db, "--subject", "alice "])
        assert "revoked" in ok(["grants", "list", "--db", shared_db])
        assert call_mcp(served.mcp_url, tokens["access_token"]).status_code == 401
        assert refresh(served.issuer, tokens, served.mcp_url).json()["error"] == "invalid_grant"


def test_serve_checks_the_origin_of_browser_pages_and_no_host(shared_db: str) -> None:
    """MCP 2025-11-25 transports, "Security Warning": an ``Origin`` present and not allowed is
    refused 403 (readable by the page: CORS answers every origin); the issuer's own, loopback ones
    and those of ``--allowed-origins`` pass, as does a request without one. ``Host`` is not
    checked: a proxy in front sends its own."""
    allowed = "https://inspector.example"
    with serve(extra_args=["--db", shared_db, "--allowed-origins", allowed + "/"]) as served:
        assert f"Browser pages may call /mcp also from:       {allowed}" in served.output()
        token = obtain_tokens(served.issuer, served.mcp_url)["access_token"]

        def call(**headers: str) -> httpx.Response:
            return httpx.post(
                served.mcp_url,
                timeout=10,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json, text/event-stream",
                    **headers,
                },
                json=INITIALIZE,
            )

        for origin in (
            allowed,
            "HTTPS://Inspector.Example:443",
            "http://localhost:5173",
            "http://127.0.0.1:1",
            served.issuer,
        ):
            assert call(Origin=origin).status_code == 200, origin
        assert call().status_code == 200, "no Origin: not a page"
        for origin in ("https://evil.example", "https://inspector.example.evil", "null", "http://127.attacker.example"):
            refused = call(Origin=origin)
            assert refused.status_code == 403 and refused.json()["error"] == "origin_not_allowed", origin
            assert refused.headers["access-control-allow-origin"] == "*"
        assert call(Host="10.0.0.7:8000").status_code == 200, "a proxy's own Host is served all the same"


def test_users_remove_revokes_their_grants(shared_db: str) -> None:
    with serve(extra_args=["--db", shared_db]) as served:
        tokens = obtain_tokens(served.issuer, served.mcp_url)
        assert "revoked 1 grant" in ok(["users", "remove", "alice", "--db", shared_db])
        assert call_mcp(served.mcp_url, tokens["access_token"]).status_code == 401


@pytest.mark.parametrize(
    "revoke", [["users", "remove", "alice"], ["grants", "revoke", "--subject", "alice"]], ids=lambda a: " ".join(a)
)
def test_a_code_issued_before_the_revocation_is_refused_after_it(shared_db: str, revoke: list[str]) -> None:
    """A code the user's client got, but had not redeemed, when the operator removed the user or
    revoked their grants: redeeming it is ``invalid_grant`` and leaves no grant behind."""
    with serve(extra_args=["--db", shared_db]) as served:
        tokens = obtain_tokens(served.issuer, served.mcp_url)
        issued = obtain_code(served.issuer, served.mcp_url)
        assert "revoked 1 grant" in ok([*revoke, "--db", shared_db])  # the redeemed one: the code has none yet
        answer = redeem(served.issuer, served.mcp_url, issued)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "invalid_grant"
        listing = ok(["grants", "list", "--db", shared_db]).splitlines()
        assert len(listing) == 2 and tokens["client_id"] in listing[1] and "revoked" in listing[1]


def _code_for(subject: str, issued_at: int, grant_id: str | None = None) -> AuthorizationCode:
    """A live code of ``subject``, for a grant of its own unless ``grant_id`` names one."""
    grant_id = grant_id or secrets.token_hex(8)
    return code(secrets.token_hex(16), grant_id, subject=subject, issued_at=issued_at, expires_at=issued_at + 60)


def test_users_remove_revokes_again_once_the_user_is_gone(shared_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An approval whose session was checked before the removal may store its code after the
    first revocation: the revocation run once the account is gone drops that code (an approval
    storing its code later still finds the session ended, and sends none: the server's tests)."""
    from kavach import cli
    from kavach.stores.sqlite import SQLiteStore
    from kavach.users import Users

    late = _code_for("alice", int(time.time()))
    remove = Users.remove

    def racing(self: Users, username: str) -> bool:  # the approval's code lands just before the removal
        with SQLiteStore(shared_db) as store:
            store.perform(fx.PutCode(late))
        return remove(self, username)

    monkeypatch.setattr(Users, "remove", racing)
    assert cli.main(["users", "remove", "alice", "--db", shared_db]) == 0
    with SQLiteStore(shared_db) as store:
        assert store.perform(fx.GetCode(late.code_hash)) is None
    assert "alice" not in ok(["users", "list", "--db", shared_db])


def test_users_remove_says_what_to_run_when_the_last_revocation_fails(
    shared_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kavach import cli
    from kavach.instance import InstanceError

    calls: list[str] = []
    revoke = cli._revoke_subject

    def failing_second(instance: Any, subject: str) -> int:
        calls.append(subject)
        if len(calls) == 2:
            raise InstanceError("the store is unavailable")
        return revoke(instance, subject)

    monkeypatch.setattr(cli, "_revoke_subject", failing_second)
    assert cli.main(["users", "remove", "alice", "--db", shared_db]) == 2
    err = capsys.readouterr().err
    assert "removed user 'alice', but revoking" in err and "the store is unavailable" in err
    assert f"grants revoke --subject alice --db {os.path.abspath(shared_db)}" in err
    assert "alice" not in ok(["users", "list", "--db", shared_db])
    monkeypatch.undo()
    assert "revoked 0 grants" in ok(["grants", "revoke", "--subject", "alice", "--db", shared_db])


def _sign_in_to_a_new_authorization(person: Person, issuer: str, mcp_url: str) -> httpx.Response:
    """Open a new authorization and submit its sign-in form with the person's password: the page
    shown after (the consent form when signed in). Under an http issuer every authorization signs in."""
    page = person.http.get(authorization(issuer, mcp_url)[2])
    sign_in = next(f for f in forms(page.text) if f.method == "post")
    assert "password" in sign_in.names, "a new authorization signs in under http"
    fields = [(k, v) for k, v in sign_in.fields if k not in ("username", "password")]
    answer = person.http.post(
        f"{issuer}{sign_in.action}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        content=urlencode([*fields, ("username", person.username), ("password", person.password)]),
    )
    assert answer.status_code == 303, answer.text
    return person.http.get(urljoin(issuer, answer.headers["location"]))


def test_users_remove_and_a_new_password_sign_the_browser_out(shared_db: str) -> None:
    """``kavach users remove`` and ``kavach users add`` over a name, run while ``kavach serve`` is
    up, end the sign-in sessions made before: the consent form on screen cannot approve any more,
    and adding a removed name back revives nothing. (Under this http issuer a session serves the
    one authorization it signed in for, so each round signs in afresh.)"""

    def consent_form(person: Person) -> Form:
        shown = _sign_in_to_a_new_authorization(person, served.issuer, served.mcp_url)
        assert "Signed in as" in shown.text, shown.text
        return next(f for f in forms(shown.text) if f.method == "post")

    def approves(person: Person, consent: Form) -> bool:
        answer = person.http.post(
            f"{served.issuer}{consent.action}",
            content=urlencode([*consent.fields, ("decision", "approve")]),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 303, answer.text
        return "code=" in answer.headers["location"]

    with serve(extra_args=["--db", shared_db]) as served, Person("alice", PASSWORD) as person:
        assert approves(person, consent_form(person))

        consent = consent_form(person)
        ok(["users", "add", "alice", "--db", shared_db, "--password-stdin"], stdin="a newer password\n")
        assert not approves(person, consent), "a new password ends the session made with the old one"
        person.password = "a newer password"
        assert approves(person, consent_form(person))

        consent = consent_form(person)
        ok(["users", "remove", "alice", "--db", shared_db])
        assert not approves(person, consent), "removing the user ends their session"
        refused = _sign_in_to_a_new_authorization(person, served.issuer, served.mcp_url)
        assert "Signed in as" not in refused.text, "a removed user cannot sign in"
        ok(["users", "add", "alice", "--db", shared_db, "--password-stdin"], stdin="a newer password\n")
        assert not approves(person, consent), "the same name and password: still a new account"


def test_two_serve_processes_on_one_database(shared_db: str) -> None:
    """Two processes behind one issuer share the database: a token and a refresh token issued by
    one work at the other (one secret, one key set), and a rotation at one is seen by both."""
    with serve(extra_args=["--db", shared_db]) as first:
        issuer = first.issuer
        with serve(extra_args=["--db", shared_db, "--issuer", issuer]) as second:
            second_mcp = f"http://127.0.0.1:{second.port}/mcp"
            second_as = f"http://127.0.0.1:{second.port}"
            tokens = obtain_tokens(issuer, first.mcp_url)
            assert call_mcp(second_mcp, tokens["access_token"]).status_code == 200
            rotated = refresh(second_as, tokens, first.mcp_url)
            assert rotated.status_code == 200, rotated.text
            fresh = rotated.json()
            assert call_mcp(first.mcp_url, fresh["access_token"]).status_code == 200
            again = refresh(issuer, {**tokens, **fresh}, first.mcp_url)
            assert again.status_code == 200, again.text
            assert call_mcp(second_mcp, again.json()["access_token"]).status_code == 200
            jwks_first = httpx.get(f"{issuer}/jwks.json", timeout=10).json()
            jwks_second = httpx.get(f"{second_as}/jwks.json", timeout=10).json()
            assert jwks_first == jwks_second and jwks_first["keys"]


@pytest.mark.parametrize(
    ("argv0", "shown"),
    [
        (".venv/bin/kavach", ".venv/bin/kavach"),
        ("/opt/x/bin/kavach", "/opt/x/bin/kavach"),
        ("kavach", "kavach"),
        ("/usr/lib/python3/runpy.py", "kavach"),
    ],
)
def test_hints_name_the_command_as_it_was_started(monkeypatch: pytest.MonkeyPatch, argv0: str, shown: str) -> None:
    """The "users add" hint must run as printed: from the README's `.venv/bin/kavach serve`, a bare
    `kavach` is not on the PATH (the environment is not activated)."""
    from kavach import cli

    monkeypatch.setattr(sys, "argv", [argv0, "serve"])
    assert cli._command() == shown


def test_ctrl_d_at_the_password_prompt_is_one_line(db: str) -> None:
    code, output = _with_terminal(["users", "add", "fay", "--db", db], [("Password: ", "\x04")])
    assert code == 2 and "no password given" in output and "Traceback" not in output, output


@pytest.mark.parametrize("encoding", ["utf-8:strict", "utf-8:surrogateescape"])
def test_a_password_that_is_not_utf8_is_one_line(db: str, encoding: str) -> None:
    """Under a strict UTF-8 locale stdin cannot decode the bytes; under C.UTF-8 they arrive as lone
    surrogates: either way one line naming the problem, and no user."""
    proc = subprocess.run(
        [*kavach_command(), "users", "add", "gil", "--db", db, "--password-stdin"],
        input=b"\xff\xfe\n",
        capture_output=True,
        env=clean_env(PYTHONIOENCODING=encoding),
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "the password is not valid UTF-8 text" in err and "Traceback" not in err, err
    assert not Path(db).exists(), "the password is read before the database is made"


def test_output_to_a_reader_that_left_is_no_traceback(db: str) -> None:
    """``kavach ... | head -0``: the reader is gone before the first write; the command stops quietly
    with the shell's status for a broken pipe."""
    for name in ("alice", "bob"):
        ok(["users", "add", name, "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    command = " ".join(f"'{part}'" for part in [*kavach_command(), "users", "list", "--db", db])
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; sleep 0 | {command} | head -c0"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141), proc.returncode


def test_users_remove_revokes_before_it_removes(db: str) -> None:
    """If the store fails between the two steps the user must still be there, so the same command
    can be run again: a failed revocation leaves the user, never a removed user with live grants."""
    ok(["users", "add", "hal", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    _put_grant(db, "g1", "hal")
    with sqlite3.connect(db) as conn:  # grants can no longer be revoked
        conn.execute("CREATE TRIGGER no_revoke BEFORE UPDATE ON grants BEGIN SELECT RAISE(ABORT, 'down'); END")
    conn.close()
    run(["users", "remove", "hal", "--db", db])
    assert "hal" in ok(["users", "list", "--db", db])


def test_clients_add_refuses_an_empty_name_or_scope(db: str) -> None:
    """An empty --scope registered a client with no scope limit, the opposite of what it says."""
    bad(["clients", "add", "--db", db, "--name", "x", "--redirect-uri", REDIRECT_URI, "--scope", ""], "--scope")
    bad(["clients", "add", "--db", db, "--name", "", "--redirect-uri", REDIRECT_URI], "--name")
    assert not Path(db).exists()


def test_clients_add_is_not_held_to_the_self_registration_allowlist(db: str, tmp_path: Path) -> None:
    """``[registration] allowed_redirect_hosts`` limits who registers themselves (RG-03); the
    operator's own ``kavach clients add`` may add a native app (a private-use scheme) or a
    partner's host beside it. Every other redirect URI rule still holds for it."""
    toml = tmp_path / "kavach.toml"
    toml.write_text('[registration]\nallowed_redirect_hosts = ["app.example.com"]\n')
    env = clean_env(KAVACH_CONFIG=str(toml))
    for uri in ("com.example.desktop:/cb", "https://partner.example.net/cb", "https://app.example.com/cb"):
        ok(["clients", "add", "--db", db, "--name", "App", "--redirect-uri", uri], env=env)
    bad(["clients", "add", "--db", db, "--name", "App", "--redirect-uri", "javascript:alert(1)"], "javascript", env=env)
    bad(
        ["clients", "add", "--db", db, "--name", "App", "--redirect-uri", "http://partner.example.net/cb"],
        "http",
        env=env,
    )
    listed = ok(["clients", "list", "--db", db], env=env)
    assert listed.count("App") == 3, listed


def test_listings_escape_what_the_terminal_would_act_on(db: str) -> None:
    """Subjects come from an application's own login and names from registrations: an escape
    sequence or a newline in one must not reach the terminal as such."""
    ok(["clients", "add", "--db", db, "--name", "Desk", "--redirect-uri", REDIRECT_URI])
    _put_grant(db, "g1", "evil\x1b[2J\nFAKE row")
    out = ok(["grants", "list", "--db", db])
    assert "\x1b" not in out and not any(line.startswith("FAKE") for line in out.splitlines())
    assert "evil\\x1b[2J\\nFAKE" in out


def test_a_client_whose_secret_cannot_be_written_out_is_not_stored(db: str) -> None:
    """``clients add ... >/dev/full``: the secret is shown only once, so a client whose details could
    not be written out would be a live client nobody holds the secret of."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [
                *kavach_command(),
                "clients",
                "add",
                "--db",
                db,
                "--name",
                "Lost",
                "--confidential",
                "--redirect-uri",
                REDIRECT_URI,
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            timeout=60,
        )
    assert proc.returncode == 2 and "was not stored" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "Lost" not in run(["clients", "list", "--db", db]).stdout


@pytest.mark.parametrize("command", [["users", "list"], ["keys", "rotate"], ["users", "remove", "alice"]])
def test_with_standard_output_closed_a_command_does_nothing_and_says_so(shared_db: str, command: list[str]) -> None:
    """``kavach ... >&-``: what the command reports (a list, the key now signing, what was revoked)
    would go nowhere, so it does nothing at all and exits 2, rather than act unseen and exit 0."""
    before = ok(["keys", "list", "--db", shared_db])
    proc = subprocess.run(
        [*kavach_command(), *command, "--db", shared_db],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        timeout=60,
        preexec_fn=lambda: os.close(1),
    )
    assert proc.returncode == 2 and "standard output is closed" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert ok(["keys", "list", "--db", shared_db]) == before
    assert "alice" in ok(["users", "list", "--db", shared_db])


def test_with_standard_output_closed_the_kit_still_runs_when_its_report_goes_to_a_file(tmp_path: Path) -> None:
    """``kavach conformance --json FILE >&-`` loses nothing (the report is the file, the verdict the
    exit status), so it runs: here against an address where nothing listens, which it reports."""
    closed = free_port()
    command = [*kavach_command(), "conformance", "--issuer", f"http://127.0.0.1:{closed}", "--timeout", "2"]
    runs = [
        subprocess.run(
            [*command, *extra],
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            timeout=60,
            preexec_fn=lambda: os.close(1),
        )
        for extra in (["--json", str(tmp_path / "report.json")], [])
    ]
    assert "standard output is closed" not in runs[0].stderr and "127.0.0.1" in runs[0].stderr, runs[0].stderr
    assert runs[1].returncode == 2 and "standard output is closed" in runs[1].stderr


def test_commands_refuse_a_store_in_memory() -> None:
    """What a command writes to a store in memory is gone when it ends: 'created user' would be a lie."""
    bad(["users", "add", "x", "--db", ":memory:", "--password-stdin"], "keeps nothing", stdin=PASSWORD + "\n")
    bad(["keys", "rotate", "--store", "memory:"], "keeps nothing")


def test_serve_in_memory_does_not_advise_adding_users_it_cannot_reach() -> None:
    with serve(extra_args=["--db", ":memory:"]) as served:
        banner = served.output()
        assert "none can be added to a store in memory" in banner and "users add" not in banner, banner


def test_password_stdin_on_a_terminal_is_refused_rather_than_echoed(db: str) -> None:
    code, output = _with_terminal(["users", "add", "ivy", "--db", db, "--password-stdin"], [])
    assert code == 2 and "leave it out to be asked without echo" in output and "Traceback" not in output, output


def test_ctrl_c_while_the_command_loads_is_quiet(tmp_path: Path) -> None:
    """SIGINT while the command imports its modules (the first fraction of a second) ended with a
    KeyboardInterrupt traceback; now it ends as one later does. The signal is sent once the
    interpreter itself has started (before that, a SIGINT is the interpreter's own fatal error) and
    cryptography's extension is loading, i.e. in the middle of the command's imports."""
    proc = subprocess.Popen(
        [*kavach_command(), "users", "list", "--db", str(tmp_path / "k.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "_rust.abi3.so" in maps.read_text():
                break
        except OSError:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode in (130, 2), (proc.returncode, err)  # 2: it had finished ("no database")


# -- refusals that leave nothing behind; output that cannot be written --------------------------------------


def test_a_password_shorter_than_15_characters_is_refused_before_the_database_is_made(tmp_path: Path) -> None:
    """NIST SP 800-63B-4 §3.1.1.2: a password that is the only factor (the sign-in page) has at
    least 15 characters; a shorter one is refused as bad input, and nothing is made."""
    db = tmp_path / "new.db"
    line = bad(["users", "add", "bob", "--db", str(db), "--password-stdin"], "15 to 1024 characters",
               stdin="fourteen chars\n")  # fmt: skip
    assert line == "kavach: error: a password has 15 to 1024 characters", line
    assert not db.exists(), "a refused password creates no database"
    assert "created user 'bob'" in ok(["users", "add", "bob", "--db", str(db), "--password-stdin"],
                                      stdin="fifteen chars!!\n")  # fmt: skip


def test_a_password_is_set_only_with_15_characters_but_one_set_before_still_signs_in() -> None:
    """``valid_password`` and ``Users.add`` (what the command uses) refuse fewer than 15 characters,
    counted as typed and once NFKC-normalised, the shorter count deciding; a sign-in checks no
    length, so an account given a shorter password before the rule still signs in."""
    from kavach.users import MIN_PASSWORD, MemoryUsers, PasswordError, Users, hash_password, valid_password

    assert MIN_PASSWORD == 15
    users = Users(MemoryUsers(), log_n=10)
    # The last two: 15 characters as typed but 14 once normalised, 15 once normalised but 12 as typed.
    for password in ("x", "fourteen chars", "cafe\u0301 au lait!!", "\ufb01ve \ufb01ne \ufb01sh!"):
        with pytest.raises(PasswordError) as refused:
            valid_password(password)
        assert str(refused.value) == "a password has 15 to 1024 characters"
        with pytest.raises(PasswordError, match="15 to 1024"):
            users.add("alice", password)
    assert users.store.usernames() == ()
    for password in ("fifteen chars!!", "cafe\u0301 au lait!!!", "\ufb01ve \ufb01ne \ufb01sh!!!!"):
        assert valid_password(password) == password
        users.add("alice", password)
        assert users.authenticate("alice", password) == "alice"
    users.store.set_hash("earlier", hash_password("pw", log_n=10))
    assert users.authenticate("earlier", "pw") == "earlier"


def test_a_password_too_long_is_refused_before_the_database_is_made(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    bad(["users", "add", "bob", "--db", str(db), "--password-stdin"], "15 to 1024 characters", stdin="x" * 1025 + "\n")
    assert not db.exists(), "a refused password creates no database"
    ok(["users", "add", "bob", "--db", str(db), "--password-stdin"], stdin="x" * 1024 + "\n")


def test_a_db_that_is_not_a_regular_file_is_refused_and_nothing_is_written_beside_it(tmp_path: Path) -> None:
    """``--db`` naming a FIFO or a device (a private copy of /dev/null): SQLite wrote a ``-journal``
    file next to the device before failing; such a path is refused before SQLite opens it, in one line."""
    made = [tmp_path / "fifo.db"]
    os.mkfifo(made[0])
    try:  # a character device, where making one is allowed (root, CAP_MKNOD)
        os.mknod(tmp_path / "null.db", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        made.append(tmp_path / "null.db")
    except PermissionError:
        pass
    for path in made:
        for command in (["users", "add", "bob", "--password-stdin"], ["keys", "rotate"], ["users", "list"]):
            line = bad([*command, "--db", str(path)], "is not a regular file", stdin=PASSWORD + "\n")
            assert line == f"kavach: error: cannot open SQLite database {str(path)!r}: it is not a regular file"
    assert sorted(tmp_path.iterdir()) == sorted(made), "no -journal file is left beside them"


def test_an_empty_file_is_no_database_for_a_command_that_reads(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    for command in (["users", "list"], ["keys", "list"], ["clients", "list"], ["grants", "list"]):
        bad([*command, "--db", str(empty)], "no database at")
    assert empty.stat().st_size == 0, "the file is left as it was"


def test_a_sqlite_url_naming_no_file_is_refused(tmp_path: Path) -> None:
    for store in ("sqlite:///", "SQLITE:///"):
        bad(["users", "list", "--store", store], "sqlite:///relative/path", cwd=tmp_path)
        bad(["users", "add", "bob", "--store", store, "--password-stdin"], "sqlite:///relative/path",
            stdin=PASSWORD + "\n", cwd=tmp_path)  # fmt: skip
    (tmp_path / "kavach.toml").write_text('store = "sqlite:///"\n')
    bad(["users", "list", "--config", str(tmp_path / "kavach.toml")], "sqlite:///relative/path", cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kavach.toml"]


def _to(args: list[str], stdout: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``kavach ARGS >stdout`` with Python's ordinary buffered stdout, as a person runs it: under
    PYTHONUNBUFFERED a failed write is seen at once, so what is left buffered at exit goes untested."""
    env = {k: v for k, v in clean_env().items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([*kavach_command(), *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=TIMEOUT, check=False, **kw)  # fmt: skip


def test_output_that_cannot_be_written_is_one_line_not_a_traceback(db: str) -> None:
    ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    ok(["clients", "add", "--name", "A", "--redirect-uri", REDIRECT_URI, "--db", db])
    ok(["keys", "rotate", "--db", db])
    with open("/dev/full", "w") as full:
        for command in (["users", "list"], ["clients", "list"], ["keys", "list"]):
            proc = _to([*command, "--db", db], full)
            assert proc.returncode == 2, (command, proc.stderr)
            assert proc.stderr.splitlines() == ["kavach: error: cannot write the output: No space left on device"], (
                command, proc.stderr)  # fmt: skip


def test_help_and_version_that_cannot_be_written_end_as_any_output_does() -> None:
    """``--help`` and ``--version`` (argparse writes them and exits) on a full disk: the one line
    every output that cannot be written gets, status 2, not Python's "Exception ignored" at exit
    (status 120); to a pipe whose reader has gone: status 141 and nothing on stderr."""
    helps = (["--help"], ["--version"], ["serve", "--help"], ["users", "add", "--help"])
    full_disk = "kavach: error: cannot write the output: No space left on device"
    with open("/dev/full", "w") as full:
        for words in helps:
            proc = _to(words, full)
            said = proc.stderr.splitlines()
            assert proc.returncode == 2 and said == [full_disk], (words, proc.returncode, proc.stderr)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        for words in helps:
            proc = _to(words, write_end)
            assert (proc.returncode, proc.stderr) == (141, ""), (words, proc.stderr)
    finally:
        os.close(write_end)


def test_a_change_whose_report_cannot_be_written_says_it_was_made(db: str) -> None:
    """``users add``, ``keys rotate``, ``grants revoke``, ``clients revoke`` and ``users remove``
    with stdout on a full disk: the change is stored before its report is written, so the one
    line on stderr says it was made, and the exit status is 1, not 2 (bad input: nothing done)."""
    ok(["clients", "add", "--name", "A", "--redirect-uri", REDIRECT_URI, "--db", db])
    (client_id,) = [line.split()[0] for line in ok(["clients", "list", "--db", db]).splitlines()[1:]]
    done = [
        (["users", "add", "bob", "--password-stdin"], "created user 'bob'"),
        (["users", "add", "bob", "--password-stdin"], "changed the password of user 'bob'"),
        (["keys", "rotate"], "now signing with key "),
        (["grants", "revoke", "--subject", "bob"], "revoked 0 grants"),
        (["clients", "revoke", client_id], f"deleted client {client_id} and revoked its grants"),
        (["users", "remove", "bob"], "removed user 'bob'; revoked 0 grants"),
    ]
    with open("/dev/full", "w") as full:
        for command, said in done:
            proc = _to([*command, "--db", db], full, input=PASSWORD + "\n")
            assert proc.returncode == 1, (command, proc.returncode, proc.stderr)
            (line,) = proc.stderr.splitlines()
            assert line.startswith("kavach: error: done, but this report of it could not be written"
                                   " (No space left on device): ") and said in line, (command, line)  # fmt: skip
            if command[:2] == ["users", "add"]:
                assert ok(["users", "list", "--db", db]).split() == ["bob"]
    assert "no users yet" in run(["users", "list", "--db", db]).stderr
    assert "no clients registered" in run(["clients", "list", "--db", db]).stderr
    assert "active" in ok(["keys", "list", "--db", db])


def test_clients_add_shows_the_client_before_anything_is_made(tmp_path: Path) -> None:
    """The new client's id and secret are written out before the database is touched: when they
    cannot be (a full disk, a closed stdout), nothing is stored and no database is made."""
    db = tmp_path / "c.db"
    add = ["clients", "add", "--name", "A", "--redirect-uri", REDIRECT_URI, "--confidential", "--db", str(db)]
    with open("/dev/full", "w") as full:
        proc = _to(add, full)
    assert proc.returncode == 2 and "so it was not stored" in proc.stderr and "Traceback" not in proc.stderr
    proc = _to(add, None, preexec_fn=lambda: os.close(1))  # refused before the command runs at all
    assert proc.returncode == 2 and "standard output is closed" in proc.stderr and "Traceback" not in proc.stderr
    assert not db.exists()
    shown = ok(add)
    assert "client_secret: " in shown and db.exists()


def test_passwords_in_urls_are_never_repeated_in_messages(db: str) -> None:
    for upstream in ("http://user:s3cret@127.0.0.1:0/mcp", "ftp://user:s3cret@127.0.0.1/mcp",
                     "http://user:s3cret@127.0.0.1/mcp#frag"):  # fmt: skip
        line = bad(["serve", "--db", db, "--upstream", upstream], "upstream")
        assert "s3cret" not in line and "user:***@" in line, line
    for issuer in ("https://user:s3cret@auth.example.com", "https://user:s3cret@auth.example.com:99999",
                   "ftp://user:s3cret@auth.example.com"):  # fmt: skip
        line = bad(["serve", "--db", db, "--issuer", issuer], "issuer")
        assert "s3cret" not in line, line


def test_a_misspelt_variable_is_warned_about_and_changes_nothing(db: str) -> None:
    proc = run(["users", "list", "--db", db], env=clean_env(KAVACH_ACESS_TOKEN_LIFETIME="5"))
    assert proc.stderr.splitlines()[0] == (
        "kavach: warning: KAVACH_ACESS_TOKEN_LIFETIME is not a variable kavach reads; it changes nothing"
    )


def test_the_conformance_kits_secret_variables_are_not_warned_about(db: str) -> None:
    """``KAVACH_CONFORMANCE_PASSWORD`` and ``KAVACH_CONFORMANCE_CLIENT_SECRET`` are read (by
    ``kavach conformance``, as docs/conformance.md advises instead of flags in the process list):
    no command calls them unread, while a misspelt name beside them still is."""
    from kavach_conformance.cli import CLIENT_SECRET_VAR, PASSWORD_VAR

    env = clean_env(**{PASSWORD_VAR: "a password", CLIENT_SECRET_VAR: "a secret", "KAVACH_ACESS_TOKEN_LIFETIME": "5"})
    proc = run(["users", "list", "--db", db], env=env)
    assert [line for line in proc.stderr.splitlines() if "warning" in line] == [
        "kavach: warning: KAVACH_ACESS_TOKEN_LIFETIME is not a variable kavach reads; it changes nothing"
    ]


def test_commands_that_read_add_no_table_to_a_store_the_library_made(tmp_path: Path) -> None:
    """An SQLite store made by the library (no secret, no users table): the listing commands and
    removals read it as it is and add nothing to it; a command that creates adds what it needs."""
    from kavach.stores import SQLiteStore

    from kavach_core import effects as fx
    from kavach_core.records import Client

    path = tmp_path / "library.db"
    with SQLiteStore(path) as store:
        store.perform(fx.PutClient(Client("c1", (REDIRECT_URI,), client_name="Lib")))

    def tables() -> set[str]:
        with sqlite3.connect(path) as db:
            return {row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}

    before = tables()
    assert "c1" in ok(["clients", "list", "--db", str(path)])
    assert "no users yet" in run(["users", "list", "--db", str(path)]).stderr
    bad(["users", "remove", "bob", "--db", str(path)], "no user named 'bob'")
    for command in (["keys", "list"], ["grants", "list"]):
        assert run([*command, "--db", str(path)]).returncode == 0
    assert tables() == before and not before & {"kavach_settings", "kavach_users"}
    ok(["users", "add", "bob", "--db", str(path), "--password-stdin"], stdin=PASSWORD + "\n")
    assert {"kavach_settings", "kavach_users"} <= tables()
    assert ok(["users", "list", "--db", str(path)]).split() == ["bob"]


# -- exact reports, range ends and the order of refusals ----------------------------------------------------


def test_port_numbers_are_decimal_from_1_to_65535(capsys: pytest.CaptureFixture[str]) -> None:
    """``--port`` reads a decimal number; both ends of 1..65535 are accepted as typed, 0 and 65536 are
    refused with one line naming the range."""
    from kavach.cli import build_parser

    for text in ("1", "8000", "65535"):
        assert build_parser().parse_args(["serve", "--port", text]).port == int(text)
    for text in ("0", "65536"):
        with pytest.raises(SystemExit) as refused:
            build_parser().parse_args(["serve", "--port", text])
        assert refused.value.code == 2
        assert f"{text} is not between 1 and 65535" in capsys.readouterr().err
    for text in ("http", "8_000", "-1", "\u0661\u0662"):  # no sign, no digit separator, ASCII digits only
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--port", text])
        assert f"argument --port: {text!r} is not a port number" in capsys.readouterr().err


def test_users_list_hints_at_users_add_only_when_there_are_none(db: str) -> None:
    """The "create one with" hint goes to stderr when the database holds no user, and never beside a listing;
    it names the database listed, so the command it shows adds the user there, not to ./kavach.db."""
    ok(["keys", "rotate", "--db", db])
    empty = run(["users", "list", "--db", db])
    assert (empty.returncode, empty.stdout) == (0, "") and f"users add NAME --db {db}\n" in empty.stderr, empty.stderr
    ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    listed = run(["users", "list", "--db", db])
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "alice\n", "")


def _put_grant(db: str, grant_id: str, subject: str, expires_at: int = 9999999999) -> None:
    """A grant of ``subject`` stored as the server stores one: its authorization code redeemed."""
    from kavach.stores.sqlite import SQLiteStore

    issued = _code_for(subject, 0, grant_id)
    family = grant(
        grant_id,
        subject=subject,
        created_at=0,
        rotated_at=0,
        expires_at=expires_at,
        refresh_hash=secrets.token_hex(16),
        refresh_expires_at=expires_at,
    )
    with SQLiteStore(db) as store:
        store.perform(fx.PutCode(issued))
        assert store.perform(fx.ConsumeCode(issued.code_hash, family)) is True


def test_revocations_report_how_many_grants_they_revoked(db: str) -> None:
    """``grants revoke --grant`` revokes that grant alone, and run again revokes nothing;
    ``grants revoke --subject`` and ``users remove`` count every grant they revoke. The report
    says "1 grant", and "0 grants", "3 grants" otherwise."""
    for name in ("hal", "ida"):
        ok(["users", "add", name, "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    for grant_id, subject in (("g1", "hal"), ("g2", "hal"), ("g3", "ida"), ("g4", "ida"), ("g5", "ida")):
        _put_grant(db, grant_id, subject)
    assert ok(["grants", "revoke", "--grant", "g1", "--db", db]) == "revoked 1 grant\n"
    assert ok(["grants", "revoke", "--grant", "g1", "--db", db]) == "revoked 0 grants\n"
    status = {line.split()[0]: line.split()[-1] for line in ok(["grants", "list", "--db", db]).splitlines()[1:]}
    assert status == {"g1": "revoked", "g2": "active", "g3": "active", "g4": "active", "g5": "active"}
    assert ok(["users", "remove", "hal", "--db", db]) == "removed user 'hal'; revoked 1 grant\n"
    assert ok(["grants", "revoke", "--subject", "ida", "--db", db]) == "revoked 3 grants\n"
    assert ok(["users", "remove", "ida", "--db", db]) == "removed user 'ida'; revoked 0 grants\n"


def test_users_remove_counts_a_grant_stored_while_it_ran(
    shared_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A grant stored after the first revocation and before the removal (an approval under way) is
    revoked by the second revocation, and the report counts it with the others."""
    from kavach import cli
    from kavach.users import Users

    remove = Users.remove

    def racing(self: Users, username: str) -> bool:
        _put_grant(shared_db, "late", "alice")
        return remove(self, username)

    monkeypatch.setattr(Users, "remove", racing)
    assert cli.main(["users", "remove", "alice", "--db", shared_db]) == 0
    assert capsys.readouterr().out == "removed user 'alice'; revoked 1 grant\n"
    assert ok(["grants", "list", "--db", shared_db]).splitlines()[1].split()[-1] == "revoked"


def test_a_bad_setting_is_named_before_a_missing_database(tmp_path: Path) -> None:
    """A reading command given both a bad setting and a database that is not there names the setting
    (what to fix first), not the database, and makes nothing."""
    db = tmp_path / "missing.db"
    env = clean_env(KAVACH_ISSUER="http://example.com")
    line = bad(["users", "list", "--db", str(db)], "--allow-insecure-http", env=env)
    assert "no database" not in line and not db.exists()


def test_a_db_path_ending_in_a_slash_is_refused_as_a_directory(tmp_path: Path) -> None:
    """``--db dir/`` names a directory: every command says so, the reading ones too (not "no
    database at dir", which would send the user to make one there), and nothing is made."""
    where = f"{tmp_path / 'sub'}/"
    for command in (["users", "list"], ["keys", "list"], ["users", "add", "bob", "--password-stdin"]):
        bad([*command, "--db", where], "names a directory", stdin=PASSWORD + "\n")
    assert list(tmp_path.iterdir()) == []


def test_a_hint_names_the_store_the_command_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command a hint suggests acts on the same store: no option for the default ./kavach.db,
    ``--db`` with the absolute path for another file, ``--store`` with the URL for a shared store,
    its password left out."""
    import shlex

    import services
    from kavach import cli
    from kavach.instance import Instance
    from kavach.stores._sealing import ENV_VAR

    monkeypatch.chdir(tmp_path)
    for flags, words in (({}, []), ({"db": "other.db"}, ["--db", str(tmp_path / "other.db")])):
        instance = Instance(resolve(flags, {}))
        try:
            assert shlex.split(cli._store_option(instance)) == words
        finally:
            instance.close()
    services.require("postgres")
    parts = urlsplit(services.POSTGRES_URL)
    netloc = f"{parts.username or 'postgres'}:hunter2@{parts.hostname}:{parts.port or 5432}"
    url = parts._replace(netloc=netloc, query=f"schema={services.postgres_schema(tmp_path)}").geturl()
    key = base64.urlsafe_b64encode(b"k" * 32).decode()
    instance = Instance(resolve({"store": url}, {}), environ={ENV_VAR: key})
    try:
        option, given = shlex.split(cli._store_option(instance))
    finally:
        instance.close()
    assert option == "--store" and given.startswith("postgresql://") and given.endswith(url.partition("?")[2])
    assert "hunter2" not in given


def test_listings_mark_what_has_expired(db: str) -> None:
    """``grants list`` shows a grant past its expiry as "expired", not "active"; ``keys list`` shows
    a key whose publication has ended as "expired", not "published"."""
    first = ok(["keys", "rotate", "--db", db]).split("key ")[1].split()[0]
    second = ok(["keys", "rotate", "--db", db]).split("key ")[1].split()[0]
    _put_grant(db, "live", "hal")
    _put_grant(db, "old", "hal", expires_at=1)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE signing_keys SET signs_until = 1, publish_until = 1 WHERE kid = ?", (first,))
    conn.close()
    grants = {line.split()[0]: line.split()[-1] for line in ok(["grants", "list", "--db", db]).splitlines()[1:]}
    assert grants == {"live": "active", "old": "expired"}
    assert {kid: state for kid, (_, state) in _key_algs(db).items()} == {first: "expired", second: "active"}


def test_clients_show_reports_the_client_as_stored(db: str) -> None:
    """``clients show`` reports the registration the store holds: its grant and response types and
    when it was issued; a secret's expiry for a confidential client alone; ``null`` for no scope
    limit; and the descriptive fields a registration gave (client_uri, contacts, ...)."""
    from kavach.stores import SQLiteStore

    from kavach_core.records import Client

    public = _client_id(ok(["clients", "add", "--db", db, "--name", "Desk", "--redirect-uri", REDIRECT_URI]))
    web = _client_id(
        ok(["clients", "add", "--db", db, "--name", "Web", "--confidential", "--redirect-uri", "https://a.example/cb"])
    )
    described = {
        "client_uri": "https://lib.example",
        "logo_uri": "https://lib.example/logo.png",
        "tos_uri": "https://lib.example/tos",
        "policy_uri": "https://lib.example/policy",
        "contacts": ["ops@lib.example"],
        "software_id": "lib-app",
        "software_version": "2.1",
    }
    with SQLiteStore(db) as store:
        store.perform(fx.PutClient(Client("lib", (REDIRECT_URI,), client_name="Lib", metadata=json.dumps(described))))
        stored = {client_id: store.perform(fx.GetClient(client_id)) for client_id in (public, web)}
    shown = {client_id: json.loads(ok(["clients", "show", client_id, "--db", db])) for client_id in (public, web)}
    for client_id, client in stored.items():
        assert shown[client_id]["grant_types"] == list(client.grant_types)
        assert shown[client_id]["response_types"] == list(client.response_types)
        assert shown[client_id]["client_id_issued_at"] == client.issued_at > 0
    assert shown[public]["scope"] is None and shown[public]["client_secret_expires_at"] is None
    assert shown[web]["client_secret_expires_at"] == stored[web].secret_expires_at
    library_made = json.loads(ok(["clients", "show", "lib", "--db", db]))
    assert {name: library_made.get(name) for name in described} == described


def test_a_rediss_url_is_taken_for_a_redis_store(tmp_path: Path) -> None:
    """``rediss://`` (Redis over TLS) names a Redis store like ``redis://``: here one where nothing
    listens, which is reported as such, not refused as an unknown kind of store."""
    env = clean_env(KAVACH_STORE_KEY=base64.urlsafe_b64encode(b"k" * 32).decode())
    line = bad(["users", "list", "--store", f"rediss://127.0.0.1:{free_port()}/0"], "Redis is unavailable", env=env)
    assert "unknown store" not in line


def test_clients_add_says_the_client_shown_was_not_stored_when_the_store_refuses(tmp_path: Path) -> None:
    """``clients add`` writes the new client out before it opens the store; when the store then
    refuses (here a directory given as the database), the command fails with exit status 2 and
    one line saying the client shown was not stored."""
    proc = run(["clients", "add", "--db", str(tmp_path), "--name", "A", "--redirect-uri", REDIRECT_URI])
    assert proc.returncode == 2 and "client_id: " in proc.stdout, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "is a directory" in line and line.endswith("(so the client above was not stored)"), line


def test_users_add_with_standard_input_closed_is_one_line(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No stdin at all (``<&-``): the password cannot be read from it or asked for on it; one line
    saying so, exit status 2, and no database made."""
    from kavach import cli

    monkeypatch.setattr(sys, "stdin", None)
    for flags in (["--password-stdin"], []):
        assert cli.main(["users", "add", "bob", "--db", db, *flags]) == 2
        assert capsys.readouterr().err == (
            "kavach: error: standard input is closed; give the password on it with --password-stdin\n"
        )
    assert not Path(db).exists()


def test_an_empty_password_at_the_prompt_is_refused(db: str) -> None:
    code, output = _with_terminal(["users", "add", "kim", "--db", db], [("Password: ", "")])
    assert code == 2 and "the password is empty" in output and "Traceback" not in output, output
    assert not Path(db).exists()


def test_a_host_serve_cannot_listen_on_is_one_line(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host name that does not resolve, and an address that is not this machine's (TEST-NET-1):
    one line naming the host and the system's reason, before any database is made."""
    from kavach import cli

    serve = ["serve", "--db", db, "--issuer", "https://as.example", "--port", "8000"]
    assert cli.main([*serve, "--host", "no-such-host.invalid"]) == 2
    line = capsys.readouterr().err
    assert line.startswith("kavach: error: cannot listen on 'no-such-host.invalid': ") and line.count("\n") == 1
    assert cli.main([*serve, "--host", "192.0.2.1"]) == 2
    assert capsys.readouterr().err == (
        "kavach: error: cannot listen on 192.0.2.1:8000: Cannot assign requested address\n"
    )
    assert not Path(db).exists()


def test_a_damaged_server_secret_is_one_line(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A stored secret shorter than 32 bytes (a damaged row) is refused in one line, never used; a
    database whose settings table lost its row is read with a secret of this command's own."""
    from kavach import cli
    from kavach.instance import InstanceError, server_secret

    ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE kavach_settings SET value = ? WHERE name = 'secret'", (b"x" * 31,))
    assert cli.main(["users", "list", "--db", db]) == 2
    assert capsys.readouterr().err == (
        f"kavach: error: {db!r} is damaged, not a usable kavachOS database:"
        " the server secret in kavach_settings is not 32 or more bytes\n"
    )
    with pytest.raises(InstanceError, match="too short; the database is damaged"):  # read without the store's check
        server_secret(db, creates=False)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM kavach_settings")
    assert cli.main(["users", "list", "--db", db]) == 0
    assert capsys.readouterr().out == "alice\n"


def test_ctrl_c_at_the_password_prompt_is_quiet(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while ``users add`` asks for the password (``getpass`` raises KeyboardInterrupt):
    a new line, status 130 as a shell reports it, no traceback and no database."""
    import getpass

    from kavach import cli

    def interrupted(prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(getpass, "getpass", interrupted)
    assert cli.main(["users", "add", "bob", "--db", db]) == 130
    assert capsys.readouterr().err == "\n"
    assert not Path(db).exists()


def test_a_rotation_that_keeps_losing_races_is_one_line(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``keys rotate`` whose swap other processes keep changing (:class:`KeyRotationError`): its
    message as one line, exit status 2, and no report of a key now signing."""
    from kavach import cli

    from kavach_core import keys

    def contended(ctx: Any, algs: Any = None) -> Any:
        yield fx.GetSigningKeys()
        raise keys.KeyRotationError("the signing keys changed 5 times while rotating; nothing was changed")

    monkeypatch.setattr(keys, "rotate", contended)
    assert cli.main(["keys", "rotate", "--db", db]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "kavach: error: the signing keys changed 5 times while rotating; nothing was changed\n")


def test_conformance_without_the_kit_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An install without the kit (package kavach_conformance): ``kavach conformance`` says so in
    one line with exit status 2, not a traceback."""
    from kavach import cli

    monkeypatch.setitem(sys.modules, "kavach_conformance.cli", None)  # import fails as if not installed
    assert cli.main(["conformance"]) == 2
    assert capsys.readouterr().err == (
        "kavach: error: the conformance kit (package kavach_conformance) is not installed; reinstall kavachos\n"
    )


def test_serve_without_its_extras_names_what_to_install(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kavach serve`` on an install without uvicorn: one line naming the missing package and the
    extra that brings it, exit status 2, and the port it had taken is free again."""
    from kavach import cli

    port = free_port()
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert cli.main(["serve", "--db", db, "--port", str(port)]) == 2
    assert capsys.readouterr().err == "kavach: error: kavach serve needs uvicorn: pip install 'kavachos[mcp]'\n"
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_a_db_path_through_a_file_is_the_stores_to_explain(tmp_path: Path) -> None:
    """``--db FILE/x.db`` (a path through a regular file): not "no database at" (which would send
    the user to make one there) but the store's own reason, in one line."""
    (tmp_path / "file").write_text("")
    for command in (["users", "list"], ["keys", "list"]):
        line = bad([*command, "--db", str(tmp_path / "file" / "x.db")], "kavach: error: ")
        assert "no database at" not in line, line


def test_a_reader_that_left_ends_the_command_with_the_broken_pipe_status(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output to a pipe whose reader has already gone: status 141, as a shell reports a command
    ended by SIGPIPE, and nothing on stderr (the pipe test above cannot tell 141 from a race lost)."""
    from kavach import cli

    ok(["users", "add", "alice", "--db", db, "--password-stdin"], stdin=PASSWORD + "\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as gone:
        monkeypatch.setattr(sys, "stdout", gone)
        assert cli.main(["users", "list", "--db", db]) == 141
        monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_a_password_piped_with_a_windows_line_end_is_the_password_without_it(db: str) -> None:
    """``--password-stdin`` takes the first line without its line end, ``\\n`` or ``\\r\\n`` (a file
    saved on Windows), or the whole input when it has none: the account signs in with the password
    typed, not with a trailing CR nor without its last character."""
    from kavach.instance import Instance

    for name, given in (("alice", PASSWORD + "\r\n"), ("bob", PASSWORD + "\n"), ("carol", PASSWORD)):
        ok(["users", "add", name, "--db", db, "--password-stdin"], stdin=given)
    instance = Instance(resolve({"db": db}, {}))
    try:
        for name in ("alice", "bob", "carol"):
            assert instance.users.authenticate(name, PASSWORD) == name
        assert instance.users.authenticate("alice", PASSWORD + "\r") is None
    finally:
        instance.close()


def test_the_banner_names_each_setting_that_changes_what_is_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ``kavach serve`` prints, line for line: the proxy's target (its password left out), the
    data's place aligned with the other values, the trusted proxies and extra origins when set, and
    the command adding a first user to this database; with a user, no such advice."""
    from kavach import cli
    from kavach.instance import Instance

    db = tmp_path / "banner.db"
    settings = resolve(
        {
            "db": str(db),
            "upstream": "http://u:pw@up.example/mcp",
            "trusted_proxies": "10.0.0.1,10.1.0.0/16",
            "allowed_origins": "https://app.example.com",
        },
        {},
    )
    instance = Instance(settings)
    try:
        cli._banner(settings, instance)
        assert capsys.readouterr().out.splitlines() == [
            "kavachOS is running.",
            "  MCP server URL (paste into your MCP client): http://127.0.0.1:8000/mcp",
            "  Issuer (authorization server):               http://127.0.0.1:8000",
            "  Serving at /mcp:                             a proxy to http://u:***@up.example/mcp",
            f"  Data (SQLite):                               {db}",
            "  Client address from X-Forwarded-For of:      10.0.0.1, 10.1.0.0/16",
            "  Browser pages may call /mcp also from:       https://app.example.com",
            "",
            "No users yet. Create a login for the sign-in page with:",
            f"  kavach users add NAME --db {db}",
            "",
            "Press Ctrl-C to stop.",
        ]
        instance.users.add("alice", PASSWORD)
        cli._banner(resolve({"db": str(db)}, {}), instance)
        assert capsys.readouterr().out.splitlines()[3:] == [
            "  Serving at /mcp:                             the built-in demo MCP server (tools echo and add)",
            f"  Data (SQLite):                               {db}",
            "",
            "Press Ctrl-C to stop.",
        ]
    finally:
        instance.close()
    for store in ("memory:", "sqlite:///:memory:"):  # however it is named, no other process can add a user there
        settings = resolve({"store": store}, {})
        instance = Instance(settings)
        try:
            cli._banner(settings, instance)
        finally:
            instance.close()
        out = capsys.readouterr().out
        advice = "No users, and none can be added to a store in memory: give a --db or --store."
        assert "users add" not in out and out.endswith(f"\n\n{advice}\n\nPress Ctrl-C to stop.\n"), out
