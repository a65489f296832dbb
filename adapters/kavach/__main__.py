"""``python -m kavach``: the ``kavach`` command, for where its script is not on the path."""

from __future__ import annotations

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
