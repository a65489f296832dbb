"""Fuzz target: JWTs (kavach_core.jose.verify and kavach_core.access_tokens.verify; TK-09, RS-02, RS-04).

Raw token text is verified against a real key set. Because a fuzzer cannot forge signatures,
the structured mode signs fuzzer-chosen header and payload bytes with the real key, so the
header rules and the claim checks after the signature are reached as well.
"""

from __future__ import annotations

import base64

import atheris

with atheris.instrument_imports():
    from kavach_core import access_tokens, jose
    from kavach_core import keys as keyset

from common import ISSUER, NOW, RESOURCE, context, expect_kavach_error, run

_RECORD = keyset.generate(context(), "ES256")
PAIR = keyset.load(_RECORD)
KEYS = {PAIR.kid: PAIR.public}
HEADERS = [
    '{"alg":"ES256","kid":"%s","typ":"at+jwt"}',
    '{"alg":"ES256","kid":"%s","typ":"application/at+jwt","crit":["x"]}',
    '{"alg":"none","kid":"%s"}',
    '{"alg":"ES256","kid":"%s","typ":"at+jwt","jwk":{}}',
    '{"alg":"RS256","kid":"%s","typ":"AT+JWT"}',
]
PAYLOADS = [
    '{"iss":"%s","sub":"alice","aud":"%s","client_id":"c","scope":"tools:list","iat":%d,"exp":%d,"jti":"j","gid":"g"}',
]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify_both(token: str) -> None:
    expect_kavach_error(jose.verify, token, KEYS, "at+jwt")
    expect_kavach_error(jose.verify, token, KEYS, None)
    expect_kavach_error(access_tokens.verify, token, KEYS, issuer=ISSUER, resource=RESOURCE, now=NOW, leeway=5)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        verify_both(fdp.ConsumeUnicode(fdp.remaining_bytes()))
        return
    if fdp.ConsumeBool():
        header = (fdp.PickValueInList(HEADERS) % PAIR.kid).encode()
    else:
        header = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 120))
    if mode == 1:
        payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    else:
        template = PAYLOADS[0]
        aud = fdp.PickValueInList([RESOURCE, RESOURCE + "/", "HTTPS://MCP.example.com/mcp", "x"])
        text = template % (ISSUER, aud, NOW + fdp.ConsumeIntInRange(-20, 20), NOW + fdp.ConsumeIntInRange(-20, 20))
        cut = fdp.ConsumeIntInRange(0, len(text))
        payload = (text[:cut] + fdp.ConsumeUnicode(30) + text[cut:]).encode("utf-8", "surrogatepass")
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = PAIR.sign(signing_input.encode("ascii"))
    verify_both(f"{signing_input}.{b64(signature)}")


if __name__ == "__main__":
    run(test_one_input)
