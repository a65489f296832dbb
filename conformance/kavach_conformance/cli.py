"""``kavach conformance``: arguments, and the run that prints the table and writes the JSON report."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from .http import KitError
from .report import one_line
from .runner import KitOptions, run_kit
from .session import describe

EXIT_STATUS = (
    "Exit status: 0 when no rule failed, 1 when one did (a server answer that is missing, late, too large or "
    "unreadable fails the rules being checked), 2 when the kit could not run (a bad option, no metadata, the "
    "server rate-limiting the kit, no authorization ending with a code (a wrong --password, say), an unexpected "
    "error of the kit: one line, never a traceback)."
)


PASSWORD_VAR = "KAVACH_CONFORMANCE_PASSWORD"
CLIENT_SECRET_VAR = "KAVACH_CONFORMANCE_CLIENT_SECRET"
"""Where the secrets may come from instead of the command line, whose arguments every user of the
machine can read in the process list (``/proc/PID/cmdline``) for as long as the run lasts."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUS
    parser.add_argument("--issuer", required=True, metavar="URL", help="the authorization server's issuer")
    parser.add_argument("--resource", metavar="URL", help="a protected resource (MCP server) of this issuer")
    parser.add_argument(
        "--other-resource",
        metavar="URL",
        help="another resource of this issuer; its tokens must be refused at --resource (RS-04)",
    )
    parser.add_argument(
        "--indicator-only",
        action="store_true",
        help="--resource is only a resource indicator of the AS; no protected resource is served there",
    )
    parser.add_argument("--client-id", metavar="ID", help="a registered client (its redirect URI: --redirect-uri)")
    parser.add_argument(
        "--client-secret",
        metavar="S",
        help=f"the client's secret (client_secret_basic); better in the environment, {CLIENT_SECRET_VAR}",
    )
    parser.add_argument("--register", action="store_true", help="register the kit's clients dynamically (RFC 7591)")
    parser.add_argument("--username", metavar="U", help="sign in as U (built-in form filler)")
    parser.add_argument(
        "--password",
        metavar="P",
        help=f"the password of --username; better in the environment, {PASSWORD_VAR} (a flag is seen in the "
        "process list)",
    )
    parser.add_argument(
        "--person",
        metavar="MODULE:CALLABLE",
        help="a callable (authorization_url, redirect_uri) -> the final redirect URL (the module may be in the "
        "current directory)",
    )
    parser.add_argument(
        "--redirect-port",
        type=int,
        default=8976,
        metavar="N",
        help="the loopback redirect URI's port: http://127.0.0.1:N/callback (default 8976)",
    )
    parser.add_argument("--redirect-uri", metavar="URI", help="use this redirect URI instead")
    parser.add_argument("--scope", metavar="SCOPES", help="scopes to request (default: two from the catalogue)")
    parser.add_argument(
        "--stateful", type=int, default=0, metavar="N", help="also run N examples of the hypothesis stateful test"
    )
    parser.add_argument(
        "--stateful-steps", type=int, default=10, metavar="N", help="steps per stateful example (default 10)"
    )
    parser.add_argument(
        "--stateful-shrink",
        type=int,
        default=60,
        metavar="S",
        help="seconds for shrinking a stateful failure; then the simplest failing sequence found is reported "
        "(default 60)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="seconds for each whole exchange, from connecting to the answer's last byte; none in time (or one "
        "over 1 MiB) fails the rules checked (default 15)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--all-rules", action="store_true", help="list every checklist rule, not only observable ones")


def options_from(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> KitOptions:
    """The run's options: the flags, and for a secret not given as one, its environment variable."""
    return KitOptions(
        issuer=args.issuer,
        resource=args.resource,
        other_resource=args.other_resource,
        resource_served=not args.indicator_only,
        client_id=args.client_id,
        client_secret=args.client_secret if args.client_secret is not None else environ.get(CLIENT_SECRET_VAR) or None,
        register=args.register,
        username=args.username,
        password=args.password if args.password is not None else environ.get(PASSWORD_VAR) or None,
        person=args.person,
        redirect_port=args.redirect_port,
        redirect_uri=args.redirect_uri,
        scopes=tuple(args.scope.split()) if args.scope else None,
        stateful_examples=args.stateful,
        stateful_steps=args.stateful_steps,
        stateful_shrink_seconds=args.stateful_shrink,
        timeout=args.timeout,
    )


def _check(args: argparse.Namespace) -> None:
    """The options the kit needs only at the end (or deep inside), checked before it starts."""
    if not 1 <= args.redirect_port <= 65535:
        raise KitError(f"--redirect-port {args.redirect_port} is not a port (1-65535)")
    if args.redirect_uri is not None and not _absolute_uri(args.redirect_uri):
        # sent as it is, a server refusing it would fail RG-01 and RG-02 for the kit's own mistake
        raise KitError(f"--redirect-uri {args.redirect_uri!r} is not an absolute URI without a fragment")
    if args.stateful < 0 or args.stateful_steps < 1:
        raise KitError("--stateful needs 0 or more examples and --stateful-steps 1 or more steps")
    if not 0 <= args.stateful_shrink <= 3600:
        raise KitError(f"--stateful-shrink {args.stateful_shrink} is not a number of seconds (0-3600)")
    if not 0 < args.timeout <= 3600:
        raise KitError(f"--timeout {args.timeout:g} is not a number of seconds (0-3600)")
    if args.json:
        target = Path(args.json)
        if target.is_dir() or not target.parent.is_dir():
            raise KitError(f"--json {args.json}: not a file in an existing folder")


def _absolute_uri(uri: str) -> bool:
    """``uri`` has a scheme and no fragment (RFC 6749 §3.1.2), and an http(s) one a host."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - a port out of range raises here
    except ValueError:
        return False
    web = parts.scheme.lower() in ("http", "https")
    return bool(parts.scheme) and "#" not in uri and (bool(parts.hostname) or not web)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when no rule failed, 1 when one did, 2 when the kit could not run.

    Whatever happens, the kit ends with one line on stderr, never a traceback: an exception it
    did not expect is a defect of the kit, reported as such with exit status 2."""
    try:
        return _run(args)
    except Exception as exc:  # the promise: no traceback, whatever a server (or the kit) does
        sys.stderr.write(f"kavach conformance: the kit stopped unexpectedly: {one_line(describe(exc))}\n")
        return 2


def _run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        report = run_kit(options_from(args))
    except KitError as exc:
        sys.stderr.write(f"kavach conformance: {one_line(str(exc))}\n")
        return 2
    shown = [report.table(only_observable=not args.all_rules)]
    if report.stateful is not None:
        shown += ["", one_line(f"stateful: {report.stateful['status']}: {report.stateful['reason']}")]
        shown += ["  " + one_line(line) for line in report.stateful.get("exchanges", [])]
    unwritten = _written("\n".join(shown) + "\n")
    if unwritten is not None:
        return unwritten
    if args.json:
        try:
            report.write_json(args.json)
        except OSError as exc:
            sys.stderr.write(f"kavach conformance: cannot write {args.json}: {exc.strerror or exc}\n")
            return 2
        unwritten = _written(f"\nreport written to {args.json}\n")
        if unwritten is not None:
            return unwritten
    return 1 if report.failed() else 0


def _written(text: str) -> int | None:
    """Writes ``text`` to standard output and flushes it; ``None``, or the exit status when it
    could not be written: 141 (as a shell shows SIGPIPE) and nothing said when the reader went away
    (``| head``), else one line on stderr and 2 (a full disk, a closed stdout). What is still
    buffered then goes to ``/dev/null``, so it cannot fail again at exit."""
    try:
        if sys.stdout is None:
            raise OSError("standard output is closed")
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        if sys.stdout is not None:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        if isinstance(exc, BrokenPipeError):
            return 141
        sys.stderr.write(f"kavach conformance: cannot write the output: {exc.strerror or exc}\n")
        return 2
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m kavach_conformance``: the same as ``kavach conformance``."""
    parser = argparse.ArgumentParser(prog="python -m kavach_conformance", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # argparse wrote --help's text, or its error: a text that cannot be written fails here
        unwritten = _written("")
        if unwritten is not None:
            return unwritten
        raise
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
