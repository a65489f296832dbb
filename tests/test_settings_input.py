"""Bad settings and usernames are refused up front, as one clear line, and change nothing.

Each test drives the real ``kavach`` command where the defect shows there (``keys list`` resolves
every setting and opens the instance; ``serve`` refuses before it listens), and the library types
(:mod:`kavach_core.config`, :func:`kavach.users.normalize_username`) where other code builds them.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import RESOURCE, make_config
from kavach.settings import ENVIRONMENT, MAX_CONFIG_BYTES, SettingsError, read_toml, resolve, unread_variables
from kavach.users import MemoryUsers, UsernameError, Users, normalize_username
from kavach_serve import Cli, free_port

from kavach_core.config import (
    MAX_RATE_LIMIT,
    MAX_RATE_WINDOW,
    Config,
    Lifetimes,
    Paths,
    ProtectedResource,
    RegistrationPolicy,
    is_host_name,
)
from kavach_core.errors import ConfigurationError

DIGEST = hashlib.sha256(b"an initial access token").hexdigest()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAVACH_")}
    env.update(extra)
    return env


CLI = Cli(clean_env)
ok, bad = CLI.ok, CLI.bad


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "k.db")


def write(tmp_path: Path, text: str, name: str = "k.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- 1. [registration] and the other configuration value types -------------------------------


@pytest.mark.parametrize(
    ("table", "expect"),
    [
        ('mode = "token"\ninitial_access_token_hashes = [1, 2]', "initial_access_token_hashes must be a list of"),
        ('mode = "token"\ninitial_access_token_hashes = "abc"', "initial_access_token_hashes must be a list of"),
        ('mode = "token"\ninitial_access_token_hashes = ["abc"]', "entry 1 is not a SHA-256 hex digest"),
        (f'mode = "token"\ninitial_access_token_hashes = ["{DIGEST}", "{"g" * 64}"]', "entry 2 is not a SHA-256"),
        ("rate_window = nan", "rate_window must be a whole number"),
        ("rate_window = 0", "rate_window must be a whole number"),
        ("rate_window = 1e30", "rate_window must be a whole number"),
        ("rate_window = 99999999999999999", "rate_window must be a whole number"),
        ("rate_limit = 1.5", "rate_limit must be a whole number"),
        ("rate_limit = true", "rate_limit must be a whole number"),
        ("rate_limit = inf", "rate_limit must be a whole number"),
        ('rate_limit = "20"', "rate_limit must be a whole number"),
        ("rate_limit = -1", "rate_limit must be a whole number"),
        ('allowed_redirect_hosts = "abc"', "allowed_redirect_hosts must be a list of strings"),
        ("allowed_redirect_hosts = [1]", "allowed_redirect_hosts must be a list of strings"),
        ('allowed_redirect_hosts = ["app example.com"]', "'app example.com' is not a host name"),
        ('allowed_redirect_hosts = ["*"]', "'*' is not a host name"),
        ('allowed_redirect_hosts = ["a..example.com"]', "is not a host name"),
        ("mode = 1", "mode must be one of open, token, closed"),
    ],
)
def test_bad_registration_table_is_one_line(tmp_path: Path, db: str, table: str, expect: str) -> None:
    config = write(tmp_path, f"[registration]\n{table}\n")
    line = bad(["keys", "list", "--db", db, "--config", config], expect)
    assert "registration" in line and "Error" not in line and "object" not in line
    assert not Path(db).exists(), "a refused configuration writes nothing"


def test_a_token_pasted_for_its_digest_is_not_echoed(tmp_path: Path, db: str) -> None:
    token = "s3cr3t-initial-access-token"
    config = write(tmp_path, f'[registration]\nmode = "token"\ninitial_access_token_hashes = ["{token}"]\n')
    assert token not in bad(["keys", "list", "--db", db, "--config", config], "never the tokens")


def test_serve_refuses_a_bad_registration_table_before_listening(tmp_path: Path, db: str) -> None:
    config = write(tmp_path, '[registration]\nmode = "token"\ninitial_access_token_hashes = [1, 2]\n')
    bad(["serve", "--port", str(free_port()), "--db", db, "--config", config], "initial_access_token_hashes")


def test_good_registration_table_is_normalised(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f'[registration]\nmode = "token"\ninitial_access_token_hashes = [" {DIGEST.upper()} "]\n'
        'rate_limit = 0\nrate_window = 60\nallowed_redirect_hosts = ["App.Example.COM", "[2001:db8::1]"]\n',
    )
    policy = resolve({"config": config}, {}).registration_config()
    assert policy.initial_access_token_hashes == (DIGEST,)
    assert policy.allowed_redirect_hosts == ("app.example.com", "2001:db8::1")
    assert (policy.rate_limit, policy.rate_window) == (0, 60)


@pytest.mark.parametrize(
    ("kwargs", "expect"),
    [
        ({"initial_access_token_hashes": "abc"}, "must be a list of strings"),
        ({"initial_access_token_hashes": [1]}, "must be a list of strings"),
        ({"initial_access_token_hashes": ["ab" * 31]}, "not a SHA-256 hex digest"),
        ({"allowed_redirect_hosts": "abc"}, "must be a list of strings"),
        ({"allowed_redirect_hosts": [None]}, "must be a list of strings"),
        ({"allowed_redirect_hosts": [""]}, "is not a host name"),
        ({"allowed_redirect_hosts": ["-bad.example"]}, "is not a host name"),
        ({"allowed_redirect_hosts": ["x" * 64 + ".example"]}, "is not a host name"),
        ({"rate_limit": True}, "rate_limit"),
        ({"rate_limit": 2.0}, "rate_limit"),
        ({"rate_limit": float("nan")}, "rate_limit"),
        ({"rate_limit": 10**30}, "rate_limit"),
        ({"rate_window": float("inf")}, "rate_window"),
        ({"rate_window": "3600"}, "rate_window"),
        ({"rate_window": False}, "rate_window"),
        ({"mode": ["open"]}, "mode"),
    ],
)
def test_registration_policy_checks_its_own_fields(kwargs: dict[str, Any], expect: str) -> None:
    with pytest.raises(ConfigurationError, match=expect):
        RegistrationPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"refresh_absolute": 10**30},
        {"signing_key": 10**19},
        {"client_secret": 2**63},
        {"metadata_document_max": 10**12},
    ],
)
def test_lifetimes_have_an_upper_bound(kwargs: dict[str, Any]) -> None:
    """An expiry time past 64 bits would only fail later, in the store, on every request."""
    with pytest.raises(ConfigurationError, match="whole number of seconds between 0 and"):
        Lifetimes(**kwargs)


def test_a_huge_lifetime_from_the_environment_is_one_line(db: str) -> None:
    env = clean_env(KAVACH_REFRESH_ABSOLUTE_LIFETIME="9" * 25)
    bad(["keys", "list", "--db", db], "lifetime refresh_absolute must be a whole number of seconds", env=env)


@pytest.mark.parametrize(
    ("build", "expect"),
    [
        (lambda: make_config(refresh_grace=True), "refresh_grace"),
        (lambda: make_config(allow_insecure_http="no"), "allow_insecure_http must be true or false"),
        (lambda: make_config(client_id_metadata_documents=1), "client_id_metadata_documents"),
        (lambda: make_config(service_documentation=7), "service_documentation"),
        (lambda: make_config(resources=RESOURCE), "resources must be a list"),
        (lambda: make_config(resources=[7]), "resources must be a list"),
        (lambda: Paths(token=7), "path token must be a string"),
        (lambda: ProtectedResource(RESOURCE, scopes="abc"), "resource scopes must be"),
        (lambda: ProtectedResource(RESOURCE, scopes={"tools:list": 1}), "resource scopes must be"),
        (lambda: ProtectedResource(RESOURCE, scopes=[("tools:list",)]), "resource scopes must be"),
        (lambda: ProtectedResource(RESOURCE, default_scopes="tools:list"), "default_scopes must be a list"),
        (lambda: ProtectedResource(RESOURCE, name=None), "resource name must be a string"),
    ],
)
def test_other_config_types_refuse_wrong_types(build: Any, expect: str) -> None:
    with pytest.raises(ConfigurationError, match=expect):
        build()


def test_is_host_name() -> None:
    for good in ("example.com", "a-b.example", "localhost", "127.0.0.1", "::1", "[::1]", "_svc.example", "x" * 63):
        assert is_host_name(good), good
    for wrong in ("", "*", ".", "a..b", "-a.example", "a-.example", "a b", "bücher.example", "x" * 64, "[x]", 1):
        assert not is_host_name(wrong), wrong


# -- 2. usernames ------------------------------------------------------------------------------

UNPRINTABLE = [
    "a\x7fb",
    "a\x85b",
    "rlo\u202eb",
    "zero\u200bwidth",
    "line\u2028sep",
    "para\u2029sep",
    "bom\ufeff",
    "tab\tin",
    "ctl\x01",
]


@pytest.mark.parametrize("name", UNPRINTABLE)
def test_unprintable_usernames_are_refused(db: str, name: str) -> None:
    line = bad(["users", "add", name, "--db", db, "--password-stdin"], "username must not contain", stdin="pw\n")
    assert name not in line and "U+" in line, "the character is named by its code point, not printed raw"
    assert not Path(db).exists(), "nothing was created"
    bad(["users", "remove", name, "--db", db], "username must not contain")


@pytest.mark.parametrize("name", ["", "   ", "x" * 129, "\uff41" * 129])
def test_an_empty_or_too_long_username_is_refused_before_anything_is_made(db: str, name: str) -> None:
    """Empty or over 128 characters once normalised (fullwidth letters become ASCII ones): refused
    before the password is read and the database is opened, so no file is left behind."""
    bad(["users", "add", name, "--db", db, "--password-stdin"], "a username has 1 to 128", stdin="pw\n")
    assert not Path(db).exists(), "nothing was created"
    bad(["users", "remove", name, "--db", db], "a username has 1 to 128")


def test_a_lone_surrogate_username_is_refused() -> None:
    # Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape: argv, the environment).
    with pytest.raises(UsernameError, match="valid Unicode"):
        normalize_username(os.fsdecode(b"caf\xe9"))
    assert Users(MemoryUsers(), log_n=10).authenticate("caf\udce9", "pw") is None


def test_printable_usernames_are_still_accepted_and_normalised(db: str) -> None:
    for name in ("alice", " José ", "名前", "Mary Ann"):
        ok(["users", "add", name, "--db", db, "--password-stdin"], stdin="a long enough password\n")
    assert ok(["users", "list", "--db", db]).splitlines() == sorted(["alice", "José", "名前", "Mary Ann"])
    assert "removed user 'alice'" in ok(["users", "remove", " alice ", "--db", db])  # as kept, as add says


def test_one_rule_for_every_path_that_takes_a_username() -> None:
    assert normalize_username(" \uff41lice ") == "alice"  # NFKC: fullwidth a
    for name in UNPRINTABLE:
        with pytest.raises(UsernameError, match="username"):
            normalize_username(name)
    assert isinstance(UsernameError("x"), ValueError) and isinstance(UsernameError("x"), SettingsError)
    users = Users(MemoryUsers(), log_n=10)
    users.add("alice", "a long enough password")
    assert users.authenticate("alice", "a long enough password") == "alice"
    assert users.authenticate("ali\u200bce", "pw") is None  # the sign-in form: refused, not an error
    assert users.authenticate("alice\u202e", "pw") is None
    with pytest.raises(ValueError, match="username"):
        users.add("bob\u2028", "pw")
    with pytest.raises(UsernameError):
        users.remove("alice\x7f")
    assert users.store.usernames() == ("alice",)


# -- 3. trusted proxies covering every address -------------------------------------------------


@pytest.mark.parametrize("network", ["0.0.0.0/0", "::/0", "10.0.0.1, 0.0.0.0/0", "1.2.3.4/0"])
def test_trusted_proxies_that_cover_everything_are_refused(tmp_path: Path, db: str, network: str) -> None:
    with pytest.raises(SettingsError, match="covers every address"):
        resolve({"trusted_proxies": network}, {})
    bad(["keys", "list", "--db", db], "covers every address", env=clean_env(KAVACH_TRUSTED_PROXIES=network))
    items = [n.strip() for n in network.split(",")]
    config = write(tmp_path, "trusted_proxies = [" + ", ".join(f'"{n}"' for n in items) + "]\n")
    bad(["keys", "list", "--db", db, "--config", config], "covers every address")


def test_serve_refuses_a_trusted_proxy_network_covering_everything(db: str) -> None:
    bad(["serve", "--port", str(free_port()), "--db", db, "--trusted-proxies", "0.0.0.0/0"], "covers every address")


def test_narrow_trusted_proxy_networks_are_still_accepted() -> None:
    assert resolve({"trusted_proxies": "10.0.0.0/8 ::1 0.0.0.0/1"}, {}).trusted_proxies == (
        "10.0.0.0/8",
        "::1",
        "0.0.0.0/1",
    )


# -- 4. the config file: only a regular file, at most 1 MiB ------------------------------------


def test_a_fifo_config_file_is_refused_at_once(tmp_path: Path, db: str) -> None:
    fifo = tmp_path / "f.toml"
    os.mkfifo(fifo)
    bad(["keys", "list", "--db", db, "--config", str(fifo)], "is not a regular file")
    bad(["keys", "list", "--db", db], "is not a regular file", env=clean_env(KAVACH_CONFIG=str(fifo)))


def test_a_device_config_file_is_refused(db: str) -> None:
    bad(["keys", "list", "--db", db, "--config", "/dev/zero"], "is not a regular file")


def test_a_config_file_over_the_size_cap_is_refused(tmp_path: Path, db: str) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    bad(["keys", "list", "--db", db, "--config", str(big)], "larger than 1 MiB")
    fits = tmp_path / "fits.toml"
    fits.write_text("port = 8001\n" + "#" * (MAX_CONFIG_BYTES - 13) + "\n")
    assert len(fits.read_bytes()) == MAX_CONFIG_BYTES
    assert resolve({"config": str(fits)}, {}).port == 8001


def test_a_directory_config_file_still_says_so(tmp_path: Path, db: str) -> None:
    bad(["keys", "list", "--db", db, "--config", str(tmp_path)], "is a directory")


def test_config_file_read_failures_are_one_line_each(tmp_path: Path) -> None:
    """Each way a settings file cannot be read is its own one-line :class:`SettingsError` naming
    the file (never an ``OSError``, ``ValueError`` or ``UnicodeDecodeError``): missing, a path
    through a file, a NUL in the path, bytes that are not UTF-8."""
    with pytest.raises(SettingsError, match=r"^config file '.*nope\.toml' does not exist$"):
        read_toml(str(tmp_path / "nope.toml"))
    plain = write(tmp_path, "port = 8001\n")
    with pytest.raises(SettingsError, match=r"^cannot read config file '.*k\.toml/x\.toml': Not a directory$"):
        read_toml(plain + "/x.toml")
    with pytest.raises(SettingsError, match=r"^config file 'a\\x00b\.toml' is not a valid path$"):
        read_toml("a\x00b.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'issuer = "https://caf\xe9.example"\n')
    with pytest.raises(SettingsError, match=r"^config file '.*latin\.toml' is not UTF-8 text$"):
        read_toml(str(latin))
    with pytest.raises(SettingsError, match=r"is not UTF-8 text$"):
        resolve({"config": str(latin)}, {})


def test_reading_a_config_file_leaves_no_descriptor_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The descriptor :func:`read_toml` opens is closed whether the file is read, refused by its
    kind, or refused by its content."""
    import kavach.settings as settings_module

    opened: list[int] = []
    closed: list[int] = []
    real_open, real_close = os.open, os.close

    def tracked_open(*args: Any, **kwargs: Any) -> int:
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    def tracked_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    good = write(tmp_path, "port = 8001\n")
    broken = write(tmp_path, "port = [\n", "broken.toml")
    monkeypatch.setattr(settings_module.os, "open", tracked_open)
    monkeypatch.setattr(settings_module.os, "close", tracked_close)
    assert read_toml(good) == {"port": 8001}
    for path in (broken, str(tmp_path)):
        with pytest.raises(SettingsError):
            read_toml(path)
    monkeypatch.undo()
    assert len(opened) == 3 and closed == opened


# -- 5. ports of the issuer and the upstream ---------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "expect"),
    [
        ("https://a.example:0", "give a port between 1 and 65535"),
        ("https://a.example:", "give a port"),
        ("https://a.example:99999", "is not a valid URL"),
        ("https://[::1", "is not a valid URL"),
    ],
)
def test_issuer_ports(db: str, issuer: str, expect: str) -> None:
    bad(["keys", "list", "--db", db], expect, env=clean_env(KAVACH_ISSUER=issuer))
    with pytest.raises(ConfigurationError, match=expect):
        make_config(issuer=issuer)


def test_serve_refuses_an_issuer_on_port_zero(db: str) -> None:
    bad(["serve", "--port", str(free_port()), "--db", db, "--issuer", "https://a.example:0"], "port")


@pytest.mark.parametrize(
    ("upstream", "expect"),
    [
        ("http://127.0.0.1:99999/mcp", "is not a valid URL"),
        ("http://[::1/mcp", "is not a valid URL"),
        ("http://[x", "is not a valid URL"),
        ("http://127.0.0.1:0/mcp", "give a port between 1 and 65535"),
        ("http://127.0.0.1:/mcp", "give a port"),
    ],
)
def test_upstream_ports_and_malformed_urls(tmp_path: Path, db: str, upstream: str, expect: str) -> None:
    bad(["keys", "list", "--db", db], expect, env=clean_env(KAVACH_UPSTREAM=upstream))
    config = write(tmp_path, f'upstream = "{upstream}"\n')
    bad(["keys", "list", "--db", db, "--config", config], expect)


def test_serve_refuses_a_malformed_upstream_flag(db: str) -> None:
    bad(["serve", "--port", str(free_port()), "--db", db, "--upstream", "http://[::1/mcp"], "is not a valid URL")
    bad(["serve", "--port", str(free_port()), "--db", db, "--upstream", "http://127.0.0.1:99999/mcp"], "valid URL")


def test_good_upstream_is_kept() -> None:
    assert resolve({"upstream": "http://[::1]:9000/mcp"}, {}).upstream == "http://[::1]:9000/mcp"


# -- 6. smaller things -------------------------------------------------------------------------


def test_log_level_from_file_and_environment_in_any_case(tmp_path: Path) -> None:
    assert resolve({}, {"KAVACH_LOG_LEVEL": "DEBUG"}).log_level == "debug"
    assert resolve({"config": write(tmp_path, 'log_level = "Warning"\n')}, {}).log_level == "warning"


@pytest.mark.parametrize(
    ("table", "expect"),
    [
        ("allow_hosts = [1]", "documents.allow_hosts must be a list of host names"),
        ('deny_hosts = "x.example"', None),
        ('allow_hosts = ["*"]', "'*' is not a host name"),
        ('allow_hosts = [""]', "'' is not a host name"),
        ("allow_hosts = []", "names no host"),
        ('deny_hosts = ["a..b"]', "'a..b' is not a host name"),
    ],
)
def test_document_hosts_in_the_file(tmp_path: Path, db: str, table: str, expect: str | None) -> None:
    config = write(tmp_path, f"[documents]\n{table}\n")
    if expect is None:
        assert resolve({"config": config}, {}).fetch_policy().deny_hosts == ("x.example",)
        return
    line = bad(["keys", "list", "--db", db, "--config", config], expect)
    assert "scopes" not in line


def test_document_fetch_limits_in_the_file(tmp_path: Path) -> None:
    table = (
        "deadline = 2.5\nconnect_timeout = 1\nread_timeout = 1.5\nrefusal_ttl = 0\nmax_fetches = 8\n"
        "max_fetches_per_host = 2\nmax_bytes = 4096\nrefusal_cache_entries = 10\n"
    )
    policy = resolve({"config": write(tmp_path, f"[documents]\n{table}")}, {}).fetch_policy()
    assert (policy.deadline, policy.connect_timeout, policy.read_timeout, policy.refusal_ttl) == (2.5, 1.0, 1.5, 0.0)
    assert (policy.max_fetches, policy.max_fetches_per_host, policy.max_bytes, policy.refusal_cache_entries) == (
        8,
        2,
        4096,
        10,
    )


@pytest.mark.parametrize(
    ("table", "expect"),
    [
        ('deadline = "5"', "documents.deadline must be a number of seconds"),
        ("deadline = inf", "documents.deadline must be a number of seconds"),
        ("deadline = true", "documents.deadline must be a number of seconds"),
        ("deadline = 0", "every time limit must be more than 0 and at most 60"),
        ("read_timeout = 1e12", "every time limit must be more than 0 and at most 60"),
        ("refusal_ttl = -1", "refusal_ttl must be from 0 to 86400"),
        ("refusal_ttl = 1e300", "refusal_ttl must be from 0 to 86400"),
        ("max_bytes = 100000000000000000000000", "max_bytes must be from 1 to 1048576"),
        ("max_fetches = 0", "must be at least 1"),
        ("max_fetches = 2.5", "documents.max_fetches must be a whole number"),
        ("max_redirects = 3", "unknown documents setting 'max_redirects'"),
    ],
)
def test_document_fetch_limits_are_checked(tmp_path: Path, db: str, table: str, expect: str) -> None:
    config = write(tmp_path, f"[documents]\n{table}\n")
    bad(["serve", "--port", str(free_port()), "--db", db, "--config", config], expect)  # refused before binding


@pytest.mark.parametrize("host", ["", "*", " ", "a b", "http://x.example"])
def test_document_host_flags_are_checked(db: str, host: str) -> None:
    for flag in ("--document-allow-host", "--document-deny-host"):
        bad(["serve", "--port", str(free_port()), "--db", db, flag, host], "is not a host name")


def test_document_hosts_from_the_environment(db: str) -> None:
    bad(["keys", "list", "--db", db], "KAVACH_DOCUMENT_ALLOW_HOSTS", env=clean_env(KAVACH_DOCUMENT_ALLOW_HOSTS="*"))
    bad(["keys", "list", "--db", db], "names no host", env=clean_env(KAVACH_DOCUMENT_DENY_HOSTS=" , "))
    policy = resolve({}, {"KAVACH_DOCUMENT_ALLOW_HOSTS": "*.example.com, .example.org a.example.net."}).fetch_policy()
    assert policy.allow_hosts == ("*.example.com", ".example.org", "a.example.net")
    flagged = resolve({"documents": {"allow_hosts": ["Mcp-Client.example.com"]}}, {}).fetch_policy()
    assert flagged.allow_hosts == ("mcp-client.example.com",)


@pytest.mark.parametrize("port", ["\u0661\u0662\u0663", "8_000", "8000.0", "+", "0x1f90", "\uff18\uff10\uff10\uff10"])
def test_ports_and_numbers_from_the_environment_are_ascii_digits(db: str, port: str) -> None:
    bad(["keys", "list", "--db", db], "KAVACH_PORT must be a whole number", env=clean_env(KAVACH_PORT=port))
    bad(["keys", "list", "--db", db], "must be a whole number", env=clean_env(KAVACH_CODE_LIFETIME=port))
    assert resolve({}, {"KAVACH_PORT": " 8001 "}).port == 8001


def test_sqlite_store_urls_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = write(conf_dir, 'store = "sqlite:///data.db"\n')
    assert resolve({"config": config}, {}).store == f"sqlite:///{conf_dir / 'data.db'}"
    ok(["users", "add", "alice", "--config", config, "--password-stdin"], stdin="a long enough password\n", cwd=run_dir)
    assert (conf_dir / "data.db").exists() and not (run_dir / "data.db").exists()
    assert ok(["users", "list", "--config", config], cwd=tmp_path).split() == ["alice"]
    # The other forms keep their meaning: an absolute URL, a plain relative path, the shared stores.
    absolute = f"sqlite:///{tmp_path / 'abs.db'}"
    assert resolve({"config": write(conf_dir, f'store = "{absolute}"\n', "a.toml")}, {}).store == absolute
    assert resolve({"config": write(conf_dir, 'store = "p.db"\n', "p.toml")}, {}).store == str(conf_dir / "p.db")
    memory = write(conf_dir, 'store = "sqlite:///:memory:"\n', "m.toml")
    assert resolve({"config": memory}, {}).store == "sqlite:///:memory:"
    pg = "postgresql://kavach@db.internal/kavach"
    assert resolve({"config": write(conf_dir, f'store = "{pg}"\n', "pg.toml")}, {}).store == pg
    assert resolve({}, {"KAVACH_STORE": "sqlite:///data.db"}).store == "sqlite:///data.db", "env: relative to cwd"


def test_config_is_still_built_from_good_settings() -> None:
    config = Config(issuer="https://a.example:8443", resources=[RESOURCE], secret=b"s" * 32)
    assert config.issuer == "https://a.example:8443" and config.resources[0].uri == RESOURCE


def test_every_variable_kavach_reads_is_known_and_no_other() -> None:
    """ENVIRONMENT is the set of ``KAVACH_*`` names the code reads (by name, or built from the
    lifetime keys and document settings): a variable added without it would be warned about."""
    import re
    from pathlib import Path

    import kavach

    source = "".join(p.read_text() for p in Path(kavach.__file__).parent.rglob("*.py"))
    literal = set(re.findall(r'"(KAVACH_[A-Z_]*[A-Z])"', source))
    assert literal <= ENVIRONMENT
    assert {"KAVACH_ACCESS_TOKEN_LIFETIME", "KAVACH_DOCUMENT_CA_BUNDLE", "KAVACH_STORE_KEY"} <= ENVIRONMENT
    environ = {"KAVACH_ACESS_TOKEN_LIFETIME": "5", "KAVACH_PORT": "1", "HOME": "/", "KAVACH_X": ""}
    assert unread_variables(environ) == ("KAVACH_ACESS_TOKEN_LIFETIME", "KAVACH_X")


def _documented_file() -> str:
    """The example settings file of :mod:`kavach.settings`' docstring, as its text."""
    import kavach.settings

    block = (kavach.settings.__doc__ or "").split("The TOML file::")[1].split("\nWhere the data lives")[0]
    return "\n".join(line[4:] for line in block.splitlines()).replace("<64 hex digits>", "ab" * 32)


def test_the_documented_settings_file_is_accepted_and_names_every_setting(tmp_path: Path) -> None:
    """Every key the docstring's example file shows is one the settings take (the file is
    accepted as written), and every lifetime, registration and document setting they take is
    shown there, so none can be used only by reading the code."""
    import attrs
    from kavach.fetcher import FetchPolicy

    text = _documented_file()
    path = tmp_path / "kavach.toml"
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith("store =")))  # or db
    settings = resolve({"config": str(path)}, clean_env())
    assert settings.lifetimes_config() == Lifetimes()  # the defaults, shown as they are
    policy = settings.registration_config()
    assert (policy.rate_limit, policy.rate_window, policy.allowed_redirect_hosts) == (20, 3600, ("app.example.com",))
    shown = {line.split("=")[0].strip() for line in text.splitlines() if "=" in line.split("#")[0]}
    for kind in (Lifetimes, RegistrationPolicy):
        assert {f.name for f in attrs.fields(kind)} <= shown, kind.__name__
    unshown = sorted(f.name for f in attrs.fields(FetchPolicy) if f.name not in text)
    assert unshown == []


def test_sign_in_limits_from_the_file(tmp_path: Path) -> None:
    """``[sign_in]`` sets :class:`kavach.server.LoginLimits` for ``kavach serve``; unset keys keep
    their defaults, and a value out of range or of another type is one clear error."""
    from kavach.server import LoginLimits

    toml = tmp_path / "k.toml"
    toml.write_text("[sign_in]\nper_address = 500\nwindow = 60\n")
    assert resolve({"config": str(toml)}, {}).login_limits() == LoginLimits(per_user=10, per_address=500, window=60)
    assert resolve({}, {}).login_limits() == LoginLimits()
    cases = (
        ("per_user = 0", "sign_in: LoginLimits.per_user must be"),
        ("per_minute = 3", "unknown sign_in"),
        ("window = 'x'", "sign_in.window"),
        ("", ""),
    )
    for body, message in cases:
        toml.write_text(f"[sign_in]\n{body}\n" if body else "sign_in = 3\n")
        with pytest.raises(SettingsError, match=message or r"\[sign_in\] must be a table"):
            resolve({"config": str(toml)}, {}).login_limits()


@pytest.mark.parametrize(
    ("name", "most"), [("window", MAX_RATE_WINDOW), ("per_user", MAX_RATE_LIMIT), ("per_address", MAX_RATE_LIMIT)]
)
def test_login_limits_are_bounded_as_the_registration_limit_is(name: str, most: int) -> None:
    """Every store keeps a window's end as a 64-bit number: a window of 2**63 seconds, once taken,
    made every sign-in a 500 (an SQLite overflow; Redis refuses from 2**62, PostgreSQL from 2**63).
    So the window is bounded as ``[registration] rate_window`` is, the counts as its ``rate_limit``."""
    from kavach.server import LoginLimits

    assert getattr(LoginLimits(**{name: most}), name) == most
    for value in (most + 1, 2**62, 2**63):
        with pytest.raises(ValueError, match=f"LoginLimits.{name} must be a whole number between 1 and {most}"):
            LoginLimits(**{name: value})


def test_a_sign_in_window_past_the_bound_stops_serve_before_it_listens(tmp_path: Path, db: str) -> None:
    """``[sign_in] window = 2**63`` is one clear settings error at start (exit 2), not a server
    whose every sign-in fails."""
    toml = tmp_path / "k.toml"
    toml.write_text(f"[sign_in]\nwindow = {2**63}\n")
    expect = f"sign_in: LoginLimits.window must be a whole number between 1 and {MAX_RATE_WINDOW}"
    with pytest.raises(SettingsError, match=expect):
        resolve({"config": str(toml)}, {}).login_limits()
    line = bad(["serve", "--port", str(free_port()), "--db", db, "--config", str(toml)], "sign_in")
    assert f"window must be a whole number between 1 and {MAX_RATE_WINDOW}, not {2**63}" in line
    assert not Path(db).exists()


# -- 7. what the settings resolve to (found unpinned by a mutation audit) -----------------------


def test_default_issuer_names_the_address_served_on() -> None:
    """With no ``issuer``, the issuer is ``http://HOST:PORT``: every interface (``0.0.0.0``, ``::``)
    is named as ``127.0.0.1``, an IPv6 address is bracketed (RFC 3986 §3.2.2), once, whether it was given bare
    or as a URL writes it (then it is listened on bare), the host is lower-cased;
    a configured issuer is kept as written, and the resource is its origin followed by ``/mcp``."""
    assert resolve({"host": "0.0.0.0", "port": 9000}, {}).issuer_url == "http://127.0.0.1:9000"
    assert resolve({"host": "::"}, {}).issuer_url == "http://127.0.0.1:8000"
    assert resolve({"host": "::1"}, {}).issuer_url == "http://[::1]:8000"
    bracketed = resolve({"host": "[::1]"}, {})
    assert (bracketed.host, bracketed.issuer_url) == ("::1", "http://[::1]:8000")
    assert resolve({}, {"KAVACH_HOST": "[::]"}).issuer_url == "http://127.0.0.1:8000"
    assert resolve({}, {"KAVACH_HOST": "LocalHost", "KAVACH_PORT": "9"}).issuer_url == "http://localhost:9"
    settings = resolve({"issuer": "https://a.example/base/"}, {})
    assert settings.issuer_url == "https://a.example/base/"
    assert settings.resource_url == "https://a.example/mcp"


def test_given_names_only_what_a_flag_the_environment_or_the_file_set() -> None:
    """``Settings.given`` lists the settings some source gave, and nothing a default filled in."""
    assert resolve({"port": 9000, "db": None}, {"KAVACH_HOST": "127.0.0.2"}).given == frozenset({"port", "host"})
    assert resolve({}, {}).given == frozenset()


def test_environment_tables_are_merged_key_by_key_over_the_file(tmp_path: Path) -> None:
    """A ``KAVACH_*`` variable replaces one key of ``[lifetimes]``, ``[registration]`` or
    ``[documents]``, not the whole table the file gave; a flag does the same for ``[documents]``."""
    config = write(
        tmp_path,
        '[lifetimes]\ncode = 30\naccess_token = 50\n[registration]\nrate_limit = 5\nmode = "open"\n'
        '[documents]\nallow_hosts = ["a.example"]\nmax_fetches = 3\n',
    )
    settings = resolve(
        {"config": config, "documents": {"deny_hosts": ["b.example"]}},
        {"KAVACH_ACCESS_TOKEN_LIFETIME": "100", "KAVACH_REGISTRATION": "closed", "KAVACH_DOCUMENT_ALLOW_LOOPBACK": "0"},
    )
    assert settings.lifetimes == {"code": 30, "access_token": 100}
    assert settings.registration == {"rate_limit": 5, "mode": "closed"}
    assert settings.documents == {
        "allow_hosts": ("a.example",),
        "max_fetches": 3,
        "allow_loopback": False,
        "deny_hosts": ("b.example",),
    }
    assert settings.lifetimes_config().code == 30 and settings.registration_config().mode == "closed"


def test_true_and_false_words_and_an_unset_insecure_http_flag() -> None:
    """``KAVACH_ALLOW_INSECURE_HTTP`` takes 1/true/yes/on and 0/false/no/off/empty in any case; any
    other word is one line naming it. The flag left off (``False`` from argparse) does not undo
    the variable."""
    for word, expect in (("YES", True), ("on", True), (" 1 ", True), ("Off", False), ("", False), ("no", False)):
        assert resolve({}, {"KAVACH_ALLOW_INSECURE_HTTP": word}).allow_insecure_http is expect, word
    assert resolve({"allow_insecure_http": False}, {"KAVACH_ALLOW_INSECURE_HTTP": "true"}).allow_insecure_http is True
    assert resolve({"allow_insecure_http": True}, {}).allow_insecure_http is True
    expect = r"^environment: KAVACH_ALLOW_INSECURE_HTTP must be true or false, not 'maybe'$"
    with pytest.raises(SettingsError, match=expect):
        resolve({}, {"KAVACH_ALLOW_INSECURE_HTTP": "maybe"})


def test_registration_settings_errors_are_prefixed_once() -> None:
    """A ``[registration]`` problem is one line that starts with ``registration``; an unknown key
    (possible only from code, the file refuses it earlier) lists the known ones."""
    from kavach.settings import Settings

    with pytest.raises(SettingsError, match=r"^registration mode must be one of open, token, closed"):
        Settings(registration={"mode": "bogus"}).registration_config()
    with pytest.raises(SettingsError, match=r"^registration: unknown setting; the known ones are allowed_redirect_"):
        Settings(registration={"nope": 1}).registration_config()
    with pytest.raises(SettingsError, match=r"^lifetime code must be between 1 and 600 seconds"):
        Settings(lifetimes={"code": 0}).lifetimes_config()


def test_loopback_documents_only_for_a_server_on_loopback() -> None:
    """``documents.allow_loopback`` lets a client's metadata document (CM-02) be fetched from a
    loopback address: refused for a server listening on another address, even with a loopback issuer."""
    message = "^--document-allow-loopback \\(documents.allow_loopback\\): .* not one listening on 0.0.0.0$"
    with pytest.raises(SettingsError, match=message):
        resolve({"host": "0.0.0.0", "documents": {"allow_loopback": True}}, {}).fetch_policy()
    assert resolve({"documents": {"allow_loopback": True}}, {}).fetch_policy().allow_loopback is True


def test_upstream_scheme_and_fragment() -> None:
    """The upstream is an absolute http(s) URL without a fragment (RFC 3986 §4.3)."""
    with pytest.raises(SettingsError, match=r"^upstream 'http://a.example/mcp#x' must not have a fragment$"):
        resolve({"upstream": "http://a.example/mcp#x"}, {})
    with pytest.raises(SettingsError, match=r"must be an absolute http\(s\) URL"):
        resolve({"upstream": "ftp://a.example/mcp"}, {})
    with pytest.raises(SettingsError, match=r"must be written as a URI"):
        resolve({}, {"KAVACH_UPSTREAM": "http://a.example/m cp"})
    assert resolve({}, {"KAVACH_UPSTREAM": "https://a.example:8443/mcp"}).upstream == "https://a.example:8443/mcp"


def test_resource_table_forms(tmp_path: Path) -> None:
    """``[resource]``: scopes as a table (with descriptions) or a list (without), default scopes as
    a list or one space-separated string; anything else is one line naming the key."""
    config = write(tmp_path, '[resource]\nname = "N"\nscopes = ["a", "b"]\ndefault_scopes = ["a", "b"]\n')
    settings = resolve({"config": config}, {})
    assert (settings.resource_name, settings.scopes) == ("N", (("a", ""), ("b", "")))
    assert settings.default_scopes == ("a", "b")
    for body, message in (
        ("scopes = 3", "resource.scopes must be a table of scope = description"),
        ("scopes = [1]", "resource.scopes must be a table of scope = description"),
        ("name = 1", "resource.name must be a string"),
        ("default_scopes = [1]", "resource.default_scopes must be a list of scopes"),
        ("colour = 1", "unknown resource setting 'colour'"),
    ):
        with pytest.raises(SettingsError, match=message):
            resolve({"config": write(tmp_path, f"[resource]\n{body}\n")}, {})
    with pytest.raises(SettingsError, match=r"\[resource\] must be a table"):
        resolve({"config": write(tmp_path, "resource = 1\n")}, {})
    assert resolve({}, {"KAVACH_DEFAULT_SCOPES": " x  y "}).default_scopes == ("x", "y")


def test_where_the_data_lives_one_source_at_a_time(tmp_path: Path) -> None:
    """``db`` and ``store`` are one setting: a higher source's either replaces a lower's other, and
    one source giving both is refused; names in the file are relative to it, memory stays memory."""
    config = write(tmp_path, 'db = "k.db"\n')
    assert resolve({"config": config}, {}).db == str(tmp_path / "k.db")
    over = resolve({"config": config}, {"KAVACH_STORE": "redis://r.example/0"})
    assert (over.store, over.db) == ("redis://r.example/0", "kavach.db")
    assert resolve({"config": config, "db": "/x.db"}, {}).db == "/x.db"
    for store in (":memory:", "memory:", "sqlite:///:memory:", "/abs.db", "redis://h/1"):
        assert resolve({"config": write(tmp_path, f'store = "{store}"\n')}, {}).store == store
    assert resolve({"config": write(tmp_path, 'store = "SQLite:///d.db"\n')}, {}).store == f"sqlite:///{tmp_path}/d.db"
    assert resolve({"config": write(tmp_path, 'db = ":memory:"\n')}, {}).db == ":memory:"
    with pytest.raises(SettingsError, match=r"^the environment \(KAVACH_DB and KAVACH_STORE\): give a database"):
        resolve({}, {"KAVACH_DB": "a.db", "KAVACH_STORE": "b.db"})
    with pytest.raises(SettingsError, match=r"^--db and --store: give a database"):
        resolve({"db": "a.db", "store": "b.db"}, {})
    with pytest.raises(SettingsError, match=r"give a database \(db\) or a store, not both"):
        resolve({"config": write(tmp_path, 'db = "a"\nstore = "b"\n')}, {})


def test_booleans_from_the_file_are_kept(tmp_path: Path) -> None:
    """A TOML ``true`` or ``false`` is taken as it is, for ``allow_insecure_http`` and
    ``documents.allow_loopback``; a number is refused."""
    config = write(tmp_path, "allow_insecure_http = true\n[documents]\nallow_loopback = false\n")
    settings = resolve({"config": config}, {})
    assert settings.allow_insecure_http is True and settings.documents == {"allow_loopback": False}
    with pytest.raises(SettingsError, match=r"allow_insecure_http must be true or false, not 1$"):
        resolve({"config": write(tmp_path, "allow_insecure_http = 1\n")}, {})


def test_a_long_bad_number_is_shown_cut_at_40_characters() -> None:
    """The error quoting a bad number shows its first 40 characters and ``...``, never the whole
    value; a value that short is shown whole."""
    with pytest.raises(SettingsError) as cut:
        resolve({}, {"KAVACH_REFRESH_GRACE": "9" * 5000})
    assert str(cut.value) == f"environment: KAVACH_REFRESH_GRACE must be a whole number, not '{'9' * 39}..."
    with pytest.raises(SettingsError) as whole:
        resolve({}, {"KAVACH_REFRESH_GRACE": "x" * 38})
    assert str(whole.value) == f"environment: KAVACH_REFRESH_GRACE must be a whole number, not '{'x' * 38}'"
    with pytest.raises(SettingsError) as longer:
        resolve({}, {"KAVACH_REFRESH_GRACE": "x" * 39})
    assert str(longer.value) == f"environment: KAVACH_REFRESH_GRACE must be a whole number, not '{'x' * 39}..."
    assert resolve({}, {"KAVACH_REFRESH_GRACE": " -3 "}).refresh_grace == -3


def test_whole_numbers_and_seconds_refuse_other_types(tmp_path: Path) -> None:
    """A whole number is a TOML integer or ASCII decimal text; seconds are a finite TOML integer or float."""
    for body, message in (
        ("refresh_grace = 1.5", "refresh_grace must be a whole number, not 1.5$"),
        ('refresh_grace = "8_000"', "refresh_grace must be a whole number"),
        ("refresh_grace = true", "refresh_grace must be a whole number, not True$"),
        ("[documents]\ndeadline = true", "documents.deadline must be a number of seconds, not True$"),
        ("[documents]\ndeadline = nan", "documents.deadline must be a number of seconds, not nan$"),
        ('[documents]\ndeadline = "1"', "documents.deadline must be a number of seconds"),
    ):
        with pytest.raises(SettingsError, match=message):
            resolve({"config": write(tmp_path, body + "\n")}, {})
    assert resolve({"config": write(tmp_path, 'refresh_grace = "12"\n')}, {}).refresh_grace == 12


def test_the_first_unknown_key_in_order_is_named(tmp_path: Path) -> None:
    """With several unknown keys, the message names the first in sorted order, whichever table."""
    for body, message in (
        ("zz = 1\naa = 2", "unknown setting 'aa'$"),
        ("[documents]\nzz = 1\naa = 2", "unknown documents setting 'aa'$"),
        ("[registration]\nzz = 1\naa = 2", "unknown registration setting 'aa'$"),
        ("[resource]\nzz = 1\naa = 2", "unknown resource setting 'aa'$"),
    ):
        with pytest.raises(SettingsError, match=message):
            resolve({"config": write(tmp_path, body + "\n")}, {})


def test_document_host_lists_of_the_wrong_type_are_one_line(tmp_path: Path) -> None:
    """``documents.allow_hosts`` and ``deny_hosts`` take a list of strings or one string; a
    network only on the deny list (CM-02)."""
    for body, message in (
        ("allow_hosts = 3", "documents.allow_hosts must be a list of host names$"),
        ("allow_hosts = [1]", "documents.allow_hosts must be a list of host names$"),
        ('allow_hosts = ["10.0.0.0/8"]', "'10.0.0.0/8' is not a host name"),
        ('deny_hosts = ["a b"]', "'a b' is not a host name"),
        ('deny_hosts = ["10.0.0.1/99"]', "'10.0.0.1/99' is not a host name"),
    ):
        with pytest.raises(SettingsError, match=message):
            resolve({"config": write(tmp_path, f"[documents]\n{body}\n")}, {})
    config = write(tmp_path, '[documents]\ndeny_hosts = ["10.0.0.0/8", "b.example"]\n')
    assert resolve({"config": config}, {}).documents == {"deny_hosts": ("10.0.0.0/8", "b.example")}
    assert resolve({}, {"KAVACH_DOCUMENT_DENY_HOSTS": "10.0.0.0/8"}).fetch_policy().deny_hosts == ("10.0.0.0/8",)


def test_fetch_policy_problems_are_settings_errors(tmp_path: Path) -> None:
    """A ``[documents]`` value the fetcher refuses is a :class:`SettingsError` naming ``documents``;
    a server on every interface without ``allow_loopback`` is fine; a public issuer with it is
    refused for the issuer (draft-ietf-oauth-client-id-metadata-document §8.6)."""
    with pytest.raises(SettingsError, match=r"^documents: "):
        resolve({"config": write(tmp_path, "[documents]\ndeadline = 0\n")}, {}).fetch_policy()
    assert resolve({"host": "0.0.0.0"}, {}).fetch_policy().allow_loopback is False
    with pytest.raises(SettingsError, match=r"not the issuer https://auth.example.com$"):
        resolve(
            {"host": "0.0.0.0", "issuer": "https://auth.example.com", "documents": {"allow_loopback": True}}, {}
        ).fetch_policy()


def test_tables_from_one_source_only_are_kept(tmp_path: Path) -> None:
    """A table only the file gives, or only the environment, is taken whole from it."""
    config = write(tmp_path, "[lifetimes]\ncode = 30\n")
    assert resolve({"config": config}, {}).lifetimes == {"code": 30}
    assert resolve({"config": config}, {"KAVACH_REGISTRATION": "closed"}).registration == {"mode": "closed"}
    assert resolve({}, {"KAVACH_CODE_LIFETIME": "40"}).lifetimes == {"code": 40}


def test_the_config_file_from_the_environment_and_the_flag_over_it(tmp_path: Path) -> None:
    """``KAVACH_CONFIG`` names the file when ``--config`` does not; the flag wins."""
    by_env = write(tmp_path, "port = 9001\n", "env.toml")
    by_flag = write(tmp_path, "port = 9002\n", "flag.toml")
    settings = resolve({}, {"KAVACH_CONFIG": by_env})
    assert (settings.port, settings.config_file) == (9001, by_env)
    assert resolve({"config": by_flag}, {"KAVACH_CONFIG": by_env}).port == 9002
    assert resolve({}, {"KAVACH_CONFIG": ""}).config_file is None


@pytest.mark.parametrize("upstream", ["http://a..b/mcp", "http://.a/mcp", "http://./mcp"])
def test_an_upstream_whose_host_has_an_empty_label_is_refused(upstream: str) -> None:
    """A host with an empty label (RFC 1034 §3.1: only the root's is empty) names nothing any
    resolver looks up: refused where it is written, not on every proxied request. A trailing dot
    (the root label) and underscores (container networks' host names) stay allowed."""
    with pytest.raises(SettingsError, match=rf"^upstream {re.escape(repr(upstream))}: the host has an empty label"):
        resolve({"upstream": upstream}, {})
    for fine in ("http://a.example./mcp", "http://my_host:8000/mcp"):
        assert resolve({"upstream": fine}, {}).upstream == fine


def test_an_upstream_without_a_host_is_refused() -> None:
    """An upstream URL must name a host (RFC 3986 §3.2.2)."""
    with pytest.raises(SettingsError, match=r"^upstream 'http:///mcp' must be an absolute http\(s\) URL"):
        resolve({"upstream": "http:///mcp"}, {})
    with pytest.raises(SettingsError, match=r"give a port between 1 and 65535, or none$"):
        resolve({"upstream": "http://a.example:0/mcp"}, {})
    with pytest.raises(SettingsError, match=r"give a port between 1 and 65535, or none$"):
        resolve({"upstream": "http://a.example:/mcp"}, {})


def test_default_scopes_as_one_string_in_the_file(tmp_path: Path) -> None:
    """``resource.default_scopes`` may also be one space-separated string."""
    config = write(tmp_path, '[resource]\ndefault_scopes = "a  b"\n')
    assert resolve({"config": config}, {}).default_scopes == ("a", "b")


def test_an_empty_database_or_store_flag_is_refused() -> None:
    """``--db ""`` or ``--store ""`` is one line asking for a path or URL; an empty variable is as
    if unset."""
    with pytest.raises(SettingsError, match=r"^the database path is empty; give --db PATH$"):
        resolve({"db": ""}, {})
    with pytest.raises(SettingsError, match=r"^the store is empty; give --store URL"):
        resolve({"store": ""}, {})
    assert resolve({}, {"KAVACH_DB": "", "KAVACH_STORE": ""}).db == "kavach.db"


def test_list_settings_and_tables_of_the_wrong_shape_are_one_line(tmp_path: Path) -> None:
    """A list setting holding something other than strings, a table given as a value, an empty
    host list: each a :class:`SettingsError` naming the key, never a crash."""
    for body, message in (
        ("trusted_proxies = [1]", r"trusted_proxies must be a list of IP addresses or networks$"),
        ("trusted_proxies = 3", r"trusted_proxies must be a list of IP addresses or networks$"),
        ("documents = 1", r"\[documents\] must be a table$"),
        ("registration = 1", r"\[registration\] must be a table$"),
        ("[documents]\nallow_hosts = []", r"documents.allow_hosts names no host$"),
        ('[documents]\ndeny_hosts = " , "', r"documents.deny_hosts names no host$"),
    ):
        with pytest.raises(SettingsError, match=message):
            resolve({"config": write(tmp_path, body + "\n")}, {})


def test_ports_and_proxy_networks_at_their_bounds() -> None:
    """A port is 1 to 65535 wherever it comes from; a trusted proxy network of prefix length 0
    covers every address and is refused, one of length 1 is taken."""
    assert resolve({}, {"KAVACH_PORT": "65535"}).port == 65535 and resolve({"port": "1"}, {}).port == 1
    for env, flags in (({"KAVACH_PORT": "0"}, {}), ({"KAVACH_PORT": "65536"}, {}), ({}, {"port": 0})):
        with pytest.raises(SettingsError, match=r"port must be between 1 and 65535"):
            resolve(flags, env)
    with pytest.raises(SettingsError, match=r"^--trusted-proxies cannot be '0.0.0.0/0': it covers every address"):
        resolve({"trusted_proxies": "0.0.0.0/0"}, {})
    assert resolve({"trusted_proxies": "0.0.0.0/1"}, {}).trusted_proxies == ("0.0.0.0/1",)


def test_an_upstream_may_hold_any_printable_ascii() -> None:
    """Only spaces, control characters (up to U+0020, and U+007F) and non-ASCII make an upstream
    not a URI (RFC 3986 §2); ``!`` and ``~`` are kept."""
    assert resolve({"upstream": "http://a.example/m!c~p"}, {}).upstream == "http://a.example/m!c~p"
    for url in ("http://a.example/m\x7fcp", "http://a.example/m\x1fcp", "http://a.example/mé"):
        with pytest.raises(SettingsError, match=r"must be written as a URI"):
            resolve({"upstream": url}, {})


def test_more_one_line_refusals_of_the_settings() -> None:
    """An unknown log level, a percent-encoded upstream host, default scopes that are no list, a
    network given to ``--document-allow-host`` (only the deny list takes networks, CM-02): each
    one line naming the setting; a network on ``--document-deny-host`` is kept."""
    levels = "critical, error, warning, info, debug"
    with pytest.raises(SettingsError, match=rf"^log_level must be one of {levels}, not 'loud'$"):
        resolve({}, {"KAVACH_LOG_LEVEL": "LOUD"})
    with pytest.raises(SettingsError, match=r"^upstream 'http://exa%20mple/mcp': the host must not be percent-encoded"):
        resolve({"upstream": "http://exa%20mple/mcp"}, {})
    with pytest.raises(SettingsError, match=r"^--document-allow-host: '10.0.0.0/8' is not a host name"):
        resolve({"documents": {"allow_hosts": ["10.0.0.0/8"]}}, {})
    assert resolve({"documents": {"deny_hosts": "10.0.0.0/8"}}, {}).documents == {"deny_hosts": ("10.0.0.0/8",)}
    host_bits = resolve({"documents": {"deny_hosts": "10.0.0.1/8"}}, {})  # a network, host bits and all
    assert host_bits.documents == {"deny_hosts": ("10.0.0.1/8",)}


def test_a_plain_store_path_in_the_file_is_relative_to_it(tmp_path: Path) -> None:
    """``store = "p.db"`` (no scheme) names a file next to the settings file, as ``db`` does;
    ``default_scopes`` that are neither a string nor a list of strings are refused."""
    assert resolve({"config": write(tmp_path, 'store = "p.db"\n')}, {}).store == str(tmp_path / "p.db")
    with pytest.raises(SettingsError, match=r"resource.default_scopes must be a list of scopes$"):
        resolve({"config": write(tmp_path, "[resource]\ndefault_scopes = 3\n")}, {})


def test_an_upstream_url_that_does_not_parse_is_one_line() -> None:
    """An upstream whose authority does not parse (an unclosed IPv6 bracket, RFC 3986 §3.2.2; a port
    that is no number) is a :class:`SettingsError`, never an exception from ``urlsplit``."""
    for url in ("http://[::1/mcp", "http://a.example:x/mcp"):
        with pytest.raises(SettingsError, match=r"is not a valid URL \(check the host and the port\)$"):
            resolve({"upstream": url}, {})
