"""Per-identity shares of the server: how many calls and output streams one caller may have in flight.

The RPC thread pool is shared by everyone. Without a share per caller, one identity (hostile or merely
careless: a script in a loop) could hold every thread, and every other caller, admins included, would
be refused. `CallShares` counts each identity's unary calls and streams in flight and refuses one past
its share with RESOURCE_EXHAUSTED, at once, so a refused call holds a thread for microseconds only.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator

from jobserver.errors import QuotaExceeded


class CallShares:
    """Unary calls and output streams in flight, per identity, each bounded. Thread-safe."""

    def __init__(self, max_calls: int, max_streams: int) -> None:
        self.max_calls = max_calls
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._calls: collections.Counter[str] = collections.Counter()
        self._streams: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def held(self, user: str, *, stream: bool) -> Iterator[None]:
        """Count one call of `user` for the duration of the block; RESOURCE_EXHAUSTED past the share."""
        counter, limit = (self._streams, self.max_streams) if stream else (self._calls, self.max_calls)
        with self._lock:
            if counter[user] >= limit:
                what = "output streams open" if stream else "calls in flight"
                raise QuotaExceeded(
                    f"user {user} already has {counter[user]} {what}, the most one user may have at once "
                    f"({limit}); wait for one to end"
                )
            counter[user] += 1
        try:
            yield
        finally:
            with self._lock:
                counter[user] -= 1
                if not counter[user]:
                    del counter[user]

    def in_flight(self, user: str) -> tuple[int, int]:
        """(unary calls, streams) of `user` in flight now."""
        with self._lock:
            return self._calls[user], self._streams[user]
