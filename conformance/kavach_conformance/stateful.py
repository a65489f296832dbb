"""A hypothesis stateful test over HTTP: random interleavings of authorize, redeem, code replay,
refresh, refresh-token replay and revocation, with the invariants checked after every step.

Invariants (each assertion names the rule it guards):

- TK-04: a code yields tokens at most once; a replayed code revokes what it produced.
- TK-07: a refresh rotates the token; a superseded refresh token never works again and its
  whole family is revoked (the immediately preceding token may, within the server's grace
  window, be answered with the *same* successor).
- RV-01 / TK-04 / TK-07: every token of a revoked grant is inactive (introspection when the kit
  has a confidential client, else the protected resource, else a failing refresh).

On a failure hypothesis shrinks the sequence; the kit reports the HTTP exchanges of the final,
shortest replay: method, URL, status and the parameters that matter. Every replay signs in again,
so shrinking has a time budget; once it is spent, the simplest failing sequence found is reported.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.internal.conjecture import engine
from hypothesis.reporting import with_reporter
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from .http import Http, KitError, Stop
from .report import FAIL, NA, PASS
from .session import BadAnswer, Client, Session, Skip, describe, json_object, refresh_token_of


@attrs.define(eq=False)
class Family:
    """The tokens of one grant, in issue order; ``revoked`` once the model says they must be dead."""

    client: Client
    refresh: list[str]
    access: list[str]
    revoked: bool = False
    confirmed: bool = False
    by_request: bool = False
    """Revoked by a revocation request (RFC 7009), not by a code or refresh-token replay."""


@attrs.define(eq=False)
class Code:
    code: str
    verifier: str
    used: bool = False
    family: Family | None = None


class _Stop(BaseException):
    """Ends the whole run at once, without shrinking or replays (hypothesis re-raises a
    BaseException that is not an Exception): the server gave no answer, or the test cannot run."""


class _Base(RuleBasedStateMachine):
    session: Session
    client: Client
    machines: list[_Base]
    failures: list[str]

    codes = Bundle("codes")
    families = Bundle("families")

    def __init__(self) -> None:
        super().__init__()
        self.mark = self.session.http.mark()
        self.all_families: list[Family] = []
        self.rotations = 0
        """Refreshes that rotated the refresh token: TK-07 is credited only when there was one."""
        self.revocations = 0
        """Revocations so far (a reuse, a replay, a revocation request). A server may revoke more
        than one family at once (several codes sharing one grant, as node-oidc-provider does), so
        once anything was revoked a refused fresh code or current refresh token revokes that family
        in the model instead of failing: revoking more is safe, never revoking less is the rule."""
        self.machines.append(self)

    @initialize()
    def start(self) -> None:
        self.mark = self.session.http.mark()

    def expect(self, condition: object, message: str) -> None:
        """An assertion naming its rule; the first one is kept in case a replay does not repeat it."""
        if not condition:
            self.failures.append(message)
            raise AssertionError(message)

    def tokens(self, response: httpx.Response) -> dict[str, Any]:
        """A 200 token response's body (RFC 6749 §5.1): an ``access_token`` string, and a
        ``refresh_token`` that, when present, is a non-empty string too."""
        body = json_object(response)
        self.expect(
            body is not None and isinstance(body.get("access_token"), str),
            f"TK-01: a 200 token response without an access_token: {response.text[:100]!r}",
        )
        assert body is not None
        try:
            refresh_token_of(body)
        except BadAnswer as exc:
            self.expect(False, f"TK-01/TK-07: {exc}")
        return body

    # -- steps ----------------------------------------------------------------------------

    @rule(target=codes)
    def authorize(self) -> Code:
        try:
            code, verifier, _ = self.session.code(self.client)
        except Skip as exc:  # not a finding of this test: it cannot run
            raise _Stop(exc) from exc
        return Code(code, verifier)

    @rule(target=families, c=codes)
    def redeem(self, c: Code) -> Any:
        response = self.session.redeem(self.client, c.code, c.verifier)
        if c.used:
            self.expect(response.status_code != 200, "TK-04: a code yielded tokens a second time")
            if c.family is not None and not c.family.revoked:
                c.family.revoked = True
                self.revocations += 1
            return multiple()
        if response.status_code != 200 and self.revocations:
            c.used = True
            return multiple()
        self.expect(response.status_code == 200, f"TK-03: a fresh code was refused: {response.status_code}")
        body = self.tokens(response)
        family = Family(
            self.client, [body["refresh_token"]] if body.get("refresh_token") else [], [body["access_token"]]
        )
        c.used = True
        c.family = family
        self.all_families.append(family)
        return family

    @rule(f=families)
    def refresh(self, f: Family) -> None:
        if not f.refresh:
            return
        response = self.session.refresh(self.client, f.refresh[-1])
        if f.revoked:
            self.expect(response.status_code != 200, "TK-07: the refresh token of a revoked family still works")
            return
        if response.status_code != 200 and self.revocations:
            f.revoked = True
            return
        self.expect(
            response.status_code == 200, f"TK-07: the current refresh token was refused: {response.status_code}"
        )
        body = self.tokens(response)
        successor = body.get("refresh_token")
        self.expect(
            isinstance(successor, str) and bool(successor) and successor not in f.refresh,
            "TK-07: the refresh token was not rotated",
        )
        assert isinstance(successor, str)  # expect() raised otherwise
        self.rotations += 1
        f.refresh.append(successor)
        f.access.append(body["access_token"])

    @rule(f=families, back=st.integers(min_value=1, max_value=4))
    def replay_refresh(self, f: Family, back: int) -> None:
        if len(f.refresh) < 2:
            return
        index = max(0, len(f.refresh) - 1 - back)
        response = self.session.refresh(self.client, f.refresh[index])
        if f.revoked:
            self.expect(response.status_code != 200, "TK-07: a refresh token of a revoked family still works")
            return
        if response.status_code == 200:
            body = self.tokens(response)
            immediate = index == len(f.refresh) - 2
            self.expect(immediate, "TK-07: a superseded refresh token was accepted")
            self.expect(
                body.get("refresh_token") == f.refresh[-1],
                "TK-07: a retried refresh token produced a new branch instead of the same successor",
            )
            f.access.append(body["access_token"])
            return
        f.revoked = True
        self.revocations += 1

    @rule(f=families)
    def revoke(self, f: Family) -> None:
        if not isinstance(self.session.meta.get("revocation_endpoint"), str) or not f.refresh:
            return
        response = self.session.revoke(self.client, f.refresh[-1], "refresh_token")
        self.expect(response.status_code == 200, f"RV-01: revocation answered {response.status_code}")
        f.revoked = True
        f.by_request = True
        self.revocations += 1

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def revoked_families_are_dead(self) -> None:
        for f in self.all_families:
            if not f.revoked:
                continue
            active, observer = self.session.token_state(self.client, f.access[-1])
            # Introspection saying "active" for a revoked token breaks RFC 7662 §2.2 (IN-01) as well,
            # and a grant revoked by a revocation request breaks RFC 7009 (RV-01).
            rules = ["TK-04", "TK-07"] + ["RV-01"] * f.by_request + ["IN-01"] * (observer == "introspection")
            self.expect(active is not True, f"{'/'.join(rules)}: an access token of a revoked grant is still active")
            if not f.confirmed and f.refresh:
                response = self.session.refresh(self.client, f.refresh[-1])
                self.expect(response.status_code != 200, "TK-07: the refresh token of a revoked grant still works")
                f.confirmed = True


def machine_for(session: Session) -> type[_Base]:
    """A state machine class bound to ``session`` (``machine_for(s).TestCase`` runs it under unittest/pytest)."""
    client = session.confidential or session.client()
    return type("ConformanceMachine", (_Base,), {"session": session, "client": client, "machines": [], "failures": []})


@contextlib.contextmanager
def _stop_on_kit_errors(http: Http) -> Iterator[None]:
    """A request without an answer (or rate-limited) stops the run instead of failing one example:
    hypothesis would replay, and wait for, it again and again while shrinking."""
    request = http.request

    def stopping(*args: Any, **kwargs: Any) -> httpx.Response:
        try:
            return request(*args, **kwargs)
        except KitError as exc:
            raise _Stop(exc) from exc

    http.request = stopping  # type: ignore[method-assign]
    try:
        yield
    finally:
        del http.request


@contextlib.contextmanager
def _shrinking_for(seconds: int) -> Iterator[None]:
    """Shrinking stops after ``seconds``, by hypothesis's own limit (its engine's
    ``MAX_SHRINKING_SECONDS``, five minutes otherwise) and the final replay is of the simplest
    failing sequence found by then. Its warning and any other output of hypothesis's reporter
    are kept out of the kit's report. Runs are not concurrent: the limit is a module global. A
    hypothesis without that limit shrinks within its own bounds."""
    limit = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if limit is not None:
        engine.MAX_SHRINKING_SECONDS = seconds
    try:
        with with_reporter(lambda _text: None):
            yield
    finally:
        if limit is not None:
            engine.MAX_SHRINKING_SECONDS = limit


def run_stateful(
    session: Session, examples: int, steps: int = 10, *, derandomize: bool = False, shrink_seconds: int = 60
) -> dict[str, Any]:
    """Run ``examples`` random sequences; on failure, the shrunk sequence's exchanges.

    ``derandomize`` makes the sequences the same on every run (for a reproducible CI check).
    ``shrink_seconds`` bounds shrinking: every replay signs in again, and against a slow server
    hypothesis's own limit would hold the run for minutes."""
    from hypothesis.stateful import run_state_machine_as_test

    started = time.monotonic()
    try:
        machine = machine_for(session)
    except Skip as exc:
        return _result(NA, f"could not run: {exc}", [], examples, started)
    config = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        report_multiple_bugs=False,
        print_blob=False,
        derandomize=derandomize,
    )
    try:
        with _stop_on_kit_errors(session.http), _shrinking_for(shrink_seconds):
            run_state_machine_as_test(machine, settings=config)
    except _Stop as stop:
        cause = stop.__cause__
        if isinstance(cause, Stop):
            raise cause from None
        exchanges = session.http.since(machine.machines[-1].mark)
        if isinstance(cause, Skip):
            return _result(NA, f"could not run: {cause}", exchanges, examples, started)
        return _result(FAIL, f"stopped: {cause}", exchanges, examples, started)
    except (AssertionError, Flaky) as exc:
        exchanges = session.http.since(machine.machines[-1].mark)
        if isinstance(exc, AssertionError):
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            first = machine.failures[0] if machine.failures else "a failure"
            message = f"{first} (not repeated when replayed: the server answers the same steps differently)"
        return _result(FAIL, message, exchanges, examples, started)
    except Exception as exc:  # an answer the kit could not use: the test stops, the report still prints
        exchanges = session.http.since(machine.machines[-1].mark) if machine.machines else []
        return _result(FAIL, f"stopped: {describe(exc)}", exchanges, examples, started)
    rotations = sum(m.rotations for m in machine.machines)
    result = _result(
        PASS,
        f"{examples} random sequences of up to {steps} steps kept every invariant ({rotations} refresh rotations)",
        [],
        examples,
        started,
    )
    result["rotations"] = rotations
    return result


def _result(status: str, reason: str, exchanges: list[str], examples: int, started: float) -> dict[str, Any]:
    rules = re.findall(r"\b([A-Z]{2}-\d\d)\b", reason.split(":", 1)[0]) or ["TK-04", "TK-07"]
    return {
        "status": status,
        "reason": reason,
        "rules": rules,
        "exchanges": exchanges,
        "examples": examples,
        "seconds": round(time.monotonic() - started, 1),
    }
