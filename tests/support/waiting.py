"""Bounded waits for something another process or thread does.

The timeout is a bound for settling (a test that would otherwise hang fails instead), never a speed
assertion: on a loaded machine a wait may take most of it, so pick it generously.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds passed (False).

    The predicate is always tried once more after the deadline, so a slow poll never turns a condition
    that did come true into a failure."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)


def wait_until(
    predicate: Callable[[], object], timeout: float = 30, what: str = "the condition", interval: float = 0.05
) -> None:
    """`wait_for`, failing the test with `what` when the condition did not come true in time."""
    if not wait_for(predicate, timeout, interval):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
