"""What ListJobs keeps between calls — each job's built entry (`listing.ListedJobs`), the store's decoded
rows, the Worker's running status — serves exactly what building it again would, notices every change
of a job, never shows a job to anyone else, and stays bounded."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import attrs
import pytest
from server_harness import RunningServer, wait_for

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobcore import jobdir
from jobcore.spec import Limits
from jobcore.status import JobState, JobStatus, ResourceUsage
from jobserver import convert, listing, store
from jobserver.store import JobStore


def _status(job_id: str = "a", **changes: object) -> JobStatus:
    base = JobStatus(
        id=job_id,
        owner="alice",
        argv=("sleep", "600"),
        state=JobState.RUNNING,
        cwd="/tmp",
        pid=42,
        started_at=1_700_000_000.5,
        usage=ResourceUsage(cpu_seconds=0.25, memory_peak_bytes=1 << 20),
        limits=Limits(cpu=1.0, memory=512 << 20, pids=256),
        controller="cgroup1",
        namespaces=("pid", "mount"),
        uid=1000,
        gid=1000,
        sandboxed=True,
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


def _uncached(status: JobStatus) -> pb.Job:
    job = convert.job_to_proto(status)
    listing.shorten_argv(job)
    return job


STATUSES = [
    _status(),
    _status("b", state=JobState.EXITED, pid=None, exit_code=3, ended_at=1_700_000_002.0, reason="exited"),
    _status("c", state=JobState.KILLED, signal=9, stop_requested=True, oom_killed=True, output_capped=True),
    _status("d", argv=("true", "a" * 125_000, "b" * 125_000)),  # shortened in a listing
    _status("e", argv=tuple(str(i) for i in range(100)), output_bytes=1 << 40),  # more args than listed
    _status("f", state=JobState.LOST, reason="gone", usage=ResourceUsage(), limits=Limits()),
    _status("g", argv=("échø", "\u2603"), uid=None, gid=None),
]


def test_each_entry_is_exactly_the_uncached_job_and_a_page_of_them_the_uncached_response() -> None:
    listed = listing.ListedJobs()
    entries = [listed.entry(status) for status in STATUSES]
    for entry, status in zip(entries, STATUSES, strict=True):
        expected = _uncached(status)
        (job,) = pb.ListJobsResponse.FromString(entry.framed).jobs
        assert job == expected
        assert entry.size == expected.ByteSize()
    assert _uncached(STATUSES[3]).argv_truncated and _uncached(STATUSES[4]).argv_truncated
    page = listing.response(entries, "token")
    expected_page = pb.ListJobsResponse(jobs=[_uncached(s) for s in STATUSES], next_page_token="token")
    assert page.count == len(STATUSES)
    # What goes on the wire is byte for byte what protobuf writes for the uncached response.
    assert listing.serialize_page(page) == page.wire == expected_page.SerializeToString()
    assert pb.ListJobsResponse.FromString(page.wire) == expected_page
    assert listing.response([], "").wire == b""
    assert listing.serialize_page(expected_page) == expected_page.SerializeToString()


@pytest.mark.parametrize(
    "change",
    [
        {"state": JobState.KILLED, "signal": 15, "ended_at": 1_700_000_009.0, "pid": None},  # it ended
        {"stop_requested": True},  # a stop was asked for
        {"usage": ResourceUsage(cpu_seconds=0.5, memory_peak_bytes=1 << 20)},  # usage read again
        {"output_bytes": 3},  # it wrote output
        {"owner": "bob"},  # never served for anyone else's status
    ],
)
def test_an_entry_is_built_again_after_any_change_and_only_then(
    change: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    real = convert.job_to_proto

    def counting(status: JobStatus) -> pb.Job:
        built.append(status.id)
        return real(status)

    monkeypatch.setattr(listing.convert, "job_to_proto", counting)
    listed = listing.ListedJobs()
    status = _status()
    first = listed.entry(status)
    assert listed.entry(status) is first
    assert listed.entry(attrs.evolve(status)) is first  # an equal status (a new object): the same entry
    assert built == ["a"]
    changed = attrs.evolve(status, **change)  # type: ignore[arg-type]
    again = listed.entry(changed)
    assert built == ["a", "a"]
    (job,) = pb.ListJobsResponse.FromString(again.framed).jobs
    assert job == _uncached(changed) != _uncached(status)


def test_the_entries_kept_are_bounded_in_count_and_bytes() -> None:
    listed = listing.ListedJobs(max_entries=8, max_bytes=1 << 20)
    for i in range(200):
        listed.entry(_status(str(i)))
        assert len(listed) <= 8
    small = listing.ListedJobs(max_entries=1000, max_bytes=2000)
    for i in range(200):
        entry = small.entry(_status(str(i), argv=("x" * 300,)))
        assert small.bytes <= 2000
        assert pb.ListJobsResponse.FromString(entry.framed).jobs[0].id == str(i)
    assert len(small) < 200
    huge = listing.ListedJobs(max_bytes=100)  # an entry larger than the whole budget is not kept
    assert huge.entry(_status()).size > 100 and len(huge) == 0 and huge.bytes == 0
    assert listing.LISTED_MAX_ENTRIES >= listing.MAX_PAGE_SIZE


def test_the_store_decodes_a_row_once_while_it_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    real = store.status_from_json

    def counting(text: str, cwd: str = "") -> JobStatus:
        decoded.append(text)
        return real(text, cwd)

    monkeypatch.setattr(store, "status_from_json", counting)
    db = JobStore(tmp_path / "db")
    try:
        running = _status()
        db.put(running, created_at=1.0)
        first = db.page("alice", None, 10)[0].status
        assert first == running
        assert db.page("alice", None, 10)[0].status is first
        assert db.list("alice")[0].status is first
        record = db.get("a")
        assert record is not None and record.status is first
        assert len(decoded) == 1
        ended = attrs.evolve(running, state=JobState.EXITED, exit_code=0, ended_at=2.0, pid=None)
        db.put(ended)
        assert db.page("alice", None, 10)[0].status == ended
        assert len(decoded) == 2
        db.delete("a")
        assert db.get("a") is None and len(db._decoded) == 0
    finally:
        db.close()


def test_a_damaged_row_is_never_kept_and_a_changed_owner_column_is_not_served_from_the_kept_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "db"
    db = JobStore(path)
    try:
        db.put(_status("a"), created_at=1.0)
        db.put(_status("b"), created_at=2.0)
        assert [r.status.state for r in db.list()] == [JobState.RUNNING, JobState.RUNNING]
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE jobs SET status = 'garbage' WHERE id = 'a'")
            raw.execute("UPDATE jobs SET owner = 'bob' WHERE id = 'b'")  # the text still says alice
        for _ in range(2):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="jobserver.store"):
                records = {r.id: r for r in db.list()}
            assert records["a"].status.state is JobState.LOST
            assert records["b"].status.state is JobState.LOST and records["b"].owner == "bob"
            assert sum("unreadable" in r.getMessage() for r in caplog.records) == 2  # logged every time
        assert "a" not in db._decoded
    finally:
        db.close()


def test_the_decoded_rows_kept_are_bounded() -> None:
    kept = store._DecodedStatuses(max_entries=4, max_chars=10_000)
    for i in range(50):
        status = _status(str(i))
        kept.put(str(i), (store.status_to_json(status), "/tmp", status))
        assert len(kept) <= 4 and kept.size <= 10_000
    big = _status("big", argv=("x" * 20_000,))
    kept.put("big", (store.status_to_json(big), "/tmp", big))
    assert kept.decoded("big", store.status_to_json(big), "/tmp") is None  # larger than the budget: not kept
    assert kept.decoded("49", store.status_to_json(_status("49")), "/tmp") == _status("49")
    assert kept.decoded("49", store.status_to_json(_status("49")), "/elsewhere") is None
    assert store.DECODED_MAX_ENTRIES >= listing.MAX_PAGE_SIZE


# ---------------------------------------------------------------------------------------- real server


def _listed(client: object, **kwargs: object) -> dict[str, pb.Job]:
    return {job.id: job for job in client.list(**kwargs)}  # type: ignore[attr-defined]


def test_a_listing_shows_each_change_of_a_running_job_and_only_the_callers_jobs(
    server: RunningServer,
) -> None:
    alice, bob, carl = server.client("alice"), server.client("bob"), server.client("carl")
    quiet = alice.start(["sleep", "600"]).id
    talker = alice.start(["sh", "-c", "sleep 0.5; echo hi; exec sleep 600"]).id
    bobs = bob.start(["sleep", "600"]).id
    everyone = _listed(carl, scope=pb.LIST_SCOPE_ALL)  # every entry built (and kept)
    assert set(everyone) == {quiet, talker, bobs}
    assert set(_listed(alice)) == {quiet, talker}
    assert set(_listed(bob)) == {bobs}
    assert all(job.state == pb.JOB_STATE_RUNNING for job in everyone.values())

    assert wait_for(lambda: alice.get(talker).output_bytes == 3, 30)
    assert wait_for(lambda: _listed(alice)[talker].output_bytes == 3, 5)

    alice.stop(quiet, grace=0)
    after = _listed(alice)[quiet]
    assert after.state == pb.JOB_STATE_KILLED and after.stop_requested and after.HasField("ended_at")
    assert _listed(carl, scope=pb.LIST_SCOPE_ALL)[quiet] == after
    assert _listed(alice)[talker].state == pb.JOB_STATE_RUNNING
    assert set(_listed(bob)) == {bobs}


def test_a_listing_equals_the_jobs_converted_afresh(server: RunningServer) -> None:
    alice = server.client("alice")
    ids = [alice.start(["true", str(i)]).id for i in range(3)]
    ids.append(alice.start(["true", "a" * 125_000, "b" * 125_000]).id)
    for job_id in ids:
        alice.wait_ended(job_id)
    assert wait_for(lambda: all(j.state == pb.JOB_STATE_EXITED for j in alice.list()), 30)
    index = JobStore(server.state_dir / "jobserver.db")  # the server's index, read as it is
    try:
        for _ in range(2):  # the first listing builds every entry, the second serves them as kept
            listed = alice.list()
            assert [job.id for job in listed] == ids
            assert listed == [_uncached(record.status) for record in index.list("alice")]
            assert listed[-1].argv_truncated
    finally:
        index.close()


def test_the_worker_returns_the_same_running_status_until_something_changes(server: RunningServer) -> None:
    alice = server.client("alice")
    job_id = alice.start(["sh", "-c", "sleep 0.5; echo hi; exec sleep 600"]).id
    worker = server.server.worker
    assert worker is not None
    first = worker.status(job_id)  # usage and output size read now
    assert first.output_bytes == 0
    assert worker.status(job_id, usage_max_age=3600) is first  # nothing read again, nothing changed
    assert wait_for(lambda: alice.get(job_id).output_bytes == 3, 30)  # GetJob reads afresh
    # A listing's figures are the ones read with its usage (within usage_max_age)...
    assert worker.status(job_id, usage_max_age=3600).output_bytes == 3  # GetJob's read refreshed them
    wrote = worker.status(job_id, usage_max_age=3600)
    assert wrote is not first and wrote == attrs.evolve(first, output_bytes=3, usage=wrote.usage)
    assert worker.status(job_id, usage_max_age=3600) is wrote
    alice.stop(job_id, grace=0)
    ended = worker.status(job_id, usage_max_age=3600)  # an end is never hidden by what was kept
    assert ended.state is JobState.KILLED and ended.stop_requested


def test_a_listing_reads_a_running_jobs_output_size_with_its_usage(server: RunningServer) -> None:
    alice = server.client("alice")
    job_id = alice.start(["sh", "-c", "sleep 0.5; echo hi; exec sleep 600"]).id
    worker = server.server.worker
    assert worker is not None
    assert worker.status(job_id).output_bytes == 0
    deadline = time.monotonic() + 30
    output = server.state_dir / "jobs" / job_id / jobdir.OUTPUT
    while output.stat().st_size < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.status(job_id, usage_max_age=3600).output_bytes == 0  # as read with the usage
    assert worker.status(job_id).output_bytes == 3  # read now
