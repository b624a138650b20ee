"""Which uid and gid each identity's jobs run as (the sandbox's "never root": systemd's DynamicUser=).

An identity mapped in the config (`[sandbox.users]`) gets that uid and gid. Any other identity gets,
the first time it starts a job, the lowest uid of the configured range that no other identity holds
and that no account of the host (the passwd database) uses; gid = uid. The choice is remembered in
`<state>/identities.db` and never changes, so a job's files (its scratch directory, what it wrote
where its uid may write) stay its identity's across restarts.

A database of its own, not a table of the job database: the uid map must outlive any reset of job
history (a job database moved away or rebuilt must not hand alice's old uid to bob).
"""

from __future__ import annotations

import pwd
import sqlite3
import threading
import time
from pathlib import Path

from jobcore.spec import RunAs
from jobserver.errors import IdentityError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    name TEXT PRIMARY KEY,
    uid INTEGER NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
"""


class UserIds:
    """The identity -> RunAs map. Thread-safe."""

    def __init__(
        self, path: Path, uid_range: tuple[int, int], explicit: dict[str, tuple[int, int]] | None = None
    ) -> None:
        self._path = path
        self._first, self._last = uid_range
        self._explicit = dict(explicit or {})
        self._lock = threading.Lock()
        self._cache: dict[str, int] = {}
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._cache = dict(self._db.execute("SELECT name, uid FROM identities").fetchall())
        except sqlite3.Error as exc:
            raise IdentityError(
                f"cannot use the uid map {path}: {exc} (it records which uid each identity's jobs run "
                "as; restore it from a backup rather than delete it, or uids would change hands)"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def run_as(self, name: str) -> RunAs:
        """The uid/gid `name`'s jobs run as, allocated on first use."""
        if name in self._explicit:
            uid, gid = self._explicit[name]
            return RunAs(uid, gid)
        with self._lock:
            known = self._cache.get(name)
            uid = known if known is not None else self._allocate(name)
        return RunAs(uid, uid)

    def _allocate(self, name: str) -> int:
        taken = set(self._cache.values())
        for uid in range(self._first, self._last + 1):
            if uid in taken or _host_has_uid(uid):
                continue
            try:
                self._db.execute(
                    "INSERT INTO identities (name, uid, created_at) VALUES (?, ?, ?)",
                    (name, uid, time.time()),
                )
            except sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise  # a full state disk: answered like any other (jobserver.interceptor.failure_for)
                # The caller reads this: the server's paths are not theirs (the server logs the call).
                raise IdentityError(f"cannot record the uid of {name}: {exc}") from None
            self._cache[name] = uid
            return uid
        raise IdentityError(
            f"no free uid left in the range {self._first}-{self._last} for {name}: widen "
            "[sandbox] uid_range in the server's config"
        )


def _host_has_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
