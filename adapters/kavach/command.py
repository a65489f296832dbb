"""The ``kavach`` console script's entry point: :func:`kavach.cli.main`, imported only once this
small module runs, so a Ctrl-C while the command is still loading or reading its arguments ends it
as quietly as one later (status 130, no traceback)."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as run

        return run()
    except KeyboardInterrupt:  # before the command's own handling began (it answers 130 too)
        sys.stderr.write("\n")
        return 130
