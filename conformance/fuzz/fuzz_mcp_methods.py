"""Fuzz target: the JSON-RPC body of an MCP request mapped to the scopes it needs
(kavach_core.mcp_methods.required_scopes, RS-03)."""

from __future__ import annotations

import json

import atheris

with atheris.instrument_imports():
    from kavach_core.mcp_methods import required_scopes

from common import expect_kavach_error, run

METHODS = ["tools/call", "tools/list", "resources/read", "prompts/get", "initialize", "ping", "x/y"]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        expect_kavach_error(required_scopes, fdp.ConsumeBytes(fdp.remaining_bytes()))
        return
    # Structured: a message or batch of plausible shape with fuzzed names and members.
    messages = []
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        params: object = {"name": fdp.ConsumeUnicode(30)} if fdp.ConsumeBool() else fdp.ConsumeUnicode(10)
        messages.append(
            {
                "jsonrpc": "2.0",
                "id": fdp.ConsumeInt(4),
                "method": fdp.PickValueInList(METHODS) if fdp.ConsumeBool() else fdp.ConsumeUnicode(20),
                "params": params,
            }
        )
    body = messages if len(messages) > 1 or fdp.ConsumeBool() else messages[0]
    text = json.dumps(body)
    if fdp.ConsumeBool():
        text = text.replace('"params"', '"method"', 1)  # a repeated member
    encoding = fdp.PickValueInList(["utf-8", "utf-16", "utf-32", "utf-8-sig"])
    expect_kavach_error(required_scopes, text.encode(encoding))


if __name__ == "__main__":
    run(test_one_input)
