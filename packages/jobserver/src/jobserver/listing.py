"""ListJobs pages: page sizes, page tokens and the shortened argv of listed jobs.

Whatever a user's history (thousands of jobs, each with a 256 KB argv), one ListJobs response stays
small: at most `MAX_PAGE_SIZE` jobs and about `MAX_PAGE_BYTES`, each job's argv cut to
`LISTED_ARGV_CHARS` characters in all (GetJob returns it whole). A page token is the position after
the last job sent, (created_at, id): listing is oldest first and stable under new jobs arriving.

`ListedJobs` keeps each listed job's entry as built (its shortened `pb.Job`, serialized) while the
job's status stays equal, so a listing of hundreds of unchanged jobs converts none of them again.
"""

from __future__ import annotations

import base64
import json

import attrs

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobcore.status import JobStatus
from jobserver import convert
from jobserver.errors import InvalidArgument
from jobserver.store import Kept
from jobserver.wire import varint

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: A page ends before the job that would take it past this many bytes (a page has at least one job).
MAX_PAGE_BYTES = 1024 * 1024
#: Characters of argv kept in a listing, all arguments together (and at most LISTED_ARGS arguments).
LISTED_ARGV_CHARS = 1024
LISTED_ARGS = 64

#: Bounds of `ListedJobs`: entries, and bytes of serialized jobs kept.
LISTED_MAX_ENTRIES = 10_000
LISTED_MAX_BYTES = 32 * 1024 * 1024
#: The field number of ListJobsResponse.jobs, as the tag byte of one length-delimited entry.
_JOBS_TAG = bytes([(pb.ListJobsResponse.JOBS_FIELD_NUMBER << 3) | 2])

Position = tuple[float, str]


def page_size(request: pb.ListJobsRequest) -> int:
    if request.page_size < 0:
        raise InvalidArgument(f"page_size must be >= 0, got {request.page_size}")
    return min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(position: Position) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode()


def decode_token(token: str) -> Position | None:
    """The position a page token stands for; None for the first page; INVALID_ARGUMENT otherwise."""
    if not token:
        return None
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        if isinstance(created_at, bool) or not isinstance(created_at, int | float):
            raise ValueError("bad time")
        if not isinstance(job_id, str) or len(job_id) > 64:
            raise ValueError("bad id")
    except (ValueError, TypeError, UnicodeError):
        shown = token if len(token) <= 64 else token[:64] + "..."
        raise InvalidArgument(f"page_token {shown!r} is not a token this server issued") from None
    return float(created_at), job_id


def shorten_argv(job: pb.Job) -> None:
    """Cut `job.argv` for a listing, in place; sets argv_truncated when anything was cut."""
    kept: list[str] = []
    budget = LISTED_ARGV_CHARS
    cut = len(job.argv) > LISTED_ARGS
    for arg in job.argv[:LISTED_ARGS]:
        if len(arg) > budget:
            kept.append(arg[:budget])
            cut = True
            break
        kept.append(arg)
        budget -= len(arg)
    if cut or len(kept) < len(job.argv):
        del job.argv[:]
        job.argv.extend(kept)
        job.argv_truncated = True


@attrs.frozen
class ListedJob:
    #: The status it was built from: the entry is served only for a status equal to it.
    status: JobStatus
    #: The job as one `jobs` entry of a serialized ListJobsResponse (tag, length, the shortened pb.Job).
    framed: bytes
    #: The shortened pb.Job's ByteSize() (what a page's byte budget counts).
    size: int


class ListedJobs:
    """Each listed job's entry, by job id, while its status stays equal (`JobStatus` equality: every
    field, owner, state, usage, output size and stop request included). The entry is a pure function
    of the status (`convert.job_to_proto`, then `shorten_argv`), so a hit is exactly what building it
    again would give, and any change of the status (it ended, was stopped, its usage was read again
    with other figures, it wrote output) builds it anew. Bounded in entries and in bytes kept (oldest
    out first); a deleted job's entry is never served again (its id never comes back) and ages out.
    Thread-safe."""

    def __init__(self, max_entries: int = LISTED_MAX_ENTRIES, max_bytes: int = LISTED_MAX_BYTES) -> None:
        self._kept: Kept[str, ListedJob] = Kept(max_entries, max_bytes, lambda entry: len(entry.framed))

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes(self) -> int:
        return self._kept.size

    def entry(self, status: JobStatus) -> ListedJob:
        found = self._kept.get(status.id)
        if found is not None and (found.status is status or found.status == status):
            return found
        job = convert.job_to_proto(status)
        shorten_argv(job)
        data = job.SerializeToString()
        built = ListedJob(status=status, framed=_JOBS_TAG + varint(len(data)) + data, size=len(data))
        self._kept.put(status.id, built)
        return built


def response(entries: list[ListedJob], next_page_token: str) -> pb.ListJobsResponse:
    """A ListJobsResponse of these entries (parsed from their bytes in one call) and the token."""
    page = pb.ListJobsResponse.FromString(b"".join(entry.framed for entry in entries))
    page.next_page_token = next_page_token
    return page
