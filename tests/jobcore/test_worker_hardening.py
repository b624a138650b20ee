"""The Worker under damage (issue 12): a damaged record makes its job LOST (killed) and never stops a
new Worker; a job whose directory vanished is killed; stop() can return before the end; remove()."""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from pathlib import Path

import pytest
from jobcore_testing import CONTROLLER, job_pids, requires_root, wait_until
from support import processes_with

from jobcore import JobSpec, JobState, Worker, jobdir, records
from jobcore.errors import CorruptStateFile, JobNotFound, JobStillRunning
from jobcore.records import RunRecord

pytestmark = requires_root

LOOP = ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"]


def _up(worker: Worker, marker: str = "") -> str:
    job_id = worker.start(JobSpec([*LOOP, marker or "job"])).id
    wait_until(lambda: worker.status(job_id).output_bytes == 3, 10, "the job to print")
    return job_id


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"pid": "x", "start_ticks": 1}'])
def test_a_damaged_shim_record_makes_the_job_lost_for_the_next_worker(
    state_dir: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"damaged-{uuid.uuid4().hex}"
    with Worker(state_dir, controller=CONTROLLER) as first:
        job_id = _up(first, marker)
        done = first.start(JobSpec(["true"])).id
        first.wait(done, timeout=10)
    (state_dir / job_id / jobdir.SHIM).write_bytes(content)
    with caplog.at_level(logging.WARNING), Worker(state_dir, controller=CONTROLLER) as second:
        lost = second.status(job_id)
        assert lost.state is JobState.LOST
        assert lost.reason is not None and "shim.json" in lost.reason
        assert second.status(done).state is JobState.EXITED
        wait_until(lambda: not processes_with(marker), 10, "the lost job's processes to die")
    assert f"{job_id}/shim.json" in caplog.text


def test_a_damaged_record_names_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / jobdir.RUN
    for content, problem in [
        (b"", "is not valid JSON (0 bytes"),
        (b'{"pid": 1', "is not valid JSON"),
        (b"3", "holds a JSON int, not an object"),
        (b'{"pid": true, "started_at": 1}', "expected int in field pid"),
        (b'{"pid": 1, "started_at": 1e999}', "in field started_at"),
        (b'{"pid": 1}', "required field missing in field started_at"),
        (b'{"pid": 1, "started_at": 1, "start_ticks": "9"}', "expected int | None in field start_ticks"),
    ]:
        path.write_bytes(content)
        with pytest.raises(CorruptStateFile, match=re.escape(problem)) as info:
            records.read(path, RunRecord)
        assert str(path) in str(info.value)
    path.unlink()
    path.mkdir()
    with pytest.raises(CorruptStateFile, match="cannot be read"):
        records.read(path, RunRecord)
    assert records.read(tmp_path / "absent.json", RunRecord) is None


def test_a_string_where_a_record_holds_an_array_of_strings_is_refused_not_split(tmp_path: Path) -> None:
    # cattrs alone would take "rm -rf /" for argv ("r", "m", " ", ...): a damaged spec.json must not run.
    path = tmp_path / jobdir.SPEC
    spec = {"id": "x", "owner": "alice", "cwd": "/", "namespaces": [], "limits": {}, "controller": "none"}
    for argv in ("rm -rf /", {"0": "rm"}, ["rm", 1]):
        path.write_text(json.dumps({**spec, "created_at": 1.0, "argv": argv}))
        with pytest.raises(CorruptStateFile, match=re.escape("in field argv")):
            records.read(path, records.SpecRecord)
    path.write_text(json.dumps({**spec, "created_at": 1.0, "argv": ["true"], "namespaces": "pid"}))
    with pytest.raises(CorruptStateFile, match=re.escape("in field namespaces")):
        records.read(path, records.SpecRecord)
    path.write_text(json.dumps({**spec, "created_at": 1.0, "argv": ["rm", "-rf", "/"]}))
    assert records.read(path, records.SpecRecord).argv == ("rm", "-rf", "/")


def test_a_job_whose_directory_is_removed_is_killed(worker: Worker) -> None:
    job_id = _up(worker)
    shutil.rmtree(worker.state_dir / job_id)
    final = worker.wait(job_id, timeout=15)
    assert final.state is JobState.LOST
    wait_until(lambda: not job_pids(worker.state_dir), 10, "the job's processes to die")


def test_stop_with_a_timeout_returns_while_the_grace_period_runs(worker: Worker) -> None:
    job_id = _up(worker)
    status = worker.stop(job_id, grace=30, timeout=0.5)
    assert status.state is JobState.RUNNING and status.stop_requested
    assert worker.stop(job_id, grace=0).state is JobState.KILLED


def test_remove_deletes_an_ended_job_and_refuses_a_running_one(worker: Worker) -> None:
    job_id = _up(worker)
    with pytest.raises(JobStillRunning, match=f"job {job_id} is still running"):
        worker.remove(job_id)
    worker.stop(job_id, grace=0)
    assert worker.remove(job_id).state is JobState.KILLED
    assert not (worker.state_dir / job_id).exists()
    with pytest.raises(JobNotFound):
        worker.status(job_id)
