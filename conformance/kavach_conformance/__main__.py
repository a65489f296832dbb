"""``python -m kavach_conformance ...``: the same as ``kavach conformance ...``."""

from .cli import main

raise SystemExit(main())
