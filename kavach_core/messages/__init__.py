"""Typed, immutable request messages: one module per endpoint, each with its ``parse`` function.

Parsing happens once, here in the core, so no rule is re-implemented per framework.
"""
