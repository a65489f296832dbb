"""Run every check against one server and collect a :class:`~.report.Report`."""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from .checks import ALL_CHECKS
from .http import Http, KitError, Stop, origin
from .person import FormPerson, PersonStep, load_callable
from .report import FAIL, NA, PASS, Check, Report
from .session import Session, Skip, describe


@attrs.define
class KitOptions:
    issuer: str
    resource: str | None = None
    other_resource: str | None = None
    resource_served: bool = True
    client_id: str | None = None
    client_secret: str | None = None
    register: bool = False
    username: str | None = None
    password: str | None = None
    person: str | PersonStep | None = None
    redirect_port: int = 8976
    redirect_uri: str | None = None
    scopes: tuple[str, ...] | None = None
    stateful_examples: int = 0
    stateful_steps: int = 10
    stateful_shrink_seconds: int = 60
    timeout: float = 15.0

    def callback(self) -> str:
        return self.redirect_uri or f"http://127.0.0.1:{self.redirect_port}/callback"


def make_session(options: KitOptions) -> Session:
    allowed = [u for u in (options.issuer, options.resource, options.other_resource) if u]
    http = Http(allowed, timeout=options.timeout)
    person: PersonStep
    if options.person is None:
        person = FormPerson(http, options.username, options.password)
    elif isinstance(options.person, str):
        person = load_callable(options.person)
    else:
        person = options.person
    session = Session(
        http,
        issuer=options.issuer,
        resource=options.resource,
        other_resource=options.other_resource,
        person=person,
        redirect_uri=options.callback(),
        scopes=options.scopes,
    )
    session.resource_served = options.resource_served
    session.discover()
    session.setup_clients(options.client_id, options.client_secret, options.register)
    return session


def run_kit(options: KitOptions) -> Report:
    """Every check, then (when asked) the stateful test. A server's behaviour is reported, never
    raised, except when the kit cannot run: :class:`KitError` (no metadata, a 429, no valid
    authorization request that ever ended with a code)."""
    for url in (options.issuer, options.resource, options.other_resource):
        if url is not None and (origin(url).split(":", 1)[0] not in ("http", "https") or not urlsplit(url).hostname):
            raise KitError(f"{url!r} is not an http(s) URL")
    report = Report(options.issuer, options.resource)
    session = make_session(options)
    report.meta = {
        "metadata": session.meta_source,
        "client": session.primary.client_id if session.primary else None,
        "second_client": session.second is not None,
        "confidential_client": session.confidential is not None,
        "scopes": list(session.scopes()),
    }
    try:
        for name, rules, check in ALL_CHECKS:
            mark = session.http.mark()

            def record(rule: str, what: str, passed: bool | None, reason: str, _mark: int = mark) -> None:
                status = NA if passed is None else PASS if passed else FAIL
                report.add(Check(rule, what, status, reason, session.http.since(_mark)[-8:]))

            try:
                check(session, record)
            except Skip as exc:
                for rule in rules:
                    if not any(c.rule == rule for c in report.checks):
                        report.add(Check(rule, name, NA, str(exc)))
            except Stop:
                raise
            except Exception as exc:  # no answer, or one the kit could not read: the rules checked fail
                exchanges = session.http.since(mark)[-8:]
                for rule in rules:
                    report.add(Check(rule, name, FAIL, f"stopped: {describe(exc)}", exchanges, stopped=True))
        if not session.authorized and session.unauthorized is not None:
            # A wrong password, a sign-in that never works: every check needing a code was n/a,
            # and a run that decided nothing of the flow must not end as if it had passed.
            raise KitError(f"could not complete any authorization: {session.unauthorized}")
        if options.stateful_examples > 0:
            from .stateful import run_stateful

            report.stateful = run_stateful(
                session,
                options.stateful_examples,
                options.stateful_steps,
                shrink_seconds=options.stateful_shrink_seconds,
            )
            if report.stateful["status"] == FAIL:
                for rule in report.stateful["rules"]:
                    report.add(Check(rule, "stateful", FAIL, report.stateful["reason"], report.stateful["exchanges"]))
            elif report.stateful.get("rotations"):  # passed having rotated refresh tokens
                report.add(Check("TK-07", "stateful", PASS, report.stateful["reason"]))
    finally:
        if isinstance(session.person, FormPerson):
            session.person.close()
        session.http.close()
    return report
