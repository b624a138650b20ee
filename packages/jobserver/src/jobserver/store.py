"""`JobStore`: the server's index of jobs in SQLite (stdlib `sqlite3`, WAL).

One row per job: its id, owner, creation time and the last `JobStatus` the server was told of, as
JSON. The jobcore Worker's job directories are the source of truth; the index is what listings,
ownership checks and the retention policy read, and what the server answers from once a job's
directory is gone. Reads never write; the few places that do are listed in `jobserver.jobs`.

`cwd` is part of the status (`JobStatus.cwd`); the `cwd` column is a copy kept for rows written before
statuses carried it (their status JSON has no `cwd`: the column's value is used).

One connection shared behind a lock: the server's writes are a few small rows per job, so a lock costs
nothing measurable and keeps every connection accounted for (closed in `close()`).
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs
import cattrs

from jobcore.records import stored_limits
from jobcore.spec import Limits
from jobcore.status import JobState, JobStatus
from jobserver.errors import StoreError

log = logging.getLogger("jobserver.store")

#: The reason a job gets when its row in the database cannot be read.
UNREADABLE_RECORD_REASON = "the server's record of this job is damaged; what it said is lost"

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    cwd TEXT NOT NULL,
    ended INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at);
"""

#: The output bytes a row's status says are stored (0 for a row whose status is not JSON).
_ROW_OUTPUT = (
    "CASE WHEN json_valid({row}.status) THEN COALESCE(json_extract({row}.status, '$.output_bytes'), 0) "
    "ELSE 0 END"
)

#: Each owner's sum counted afresh from the rows.
_RECOUNT_OWNER_OUTPUT = f"""DELETE FROM temp.owner_output;
INSERT INTO temp.owner_output (owner, ended_bytes)
    SELECT owner, SUM({_ROW_OUTPUT.format(row="jobs")}) FROM main.jobs WHERE ended GROUP BY owner;"""

#: Each owner's sum of `_ROW_OUTPUT` over their ended rows, for the output quota checked at every
#: start (`output_bytes`): kept by triggers on every write of this connection (the server's only one)
#: rather than summed over the owner's rows at each start, which grew with their history (1000 ended
#: jobs, the retention default, cost ~3 ms of SQLite per start). TEMP: it lives with the connection,
#: nothing is added to the file, and it is summed afresh from the rows each time the store opens.
_OWNER_OUTPUT = f"""
CREATE TEMP TABLE owner_output (owner TEXT PRIMARY KEY, ended_bytes NOT NULL);
{_RECOUNT_OWNER_OUTPUT}
CREATE TEMP TRIGGER owner_output_insert AFTER INSERT ON main.jobs WHEN new.ended BEGIN
    INSERT INTO owner_output (owner, ended_bytes) VALUES (new.owner, {_ROW_OUTPUT.format(row="new")})
        ON CONFLICT (owner) DO UPDATE SET ended_bytes = ended_bytes + excluded.ended_bytes;
END;
CREATE TEMP TRIGGER owner_output_delete AFTER DELETE ON main.jobs WHEN old.ended BEGIN
    UPDATE owner_output SET ended_bytes = ended_bytes - {_ROW_OUTPUT.format(row="old")}
        WHERE owner = old.owner;
END;
CREATE TEMP TRIGGER owner_output_update AFTER UPDATE ON main.jobs WHEN old.ended OR new.ended BEGIN
    UPDATE owner_output SET ended_bytes = ended_bytes - {_ROW_OUTPUT.format(row="old")}
        WHERE old.ended AND owner = old.owner;
    INSERT INTO owner_output (owner, ended_bytes)
        SELECT new.owner, {_ROW_OUTPUT.format(row="new")} WHERE new.ended
        ON CONFLICT (owner) DO UPDATE SET ended_bytes = ended_bytes + excluded.ended_bytes;
END;
"""


def _structure_stored_limits(data: Any, _type: Any) -> Limits:
    # Stored limits were validated when they were applied. The host may have shrunk since (fewer CPUs,
    # less memory), which must not make a finished job's record unreadable: read as written.
    return stored_limits(data)


_converter = cattrs.Converter()
_converter.register_structure_hook(Limits, _structure_stored_limits)


def status_to_json(status: JobStatus) -> str:
    return json.dumps(_converter.unstructure(status), separators=(",", ":"))


def status_from_json(text: str, cwd: str = "") -> JobStatus:
    """The status in `text`; `cwd` stands in for the working directory of a status without one (a
    row written before statuses carried it)."""
    data = json.loads(text)
    if isinstance(data, dict) and "cwd" not in data and cwd:
        data["cwd"] = cwd
    return _converter.structure(data, JobStatus)


K = TypeVar("K")
V = TypeVar("V")


class Kept(Generic[K, V]):
    """A bounded map, oldest entry out first: at most `max_entries` entries whose `size` add up to at
    most `max_size` (a value larger than that alone is not kept). Thread-safe."""

    def __init__(self, max_entries: int, max_size: int, size: Callable[[V], int]) -> None:
        self._max_entries = max_entries
        self._max_size = max_size
        self._size_of = size
        self._entries: dict[K, V] = {}
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def size(self) -> int:
        return self._size

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        size = self._size_of(value)
        with self._lock:
            self._drop(key)
            if size > self._max_size:
                return
            while self._entries and (
                len(self._entries) >= self._max_entries or self._size + size > self._max_size
            ):
                self._drop(next(iter(self._entries)))
            self._entries[key] = value
            self._size += size

    def forget(self, key: K) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: K) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= self._size_of(old)


#: Bounds of the pages of records a store keeps (`JobStore.page`): pages, and records in them all.
PAGES_MAX_ENTRIES = 64
PAGES_MAX_RECORDS = 20_000

#: Bounds of the decoded rows a store keeps (`_DecodedStatuses`): entries, and characters of JSON.
DECODED_MAX_ENTRIES = 10_000
DECODED_MAX_CHARS = 16 * 1024 * 1024


class _DecodedStatuses(Kept[str, tuple[str, str, JobStatus]]):
    """The statuses decoded from rows, by job id, each with the row's text and cwd it came from: a row
    read again unchanged is not decoded again. Decoding is a pure function of the text and cwd, so a
    hit is the status decoding would give; any change of the row misses. Bounded in entries and in
    characters of JSON kept; unreadable rows are never kept (each read of one logs it, as before)."""

    def __init__(self, max_entries: int = DECODED_MAX_ENTRIES, max_chars: int = DECODED_MAX_CHARS) -> None:
        super().__init__(max_entries, max_chars, lambda entry: len(entry[0]))

    def status_of(self, job_id: str) -> JobStatus | None:
        """The status kept for `job_id`, if any (whatever row it was decoded from)."""
        entry = self.get(job_id)
        return None if entry is None else entry[2]

    def decoded(self, job_id: str, text: str, cwd: str) -> JobStatus | None:
        entry = self.get(job_id)
        if entry is not None and entry[0] == text and entry[1] == cwd:
            return entry[2]
        return None


@attrs.frozen
class JobRecord:
    id: str
    owner: str
    created_at: float
    status: JobStatus


class JobStore:
    """Durable job records. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._decoded = _DecodedStatuses()
        #: Pages of records as last read, by (owner, after, limit), with the version read with them.
        self._pages: Kept[
            tuple[str | None, tuple[float, str] | None, int], tuple[tuple[int, int], list[JobRecord]]
        ]
        self._pages = Kept(PAGES_MAX_ENTRIES, PAGES_MAX_RECORDS, lambda kept: len(kept[1]))
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open job database {path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            rows = self._db.execute("SELECT version FROM schema_version").fetchall()
            if not rows:
                self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif rows[0][0] != SCHEMA_VERSION:
                raise StoreError(
                    f"job database {path} has schema version {rows[0][0]}; this server knows {SCHEMA_VERSION}"
                )
            # One transaction: no write of another connection between the sum and the triggers.
            self._db.executescript(f"BEGIN IMMEDIATE; {_OWNER_OUTPUT} COMMIT;")
            #: The other connections' commits the sums above have seen (`output_bytes`).
            self._summed_version = self._data_version()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot use job database {path}: {exc}") from None
        except StoreError:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, status: JobStatus, created_at: float | None = None) -> None:
        """Record a job's status. A record of an ended job is never replaced by a running one (the
        Worker's end-of-job callback can race the handler that started the job)."""
        created = created_at if created_at is not None else status.started_at or 0.0
        with self._lock:
            self._db.execute(
                """INSERT INTO jobs (id, owner, created_at, cwd, ended, status) VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET cwd = excluded.cwd, ended = excluded.ended,
                       status = excluded.status
                   WHERE excluded.ended OR NOT jobs.ended""",
                (
                    status.id,
                    status.owner,
                    created,
                    status.cwd,
                    int(status.state.ended),
                    status_to_json(status),
                ),
            )

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, owner, created_at, cwd, status FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return _record(row, self._decoded) if row else None

    def list(self, owner: str | None = None) -> list[JobRecord]:
        """Records oldest first, of one owner or of everyone."""
        query = "SELECT id, owner, created_at, cwd, status FROM jobs"
        params: tuple[str, ...] = ()
        if owner is not None:
            query += " WHERE owner = ?"
            params = (owner,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at, id", params).fetchall()
        return [record for row in rows if (record := _record(row, self._decoded)) is not None]

    def page(
        self, owner: str | None, after: tuple[float, str] | None, limit: int
    ) -> builtins.list[JobRecord]:
        """Up to `limit` records oldest first, of one owner or of everyone, after position `after`
        (created_at, id) when given. The same page asked again while no row changed (`version`:
        written here or by any other connection) is the records read before, without a query."""
        key = (owner, after, limit)
        with self._lock:
            version = self._version()
            kept = self._pages.get(key)
            if kept is not None and kept[0] == version:
                return list(kept[1])
        query = "SELECT id, owner, created_at, cwd, status FROM jobs"
        clauses: list[str] = []
        params: list[Any] = []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if after is not None:
            clauses.append("(created_at, id) > (?, ?)")
            params.extend(after)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at, id LIMIT ?", (*params, limit)).fetchall()
            if self._version() != version:
                version = (-1, -1)  # written meanwhile: serve this read, keep nothing from it
        records = [record for row in rows if (record := _record(row, self._decoded)) is not None]
        if version[0] >= 0 and all(r.status is self._decoded.status_of(r.id) for r in records):
            self._pages.put(key, (version, records))
        return list(records)

    def version(self) -> tuple[int, int]:
        """Moves whenever any row may have changed: the rows this store wrote (its connection's
        `total_changes`) and what any other connection committed (`PRAGMA data_version`)."""
        with self._lock:
            return self._version()

    def _version(self) -> tuple[int, int]:
        return self._db.total_changes, self._data_version()

    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._decoded.forget(job_id)

    def prunable(self, older_than: float | None, keep_per_owner: int | None) -> builtins.list[str]:
        """Ids of ended jobs that ended before `older_than` (a time) or are past the `keep_per_owner`
        most recently ended of their owner. A damaged row counts by its creation time."""
        if older_than is None and keep_per_owner is None:
            return []
        query = """
            SELECT id FROM (
                SELECT id, t, ROW_NUMBER() OVER (PARTITION BY owner ORDER BY t DESC, id DESC) AS n
                FROM (SELECT id, owner, COALESCE(
                          CASE WHEN json_valid(status) THEN json_extract(status, '$.ended_at') END,
                          created_at) AS t
                      FROM jobs WHERE ended))
            WHERE t < ? OR n > ?"""
        cutoff = older_than if older_than is not None else float("-inf")
        keep = keep_per_owner if keep_per_owner is not None else 2**62
        with self._lock:
            return [row[0] for row in self._db.execute(query, (cutoff, keep))]

    def output_bytes(self, owner: str) -> int:
        """Bytes of output the records of `owner`'s ended jobs say are stored: one row's read, however
        many jobs `owner` has (`_OWNER_OUTPUT`)."""
        with self._lock:
            seen = self._data_version()
            if seen != self._summed_version:
                # Another connection wrote rows (an operator's sqlite3, a restore): its writes fire no
                # trigger of ours, so count again, once.
                self._db.executescript(f"BEGIN IMMEDIATE; {_RECOUNT_OWNER_OUTPUT} COMMIT;")
                self._summed_version = self._data_version()
            row = self._db.execute(
                "SELECT ended_bytes FROM temp.owner_output WHERE owner = ?", (owner,)
            ).fetchone()
        return int(row[0]) if row else 0

    def ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM jobs") if isinstance(row[0], str)}


def _record(row: tuple[Any, ...], decoded: _DecodedStatuses) -> JobRecord | None:
    """A row as a record (its status decoded, or as decoded before from the same text: `decoded`). A
    damaged row (its status not a JobStatus in JSON, a column of the wrong type) must not make every
    listing fail: it is logged, and served as a LOST job when its id and owner can still be read, or
    skipped when not."""
    job_id, owner, created_at, cwd, text = row
    if not isinstance(job_id, str) or not isinstance(owner, str) or not owner:
        log.warning("job database: skipping a row with an unreadable id or owner (id %r)", job_id)
        return None
    if isinstance(created_at, bool) or not isinstance(created_at, int | float):
        created_at = 0.0
    if not isinstance(cwd, str):
        cwd = ""
    try:
        if not isinstance(text, str):
            raise TypeError(f"the status column holds {type(text).__name__}")
        known = decoded.decoded(job_id, text, cwd)
        if known is not None and known.owner == owner:
            return JobRecord(id=job_id, owner=owner, created_at=float(created_at), status=known)
        status = status_from_json(text, cwd)
        if status.id != job_id or status.owner != owner:
            raise ValueError("the status names another job or owner")
        decoded.put(job_id, (text, cwd, status))
    except Exception as exc:  # any decoding failure: JSON, cattrs, enum values
        decoded.forget(job_id)
        log.warning("job database: the record of job %s is unreadable (%s); served as lost", job_id, exc)
        status = JobStatus(
            id=job_id,
            owner=owner,
            argv=(),
            state=JobState.LOST,
            reason=UNREADABLE_RECORD_REASON,
            cwd=cwd or "/",
        )
    return JobRecord(id=job_id, owner=owner, created_at=float(created_at), status=status)
