"""Fuzz target: query strings and form bodies (kavach_core.params, AZ-01, TK-01).

``parse_query_string`` on arbitrary text, ``form_params`` on arbitrary bytes under the form media
type, ``query_params`` on arbitrary pairs, and every ``Params`` accessor on what they return.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from kavach_core.http import HttpRequest
    from kavach_core.params import Params, form_params, parse_query_string, query_params

from common import expect_kavach_error, run

NAMES = ("client_id", "resource", "scope", "code", "state", "redirect_uri")


def exercise(params: Params | None) -> None:
    if params is None:
        return
    for name in NAMES:
        expect_kavach_error(params.get, name)
        params.get_all(name)
        params.duplicated(name)
    params.names()


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        exercise(expect_kavach_error(parse_query_string, fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())))
    elif mode == 1:
        content_type = fdp.PickValueInList(
            ["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8", "text/plain", ""]
        )
        req = HttpRequest("POST", "/token", headers=[("Content-Type", content_type)], body=fdp.ConsumeBytes(1 << 17))
        exercise(expect_kavach_error(form_params, req))
    else:
        pairs = []
        for _ in range(fdp.ConsumeIntInRange(0, 120)):
            pairs.append((fdp.ConsumeUnicode(12), fdp.ConsumeUnicode(40)))
        exercise(expect_kavach_error(query_params, HttpRequest("GET", "/authorize", query=pairs)))


if __name__ == "__main__":
    run(test_one_input)
