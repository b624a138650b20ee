"""ListJobs is paged and bounded whatever the history: a user with many jobs of huge argv still lists
them all (a page at a time, argv shortened; GetJob has it whole), and no response exceeds ~1 MiB."""

from __future__ import annotations

import grpc
from server_harness import Client, RunningServer, rpc_error

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobserver.listing import LISTED_ARGV_CHARS, MAX_PAGE_BYTES

#: Each job's argv: two arguments of 125 000 bytes (under the kernel's 128 KiB per argument).
BIG = ["true", "a" * 125_000, "b" * 125_000]
JOBS = 30  # 7.5 MB of argv in all: past the 4 MiB a gRPC client accepts by default


def _pages(client: Client, page_size: int = 0, scope: int = 0) -> list[pb.ListJobsResponse]:
    pages = []
    request = pb.ListJobsRequest(scope=scope, page_size=page_size)
    for _ in range(1000):
        response = client.stub.ListJobs(request, timeout=30)
        pages.append(response)
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token
    raise AssertionError("ListJobs never ended its pages")


def test_a_long_history_of_huge_argv_lists_in_bounded_pages(server: RunningServer) -> None:
    alice = server.client("alice")
    started = [alice.start(BIG).id for _ in range(JOBS)]
    bob_job = server.client("bob").start(["true"]).id

    pages = _pages(alice)
    listed = [job for page in pages for job in page.jobs]
    assert [job.id for job in listed] == started  # every job, oldest first, once
    assert all(page.ByteSize() <= MAX_PAGE_BYTES + 64 * 1024 for page in pages)
    for job in listed:
        assert job.argv_truncated
        assert sum(len(a) for a in job.argv) <= LISTED_ARGV_CHARS
        assert job.argv[0] == "true"
    full = alice.get(started[0])
    assert list(full.argv) == BIG and not full.argv_truncated

    everyone = [
        job.id for page in _pages(server.client("carl"), scope=pb.LIST_SCOPE_ALL) for job in page.jobs
    ]
    assert everyone == [*started, bob_job]


def test_page_size_and_tokens(server: RunningServer) -> None:
    alice = server.client("alice")
    started = [alice.start(["true", str(i)]).id for i in range(9)]
    pages = _pages(alice, page_size=4)
    assert [len(page.jobs) for page in pages] == [4, 4, 1]
    assert [job.id for page in pages for job in page.jobs] == started
    assert not any(job.argv_truncated for page in pages for job in page.jobs)

    exc = rpc_error(lambda: alice.stub.ListJobs(pb.ListJobsRequest(page_token="not-a-token"), timeout=10))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token 'not-a-token' is not a token this server issued" in exc.details()
    exc = rpc_error(lambda: alice.stub.ListJobs(pb.ListJobsRequest(page_size=-1), timeout=10))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A token from alice's listing gives bob nothing of hers: the filter is the caller's, not the token's.
    bob = server.client("bob")
    later = bob.stub.ListJobs(pb.ListJobsRequest(page_token=pages[0].next_page_token), timeout=10)
    assert list(later.jobs) == []
