"""Fuzz target: JSON bodies and client metadata (kavach_core.params.json_object,
kavach_core.messages.registration, kavach_core.client_metadata, kavach_core.client_documents;
RG-01, RG-02, CM-01).

Raw bytes go through the whole registration request parser (JSON, member types, header
credentials) and then the metadata rules; structured inputs build plausible JSON objects with
fuzzed members so the metadata rules are reached often; the same objects are offered as client
ID metadata documents.
"""

from __future__ import annotations

import json

import atheris
import attrs

with atheris.instrument_imports():
    from kavach_core import effects as fx
    from kavach_core.client_documents import document_client, url_problem
    from kavach_core.client_metadata import accept
    from kavach_core.http import HttpRequest
    from kavach_core.messages.registration import RegistrationRequest, parse, parse_metadata
    from kavach_core.params import json_object

from common import context, expect_kavach_error, run

CTX = context()
DOC_URL = "https://client.example.com/oauth/metadata.json"
MEMBERS = [*attrs.fields_dict(RegistrationRequest), "client_id"]
"""Every member the registration parser reads, and one a document may carry (CM-01)."""
STRINGS = [
    "https://app.example.com/cb",
    "http://127.0.0.1:9/cb",
    "javascript:alert(1)",
    "none",
    "client_secret_basic",
    "authorization_code",
    "refresh_token",
    "code",
    "token",
    "tools:list",
    DOC_URL,
]


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind == 0:
        return fdp.PickValueInList(STRINGS)
    if kind == 1:
        return fdp.ConsumeUnicode(40)
    if kind == 2 and depth < 3:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 3:
        return fdp.ConsumeInt(8)
    if kind == 4:
        return fdp.ConsumeBool()
    if kind == 5:
        return None
    if kind == 6 and depth < 3:
        return {fdp.ConsumeUnicode(8): value(fdp, depth + 1)}
    return fdp.ConsumeFloat()


def accepted(body: dict[str, object]) -> None:
    msg = expect_kavach_error(parse_metadata, body)
    if msg is not None:
        expect_kavach_error(
            accept,
            CTX,
            msg,
            auth_methods=("none", "client_secret_basic", "client_secret_post"),
            default_auth_method="client_secret_basic",
        )


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        headers = [("Content-Type", fdp.PickValueInList(["application/json", "application/json; charset=utf-8"]))]
        if fdp.ConsumeBool():
            headers.append(("Authorization", "Bearer " + fdp.ConsumeUnicode(20)))
        req = HttpRequest("POST", "/register", headers=headers, body=fdp.ConsumeBytes(fdp.remaining_bytes()))
        expect_kavach_error(json_object, req)
        msg = expect_kavach_error(parse, req)
        if msg is not None:
            expect_kavach_error(
                accept, CTX, msg, auth_methods=("none", "client_secret_basic"), default_auth_method="none"
            )
        return
    body: dict[str, object] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        body[fdp.PickValueInList(MEMBERS)] = value(fdp)
    if mode == 1:
        accepted(body)
        return
    body["client_id"] = DOC_URL if fdp.ConsumeBool() else body.get("client_id")
    try:
        raw = json.dumps(body).encode()
    except (TypeError, ValueError):
        return
    url = DOC_URL if fdp.ConsumeBool() else fdp.ConsumeUnicode(60)
    url_problem(url)
    fetched = fx.Fetched(raw, fdp.PickValueInList(["application/json", "text/html"]), fdp.ConsumeIntInRange(-5, 99999))
    expect_kavach_error(document_client, CTX, DOC_URL, fetched)


if __name__ == "__main__":
    run(test_one_input)
