"""Issue 6's proof: the real `jobctl` executable against a real `jobserver` subprocess.

Every command here is `.venv/bin/jobctl --user NAME ...` run as a subprocess with the checked-in
certificates; the server is `jobserver` on 127.0.0.1 with a state directory of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    ServerProcess,
    assert_one_line_diagnostic,
    jobctl,
    needs_root,
    ok,
    popen_jobctl,
    seq_output,
    wait_for,
)

pytestmark = needs_root

JOB_FIELDS = {
    "id",
    "owner",
    "argv",
    "state",
    "pid",
    "exit_code",
    "signal",
    "oom_killed",
    "started_at",
    "ended_at",
    "reason",
    "stop_requested",
    "usage",
    "limits",
    "controller",
    "namespaces",
    "output_bytes",
    "output_capped",
    "cwd",
    "exit_status",
}


def start(server: ServerProcess, user: str, *command: str) -> str:
    job_id = ok(jobctl(server.target, user, "start", "--", *command)).decode().strip()
    assert len(job_id) == 36, job_id
    return job_id


def status_json(server: ServerProcess, user: str, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(jobctl(server.target, user, "--json", "status", job_id)))
    return data


def wait_state(server: ServerProcess, user: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """The job's status once it has ended (polled within a bound)."""
    last: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal last
        last = status_json(server, user, job_id)
        return bool(last["state"] != "running")

    assert wait_for(ended, timeout, interval=0.2), last
    return last


class StreamReader:
    """Collects a subprocess's stdout on a thread, so a test can wait for part of it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.data = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            with self._lock:
                self.data += chunk

    def snapshot(self) -> bytes:
        with self._lock:
            return bytes(self.data)

    def wait_for(self, needle: bytes, timeout: float = 60) -> bool:
        return wait_for(lambda: needle in self.snapshot(), timeout)

    def finish(self, timeout: float = 60) -> tuple[int, bytes, bytes]:
        code = self.proc.wait(timeout)
        self._thread.join(timeout)
        assert self.proc.stderr is not None
        return code, self.snapshot(), self.proc.stderr.read()


def test_start_status_follow_stop_list_as_alice(server: ServerProcess) -> None:
    job_id = start(server, "alice", "sh", "-c", "echo first; while :; do echo tick; sleep 0.2; done")
    follower = StreamReader(popen_jobctl(server.target, "alice", "logs", "-f", job_id))
    assert follower.wait_for(b"first\ntick\n"), follower.snapshot()

    text = ok(jobctl(server.target, "alice", "status", job_id)).decode()
    assert job_id in text
    assert "running" in text
    status = status_json(server, "alice", job_id)
    assert status["state"] == "running"
    assert status["owner"] == "alice"
    assert status["stop_requested"] is False

    stopped = ok(jobctl(server.target, "alice", "stop", "--grace", "5", job_id)).decode()
    assert stopped.startswith(f"{job_id} killed"), stopped
    # The follower ends by itself once the job has ended, with everything from the first byte.
    code, out, err = follower.finish()
    assert code == 0, err
    assert out.startswith(b"first\ntick\n")
    assert set(out.splitlines()[1:]) == {b"tick"}

    status = status_json(server, "alice", job_id)
    assert status["state"] == "killed"
    assert status["signal"] == signal.SIGTERM
    assert status["stop_requested"] is True
    assert status["reason"] == "stopped by request"
    assert ok(jobctl(server.target, "alice", "logs", job_id)) == out

    listing = ok(jobctl(server.target, "alice", "list")).decode()
    assert job_id in listing
    assert "killed" in listing


def test_other_users_job_is_not_found_and_an_admin_sees_and_stops_it(server: ServerProcess) -> None:
    job_id = start(server, "alice", "sleep", "600")

    for command in (["status", job_id], ["logs", job_id], ["logs", "-f", job_id], ["stop", job_id]):
        result = jobctl(server.target, "bob", *command)
        assert result.returncode == 4, (command, result)
        assert result.stdout == b""
        line = assert_one_line_diagnostic(result.stderr)
        assert line == f"jobctl: job {job_id} not found", line
    bob_list = jobctl(server.target, "bob", "--json", "list")
    assert job_id not in {job["id"] for job in json.loads(ok(bob_list))}
    # bob's failed stop did nothing.
    assert status_json(server, "alice", job_id)["state"] == "running"

    assert status_json(server, "carl", job_id)["owner"] == "alice"
    everyone = json.loads(ok(jobctl(server.target, "carl", "--json", "list", "--all")))
    assert job_id in {job["id"] for job in everyone}
    alices = json.loads(ok(jobctl(server.target, "carl", "--json", "list", "--user", "alice")))
    assert job_id in {job["id"] for job in alices}

    stopped = json.loads(ok(jobctl(server.target, "carl", "--json", "stop", "--grace", "0", job_id)))
    assert stopped["state"] == "killed"
    as_alice = status_json(server, "alice", job_id)
    assert as_alice["state"] == "killed"
    assert as_alice["stop_requested"] is True


def test_run_exits_with_the_jobs_exit_code(server: ServerProcess) -> None:
    result = jobctl(server.target, "alice", "run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3, result
    assert sorted(result.stdout.splitlines()) == [b"err", b"out"]
    assert result.stderr == b""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1])
def test_run_of_a_job_killed_by_signal_n_exits_128_plus_n(server: ServerProcess, signum: int) -> None:
    result = jobctl(server.target, "alice", "run", "--", "sh", "-c", f"echo before; kill -{int(signum)} $$")
    assert result.returncode == 128 + signum, result
    assert result.stdout == b"before\n"
    assert_one_line_diagnostic(result.stderr, "was killed by", signal.Signals(signum).name)


#: A python a job's uid may run (the venv's links into root's pyenv, which only root may read).
SYSTEM_PYTHON = "/usr/bin/python3"

BINARY_PAYLOAD = (
    bytes(range(256)) * 64 + b"\x00\x00 NUL \xff\xfe\xc3\x28 invalid UTF-8 \xed\xa0\x80" + bytes(256)
)


def test_logs_reproduce_binary_output_exactly(server: ServerProcess) -> None:
    # stdout and stderr both: the log holds the bytes of both, each byte exactly once. The payload is
    # in the script: the job (alice's uid, in the sandbox) sees neither the host's /tmp nor root's
    # files, so it runs the system's python, not this venv's.
    script = (
        f"import sys; d = {BINARY_PAYLOAD!r}; "
        "sys.stdout.buffer.write(d); sys.stdout.flush(); sys.stderr.buffer.write(d[::-1])"
    )
    job_id = start(server, "alice", SYSTEM_PYTHON, "-I", "-c", script)
    assert wait_state(server, "alice", job_id)["exit_code"] == 0

    logs = ok(jobctl(server.target, "alice", "logs", job_id))
    assert logs == BINARY_PAYLOAD + BINARY_PAYLOAD[::-1]
    assert ok(jobctl(server.target, "alice", "logs", "-f", job_id)) == logs

    run = jobctl(server.target, "alice", "run", "--", SYSTEM_PYTHON, "-I", "-c", script)
    assert run.returncode == 0, run.stderr
    assert run.stdout == BINARY_PAYLOAD + BINARY_PAYLOAD[::-1]


def test_logs_follow_started_late_shows_everything_and_ends_with_the_job(server: ServerProcess) -> None:
    # Part one, then wait for the gate file in the job's scratch directory (its working directory,
    # which the host sees too), then part two.
    job_id = start(
        server, "alice", "sh", "-c", "seq 1 5000; while [ ! -e gate ]; do sleep 0.05; done; seq 5001 6000"
    )
    gate = Path(status_json(server, "alice", job_id)["cwd"]) / "gate"
    part_one = seq_output(5000)
    assert wait_for(lambda: status_json(server, "alice", job_id)["output_bytes"] == len(part_one), 60)

    follower = StreamReader(popen_jobctl(server.target, "alice", "logs", "-f", job_id))
    assert follower.wait_for(b"\n5000\n"), follower.snapshot()[-200:]
    assert follower.proc.poll() is None, "logs -f ended while the job was still running"
    assert follower.snapshot() == part_one

    # Part two is printed only once the gate exists, which is after the follower had all of part one:
    # that it gets part two too proves it kept following the running job (no sleep-and-look needed).
    gate.touch()
    code, out, err = follower.finish()
    assert code == 0, err
    assert out == seq_output(6000)
    assert status_json(server, "alice", job_id)["exit_code"] == 0


def test_json_output_of_start_status_list_and_stop(server: ServerProcess) -> None:
    started = json.loads(
        ok(jobctl(server.target, "alice", "start", "--json", "--memory", "64M", "--", "sleep", "60"))
    )
    assert started.keys() >= JOB_FIELDS, JOB_FIELDS - started.keys()
    assert started["state"] == "running"
    assert started["owner"] == "alice"
    assert started["argv"] == ["sleep", "60"]
    assert started["limits"]["memory"] == 64 << 20
    assert isinstance(started["pid"], int)
    assert started["exit_code"] is None
    job_id = started["id"]

    status = status_json(server, "alice", job_id)
    assert status.keys() >= JOB_FIELDS
    assert status["id"] == job_id
    assert set(status["usage"]) >= {"cpu_seconds", "memory_peak_bytes", "io_read_bytes", "io_write_bytes"}

    listing = json.loads(ok(jobctl(server.target, "alice", "list", "--json")))
    assert isinstance(listing, list)
    (mine,) = [job for job in listing if job["id"] == job_id]
    assert mine.keys() >= JOB_FIELDS

    stopped = json.loads(ok(jobctl(server.target, "alice", "stop", "--json", "--grace", "0", job_id)))
    assert stopped["state"] == "killed"
    assert stopped["signal"] == signal.SIGTERM
    assert stopped["exit_status"] == 128 + signal.SIGTERM
    assert stopped["ended_at"] is not None


def test_a_stopped_server_gives_one_clear_line_and_exit_3(server: ServerProcess) -> None:
    job_id = start(server, "alice", "true")
    assert server.terminate() == 0

    for command in (["status", job_id], ["logs", "-f", job_id], ["list"], ["start", "--", "true"]):
        result = jobctl(server.target, "alice", *command, timeout=60)
        assert result.returncode == 3, (command, result)
        assert result.stdout == b""
        assert_one_line_diagnostic(result.stderr, f"cannot reach the job server at {server.target}")
    # `run` reports its own failures as 125 (documented), with the same one line.
    result = jobctl(server.target, "alice", "run", "--", "true", timeout=60)
    assert result.returncode == 125, result
    assert_one_line_diagnostic(result.stderr, "cannot reach the job server")


@pytest.mark.parametrize(
    ("script", "expected_exit", "state", "tail"),
    [
        # sh's default action for SIGTERM: the job is killed by it, and run exits 128+15.
        ("echo ready; while :; do sleep 0.1; done", 128 + signal.SIGTERM, "killed", b"ready\n"),
        # A command that handles SIGTERM exits as it chooses; run exits with that code.
        (
            "trap 'echo bye; exit 7' TERM; echo ready; while :; do sleep 0.1; done",
            7,
            "exited",
            b"ready\nbye\n",
        ),
    ],
    ids=["default-sigterm", "handled-sigterm"],
)
def test_ctrl_c_to_run_stops_the_job(
    server: ServerProcess, script: str, expected_exit: int, state: str, tail: bytes
) -> None:
    run = StreamReader(popen_jobctl(server.target, "alice", "run", "--", "sh", "-c", script))
    assert run.wait_for(b"ready\n"), run.snapshot()
    run.proc.send_signal(signal.SIGINT)
    code, out, err = run.finish()
    assert code == expected_exit, (code, err)
    assert out == tail  # each byte once: the follow resumed where it was interrupted
    assert b"stopping job" in err
    assert b"Traceback" not in err

    (job,) = json.loads(ok(jobctl(server.target, "alice", "--json", "list")))
    assert job["state"] == state
    assert job["stop_requested"] is True
    assert job["exit_status"] == expected_exit


def test_run_follows_its_job_across_a_server_restart(server: ServerProcess) -> None:
    # The server is stopped gracefully (SIGTERM) mid-run and started again on the same port: `run`
    # resumes at its offset, loses and repeats nothing, and exits with the job's own code.
    script = "echo before; sleep 4; echo after; exit 7"
    proc = popen_jobctl(server.target, "alice", "run", "--", "sh", "-c", script)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"before\n"
        assert server.terminate() == 0
        server.restart()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert out == b"after\n", err
    assert proc.returncode == 7, err
