"""Races over real HTTP: 50 people's clients redeeming one code at once, per framework, on SQLite.

The store-level races (threads and processes on one database) are in ``test_stores.py``; this
proves nothing in an adapter (threads, worker pools, event loops) breaks the one-winner rule.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from e2e_frameworks import FRAMEWORKS
from test_adapters_e2e import REDIRECT, deploy, pkce, post_form, the_form

RACERS = 50


def race(url: str, data: dict[str, str]) -> list[httpx.Response]:
    """``RACERS`` threads, each with its own connection, released together to POST ``data``."""
    start = threading.Barrier(RACERS)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def redeem() -> None:
        with httpx.Client(timeout=30) as client:
            start.wait()
            r = client.post(url, data=data)
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=redeem) for _ in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_az_09_tk_04_fifty_concurrent_redemptions_of_one_code_one_wins(framework: str, tmp_path: Any) -> None:
    """AZ-09 (single use) under contention; TK-04: the replay then revokes what the winner got."""
    for dep in deploy(framework, "sqlite", "", tmp_path):
        client_id = dep.register()
        verifier, challenge = pkce()
        login = dep.person.get(dep.authorize_url(client_id, challenge))
        consent = dep.person.get(dep.base + dep.login(login).headers["location"])
        form = the_form(consent)
        decided = post_form(dep.person, dep.base + form.action, form.submit("approve"))
        code = parse_qs(urlsplit(decided.headers["location"]).query)["code"][0]
        token_url = dep.metadata()["token_endpoint"]
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": client_id,
            "code_verifier": verifier,
        }

        answers = race(token_url, data)
        assert len(answers) == RACERS
        winners = [r for r in answers if r.status_code == 200]
        assert len(winners) == 1, sorted(r.status_code for r in answers)
        losers = [r for r in answers if r.status_code != 200]
        assert {r.status_code for r in losers} == {400}
        assert {r.json()["error"] for r in losers} == {"invalid_grant"}
        # The replays were otherwise valid, so the winner's tokens are revoked (TK-04).
        revoked = dep.mcp(winners[0].json()["access_token"], "tools/list")
        assert revoked.status_code == 401
