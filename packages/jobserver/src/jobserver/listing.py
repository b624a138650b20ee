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


@attrs.frozen
class EncodedPage:
    """A ListJobsResponse already in its wire form: the entries' bytes as kept, and the token.
    `serialize_page` hands it to gRPC as it is (no parse of the entries, no serialization again)."""

    wire: bytes
    #: How many jobs it holds (for the logs and tests).
    count: int


#: The tag byte of ListJobsResponse.next_page_token (length-delimited).
_TOKEN_TAG = bytes([(pb.ListJobsResponse.NEXT_PAGE_TOKEN_FIELD_NUMBER << 3) | 2])


def response(entries: list[ListedJob], next_page_token: str) -> EncodedPage:
    """A ListJobsResponse of these entries and the token, in wire form (protobuf's parsers accept
    fields in any order; the entries come first, as protobuf itself writes them)."""
    wire = b"".join(entry.framed for entry in entries)
    if next_page_token:
        token = next_page_token.encode()
        wire += _TOKEN_TAG + varint(len(token)) + token
    return EncodedPage(wire=wire, count=len(entries))


def serialize_page(response: EncodedPage | pb.ListJobsResponse) -> bytes:
    """ListJobs' response serializer: an `EncodedPage` is its wire form already."""
    if isinstance(response, EncodedPage):
        return response.wire
    return response.SerializeToString()


#: Bounds of `Pages`: pages kept, and their bytes.
PAGES_MAX_ENTRIES = 256
PAGES_MAX_BYTES = 32 * 1024 * 1024

PageKey = tuple[str | None, Position | None, int, bool]


@attrs.frozen
class _KeptPage:
    version: tuple[object, ...]
    built_at: float
    page: EncodedPage


class Pages:
    """Whole ListJobs pages as built, by (owner, position, size, with usage), each with the listing
    version it was built at (`Jobs.listing_version`, read before building) and when. A page is
    served again only while that version has not moved and for at most `max_age` seconds, which is
    how old a listing's usage and output sizes may be anyway: any job started, ended, stopped,
    removed or pruned, any row written by anyone, any run recorded moves the version, so a page
    never shows a job's state, existence or stop request older than building it again would, and
    its figures are never older than `max_age`. Who may see a page is decided before it is looked
    up (the owner is in the key). Bounded in pages and bytes (oldest out first). Thread-safe."""

    def __init__(
        self, max_age: float, max_entries: int = PAGES_MAX_ENTRIES, max_bytes: int = PAGES_MAX_BYTES
    ) -> None:
        self.max_age = max_age
        self._kept: Kept[PageKey, _KeptPage] = Kept(max_entries, max_bytes, lambda kept: len(kept.page.wire))

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: PageKey, version: tuple[object, ...], now: float) -> EncodedPage | None:
        kept = self._kept.get(key)
        if kept is None or kept.version != version or not 0 <= now - kept.built_at <= self.max_age:
            return None
        return kept.page

    def put(self, key: PageKey, version: tuple[object, ...], built_at: float, page: EncodedPage) -> None:
        self._kept.put(key, _KeptPage(version=version, built_at=built_at, page=page))
