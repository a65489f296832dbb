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
shortest replay: method, URL, status and the parameters that matter.
"""

from __future__ import annotations

import re
import time
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from .report import FAIL, PASS
from .session import Client, Session, Skip


@attrs.define(eq=False)
class Family:
    """The tokens of one grant, in issue order; ``revoked`` once the model says they must be dead."""

    client: Client
    refresh: list[str]
    access: list[str]
    revoked: bool = False
    confirmed: bool = False


@attrs.define(eq=False)
class Code:
    code: str
    verifier: str
    used: bool = False
    family: Family | None = None


class _Base(RuleBasedStateMachine):
    session: Session
    client: Client
    machines: list[_Base]

    codes = Bundle("codes")
    families = Bundle("families")

    def __init__(self) -> None:
        super().__init__()
        self.mark = self.session.http.mark()
        self.all_families: list[Family] = []
        self.revocations = 0
        """Revocations so far (a reuse, a replay, a revocation request). A server may revoke more
        than one family at once (several codes sharing one grant, as node-oidc-provider does), so
        once anything was revoked a refused fresh code or current refresh token revokes that family
        in the model instead of failing: revoking more is safe, never revoking less is the rule."""
        self.machines.append(self)

    @initialize()
    def start(self) -> None:
        self.mark = self.session.http.mark()

    # -- steps ----------------------------------------------------------------------------

    @rule(target=codes)
    def authorize(self) -> Code:
        try:
            code, verifier, _ = self.session.code(self.client)
        except Skip as exc:
            raise AssertionError(f"AZ-05: {exc}") from exc
        return Code(code, verifier)

    @rule(target=families, c=codes)
    def redeem(self, c: Code) -> Any:
        response = self.session.redeem(self.client, c.code, c.verifier)
        if c.used:
            assert response.status_code != 200, "TK-04: a code yielded tokens a second time"
            if c.family is not None and not c.family.revoked:
                c.family.revoked = True
                self.revocations += 1
            return multiple()
        if response.status_code != 200 and self.revocations:
            c.used = True
            return multiple()
        assert response.status_code == 200, f"TK-03: a fresh code was refused: {response.status_code}"
        body = response.json()
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
            assert response.status_code != 200, "TK-07: the refresh token of a revoked family still works"
            return
        if response.status_code != 200 and self.revocations:
            f.revoked = True
            return
        assert response.status_code == 200, f"TK-07: the current refresh token was refused: {response.status_code}"
        body = response.json()
        successor = body.get("refresh_token")
        assert successor and successor not in f.refresh, "TK-07: the refresh token was not rotated"
        f.refresh.append(successor)
        f.access.append(body["access_token"])

    @rule(f=families, back=st.integers(min_value=1, max_value=4))
    def replay_refresh(self, f: Family, back: int) -> None:
        if len(f.refresh) < 2:
            return
        index = max(0, len(f.refresh) - 1 - back)
        response = self.session.refresh(self.client, f.refresh[index])
        if f.revoked:
            assert response.status_code != 200, "TK-07: a refresh token of a revoked family still works"
            return
        if response.status_code == 200:
            body = response.json()
            immediate = index == len(f.refresh) - 2
            assert immediate, "TK-07: a superseded refresh token was accepted"
            assert body.get("refresh_token") == f.refresh[-1], (
                "TK-07: a retried refresh token produced a new branch instead of the same successor"
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
        assert response.status_code == 200, f"RV-01: revocation answered {response.status_code}"
        f.revoked = True
        self.revocations += 1

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def revoked_families_are_dead(self) -> None:
        for f in self.all_families:
            if not f.revoked:
                continue
            active = self.session.token_active(self.client, f.access[-1])
            assert active is not True, "TK-04/TK-07: an access token of a revoked grant is still active"
            if not f.confirmed and f.refresh:
                response = self.session.refresh(self.client, f.refresh[-1])
                assert response.status_code != 200, "TK-07: the refresh token of a revoked grant still works"
                f.confirmed = True


def machine_for(session: Session) -> type[_Base]:
    """A state machine class bound to ``session`` (``machine_for(s).TestCase`` runs it under unittest/pytest)."""
    client = session.confidential or session.primary
    assert client is not None
    return type("ConformanceMachine", (_Base,), {"session": session, "client": client, "machines": []})


def run_stateful(session: Session, examples: int, steps: int = 10, *, derandomize: bool = False) -> dict[str, Any]:
    """Run ``examples`` random sequences; on failure, the shrunk sequence's exchanges.

    ``derandomize`` makes the sequences the same on every run (for a reproducible CI check)."""
    from hypothesis.stateful import run_state_machine_as_test

    machine = machine_for(session)
    started = time.monotonic()
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
        run_state_machine_as_test(machine, settings=config)
    except AssertionError as exc:
        last = machine.machines[-1]
        exchanges = session.http.since(last.mark)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        rules = re.findall(r"\b([A-Z]{2}-\d\d)\b", message.split(":", 1)[0]) or ["TK-04", "TK-07"]
        return {
            "status": FAIL,
            "reason": message,
            "rules": rules,
            "exchanges": exchanges,
            "examples": examples,
            "seconds": round(time.monotonic() - started, 1),
        }
    return {
        "status": PASS,
        "reason": f"{examples} random sequences of up to {steps} steps kept every invariant",
        "exchanges": [],
        "examples": examples,
        "seconds": round(time.monotonic() - started, 1),
    }
