"""Fuzz target: Basic client credentials and Bearer headers (kavach_core.credentials, TK-02, RS-01)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from kavach_core.credentials import bearer_token, client_credentials, parse_bearer
    from kavach_core.http import HttpRequest
    from kavach_core.params import Params

from common import expect_kavach_error, run


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        expect_kavach_error(parse_bearer, fdp.ConsumeUnicode(fdp.remaining_bytes()))
        return
    headers = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        name = fdp.PickValueInList(["Authorization", "authorization", "AUTHORIZATION", "X-Other"])
        scheme = fdp.PickValueInList(["Basic ", "basic ", "Bearer ", "bearer ", "", " Basic  "])
        headers.append((name, scheme + fdp.ConsumeUnicode(200)))
    req = HttpRequest("POST", "/token", headers=headers)
    if mode == 1:
        expect_kavach_error(bearer_token, req)
        return
    pairs = []
    if fdp.ConsumeBool():
        pairs.append(("client_id", fdp.ConsumeUnicode(40)))
    if fdp.ConsumeBool():
        pairs.append(("client_secret", fdp.ConsumeUnicode(40)))
    if mode == 3:
        # Basic credentials built from fuzzer text, so the decoded part is reached often.
        import base64

        raw = fdp.ConsumeBytes(120)
        req = HttpRequest("POST", "/token", headers=[("Authorization", "Basic " + base64.b64encode(raw).decode())])
    expect_kavach_error(client_credentials, req, Params(tuple(pairs)))


if __name__ == "__main__":
    run(test_one_input)
