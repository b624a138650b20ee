"""The shim opens a job's output log and exit-record reserve while the command's process sets itself up
(issue 14): `spawn_command(meanwhile=...)` runs the caller's work after the fork and before it waits for
the exec. These check the order (deterministically: the child waits for what `meanwhile` does), each
way the two can fail, and that a job that did not start keeps no output log or reserve. Timing is not
asserted (bench/start_ab.py measures it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jobcore_testing import CONTROLLER, job_pids, requires_root, wait_until
from support import processes_with

from jobcore import JobSpec, JobState, Worker
from jobcore.jobdir import OUTPUT, OUTPUT_INDEX

#: spawn_command in a fresh single-threaded process (the shim's situation: jobcore forks with fork(2)
#: only there), with a cgroup handle whose `enter` - the child's first step of its set-up - waits up to
#: 20 s for the file `go`, which `meanwhile` creates: the child can only find it if `meanwhile` ran while
#: it was setting itself up.
_PROBE = r"""
import json, os, sys, time
from jobcore.command import StartError, spawn_command
from jobcore.records import SpecRecord
from jobcore.spec import Limits

here, argv0, meanwhile_fails = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

class WaitingHandle:
    def enter(self, pid):
        deadline = time.monotonic() + 20
        while not os.path.exists(f"{here}/go") and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(f"{here}/child-saw", "w") as f:
            f.write("go" if os.path.exists(f"{here}/go") else "nothing")

def meanwhile():
    open(f"{here}/go", "w").close()
    if meanwhile_fails:
        raise OSError(28, "No space left on device")

spec = SpecRecord(id="t", owner="t", argv=(argv0,), cwd="/", namespaces=(), limits=Limits(),
                  controller="none", created_at=0.0, env={"PATH": "/usr/bin:/bin"})
r, w = os.pipe()
try:
    command = spawn_command(spec, WaitingHandle(), w, w, meanwhile=meanwhile)
except StartError as exc:
    result = {"raised": "StartError", "stage": exc.stage}
except OSError as exc:
    result = {"raised": "OSError", "errno": exc.errno}
    os.wait()  # the command exec'd: collect it
else:
    os.waitpid(command.pid, 0)
    result = {"raised": None}
print(json.dumps(result))
"""


def _spawn(tmp_path: Path, argv0: str, *, meanwhile_fails: bool = False) -> tuple[dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path), argv0, "1" if meanwhile_fails else "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout), (tmp_path / "child-saw").read_text()


def test_meanwhile_runs_while_the_command_sets_itself_up(tmp_path: Path) -> None:
    result, child_saw = _spawn(tmp_path, "/bin/true")
    assert result == {"raised": None}
    assert child_saw == "go"  # found during its set-up: meanwhile did not wait for the exec


def test_a_command_that_cannot_start_is_reported_over_what_meanwhile_raised(tmp_path: Path) -> None:
    result, child_saw = _spawn(tmp_path, "/nonexistent/tool", meanwhile_fails=True)
    assert result == {"raised": "StartError", "stage": "exec"}
    assert child_saw == "go"


def test_what_meanwhile_raised_is_raised_once_the_command_has_started(tmp_path: Path) -> None:
    result, _ = _spawn(tmp_path, "/bin/true", meanwhile_fails=True)
    assert result == {"raised": "OSError", "errno": 28}


@requires_root
@pytest.mark.parametrize("argv", [["no-such-tool-x"], ["/etc/hostname"]], ids=["enoent", "eacces"])
def test_a_job_that_did_not_start_keeps_no_output_log_or_reserve(worker: Worker, argv: list[str]) -> None:
    status = worker.start(JobSpec(argv))
    assert status.state is JobState.FAILED_TO_START
    kept = sorted(os.listdir(worker.state_dir / status.id))
    assert "spec.json" in kept and "exit.json" in kept  # the job's record is all there
    assert OUTPUT not in kept and OUTPUT_INDEX not in kept and ".reserve" not in kept, kept
    assert b"".join(worker.output(status.id)) == b""  # and it reads as a job that printed nothing


@requires_root
def test_a_job_that_started_has_its_output_log_from_its_first_byte(worker: Worker) -> None:
    # One stream: the shim drains stdout and stderr as two pipes, in no fixed order between them.
    status = worker.start(JobSpec(["sh", "-c", "echo first; echo second"]))
    assert status.state is not JobState.FAILED_TO_START
    assert worker.wait(status.id).exit_code == 0
    assert b"".join(worker.output(status.id)) == b"first\nsecond\n"


@requires_root
@pytest.mark.parametrize("pid_namespace", [True, False], ids=["pid-namespace", "no-namespaces"])
def test_a_job_whose_output_log_cannot_be_created_fails_to_start_with_a_clear_reason(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, pid_namespace: bool
) -> None:
    from unwritable_output_backend import UnwritableOutputController

    from jobcore import Isolation

    # The launcher imports the backend's module: it must find it (this folder), as test_fork.py's.
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JOBCORE_TEST_OUTPUT_UNWRITABLE", "1")
    marker = f"61.{os.getpid()}{int(pid_namespace)}"  # a sleep whose arguments no other process has
    with Worker(state_dir, controller=UnwritableOutputController()) as worker:
        status = worker.start(
            JobSpec(
                ["sh", "-c", f"sleep {marker} & exec sleep {marker}"],
                isolation=Isolation() if pid_namespace else Isolation.none(),
            )
        )
        # The command did start (the log is made while it sets itself up) and was stopped at once.
        assert status.state is JobState.FAILED_TO_START
        assert status.reason == (
            "the job's output could not be stored (No space left on device): "
            "the job was stopped as it started"
        )
        assert str(state_dir) not in status.reason  # the owner reads it; the state directory is not theirs
        wait_until(lambda: not processes_with(marker, zombies=False), 10, "the job's processes to be gone")
        kept = sorted(os.listdir(worker.state_dir / status.id))
        assert OUTPUT not in kept and OUTPUT_INDEX not in kept and ".reserve" not in kept, kept
        assert worker.status(status.id).state is JobState.FAILED_TO_START  # and it stays so
    wait_until(lambda: not processes_with(marker, zombies=False), 10, "the job's processes to be gone")


@requires_root
def test_no_reserve_is_left_behind_when_the_state_disk_has_no_room_for_it(small_state_dir: Path) -> None:
    # Less than the reserve's 64 KiB free, but room for a job's records: the reserve is given up (best
    # effort), and no empty .reserve file stays, whether the job started or not.
    with Worker(small_state_dir, controller=CONTROLLER) as worker:
        free = os.statvfs(small_state_dir)
        with open(small_state_dir / "filler", "wb") as f:
            f.write(b"x" * (free.f_bavail * free.f_frsize - (40 << 10)))
        failed = worker.start(JobSpec(["/nonexistent/tool"]))
        assert failed.state is JobState.FAILED_TO_START
        assert ".reserve" not in os.listdir(small_state_dir / failed.id)
        ran = worker.start(JobSpec(["true"]))
        assert worker.wait(ran.id, timeout=30).exit_code == 0
        wait_until(lambda: not job_pids(small_state_dir), 10, "the shim to exit")
        assert ".reserve" not in os.listdir(small_state_dir / ran.id)
