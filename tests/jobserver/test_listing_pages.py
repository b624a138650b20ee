"""Whole ListJobs pages kept between calls (`listing.Pages`): asked again while nothing changed, a page
is served as built; every change a listing shows (a start, a stop, an end, a row written by anyone,
time) builds it again; a page is never served to another owner's listing; and running jobs carry
live usage only when asked (`include_usage`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest
from server_harness import Client, RunningServer, wait_for

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobserver import listing


class _Builds:
    """Counts the pages the server builds (calls of `Jobs.page`)."""

    def __init__(self, server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
        service = server.server._service
        assert service is not None
        self.count = 0
        real: Callable[..., Any] = service._jobs.page

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(service._jobs, "page", counting)
        self.pages = service._pages


def _raw(client: Client, **fields: Any) -> pb.ListJobsResponse:
    return client.stub.ListJobs(pb.ListJobsRequest(**fields), timeout=10)


def _by_id(response: pb.ListJobsResponse) -> dict[str, pb.Job]:
    return {job.id: job for job in response.jobs}


def test_a_page_is_served_as_built_until_a_job_changes(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = server.client("alice"), server.client("bob")
    quiet = alice.start(["sleep", "600"]).id
    other = alice.start(["sleep", "600"]).id
    builds = _Builds(server, monkeypatch)
    builds.pages.max_age = 3600.0  # only changes invalidate here (time is the next test's)

    first = _raw(alice)
    assert set(_by_id(first)) == {quiet, other} and builds.count == 1
    for _ in range(3):
        assert _raw(alice) == first
    assert builds.count == 1  # served as built

    alice.stop(quiet, grace=0)  # the stop request, then its end
    assert wait_for(lambda: _by_id(_raw(alice))[quiet].state == pb.JOB_STATE_KILLED, 30)
    stopped = _by_id(_raw(alice))[quiet]
    assert stopped.stop_requested and stopped.HasField("ended_at")
    built = builds.count
    assert built >= 2

    bobs = bob.start(["sleep", "600"]).id  # anyone's start writes the index: built again
    assert set(_by_id(_raw(alice))) == {quiet, other}
    assert builds.count == built + 1
    assert set(_by_id(_raw(bob))) == {bobs}  # bob's own page, never alice's
    assert builds.count == built + 2

    # A row written by another connection (an operator's sqlite3, a restore) is seen at once.
    with sqlite3.connect(server.state_dir / "jobserver.db") as raw:
        raw.execute("UPDATE jobs SET status = 'garbage' WHERE id = ?", (quiet,))
    assert _by_id(_raw(alice))[quiet].state == pb.JOB_STATE_LOST
    assert builds.count == built + 3
    assert set(_by_id(_raw(alice))) == {quiet, other} and builds.count == built + 3
    alice.stop(other, grace=0)
    bob.stop(bobs, grace=0)


def test_a_kept_page_is_built_again_once_it_is_older_than_its_figures_may_be(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = server.client("alice")
    job_id = alice.start(["sleep", "600"]).id
    builds = _Builds(server, monkeypatch)
    assert builds.pages.max_age == pytest.approx(0.5)  # with the figures' own 0.5 s: never over 1 s old
    _raw(alice)
    _raw(alice)
    assert builds.count == 1
    time.sleep(builds.pages.max_age + 0.1)
    _raw(alice)
    assert builds.count == 2
    alice.stop(job_id, grace=0)


def test_status_reads_do_not_invalidate_a_page_and_usage_comes_only_when_asked(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = server.client("alice")
    ended = alice.start(["true"]).id
    alice.wait_ended(ended)
    job_id = alice.start(["sleep", "600"]).id
    builds = _Builds(server, monkeypatch)
    builds.pages.max_age = 3600.0

    plain = _by_id(_raw(alice))
    for _ in range(3):
        assert alice.get(job_id).usage.HasField("cpu_seconds")  # GetJob reads usage afresh...
    assert _by_id(_raw(alice)) == plain and builds.count == 1  # ...and moves nothing a listing shows

    running = plain[job_id].usage
    assert not any(running.HasField(f) for f in ("cpu_seconds", "memory_peak_bytes", "io_read_bytes"))
    assert plain[ended].usage.HasField("cpu_seconds")  # an ended job's usage is final: always there

    with_usage = _by_id(_raw(alice, include_usage=True))
    assert with_usage[job_id].usage.HasField("cpu_seconds")
    assert builds.count == 2  # its own page
    assert _by_id(_raw(alice)) == plain and builds.count == 2
    alice.stop(job_id, grace=0)


def test_the_pages_kept_are_bounded_and_keyed_by_everything_that_selects_them() -> None:
    pages = listing.Pages(max_age=10.0, max_entries=3, max_bytes=1000)
    page = listing.EncodedPage(wire=b"x" * 100, count=1)
    for i in range(10):
        pages.put((f"user{i}", None, 100, False), ("v",), 0.0, page)
        assert len(pages) <= 3
    assert pages.get(("user9", None, 100, False), ("v",), 1.0) is page
    assert pages.get(("user9", None, 100, True), ("v",), 1.0) is None  # with usage: another page
    assert pages.get(("user9", (1.0, "a"), 100, False), ("v",), 1.0) is None  # another position
    assert pages.get(("user9", None, 50, False), ("v",), 1.0) is None  # another size
    assert pages.get((None, None, 100, False), ("v",), 1.0) is None  # everyone's: another page
    assert pages.get(("user9", None, 100, False), ("w",), 1.0) is None  # the version moved
    assert pages.get(("user9", None, 100, False), ("v",), 10.5) is None  # too old
    assert pages.get(("user9", None, 100, False), ("v",), -1.0) is None  # a clock that went back
    pages.put(("big", None, 100, False), ("v",), 0.0, listing.EncodedPage(wire=b"x" * 2000, count=1))
    assert pages.get(("big", None, 100, False), ("v",), 1.0) is None  # larger than the budget: not kept
