"""ListJobs pages: page sizes, page tokens and the shortened argv of listed jobs.

Whatever a user's history (thousands of jobs, each with a 256 KB argv), one ListJobs response stays
small: at most `MAX_PAGE_SIZE` jobs and about `MAX_PAGE_BYTES`, each job's argv cut to
`LISTED_ARGV_CHARS` characters in all (GetJob returns it whole). A page token is the position after
the last job sent, (created_at, id): listing is oldest first and stable under new jobs arriving.
"""

from __future__ import annotations

import base64
import json

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobserver.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: A page ends before the job that would take it past this many bytes (a page has at least one job).
MAX_PAGE_BYTES = 1024 * 1024
#: Characters of argv kept in a listing, all arguments together (and at most LISTED_ARGS arguments).
LISTED_ARGV_CHARS = 1024
LISTED_ARGS = 64

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
