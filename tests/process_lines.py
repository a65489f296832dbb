"""Reading a child process's output line by line, against a deadline (for the Node interop tests)."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO


def _pump(stream: IO[str] | None, sink: queue.Queue[str | None]) -> None:
    for line in stream or ():
        sink.put(line)
    sink.put(None)


def lines(proc: subprocess.Popen[str], timeout: float, timed_out: Callable[[], str]) -> Iterator[str]:
    """Each line ``proc`` writes to its stdout, as it comes, until it closes it. When that takes
    longer than ``timeout`` seconds, ``AssertionError`` with the message ``timed_out()``."""
    sink: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, sink), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(timed_out())
        try:
            line = sink.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            return
        yield line
