"""Timing and reporting shared by every benchmark.

Every comparison runs in one process, interleaved: each round runs every variant once, in an order
shuffled afresh for each round (:func:`round_orders`), so a burst of load from elsewhere hits all
variants alike and no variant always follows the same neighbour (whose caches and allocations
it would inherit). A variant's
figure is the median over rounds with the min and max; a ratio is the median of the per-round
ratios against the baseline, with their min and max.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from kavach_core.records import Grant

RESULTS = Path(__file__).parent / "results"


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


ROUND_SEED = 20261128
"""Seeds the order of variants in the rounds (:func:`round_orders`): every run shuffles alike."""


def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """The order of ``names`` in each of ``rounds`` rounds: a permutation drawn afresh per round
    from a generator seeded with :data:`ROUND_SEED`, so over many rounds each variant runs after
    each other one, first and last alike, and a rerun repeats the same orders."""
    rng = random.Random(ROUND_SEED)  # noqa: S311 -- an experiment's design, not a secret
    return [rng.sample(names, k=len(names)) for _ in range(rounds)]


def interleaved(
    variants: dict[str, Callable[[], object]],
    *,
    baseline: str,
    rounds: int,
    number: int,
) -> dict[str, Any]:
    """Seconds per call of each variant and each one's ratio to ``baseline``.

    Each round calls every variant ``number`` times in a row (after one warm-up call each).
    """
    names = list(variants)
    for fn in variants.values():
        fn()
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for order in round_orders(names, rounds):
        for name in order:
            fn = variants[name]
            start = time.perf_counter()
            for _ in range(number):
                fn()
            per_round[name].append((time.perf_counter() - start) / number)
    out: dict[str, Any] = {}
    base = per_round[baseline]
    for name in names:
        ratios = [v / b for v, b in zip(per_round[name], base, strict=True)]
        out[name] = {
            "seconds": spread(per_round[name]),
            "ratio": spread(ratios),
            "ops_per_s": 1 / statistics.median(per_round[name]),
        }
    return out


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in (
        "cryptography",
        "PyJWT",
        "joserfc",
        "Authlib",
        "mcp",
        "starlette",
        "uvicorn",
        "httpx",
        "psycopg",
        "Flask",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    commit = ""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "load_average": list(load),
        "commit": commit,
    }


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"


def fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [f"\n## {title}", line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def write(name: str, data: dict[str, Any], directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def day_grant(grant_id: str, client_id: str, resource: str, now: int, refresh_hash: str, rotated_at: int) -> Grant:
    """A live grant of ``alice`` for ``resource`` (``tools:list tools:call``), good for a day,
    its refresh family at generation 0 (``refresh_hash`` names its current token)."""
    return Grant(
        grant_id=grant_id,
        subject="alice",
        client_id=client_id,
        resources=(resource,),
        scopes=("tools:list", "tools:call"),
        created_at=now,
        expires_at=now + 86400,
        refresh_generation=0,
        refresh_hash=refresh_hash,
        refresh_expires_at=now + 86400,
        rotated_at=rotated_at,
    )
