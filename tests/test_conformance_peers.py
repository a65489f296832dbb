"""The conformance kit against independent authorization servers: an Authlib-based server and
node-oidc-provider. They may fail rules (that is what the kit is for; docs/conformance.md shows
the comparison); these tests assert that the kit completes against each, decides every rule it
checks from what the server answered (no check ends because the kit broke), and writes its report.
"""

from __future__ import annotations

import json
from pathlib import Path

import node_env
from kavach_conformance import KitOptions, Report, run_kit
from kavach_conformance.report import FAIL, NA, PASS
from kavach_conformance.rules import OBSERVABLE, RULES
from kavach_serve import free_port
from peer_servers import authlib_server, ensure_oidc_provider, oidc_provider
from prerequisites import missing


def assert_decided(report: Report, path: Path) -> dict[str, str]:
    report.write_json(str(path))
    data = json.loads(path.read_text())
    statuses = {r["rule"]: r["status"] for r in data["rules"]}
    assert set(statuses) == set(RULES)
    assert all(status in (PASS, FAIL, NA) for status in statuses.values())
    broken = [c for c in report.checks if "kit could not finish" in c.reason or "unexpected answer" in c.reason]
    assert broken == [], report.table()
    assert report.stateful is not None and report.stateful["status"] in (PASS, FAIL)
    return statuses


def test_kit_against_authlib_server(tmp_path: Path) -> None:
    with authlib_server(tmp_path) as issuer:
        report = run_kit(KitOptions(issuer=issuer, register=True, redirect_port=free_port(), stateful_examples=3))
    statuses = assert_decided(report, tmp_path / "authlib.json")
    # What the Authlib peer does right, as a sanity check of the run itself.
    assert statuses["MD-01"] == PASS and statuses["TK-03"] == PASS and statuses["TK-08"] == PASS
    assert {statuses[r] for r in OBSERVABLE} >= {PASS}


def test_kit_against_node_oidc_provider(tmp_path: Path) -> None:
    try:
        environ = ensure_oidc_provider()
    except node_env.NodeEnvError as exc:
        missing(f"oidc-provider prerequisites missing: {exc}")
    with oidc_provider(tmp_path, environ) as issuer:
        report = run_kit(
            KitOptions(
                issuer=issuer,
                resource=issuer + "/mcp",
                resource_served=False,
                register=True,
                username="alice",
                password="any",
                redirect_port=free_port(),
                stateful_examples=3,
            )
        )
    statuses = assert_decided(report, tmp_path / "oidc-provider.json")
    assert statuses["AZ-05"] == PASS and statuses["TK-06"] == PASS and statuses["TK-07"] == PASS
