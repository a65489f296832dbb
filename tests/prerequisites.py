"""Whether the tests run in CI, decided in this one place, and the one rule for a prerequisite a
test cannot find (a service, a program, a browser, Node packages): in CI the test **fails**, as
the build is broken there; elsewhere it is **skipped**, with a message saying what to install or
start.

Used by tests/services.py, tests/node_env.py (also run on its own by ``.ci/run``) and the tests
that need programs outside the Python environment.
"""

from __future__ import annotations

import os
from typing import NoReturn


def in_ci() -> bool:
    """``CI`` is set to anything but nothing, ``0``, ``false`` or ``no`` (in any case). CI systems
    set it to ``true`` (GitHub Actions, GitLab CI) or ``1``; a value this does not know counts as
    CI, where a missing prerequisite must not pass as a skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(message: str, *, allow_module_level: bool = False) -> NoReturn:
    """End the calling test (or, with ``allow_module_level``, the module being collected) for a
    missing prerequisite: a failure in CI, a skip elsewhere. ``message`` says what is missing
    and how to install or start it."""
    import pytest

    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=allow_module_level)
