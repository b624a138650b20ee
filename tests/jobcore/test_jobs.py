"""Jobs under shims: start, output, stop, exit status, leftovers, restart survival."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from jobcore_testing import (
    CONTROLLER,
    JOB_PYTHON,
    cgroup_dirs,
    job_pids,
    requires_root,
    run_to_end,
    wait_until,
)

from jobcore import JobSpec, JobState, Limits, StateError, Worker, WorkerError, jobdir, records
from jobcore.launcher import LAUNCHER_NAME
from jobcore.records import ShimRecord
from jobcore.shim import SHIM_NAME

pytestmark = requires_root


def test_output_and_exit_code_are_recorded(worker: Worker) -> None:
    out, status = run_to_end(worker, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert sorted(out.splitlines()) == [b"err", b"out"]
    assert status.state is JobState.EXITED
    assert status.exit_code == 3
    assert status.signal is None
    assert status.started_at is not None and status.ended_at is not None
    assert status.ended_at >= status.started_at
    assert status.output_bytes == len(out)
    on_disk = jobdir.read_json(worker.state_dir / status.id / jobdir.EXIT)
    assert on_disk is not None and on_disk["exit_code"] == 3


def test_stdout_and_stderr_keep_their_order_of_arrival(worker: Worker) -> None:
    script = "for i in 1 2 3 4 5; do echo o$i; sleep 0.05; echo e$i >&2; sleep 0.05; done"
    out, _ = run_to_end(worker, ["sh", "-c", script])
    assert out.split() == [f"{s}{i}".encode() for i in range(1, 6) for s in ("o", "e")]
    from jobcore.output_log import STDERR, STDOUT, read_index

    job = worker.list()[-1]
    streams = [stream for _off, _len, stream, _t in read_index(worker.state_dir / job.id)]
    assert streams == [STDOUT, STDERR] * 5


def test_binary_output_is_kept_byte_for_byte(worker: Worker) -> None:
    payload = bytes(range(256)) * 64 + b"\x00\xff\xfe invalid utf-8 \xc3\x28 \x00"
    script = f"import sys; sys.stdout.buffer.write({payload!r}); sys.stderr.buffer.write(b'\\x00err')"
    out, status = run_to_end(worker, [JOB_PYTHON, "-c", script])
    assert status.exit_code == 0
    assert out[: len(payload)] == payload or out.endswith(payload)
    assert sorted([out]) and len(out) == len(payload) + 4
    assert out.replace(b"\x00err", b"", 1) == payload


def test_a_missing_command_fails_to_start_with_the_os_error(worker: Worker) -> None:
    status = worker.start(JobSpec(["/no/such/program", "arg"]))
    assert status.state is JobState.FAILED_TO_START
    assert status.reason is not None
    assert "No such file or directory" in status.reason and "/no/such/program" in status.reason
    assert list(worker.output(status.id)) == []
    assert worker.status(status.id).state is JobState.FAILED_TO_START


def test_a_non_executable_file_fails_to_start(worker: Worker, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    # cwd: the sandbox's private /tmp shows only the working directory of the host's /tmp
    status = worker.start(JobSpec([str(script)], cwd=str(tmp_path)))
    assert status.state is JobState.FAILED_TO_START
    assert status.reason is not None and "Permission denied" in status.reason


def test_path_is_searched_with_the_jobs_own_environment(worker: Worker, tmp_path: Path) -> None:
    (tmp_path / "hello-tool").write_text('#!/bin/sh\necho from-tool "$GREETING"\n')
    (tmp_path / "hello-tool").chmod(0o755)
    out, status = run_to_end(
        worker, ["hello-tool"], env={"PATH": f"{tmp_path}:/usr/bin:/bin", "GREETING": "hi"}, cwd=str(tmp_path)
    )
    assert status.exit_code == 0
    assert out == b"from-tool hi\n"


def test_the_environment_is_not_inherited_from_the_worker(worker: Worker) -> None:
    os.environ["JOBCORE_SECRET_OF_THE_WORKER"] = "leak"
    try:
        out, _ = run_to_end(worker, ["env"])
    finally:
        del os.environ["JOBCORE_SECRET_OF_THE_WORKER"]
    assert b"JOBCORE_SECRET_OF_THE_WORKER" not in out
    assert b"PATH=/usr/local/sbin" in out


def test_cwd_is_applied(worker: Worker, tmp_path: Path) -> None:
    out, _ = run_to_end(worker, ["pwd"], cwd=str(tmp_path))
    assert out.strip() == str(tmp_path).encode()


def test_a_grandchild_that_outlives_the_command_is_killed_and_nothing_is_left(worker: Worker) -> None:
    # The command forks a daemon (new session, double fork) and exits at once.
    script = "setsid sh -c 'sleep 300 & echo $! > daemon.pid' & sleep 0.3; exit 0"
    status = worker.start(JobSpec(["sh", "-c", script]))
    final = worker.wait(status.id, timeout=30)
    assert final.state is JobState.EXITED and final.exit_code == 0
    # The fixture checks that no shim, init or cgroup is left; the daemon must be gone as well.
    pid_file = Path(final.cwd) / "daemon.pid"  # the job's scratch directory
    if pid_file.exists() and "pid" not in final.namespaces:
        daemon = int(pid_file.read_text())
        wait_until(lambda: not Path(f"/proc/{daemon}").exists(), 10, "the daemonized grandchild to die")


def test_stop_sends_sigterm_and_the_command_may_exit_gracefully(worker: Worker) -> None:
    script = "trap 'echo graceful; exit 0' TERM; echo ready; while :; do sleep 0.1; done"
    status = worker.start(JobSpec(["sh", "-c", script]))
    reader = worker.output(status.id)
    assert next(reader) == b"ready\n"
    final = worker.stop(status.id, grace=10)
    assert final.state is JobState.EXITED
    assert final.exit_code == 0
    assert final.stop_requested
    assert b"".join(reader) == b"graceful\n"


def test_stop_kills_a_command_that_ignores_sigterm_after_the_grace_period(worker: Worker) -> None:
    status = worker.start(JobSpec(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"]))
    assert next(worker.output(status.id)) == b"ready\n"
    before = time.monotonic()
    final = worker.stop(status.id, grace=0.5)
    assert time.monotonic() - before >= 0.5
    assert final.state is JobState.KILLED
    assert final.signal == signal.SIGKILL
    assert final.reason == "stopped by request"


def test_stop_kills_setsid_escapees(worker: Worker) -> None:
    script = "setsid sh -c 'trap \"\" TERM; sleep 300' & trap '' TERM; echo ready; sleep 300"
    status = worker.start(JobSpec(["sh", "-c", script]))
    assert next(worker.output(status.id)) == b"ready\n"
    final = worker.stop(status.id, grace=0.2)
    assert final.state is JobState.KILLED
    # the worker fixture asserts that no process or cgroup of the job is left


def test_stop_is_idempotent_and_stopping_an_ended_job_is_not_an_error(worker: Worker) -> None:
    status = worker.start(JobSpec(["sleep", "30"]))
    first = worker.stop(status.id, grace=1)
    second = worker.stop(status.id, grace=1)
    assert first.state is second.state is JobState.KILLED
    assert first.ended_at == second.ended_at
    done = worker.start(JobSpec(["true"]))
    worker.wait(done.id)
    assert worker.stop(done.id).state is JobState.EXITED


def test_concurrent_stops_of_one_job_all_return_its_end(worker: Worker) -> None:
    status = worker.start(JobSpec(["sh", "-c", "trap '' TERM; sleep 30"]))
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(worker.stop(status.id, grace=0.3))) for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 5
    assert {r.state for r in results} == {JobState.KILLED}  # type: ignore[attr-defined]


def test_stop_during_heavy_output_ends_the_job_and_the_stream(worker: Worker) -> None:
    status = worker.start(JobSpec(["sh", "-c", "exec cat /dev/zero"]))
    reader = worker.output(status.id)
    got = 0
    for chunk in reader:
        got += len(chunk)
        if got > 50 << 20:
            break
    final = worker.stop(status.id, grace=1)
    assert final.state is JobState.KILLED
    rest = sum(len(c) for c in reader)
    assert got + rest == worker.status(status.id).output_bytes
    reader.close()


def test_twenty_concurrent_readers_get_identical_output(worker: Worker) -> None:
    script = (
        "i=0; while [ $i -lt 2000 ]; do echo line $i; echo err $i >&2; i=$((i+1)); done;"
        "head -c 3000000 /dev/urandom"
    )
    status = worker.start(JobSpec(["sh", "-c", script]))
    digests: list[str] = []
    lock = threading.Lock()

    def read() -> None:
        h = hashlib.sha256()
        for chunk in worker.output(status.id, chunk_size=4096):
            h.update(chunk)
        with lock:
            digests.append(h.hexdigest())

    threads = [threading.Thread(target=read) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stored = hashlib.sha256((worker.state_dir / status.id / jobdir.OUTPUT).read_bytes()).hexdigest()
    assert len(digests) == 20
    assert set(digests) == {stored}


def test_a_late_follower_gets_the_output_from_the_first_byte(worker: Worker) -> None:
    status = worker.start(JobSpec(["sh", "-c", "echo first; sleep 0.5; echo second; sleep 0.5; echo third"]))
    wait_until(lambda: worker.status(status.id).output_bytes >= 6, 10, "the first line")  # then follow
    assert b"".join(worker.output(status.id)) == b"first\nsecond\nthird\n"


def test_reading_from_an_offset_and_without_follow(worker: Worker) -> None:
    status = worker.start(JobSpec(["sh", "-c", "printf 0123456789; sleep 30"]))
    wait_until(lambda: worker.status(status.id).output_bytes == 10, 10, "ten bytes of output")
    assert b"".join(worker.output(status.id, offset=4, follow=False)) == b"456789"
    assert b"".join(worker.output(status.id, offset=100, follow=False)) == b""
    worker.stop(status.id, grace=0)


def test_close_from_another_thread_wakes_a_blocked_reader(worker: Worker) -> None:
    status = worker.start(JobSpec(["sh", "-c", "echo x; exec sleep 30"]))
    reader = worker.output(status.id)
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.extend(reader))
    t.start()
    wait_until(lambda: got == [b"x\n"], 10, "the reader to take what there is")
    assert t.is_alive()  # and then wait: nothing more comes while the job runs
    reader.close()
    t.join(5)
    assert not t.is_alive() and got == [b"x\n"]
    worker.stop(status.id, grace=0)


def test_async_output_matches_sync_output(worker: Worker) -> None:
    import asyncio

    status = worker.start(JobSpec(["sh", "-c", "seq 1 20000"]))

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in worker.aoutput(status.id, chunk_size=1000)])

    assert asyncio.run(collect()) == b"".join(worker.output(status.id))


#: 1 GiB by default; the cgroup v2 VM, whose /tmp is a small tmpfs, asks for less.
BIG_OUTPUT = int(os.environ.get("JOBCORE_TEST_BIG_OUTPUT", str(1 << 30)))


def test_a_gib_of_output_streams_with_flat_memory(worker: Worker) -> None:
    def rss_kib(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    status = worker.start(JobSpec(["head", "-c", str(BIG_OUTPUT), "/dev/zero"]))
    shim_pid = jobdir.read_json(worker.state_dir / status.id / jobdir.SHIM)["pid"]  # type: ignore[index]
    before = rss_kib(os.getpid())
    shim_peak = total = 0
    for chunk in worker.output(status.id):
        total += len(chunk)
        if total % (64 << 20) < len(chunk) and Path(f"/proc/{shim_pid}").exists():
            shim_peak = max(shim_peak, rss_kib(shim_pid))
    grown = rss_kib(os.getpid()) - before
    assert total == BIG_OUTPUT
    assert worker.wait(status.id).exit_code == 0
    (worker.state_dir / status.id / jobdir.OUTPUT).unlink()  # give the space back at once
    assert grown < 64 * 1024, f"the reading process grew by {grown} KiB while streaming {total} bytes"
    assert shim_peak < 100 * 1024, f"the shim used {shim_peak} KiB"


def test_output_past_the_cap_stops_the_job_with_a_clear_reason(state_dir: Path) -> None:
    with Worker(state_dir, controller=CONTROLLER, output_cap=1 << 20) as worker:
        status = worker.start(JobSpec(["sh", "-c", "exec cat /dev/zero"]))
        out = b"".join(worker.output(status.id))
        final = worker.wait(status.id, timeout=30)
    assert len(out) == 1 << 20
    assert final.output_capped
    assert final.state is JobState.KILLED
    assert final.reason == "output reached the cap of 1048576 bytes"


def test_a_second_worker_on_the_same_state_directory_is_refused(worker: Worker) -> None:
    with pytest.raises(WorkerError, match=f"state directory {worker.state_dir} is in use by another Worker"):
        Worker(worker.state_dir, controller=CONTROLLER)


def test_a_job_whose_shim_vanished_is_lost_and_its_processes_are_killed(worker: Worker) -> None:
    status = worker.start(JobSpec(["sleep", "300"]))
    shim = jobdir.read_json(worker.state_dir / status.id / jobdir.SHIM)
    assert shim is not None
    os.kill(shim["pid"], signal.SIGKILL)
    final = worker.wait(status.id, timeout=10)
    assert final.state is JobState.LOST
    assert final.reason is not None and "shim" in final.reason
    wait_until(lambda: not job_pids(worker.state_dir), 10, "the lost job's processes to die")


STARTER = r"""
import sys
from jobcore import Worker, JobSpec
w = Worker(sys.argv[1], controller=sys.argv[2])
a = w.start(JobSpec(["sh", "-c", "for i in $(seq 1 5); do echo tick $i; sleep 0.1; done; sleep 300"]))
b = w.start(JobSpec(["sh", "-c", "echo done"]))
w.wait(b.id)
print(a.id, b.id, flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_jobs_survive_the_death_of_the_starting_process_and_a_new_worker_reattaches(state_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(state_dir), CONTROLLER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    running_id, done_id = proc.stdout.readline().decode().split()
    proc.kill()
    proc.wait()
    with Worker(state_dir, controller=CONTROLLER) as worker:
        assert worker.status(done_id).state is JobState.EXITED
        assert b"".join(worker.output(done_id)) == b"done\n"
        assert worker.status(running_id).state is JobState.RUNNING
        reader = worker.output(running_id)
        head = b""
        while head.count(b"\n") < 5:
            head += next(reader)
        assert head == b"".join(b"tick %d\n" % i for i in range(1, 6))
        final = worker.stop(running_id, grace=1)
        assert final.state is JobState.KILLED
        assert b"".join(reader) == b""
    wait_until(lambda: not job_pids(state_dir), 10, "the re-attached job's processes to exit")


def test_jobs_whose_shims_died_while_no_worker_ran_are_lost_on_restart(state_dir: Path) -> None:
    with Worker(state_dir, controller=CONTROLLER) as worker:
        status = worker.start(JobSpec(["sleep", "300"]))
    shim = jobdir.read_json(state_dir / status.id / jobdir.SHIM)
    assert shim is not None
    os.kill(shim["pid"], signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{shim['pid']}").exists(), 10, "the shim to die")
    with Worker(state_dir, controller=CONTROLLER) as worker:
        final = worker.status(status.id)
        assert final.state is JobState.LOST
    wait_until(lambda: not job_pids(state_dir), 10, "the lost job's processes to die")


def test_list_filters_by_owner_oldest_first(worker: Worker) -> None:
    a = worker.start(JobSpec(["true"], owner="alice"))
    b = worker.start(JobSpec(["true"], owner="bob"))
    c = worker.start(JobSpec(["true"], owner="alice"))
    for s in (a, b, c):
        worker.wait(s.id)
    assert [s.id for s in worker.list(owner="alice")] == [a.id, c.id]
    assert [s.id for s in worker.list()] == [a.id, b.id, c.id]


def test_on_job_ended_is_called_once_with_the_final_status(state_dir: Path) -> None:
    ended: list[object] = []
    with Worker(state_dir, controller=CONTROLLER, on_job_ended=ended.append) as worker:
        status = worker.start(JobSpec(["sh", "-c", "exit 7"]))
        worker.wait(status.id)
        wait_until(lambda: len(ended) == 1, 5, "the callback")
    assert [(s.id, s.exit_code) for s in ended] == [(status.id, 7)]  # type: ignore[attr-defined]


def test_running_count_counts_only_running_jobs_per_owner(worker: Worker) -> None:
    long = worker.start(JobSpec(["sleep", "30"], owner="alice"))
    done = worker.start(JobSpec(["true"], owner="alice"))
    worker.wait(done.id)
    other = worker.start(JobSpec(["sleep", "30"], owner="bob"))
    assert worker.running_count("alice") == 1
    assert worker.running_count("bob") == 1
    assert worker.running_count() == 2
    worker.stop(long.id, grace=0)
    worker.stop(other.id, grace=0)
    assert worker.running_count() == 0


def test_running_output_bytes_sums_the_running_jobs_output_per_owner(worker: Worker) -> None:
    writing = worker.start(JobSpec(["sh", "-c", "printf 12345; exec sleep 30"], owner="alice"))
    done = worker.start(JobSpec(["sh", "-c", "printf 1234567890"], owner="alice"))
    worker.wait(done.id)
    other = worker.start(JobSpec(["sh", "-c", "printf 123; exec sleep 30"], owner="bob"))
    wait_until(lambda: worker.status(writing.id).output_bytes == 5, 10, "alice's output")
    wait_until(lambda: worker.status(other.id).output_bytes == 3, 10, "bob's output")
    assert worker.running_output_bytes("alice") == 5  # the ended job's 10 bytes are not running output
    assert worker.running_output_bytes("bob") == 3
    assert worker.running_output_bytes() == 8
    assert worker.running_output_bytes("carol") == 0
    worker.stop(writing.id, grace=0)
    worker.stop(other.id, grace=0)
    assert worker.running_output_bytes() == 0


def test_the_per_owner_running_figures_never_walk_the_ended_jobs(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server checks both at every start, and its Worker holds up to a thousand ended jobs per user
    # (retention): what they cost must not grow with those.
    for _ in range(5):
        worker.wait(worker.start(JobSpec(["true"], owner="alice")).id)
    running = worker.start(JobSpec(["sh", "-c", "printf 1234; exec sleep 30"], owner="alice"))
    wait_until(lambda: worker.status(running.id).output_bytes == 4, 10, "the running job's output")

    def walked() -> list[object]:
        raise AssertionError("the whole table of jobs was walked")

    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        stats.append(str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worker._jobs, "jobs", walked)
    monkeypatch.setattr(os, "stat", counting_stat)
    assert worker.running_count("alice") == 1
    assert worker.running_count() == 1
    assert worker.running_output_bytes("alice") == 4
    monkeypatch.undo()
    assert stats == [str(worker.state_dir / running.id / jobdir.OUTPUT)]
    worker.stop(running.id, grace=0)


def test_the_running_counts_follow_a_failed_start_a_lost_shim_a_removal_and_a_restart(
    state_dir: Path,
) -> None:
    with Worker(state_dir, controller=CONTROLLER) as worker:
        failed = worker.start(JobSpec(["/nonexistent/command"], owner="alice"))
        assert failed.state is JobState.FAILED_TO_START
        kept = worker.start(JobSpec(["sleep", "300"], owner="alice"))
        lost = worker.start(JobSpec(["sleep", "300"], owner="alice"))
        assert (worker.running_count("alice"), worker.running_count()) == (2, 2)
        shim = jobdir.read_json(state_dir / lost.id / jobdir.SHIM)
        assert shim is not None
        os.kill(shim["pid"], signal.SIGKILL)
        assert worker.wait(lost.id, timeout=10).state is JobState.LOST
        assert worker.running_count("alice") == 1
        worker.remove(lost.id)
        worker.remove(failed.id)
        assert worker.running_count("alice") == 1
    with Worker(state_dir, controller=CONTROLLER) as worker:  # the running job found again
        assert (worker.running_count("alice"), worker.running_count("bob")) == (1, 0)
        worker.stop(kept.id, grace=0)
        assert (worker.running_count("alice"), worker.running_count()) == (0, 0)
        worker.remove(kept.id)
        assert worker.running_count() == 0
    wait_until(lambda: not job_pids(state_dir), 10, "the jobs' processes to die")


def test_a_full_state_disk_stops_the_job_with_a_clear_reason_and_the_worker_recovers(
    small_state_dir: Path,
) -> None:
    with Worker(small_state_dir, controller=CONTROLLER) as worker:
        status = worker.start(JobSpec(["head", "-c", "20M", "/dev/zero"]))
        final = worker.wait(status.id, timeout=30)
        assert final.state is JobState.KILLED
        assert final.reason is not None
        assert "could not be stored (No space left on device)" in final.reason
        stored = (small_state_dir / status.id / jobdir.OUTPUT).stat().st_size
        assert 0 < stored < 20 << 20
        assert final.output_bytes == stored
        assert b"".join(worker.output(status.id)) == b"\0" * stored
        # Starting on the full disk is refused clearly, with the errno kept.
        filler = small_state_dir / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            f.write(b"x" * (8 << 20))
        with pytest.raises(StateError, match="No space left on device") as refused:
            worker.start(JobSpec(["true"]))
        assert refused.value.errno == errno.ENOSPC
        # Space freed: the same Worker (its watcher still alive) runs jobs again.
        filler.unlink()
        (small_state_dir / status.id / jobdir.OUTPUT).unlink()
        again = worker.start(JobSpec(["echo", "recovered"]))
        assert worker.wait(again.id, timeout=30).exit_code == 0
        assert b"".join(worker.output(again.id)) == b"recovered\n"
    wait_until(lambda: not job_pids(small_state_dir), 10, "every shim to exit")


def test_a_killed_launcher_is_replaced_and_running_jobs_are_unaffected(worker: Worker) -> None:
    running = worker.start(JobSpec(["sleep", "30"]))
    first = worker.launcher_pid
    os.kill(first, signal.SIGKILL)  # someone kills the launcher process
    # Dead once it is a zombie (the Worker reaps it when it next needs it) or gone.
    wait_until(lambda: _process_state(first) in (None, "Z"), 10, "the launcher to die")
    status = worker.start(JobSpec(["echo", "after"]))
    assert b"".join(worker.output(status.id)) == b"after\n"
    assert worker.launcher_pid != first
    assert worker.status(running.id).state is JobState.RUNNING
    worker.stop(running.id, grace=0)


def _process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, Z...), None once the process is reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


LEAVER = r"""
import sys
from jobcore import Worker, JobSpec
w = Worker(sys.argv[1], controller=sys.argv[2])
print(w.start(JobSpec(["sleep", "300"])).id)
"""


def test_a_running_job_does_not_hold_the_starting_processs_output_open(state_dir: Path) -> None:
    # `out=$(python starter.py)` must return when the starter exits, even though its job runs on: the
    # shim must not keep the starter's stdout/stderr pipes open.
    result = subprocess.run(
        [sys.executable, "-c", LEAVER, str(state_dir), CONTROLLER],
        capture_output=True,
        timeout=60,
        check=True,
    )
    job_id = result.stdout.decode().strip()
    with Worker(state_dir, controller=CONTROLLER) as worker:
        assert worker.status(job_id).state is JobState.RUNNING
        worker.stop(job_id, grace=0)
    wait_until(lambda: not job_pids(state_dir), 10, "the job's processes to exit")


def test_a_start_cut_short_before_its_job_existed_leaves_no_cgroup_behind(state_dir: Path) -> None:
    # The Worker's process is killed after the job's cgroup was made but before its job directory
    # was in place: the next Worker removes both.
    with Worker(state_dir, controller=CONTROLLER) as worker:
        controller = worker.controller
    if controller.name == "none":
        pytest.skip("the none backend makes no cgroups")
    job_id = jobdir.new_job_id()
    (state_dir / f".{job_id}.new").mkdir()
    controller.create("local", job_id, Limits(pids=10), "/")
    assert cgroup_dirs({job_id})
    with Worker(state_dir, controller=CONTROLLER):
        pass
    assert not cgroup_dirs({job_id})
    assert not (state_dir / f".{job_id}.new").exists()


def test_the_launcher_and_a_jobs_shim_are_named_for_ps_and_top(worker: Worker) -> None:
    status = worker.start(JobSpec(["sleep", "30"], owner="alice"))
    shim = records.read(Path(worker.state_dir) / status.id / jobdir.SHIM, ShimRecord)
    assert shim is not None
    assert Path(f"/proc/{worker.launcher_pid}/comm").read_text().strip() == LAUNCHER_NAME
    assert Path(f"/proc/{shim.pid}/comm").read_text().strip() == SHIM_NAME
    worker.stop(status.id, grace=0)
