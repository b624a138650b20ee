"""`Jobs.output` / `Jobs.indexed_output` / `Jobs.check_output`: StreamOutput's way to a job's output
(issue 13: the service no longer reads the Worker or the state directory itself). A real jobcore
Worker (backend 'none': no cgroups needed) and a real JobStore."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from jobcore import JobSpec, Worker, jobdir, output_log
from jobserver.errors import DataLoss, FailedPrecondition, InvalidArgument, OutOfRange
from jobserver.jobs import Jobs, JobView
from jobserver.store import JobStore


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[tuple[Jobs, Worker]]:
    store = JobStore(tmp_path / "db")
    worker = Worker(tmp_path / "jobs", controller="none", on_job_ended=store.put)
    try:
        yield Jobs(worker, store, max_running_per_user=4), worker
    finally:
        worker.close()
        store.close()


def _ended_job(jobs: Jobs, worker: Worker, script: str) -> JobView:
    view = jobs.start(JobSpec(["sh", "-c", script], owner="alice"))
    worker.wait(view.status.id, timeout=60)
    return JobView(status=worker.status(view.status.id), live=True)


def test_output_in_chunks_of_the_size_asked(jobs: tuple[Jobs, Worker]) -> None:
    service, worker = jobs
    view = _ended_job(service, worker, "printf abc")
    reader = service.output(view, 0, follow=False, chunk_size=1)
    try:
        assert list(reader) == [b"a", b"b", b"c"]
    finally:
        reader.close()
    reader = service.output(view, 1, follow=False)
    try:
        assert b"".join(reader) == b"bc"
    finally:
        reader.close()


def test_indexed_output_filters_by_stream_and_tail(jobs: tuple[Jobs, Worker]) -> None:
    service, worker = jobs
    view = _ended_job(service, worker, "echo out1; echo err >&2; echo out2")
    reader = service.indexed_output(view, 0, False, stream=output_log.STDOUT, since=None, tail_lines=1)
    try:
        assert b"".join(data for _start, data, _stream, _t in reader) == b"out2\n"
    finally:
        reader.close()
    with pytest.raises(InvalidArgument, match="since must be a finite Unix time"):
        service.indexed_output(
            view, 0, False, stream=output_log.ANY_STREAM, since=float("nan"), tail_lines=None
        )


def test_refusals_before_any_reader_is_opened(jobs: tuple[Jobs, Worker]) -> None:
    service, worker = jobs
    view = _ended_job(service, worker, "printf abc")
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OutOfRange, match=r"offset 4 is past the end of job .* \(3 bytes so far\)"):
        service.output(view, 4, follow=False)
    gone = attrs.evolve(view, live=False)
    with pytest.raises(FailedPrecondition, match="is no longer stored here"):
        service.output(gone, 0, follow=False)
    os.unlink(worker.state_dir / view.status.id / jobdir.OUTPUT)
    with pytest.raises(DataLoss, match="is missing from the server"):
        service.output(view, 0, follow=False)
    with pytest.raises(DataLoss, match="is missing from the server"):
        service.indexed_output(view, 0, False, stream=output_log.ANY_STREAM, since=None, tail_lines=None)
    assert len(os.listdir("/proc/self/fd")) == fds  # nothing was left open
