"""Run the benchmarks, print the tables, write ``benchmarks/results/<name>.json``.

.venv/bin/python -m benchmarks            # everything (10 to 17 minutes on 2 cores, by host)
.venv/bin/python -m benchmarks --quick    # every benchmark once at tiny size (the test does this)
.venv/bin/python -m benchmarks --only a,b # a: first sight, b: repeat sight, c: AS flows, d: HTTP, e: scale,
                                          # f: the guards through uvicorn's HTTP protocol, no sockets
"""

from __future__ import annotations

import argparse
import importlib
import time
import warnings
from pathlib import Path
from typing import Any

from . import common

PARTS = (
    ("c", "flows", "as_flows", "in_process"),
    ("d", "http", "http", "over_http"),
    ("e", "scale", "scale", "scale"),
    ("f", "protocol", "protocol", "in_protocol"),
)
"""The parts after a and b: letter, module, results key, the module's measuring function."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one short round each (smoke test)")
    parser.add_argument("--only", default="a,b,c,d,e,f", help="comma-separated subset of a,b,c,d,e,f")
    parser.add_argument("--out", default=str(common.RESULTS), help="directory for the JSON results")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if not only <= set("abcdef"):
        parser.error(f"--only takes letters from a,b,c,d,e,f, not {args.only!r}")
    out = Path(args.out)
    name = "quick" if args.quick else "full"
    results: dict[str, Any] = {"machine": common.machine(), "quick": args.quick, "started": int(time.time())}
    text = ""
    warnings.simplefilter("ignore")  # peers' deprecation notices would interleave with the tables
    if only & {"a", "b"}:
        from . import verify

        first = verify.first_sight(args.quick) if "a" in only else {}
        repeat = verify.repeat_sight(args.quick) if "b" in only else {}
        results["first_sight"], results["repeat_sight"] = first, repeat
        part = verify.report(first, repeat)
        print(part, flush=True)
        text += part
    for letter, module, key, measure in PARTS:
        if letter in only:
            part_module = importlib.import_module(f".{module}", __package__)
            results[key] = getattr(part_module, measure)(args.quick)
            part = part_module.report(results[key])
            print(part, flush=True)
            text += part
    results["finished"] = int(time.time())
    results["table"] = text
    path = common.write(name, results, out)
    print(f"\nresults: {path}")
    return results


if __name__ == "__main__":
    main()
