"""Issue 3: the official MCP conformance suite's authorization-server scenarios against ``kavach serve``.

``npx @modelcontextprotocol/conformance@0.2.0-alpha.12 authorization --url <issuer>`` (pinned in
``tests/node/package-lock.json``, run on the project-local Node 22) runs, in this order:

- ``authorization-server-metadata-endpoint``: fetches ``/.well-known/oauth-authorization-server``
  (then the OpenID variants); 200, ``application/json``, ``issuer`` byte-identical to ``--url``,
  ``authorization_endpoint``, ``token_endpoint``, ``response_types_supported`` with ``code``,
  ``code_challenge_methods_supported`` with ``S256`` (MD-01, MD-02); a WARNING (not a failure)
  unless ``client_id_metadata_document_supported`` is true (CM-01): kavachOS supports client ID
  metadata documents, so that check must succeed and the run has no warnings at all.
- ``authorization-code-grant``: needs ``--client-id`` of a client registered with the redirect URI
  ``http://127.0.0.1:<--port>/callback`` (pre-registered here with ``kavach clients add``); prints
  the authorization URL (PKCE S256, ``state``, optional ``resource``) and waits for the browser
  to reach its callback listener; checks the response (redirect URI, exactly one ``state`` equal
  to the one sent, one non-empty ``code``, no ``error``, ``iss`` equal to the metadata's issuer
  when present), then redeems the code (``client_id`` in the body for a public client) and
  wants 200, ``application/json``, ``Cache-Control: no-store``, ``access_token`` and
  ``token_type`` (AZ-05, AZ-08, TK-01, TK-03). This scenario reads the first one's result, so the
  two are always run together (``--scenario`` alone would start it with no metadata).

The test plays the person at the printed URL (:mod:`person`), requires zero failures, and
reports every WARNING as a pytest warning, so it shows in the run's summary.
"""

from __future__ import annotations

import json
import re
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import node_env
import pytest
from kavach_serve import free_port, serve
from person import Person
from process_lines import lines

PACKAGE = "@modelcontextprotocol/conformance@0.2.0-alpha.12"
RUN_TIMEOUT = 180.0
USERNAME, PASSWORD = "conformance-person", "a long enough test password"


@pytest.fixture(scope="module")
def node() -> dict[str, str]:
    return node_env.require()


def run_conformance(
    issuer: str, client_id: str, port: int, out_dir: Path, env: dict[str, str], resource: str | None
) -> tuple[int, str, list[str]]:
    """Run the suite; sign in and approve when it prints its authorization URL. Returns the exit
    status, the whole output, and the final URLs the person was sent to."""
    args = [
        "npx",
        "--offline",
        PACKAGE,
        "authorization",
        "--url",
        issuer,
        "--client-id",
        client_id,
        "--port",
        str(port),
        "--output-dir",
        str(out_dir),
    ]
    if resource is not None:
        args += ["--resource", resource]
    proc = subprocess.Popen(
        args,
        cwd=node_env.PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    landed: list[str] = []
    try:
        with Person(USERNAME, PASSWORD) as person:
            for line in lines(proc, RUN_TIMEOUT, lambda: "conformance suite timed out:\n" + "".join(output)):
                output.append(line)
                # The scenario prints the URL alone on a line, after "Access the following URL".
                if line.startswith(f"{issuer}/") and "response_type=code" in line:
                    landed.append(person.authorize(line.strip()))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode, "".join(output), landed


def read_checks(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Each scenario's ``checks.json``, by scenario name."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out_dir.glob("authorization-server-*/checks.json")):
        # Directories are named "<scenario>-<ISO timestamp>", e.g. "...-grant-2026-11-26T13-49-12-207Z".
        name = re.sub(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z?$", "", path.parent.name.removeprefix("authorization-server-"))
        found[name] = json.loads(path.read_text())
    return found


@pytest.mark.parametrize("with_resource", [True, False], ids=["resource", "no-resource"])
def test_conformance_authorization_server_scenarios(node: dict[str, str], tmp_path: Path, with_resource: bool) -> None:
    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    with serve(tmp_path) as served:
        served.add_user(USERNAME, PASSWORD)
        client_id = served.add_public_client("MCP conformance suite", redirect_uri)
        status, output, landed = run_conformance(
            served.issuer,
            client_id,
            port,
            tmp_path / "results",
            node,
            served.mcp_url if with_resource else None,
        )
        server_log = served.output()

    checks = read_checks(tmp_path / "results")
    print(output)
    assert set(checks) == {"authorization-server-metadata-endpoint", "authorization-code-grant"}, (
        f"scenarios run: {sorted(checks)}\n{output}\n{server_log}"
    )
    every = [c for scenario in checks.values() for c in scenario]
    failures = [c for c in every if c["status"] == "FAILURE"]
    assert not failures, (
        "conformance failures:\n"
        + "\n".join(f"- {c['id']}: {c.get('errorMessage') or c['description']}" for c in failures)
        + f"\n\n{output}\n{server_log}"
    )
    for c in every:
        if c["status"] == "WARNING":
            text = c.get("errorMessage") or c["description"]
            warnings.warn(f"MCP conformance WARNING {c['id']}: {text}", stacklevel=1)
    assert status == 0, output

    # Nothing skipped: the code grant really ran, through the person's approval.
    grant = checks["authorization-code-grant"]
    assert [c["status"] for c in grant] == ["SUCCESS"], grant
    assert len(landed) == 1 and landed[0].startswith(redirect_uri + "?"), landed
    details = grant[0]["details"]
    assert parse_qs(urlsplit(details["authorizationResponseUrl"]).query)["iss"] == [served.issuer]
    assert details["body"]["token_type"] == "Bearer"
    metadata = checks["authorization-server-metadata-endpoint"]
    assert {c["id"] for c in metadata} == {"authorization-server-metadata", "authorization-server-metadata-cimd"}
    assert {c["id"]: c["status"] for c in metadata}["authorization-server-metadata-cimd"] == "SUCCESS"
    assert [c["id"] for c in every if c["status"] == "WARNING"] == [], "zero warnings"
