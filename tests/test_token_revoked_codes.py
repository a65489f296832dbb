"""The token endpoint meeting a code that ``RevokeSubject`` or ``DeleteClient`` dropped.

Whether the code went before the redemption started or between its read of the code
(``GetCode``) and its ``ConsumeCode``, the answer is ``invalid_grant`` (RFC 6749 §5.2), never a
500, and no grant exists afterwards. In the second case the endpoint takes the failed
``ConsumeCode`` for a replay and revokes the code's grant id (RFC 6749 §4.1.2), which is
harmless: that grant never existed.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Harness
from oauth_flows import add_client, code_form, get_code, redeem

from kavach_core import effects as fx
from kavach_core.endpoints import token
from kavach_core.http import Response


def _revocation(kind: str, h: Harness) -> fx.Effect:
    return fx.RevokeSubject("alice", h.now) if kind == "subject" else fx.DeleteClient("c1", h.now)


def _invalid_grant(resp: Response) -> None:
    assert resp.status == 400, (resp.status, resp.body)
    assert resp.json()["error"] == "invalid_grant"


def test_a_code_of_a_revoked_subject_is_invalid_grant() -> None:
    """(Once its client is deleted, a code's redemption is ``invalid_client`` before any code is read.)"""
    h = Harness()
    add_client(h)
    code = get_code(h)
    h.store.perform(_revocation("subject", h))
    _invalid_grant(redeem(h, code))
    assert h.store.grants == {}


@pytest.mark.parametrize("kind", ["subject", "client"])
def test_a_code_dropped_during_its_redemption_is_invalid_grant_and_leaves_no_grant(kind: str) -> None:
    h = Harness()
    add_client(h)
    code = get_code(h)
    flow: Any = token.handle(h.ctx(), h.request("POST", "/token", form=code_form(code)))
    effect = next(flow)
    while not isinstance(effect, fx.ConsumeCode):  # the client is authenticated, the code read and checked
        effect = flow.send(h.store.perform(effect))
    h.store.perform(_revocation(kind, h))  # the operator, meanwhile
    consumed = h.store.perform(effect)
    assert consumed is False
    replay = flow.send(consumed)
    assert replay == fx.RevokeGrant(effect.grant.grant_id, h.now)
    assert h.store.perform(replay) is False  # nothing to revoke: the grant never existed
    with pytest.raises(StopIteration) as stop:
        flow.send(False)
    _invalid_grant(stop.value.value)
    assert h.store.grants == {}
