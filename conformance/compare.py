"""Run the conformance kit against kavach serve, the Authlib peer and node-oidc-provider, and print
the comparison as Markdown (pasted into docs/conformance.md).

    .venv/bin/python conformance/compare.py [--stateful N] [--json-dir DIR]

Every server runs on 127.0.0.1 on a free port and is stopped afterwards; the kit talks to nothing
else. Needs the test helpers (tests/kavach_serve.py, tests/peer_servers.py) and, for
oidc-provider, npm access once (Node 22 and ``npm ci`` as in tests/node_env.py).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from kavach_conformance import KitOptions, Report, run_kit  # noqa: E402
from kavach_conformance.rules import OBSERVABLE, RULES  # noqa: E402
from kavach_serve import free_port, serve  # noqa: E402
from peer_servers import authlib_server, ensure_oidc_provider, oidc_provider, oidc_provider_version  # noqa: E402

USER, PASSWORD = "alice", "compare-password-1"
SHOWN = {"pass": "pass", "fail": "**FAIL**", "n/a": "n/a"}


def run_all(stateful: int, work: Path) -> dict[str, Report]:
    reports: dict[str, Report] = {}
    # under its http issuer kavach serve asks for a sign-in at every authorization, each counted
    # against the per-address limit (50 per 15 minutes): the comparison runs more than that
    with serve(work, config_toml="[sign_in]\nper_address = 10000\n") as served:
        served.add_user(USER, PASSWORD)
        reports["kavach serve"] = run_kit(
            KitOptions(
                issuer=served.issuer,
                resource=served.mcp_url,
                register=True,
                username=USER,
                password=PASSWORD,
                redirect_port=free_port(),
                stateful_examples=stateful,
            )
        )
    with authlib_server(work) as issuer:
        reports["Authlib peer"] = run_kit(
            KitOptions(issuer=issuer, register=True, redirect_port=free_port(), stateful_examples=stateful)
        )
    environ = ensure_oidc_provider()
    with oidc_provider(work, environ) as issuer:
        reports["node-oidc-provider"] = run_kit(
            KitOptions(
                issuer=issuer,
                resource=issuer + "/mcp",
                resource_served=False,
                register=True,
                username=USER,
                password=PASSWORD,
                redirect_port=free_port(),
                stateful_examples=stateful,
            )
        )
    return reports


def versions() -> str:
    git = shutil.which("git") or "git"
    commit = subprocess.run(  # noqa: S603 - fixed arguments
        [git, "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    import node_env

    node = subprocess.run(  # noqa: S603 - the project-local Node binary
        [node_env.node(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"kavachos {version('kavachos')} (commit {commit}), Authlib {version('authlib')} on Flask "
        f"{version('flask')}, node-oidc-provider {oidc_provider_version()} on Node {node}, "
        f"Python {platform.python_version()}, httpx {version('httpx')}, hypothesis {version('hypothesis')}"
    )


def markdown(reports: dict[str, Report]) -> str:
    names = list(reports)
    results = {name: {r.rule: r for r in report.rules()} for name, report in reports.items()}
    lines = [
        f"Run on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}: {versions()}.",
        "",
        "| rule | what | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for rule, title in RULES.items():
        if rule not in OBSERVABLE:
            continue
        cells = [SHOWN[results[name][rule].status] for name in names]
        lines.append(f"| {rule} | {title} | " + " | ".join(cells) + " |")
    lines += ["", "Stateful test (hypothesis, random interleavings over HTTP):", ""]
    for name, report in reports.items():
        st = report.stateful or {}
        lines.append(f"- **{name}**: {st.get('status', 'not run')}: {st.get('reason', '')}")
        for exchange in st.get("exchanges", [])[:12]:
            lines.append(f"  - `{exchange}`")
    lines += ["", "Why each failure and n/a (the kit's own words):", ""]
    for name in names:
        lines.append(f"**{name}**")
        lines.append("")
        for rule in RULES:
            r = results[name][rule]
            if rule in OBSERVABLE and r.status != "pass":
                reason = " ".join(r.reason.split()).replace("|", "\\|")
                lines.append(f"- {rule} {r.status}: {reason[:400]}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stateful", type=int, default=5, help="stateful examples per server (default 5)")
    parser.add_argument("--json-dir", help="also write each server's JSON report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kavach-compare-") as work:
        reports = run_all(args.stateful, Path(work))
    if args.json_dir:
        out = Path(args.json_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, report in reports.items():
            report.write_json(str(out / (name.replace(" ", "-").lower() + ".json")))
    print(markdown(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
