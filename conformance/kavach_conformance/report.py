"""Results: one :class:`Check` per observation, folded into one :class:`RuleResult` per rule id."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs

from .rules import OBSERVABLE, RULES

PASS = "pass"
FAIL = "fail"
NA = "n/a"


@attrs.define
class Check:
    """One observation: the rule it bears on, its outcome and why, and the exchanges that show it."""

    rule: str
    name: str
    status: str
    reason: str
    exchanges: list[str] = attrs.Factory(list)
    stopped: bool = False
    """The check group stopped here: no answer, or one the kit could not read (shown first)."""


@attrs.define
class RuleResult:
    rule: str
    title: str
    status: str
    reason: str
    checks: list[Check] = attrs.Factory(list)


def fold(rule: str, checks: list[Check]) -> RuleResult:
    """``fail`` if any check failed, else ``pass`` if any passed, else ``n/a``."""
    title = RULES.get(rule, "")
    failed = sorted((c for c in checks if c.status == FAIL), key=lambda c: not c.stopped)
    passed = [c for c in checks if c.status == PASS]
    if failed:
        return RuleResult(rule, title, FAIL, "; ".join(f"{c.name}: {c.reason}" for c in failed), checks)
    if passed:
        return RuleResult(rule, title, PASS, f"{len(passed)} check(s) passed", checks)
    if checks:
        return RuleResult(rule, title, NA, "; ".join(c.reason for c in checks), checks)
    reason = "not checked" if rule in OBSERVABLE else "not observable over HTTP"
    return RuleResult(rule, title, NA, reason, checks)


@attrs.define
class Report:
    issuer: str
    resource: str | None
    checks: list[Check] = attrs.Factory(list)
    stateful: dict[str, Any] | None = None
    meta: dict[str, Any] = attrs.Factory(dict)

    def add(self, check: Check) -> None:
        self.checks.append(check)

    def rules(self) -> list[RuleResult]:
        by_rule: dict[str, list[Check]] = {rule: [] for rule in RULES}
        for check in self.checks:
            by_rule.setdefault(check.rule, []).append(check)
        return [fold(rule, checks) for rule, checks in by_rule.items()]

    def status(self, rule: str) -> str:
        for result in self.rules():
            if result.rule == rule:
                return result.status
        raise KeyError(rule)

    def failed(self) -> list[str]:
        return [r.rule for r in self.rules() if r.status == FAIL]

    def to_json(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "resource": self.resource,
            "meta": self.meta,
            "rules": [
                {
                    "rule": r.rule,
                    "title": r.title,
                    "status": r.status,
                    "reason": r.reason,
                    "checks": [attrs.asdict(c) for c in r.checks],
                }
                for r in self.rules()
            ],
            "stateful": self.stateful,
        }

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, indent=2)
            fh.write("\n")

    def table(self, *, only_observable: bool = False) -> str:
        return format_table(r for r in self.rules() if not only_observable or r.rule in OBSERVABLE)


def one_line(text: str) -> str:
    """``text`` safe for a terminal, on one line: every control or other unprintable character is
    written as an escape (``\\x1b``, ``\\n`` ...), so a server cannot move the cursor or add lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def format_table(results: Iterable[RuleResult], width: int = 100) -> str:
    lines = [f"{'rule':<6}  {'result':<6}  reason", f"{'-' * 6}  {'-' * 6}  {'-' * 40}"]
    for r in results:
        reason = one_line(r.reason)
        if len(reason) > width:
            reason = reason[: width - 3] + "..."
        lines.append(f"{r.rule:<6}  {r.status:<6}  {reason}")
    return "\n".join(lines)
