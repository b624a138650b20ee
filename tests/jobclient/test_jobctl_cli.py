"""The installed `jobctl` executable, run as a subprocess against the fake server over real mTLS."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
from typing import Any

import grpc
import pytest
from fake_jobworker import CERTS, FakeJobWorker, FakeServer, Plan
from jobctl_runner import Jobctl
from support import wait_for

from jobclient import Job, JobState
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

NASTY = b"line\n\x00\x00NUL\x00\xff\xfe\xc3(not utf-8\x80\r\n\x1b[0m"
COMMANDS = ["start", "run", "status", "logs", "stop", "wait", "list"]


def add_job(servicer: FakeJobWorker, job_id: str = "j1", output: bytes = b"", **fields: object) -> None:
    fields.setdefault("state", pb.JOB_STATE_EXITED)
    servicer.add_job(pb.Job(id=job_id, owner="alice", argv=["echo", "hi there"], **fields), output)  # type: ignore[arg-type]


# --- help -------------------------------------------------------------------------------------------


def test_main_help_documents_environment_exit_codes_and_examples(jobctl: Jobctl) -> None:
    result = jobctl("--help")
    assert result.returncode == 0
    for text in ["examples:", "exit status:", "JOBCTL_SERVER", "JOBCTL_USER", "JOBCTL_CERT", "JOBCTL_KEY",
                 "JOBCTL_CA", "JOBCTL_CERTS", "JOBCTL_JSON", "125", *COMMANDS]:  # fmt: skip
        assert text in result.text, text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(jobctl: Jobctl, command: str) -> None:
    result = jobctl(command, "--help")
    assert result.returncode == 0
    assert f"usage: jobctl {command}" in result.text
    assert "examples:" in result.text
    assert f"jobctl --user alice {command}" in result.text or f"jobctl --user carl {command}" in result.text


def test_completion_and_version_have_help(jobctl: Jobctl) -> None:
    result = jobctl("completion", "--help")
    assert result.returncode == 0
    assert "source <(jobctl completion bash)" in result.text
    main_help = jobctl("--help").text
    for text in [
        "--version",
        "--context",
        "JOBCTL_CONFIG",
        "JOBCTL_CONTEXT",
        "current-context",
        "126",
        "127",
    ]:
        assert text in main_help, text


# --- start ------------------------------------------------------------------------------------------


def test_start_prints_only_the_job_id_and_sends_every_option(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(hold=True)
    result = jobctl(
        "start", "--cpu", "0.5", "--memory", "512M", "--io-read", "10M/s", "--io-write", "1G",
        "--io-read-iops", "100", "--io-write-iops", "200", "--pids", "64",
        "--env", "A=1", "--env", "B=x=y", "--cwd", "/tmp",
        "--host-network", "--no-pid-ns", "--no-mount-ns", "--no-uts-ns", "--no-ipc-ns",
        "--", "sh", "-c", "echo -- $A", "--", "-x",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (request,) = servicer.calls("StartJob")
    assert result.stdout == (next(iter(servicer.jobs)) + "\n").encode()
    assert result.stderr == ""
    assert list(request.argv) == ["sh", "-c", "echo -- $A", "--", "-x"]
    assert dict(request.env) == {"A": "1", "B": "x=y"}
    assert request.cwd == "/tmp"
    assert request.limits == pb.Limits(
        cpu=0.5, memory_bytes=512 << 20, io_read_bps=10 << 20, io_write_bps=1 << 30,
        io_read_iops=100, io_write_iops=200, pids=64,
    )  # fmt: skip
    assert request.isolation == pb.Isolation(  # no mount namespace: no sandbox either
        host_network=True,
        disable_pid=True,
        disable_mount=True,
        disable_uts=True,
        disable_ipc=True,
        disable_sandbox=True,
    )


def test_start_json_prints_the_job(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(hold=True)
    result = jobctl("start", "--json", "--", "sleep", "5")
    data = json.loads(result.stdout)
    assert (data["state"], data["argv"], data["owner"]) == ("running", ["sleep", "5"], "alice")


def test_start_of_a_command_that_cannot_run_exits_127(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(
        start_state=pb.JOB_STATE_FAILED_TO_START, reason="exec nope: no such file or directory"
    )
    result = jobctl("start", "--", "nope")
    assert result.returncode == 127
    assert result.stderr.endswith("failed to start: exec nope: no such file or directory\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["start", "--memory", "12X", "--", "ls"], "invalid size '12X'"),
        (["start", "--cpu", "lots", "--", "ls"], "invalid CPU amount 'lots'"),
        (["start", "--cpu", "-1", "--", "ls"], "cpu must be a positive number"),
        (["start", "--cpu", "nan", "--", "ls"], "cpu must be a positive number"),
        (["start", "--pids", "0", "--", "ls"], "'0' is not a positive integer"),
        (["start", "--env", "NOVALUE", "--", "ls"], "NOVALUE is not set in jobctl's environment"),
        (["start", "--env", "=x", "--", "ls"], "--env takes NAME=VALUE or NAME"),
        (["start", "--env-file", "/nonexistent/job.env", "--", "ls"], "cannot read --env-file"),
        (["start", "ls", "-l"], "put `--` before the command: jobctl start [options] -- CMD"),
        (["logs", "--tail", "-1", "j1"], "is not a whole number"),
        (["logs", "--since", "yesterday", "j1"], "invalid time 'yesterday'"),
        (["logs", "--stdout", "--stderr", "j1"], "not allowed with argument"),
        (["list", "--state", "sleeping"], "unknown state 'sleeping'"),
        (["list", "--format", "id,colour"], "unknown column 'colour'"),
        (["completion", "fish"], "invalid choice"),
        (["start"], "the following arguments are required"),
        (["frobnicate"], "invalid choice"),
        (["stop", "--grace", "-3", "j1"], "not a number of seconds"),
        (["list", "--all", "--user", "bob"], "not allowed with argument"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    jobctl: Jobctl, servicer: FakeJobWorker, args: list[str], message: str
) -> None:
    result = jobctl(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("jobctl: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert servicer.requests == []


# --- run --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (Plan(exit_code=0), 0),
        (Plan(exit_code=3), 3),
        (Plan(exit_code=255), 255),
        (Plan(state=pb.JOB_STATE_KILLED, exit_code=None, signal=9), 137),
        (Plan(state=pb.JOB_STATE_KILLED, exit_code=None, signal=15), 143),
    ],
)
def test_run_streams_output_byte_exact_and_exits_with_the_jobs_status(
    jobctl: Jobctl, servicer: FakeJobWorker, plan: Plan, expected: int
) -> None:
    plan.chunks = [NASTY[:7], NASTY[7:]]
    servicer.plan = plan
    result = jobctl("run", "--", "sh", "-c", "...")
    assert result.returncode == expected
    assert result.stdout == NASTY


def test_run_reports_an_oom_kill_on_stderr(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(state=pb.JOB_STATE_KILLED, exit_code=None, signal=9, oom_killed=True)
    result = jobctl("run", "--memory", "64M", "--", "hog")
    assert result.returncode == 137
    assert "ran out of memory" in result.stderr


def test_run_of_a_command_that_cannot_start_exits_127(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(start_state=pb.JOB_STATE_FAILED_TO_START, reason="exec nope: not found")
    result = jobctl("run", "--", "nope")
    assert result.returncode == 127
    assert "failed to start: exec nope: not found" in result.stderr


def test_run_of_a_lost_job_exits_125(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(state=pb.JOB_STATE_LOST, exit_code=None, reason="the shim vanished")
    result = jobctl("run", "--", "x")
    assert result.returncode == 125
    assert "the shim vanished" in result.stderr


@pytest.mark.parametrize(
    ("args", "fail"),
    [
        (["run", "--memory", "lots", "--", "x"], None),
        (["run", "--", "x"], (grpc.StatusCode.RESOURCE_EXHAUSTED, "alice already runs 10 jobs")),
        (["run", "--", "x"], (grpc.StatusCode.INTERNAL, "database is locked")),
    ],
)
def test_run_uses_125_when_jobctl_itself_fails(
    jobctl: Jobctl, servicer: FakeJobWorker, args: list[str], fail: tuple[grpc.StatusCode, str] | None
) -> None:
    if fail:
        servicer.fail["StartJob"] = fail
    result = jobctl(*args)
    assert result.returncode == 125
    assert result.stderr.startswith("jobctl: ")
    assert result.stderr.count("\n") == 1


def test_run_with_the_server_down_exits_125(jobctl: Jobctl, free_port: int) -> None:
    result = jobctl("run", "--", "true", JOBCTL_SERVER=f"127.0.0.1:{free_port}")
    assert result.returncode == 125
    assert "cannot reach the job server" in result.stderr


def wait_for_output(proc: subprocess.Popen[bytes], expected: bytes) -> None:
    assert proc.stdout is not None
    got = b""
    while len(got) < len(expected):
        chunk = os.read(proc.stdout.fileno(), len(expected) - len(got))
        assert chunk, f"jobctl ended early: {got!r}"
        got += chunk
    assert got == expected


def test_ctrl_c_stops_the_job_and_exits_with_its_status(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(chunks=[b"started\n"], hold=True, after_stop=[b"got SIGTERM\n"])
    proc = jobctl.popen("run", "--", "server")
    try:
        wait_for_output(proc, b"started\n")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert out == b"got SIGTERM\n"  # resumed where it stopped: nothing repeated, nothing lost
    assert "stopping job" in err.decode()
    (stop,) = servicer.calls("StopJob")
    assert stop.job_id == next(iter(servicer.jobs))
    assert servicer.calls("StreamOutput")[-1].offset == len(b"started\n")


def _wait_for_calls(servicer: FakeJobWorker, method: str, count: int) -> list[Any]:
    wait_for(lambda: len(servicer.calls(method)) >= count, 30, interval=0.02)
    calls = servicer.calls(method)
    assert len(calls) >= count, f"jobctl made {len(calls)} {method} calls, expected {count}"
    return calls


def test_a_second_ctrl_c_kills_the_job_at_once_and_a_third_stops_waiting(
    jobctl: Jobctl, servicer: FakeJobWorker
) -> None:
    # As `python -m jobcore run`: Ctrl-C = SIGTERM with the grace period, Ctrl-C again = SIGKILL now.
    servicer.plan = Plan(chunks=[b"started\n"], hold=True)
    servicer.stop_released.clear()  # StopJob hangs: the job never ends
    proc = jobctl.popen("run", "--", "server")
    try:
        wait_for_output(proc, b"started\n")
        proc.send_signal(signal.SIGINT)
        (first,) = _wait_for_calls(servicer, "StopJob", 1)
        assert not first.HasField("grace_seconds")  # the server's default grace
        proc.send_signal(signal.SIGINT)
        second = _wait_for_calls(servicer, "StopJob", 2)[1]
        assert second.HasField("grace_seconds")
        assert second.grace_seconds == 0
        assert proc.poll() is None, "jobctl stopped waiting after the second Ctrl-C"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        servicer.stop_released.set()
    assert proc.returncode == 130, err
    text = err.decode()
    assert "stopping job" in text
    assert "killing job" in text
    assert "no longer waiting" in text


def test_run_losing_the_server_midway_exits_125_naming_the_job(
    jobctl: Jobctl, server: FakeServer, servicer: FakeJobWorker
) -> None:
    servicer.plan = Plan(chunks=[b"started\n"], hold=True)
    proc = jobctl.popen("--reconnect", "2", "run", "--", "server")
    try:
        wait_for_output(proc, b"started\n")
        server.server.stop(grace=None).wait(10)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    job_id = next(iter(servicer.jobs))
    assert proc.returncode == 125
    assert err.decode().endswith(f"; job {job_id} may still be running (see `jobctl status {job_id}`)\n")
    assert err.decode().count("\n") == 1


def test_run_output_closed_early_exits_quietly_and_stops_the_job(
    jobctl: Jobctl, servicer: FakeJobWorker
) -> None:
    servicer.plan = Plan(chunks=[b"x" * 65536] * 64, hold=True)
    proc = jobctl.popen("run", "--", "yes")
    try:
        wait_for_output(proc, b"x" * 10)
        assert proc.stdout is not None
        proc.stdout.close()
        proc.wait(timeout=60)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == 141
    assert err == b""
    assert servicer.calls("StopJob")[0].grace_seconds == 0


# --- status, logs, stop, list -----------------------------------------------------------------------


def test_status_shows_the_job_for_humans(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    add_job(
        servicer, state=pb.JOB_STATE_KILLED, signal=9, oom_killed=True,
        started_at=1_700_000_000, ended_at=1_700_000_090,
        limits=pb.Limits(memory_bytes=64 << 20, cpu=0.5), usage=pb.ResourceUsage(memory_peak_bytes=64 << 20),
        controller="cgroup1", namespaces=["pid", "net"], output_bytes=2048, reason="OOM",
    )  # fmt: skip
    result = jobctl("status", "j1")
    assert result.returncode == 0
    text = result.text
    for expected in ["j1", "alice", "echo 'hi there'", "killed (signal 9 SIGKILL, OOM-killed)", "OOM",
                     "2023-11-14 22:13:20 UTC", "1m30s", "memory 64M", "cpu 0.5 cores", "memory peak 64M",
                     "cgroup1", "pid, net", "2K"]:  # fmt: skip
        assert expected in text, expected


@pytest.mark.parametrize("args", [["--json", "status", "j1"], ["status", "--json", "j1"]])
def test_status_json_parses(jobctl: Jobctl, servicer: FakeJobWorker, args: list[str]) -> None:
    add_job(servicer, exit_code=3, started_at=1_700_000_000)
    data = json.loads(jobctl(*args).stdout)
    assert (data["id"], data["state"], data["exit_code"], data["exit_status"]) == ("j1", "exited", 3, 3)
    assert data["started_at"] == "2023-11-14T22:13:20+00:00"


def test_json_can_come_from_the_environment(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    add_job(servicer)
    assert json.loads(jobctl("status", "j1", JOBCTL_JSON="1").stdout)["id"] == "j1"
    assert jobctl("status", "j1", JOBCTL_JSON="maybe").returncode == 2


@pytest.mark.parametrize("follow", [False, True])
def test_logs_writes_the_output_byte_for_byte(jobctl: Jobctl, servicer: FakeJobWorker, follow: bool) -> None:
    add_job(servicer, output=NASTY * 100)
    result = jobctl("logs", *(["-f"] if follow else []), "j1")
    assert result.returncode == 0
    assert result.stdout == NASTY * 100
    (request,) = servicer.calls("StreamOutput")
    assert (request.offset, request.follow) == (0, follow)


def test_logs_into_a_closed_pipe_exits_quietly(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    add_job(servicer, output=b"y\n" * (4 << 20))
    proc = jobctl.popen("logs", "j1")
    try:
        wait_for_output(proc, b"y\n")
        assert proc.stdout is not None
        proc.stdout.close()
        proc.wait(timeout=60)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert (proc.returncode, err) == (141, b"")


def test_stop_prints_the_final_state(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(hold=True)
    job_id = jobctl("start", "--", "sleep", "100").text.strip()
    result = jobctl("stop", "--grace", "1.5", job_id)
    assert result.returncode == 0
    assert result.text == f"{job_id} killed (signal 15 SIGTERM)\n"
    assert servicer.calls("StopJob")[0].grace_seconds == 1.5
    assert json.loads(jobctl("--json", "stop", job_id).stdout)["state"] == "killed"


def test_list_prints_a_table(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    add_job(servicer, "j1", exit_code=0, started_at=1_700_000_000)
    add_job(servicer, "j2-longer-id", state=pb.JOB_STATE_RUNNING, pid=7)
    lines = jobctl("list").text.splitlines()
    assert lines[0].split() == ["ID", "OWNER", "STATE", "STARTED", "STATUS", "COMMAND"]
    assert lines[1].split() == [
        "j1",
        "alice",
        "exited(0)",
        "2023-11-14",
        "22:13:20",
        "UTC",
        "Exited",
        "(0)",
        "echo",
        "'hi",
        "there'",
    ]
    assert lines[2].split()[:5] == ["j2-longer-id", "alice", "running", "-", "Up"]
    assert lines[1].index("alice") == lines[2].index("alice")  # aligned columns


def test_list_asks_for_live_usage_only_for_json(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    add_job(servicer, "j1", state=pb.JOB_STATE_RUNNING, pid=7)
    jobctl("list")
    jobctl("--json", "list")
    assert [request.include_usage for request in servicer.calls("ListJobs")] == [False, True]


def test_list_status_column_reads_like_docker(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    now = time.time()
    add_job(servicer, "j1", state=pb.JOB_STATE_RUNNING, pid=7, started_at=now - 330)
    add_job(servicer, "j2", exit_code=3, started_at=now - 8000, ended_at=now - 4000)
    # Ended 10.5 minutes ago: still "10 minutes" however long jobctl takes to start on a loaded
    # machine (the seconds are `human_status` with a fixed now, in the test below).
    add_job(servicer, "j3", state=pb.JOB_STATE_KILLED, signal=15, started_at=now - 670, ended_at=now - 630)
    add_job(servicer, "j4", state=pb.JOB_STATE_FAILED_TO_START)
    result = jobctl("list", "--format", "id,status,duration,exit")
    assert result.returncode == 0, result.stderr
    lines = result.text.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "DURATION", "EXIT"]
    statuses = {job_id: rest for job_id, rest in (line.split(None, 1) for line in lines[1:])}
    assert statuses["j1"].startswith("Up 5 minutes")
    assert statuses["j2"].startswith("Exited (3) about an hour ago")
    assert statuses["j2"].split()[-2:] == ["1h06m40s", "3"]
    assert statuses["j3"].startswith("Killed (SIGTERM) 10 minutes ago")
    assert statuses["j3"].split()[-2:] == ["40.0s", "143"]
    assert statuses["j4"].startswith("Failed to start")


def test_the_status_column_counts_seconds_then_minutes_then_hours() -> None:
    from jobclient import _render as render

    now = datetime.datetime(2026, 12, 2, 12, 0, 0, tzinfo=datetime.UTC)

    def killed(ago: float) -> str:
        ended = now - datetime.timedelta(seconds=ago)
        started = ended - datetime.timedelta(seconds=5)
        job = Job(
            id="j",
            owner="alice",
            argv=("x",),
            state=JobState.KILLED,
            signal=15,
            started_at=started,
            ended_at=ended,
        )
        return render.human_status(job, now)

    assert killed(0.5) == "Killed (SIGTERM) less than a second ago"
    assert killed(1) == "Killed (SIGTERM) 1 second ago"
    assert killed(20) == "Killed (SIGTERM) 20 seconds ago"
    assert killed(90) == "Killed (SIGTERM) about a minute ago"
    assert killed(630) == "Killed (SIGTERM) 10 minutes ago"
    assert killed(3 * 3600) == "Killed (SIGTERM) 3 hours ago"


def test_list_quiet_and_state_filter(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    add_job(servicer, "j1", state=pb.JOB_STATE_RUNNING, pid=7)
    add_job(servicer, "j2", exit_code=0)
    add_job(servicer, "j3", state=pb.JOB_STATE_LOST)
    assert jobctl("list", "-q").text == "j1\nj2\nj3\n"
    assert jobctl("list", "-q", "--state", "running").text == "j1\n"
    assert jobctl("list", "-q", "--state", "exited,lost").text == "j2\nj3\n"
    assert jobctl("list", "-q", "--state", "lost", "--state", "running").text == "j1\nj3\n"
    result = jobctl("list", "-q", "--state", "killed")
    assert (result.returncode, result.text, result.stderr) == (0, "", "")  # quiet: nothing at all


@pytest.mark.parametrize(
    ("args", "scope", "user"),
    [
        ([], pb.LIST_SCOPE_OWN, ""),
        (["--all"], pb.LIST_SCOPE_ALL, ""),
        (["--user", "bob"], pb.LIST_SCOPE_USER, "bob"),
    ],
)
def test_list_scopes(jobctl: Jobctl, servicer: FakeJobWorker, args: list[str], scope: int, user: str) -> None:
    add_job(servicer)
    data = json.loads(jobctl("--user", "carl", "list", "--json", *args, JOBCTL_USER="").stdout)
    assert [job["id"] for job in data] == ["j1"]
    (request,) = servicer.calls("ListJobs")
    assert (request.scope, request.user) == (scope, user)
    assert servicer.requests[0][1] == "Carl"


def test_an_empty_list_says_so_on_stderr(jobctl: Jobctl) -> None:
    result = jobctl("list")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", "jobctl: no jobs\n")


# --- errors -----------------------------------------------------------------------------------------

STATUS_EXITS = [
    (grpc.StatusCode.NOT_FOUND, 4),
    (grpc.StatusCode.PERMISSION_DENIED, 4),
    (grpc.StatusCode.UNAUTHENTICATED, 4),
    (grpc.StatusCode.INVALID_ARGUMENT, 4),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 4),
    (grpc.StatusCode.FAILED_PRECONDITION, 4),
    (grpc.StatusCode.UNAVAILABLE, 3),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 3),
    (grpc.StatusCode.INTERNAL, 5),
    (grpc.StatusCode.UNKNOWN, 5),
]


@pytest.mark.parametrize(("code", "exit_code"), STATUS_EXITS, ids=[c.name for c, _ in STATUS_EXITS])
def test_each_server_error_is_one_line_with_its_exit_code(
    jobctl: Jobctl, servicer: FakeJobWorker, code: grpc.StatusCode, exit_code: int
) -> None:
    add_job(servicer)  # the id resolves (ListJobs); GetJob fails
    servicer.fail["GetJob"] = (code, f"scripted {code.name.lower()}")
    result = jobctl("status", "j1")
    assert result.returncode == exit_code
    assert result.stdout == b""
    assert result.stderr.startswith("jobctl: ")
    assert f"scripted {code.name.lower()}" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["status"], ["logs"], ["logs", "-f"], ["stop"]])
def test_an_unknown_job_is_reported_by_id(jobctl: Jobctl, command: list[str]) -> None:
    result = jobctl(*command, "1234")
    assert (result.returncode, result.stdout, result.stderr) == (4, b"", "jobctl: job 1234 not found\n")


def test_ctrl_c_during_logs_follow_exits_130_quietly(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    servicer.plan = Plan(chunks=[b"tick\n"], hold=True)
    job_id = jobctl("start", "--", "ticker").text.strip()
    proc = jobctl.popen("logs", "-f", job_id)
    try:
        wait_for_output(proc, b"tick\n")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (130, b"", b"")
    assert servicer.calls("StopJob") == []  # logs never stops the job


def test_server_down_exits_3(jobctl: Jobctl, free_port: int) -> None:
    result = jobctl("list", JOBCTL_SERVER=f"127.0.0.1:{free_port}")
    assert result.returncode == 3
    assert result.stderr.startswith(f"jobctl: cannot reach the job server at 127.0.0.1:{free_port}")
    assert result.stderr.count("\n") == 1


def test_server_flag_wins_over_the_environment(jobctl: Jobctl, free_port: int) -> None:
    result = jobctl("--server", jobctl.target, "list", JOBCTL_SERVER=f"127.0.0.1:{free_port}")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["expired", "untrusted", "no-client-auth"])
def test_a_refused_client_certificate_exits_3(jobctl: Jobctl, servicer: FakeJobWorker, name: str) -> None:
    test_certs = CERTS / "test"
    result = jobctl(
        "--cert", str(test_certs / f"{name}.crt"), "--key", str(test_certs / f"{name}.key"),
        "--ca", str(CERTS / "ca.crt"),
        "list", JOBCTL_USER="",
    )  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.startswith(f"jobctl: cannot reach the job server at {jobctl.target}")
    assert "refused the TLS handshake" in result.stderr
    assert result.stderr.count("\n") == 1  # grpc's own log lines are silenced
    assert servicer.requests == []


def test_a_server_certificate_from_another_ca_exits_3_in_one_line(
    jobctl: Jobctl, servicer: FakeJobWorker
) -> None:
    result = jobctl(
        "--cert", str(CERTS / "alice.crt"), "--key", str(CERTS / "alice.key"),
        "--ca", str(CERTS / "test" / "untrusted-ca.crt"), "list", JOBCTL_USER="",
    )  # fmt: skip
    assert result.returncode == 3
    assert "does not verify against the CA file" in result.stderr
    assert result.stderr.count("\n") == 1
    assert servicer.requests == []


def test_explicit_files_from_the_environment(jobctl: Jobctl, servicer: FakeJobWorker) -> None:
    result = jobctl(
        "list", JOBCTL_USER="", JOBCTL_CERT=str(CERTS / "bob.crt"), JOBCTL_KEY=str(CERTS / "bob.key"),
        JOBCTL_CA=str(CERTS / "ca.crt"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert servicer.requests[0][1] == "Bob"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--cert", "/nonexistent/a.crt", "--key", "/x.key", "--ca", "/ca.crt"], {"JOBCTL_USER": ""},
         "certificate /nonexistent/a.crt does not exist"),
        (["--user", "mallory"], {}, "mallory.crt does not exist"),
        (["--cert", str(CERTS / "alice.crt")], {"JOBCTL_USER": ""}, "missing --key, --ca"),
        (["--user", "bob", "--cert", str(CERTS / "bob.crt")], {}, "either --user or --cert"),
        ([], {"JOBCTL_USER": ""}, "who are you?"),
        ([], {"JOBCTL_CERTS": "/nonexistent"}, "certificates folder /nonexistent (from $JOBCTL_CERTS)"),
        (["--certs", "/elsewhere"], {}, "certificates folder /elsewhere (given) does not exist"),
    ],
)  # fmt: skip
def test_credential_problems_are_usage_errors_naming_the_file(
    jobctl: Jobctl, servicer: FakeJobWorker, args: list[str], env: dict[str, str], message: str
) -> None:
    result = jobctl(*args, "list", **env)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert servicer.requests == []


def test_an_error_raised_while_a_ctrl_c_unwinds_counts_as_the_interrupt() -> None:
    from jobclient.cli import _during_ctrl_c

    def unwind() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock") from None  # as grpc's clean-up may

    with pytest.raises(RuntimeError) as info:
        unwind()
    assert _during_ctrl_c(info.value)  # `from None` hides the cause, not the context
    assert not _during_ctrl_c(RuntimeError("a bug"))
