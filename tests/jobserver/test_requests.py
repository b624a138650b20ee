"""Malformed requests get a specific status and a clear message; limits, defaults, maximums and caps."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog.testing
from server_harness import IS_ROOT, Client, RunningServer, rpc_error, test_config

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobcore import Worker
from jobcore.spec import Limits
from jobserver.server import JobServer

MIB = 1024 * 1024

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def start_req(**kwargs: Any) -> Callable[[Any], Any]:
    return lambda stub: stub.StartJob(pb.StartJobRequest(**kwargs), timeout=30)


def limits(**kwargs: Any) -> Callable[[Any], Any]:
    return start_req(argv=["true"], limits=pb.Limits(**kwargs))


MALFORMED: list[tuple[str, Callable[[Any], Any], grpc.StatusCode, str]] = [
    ("empty argv", start_req(argv=[]), INVALID, "argv is empty"),
    ("empty argv[0]", start_req(argv=[""]), INVALID, "argv[0] is empty"),
    ("too many args", start_req(argv=["true"] * 5000), INVALID, "argv has 5000 entries"),
    (
        "huge argv",
        start_req(argv=["echo", "x" * 300_000]),
        INVALID,
        "argv takes 300006 bytes, more than the 262144 allowed",
    ),
    ("NUL in argv", start_req(argv=["echo", "a\x00b"]), INVALID, "argv[1] contains a NUL byte"),
    ("NUL in env value", start_req(argv=["true"], env={"A": "x\x00"}), INVALID, "env value of A"),
    ("= in env name", start_req(argv=["true"], env={"A=B": "x"}), INVALID, "env name 'A=B' is invalid"),
    ("huge env", start_req(argv=["true"], env={"BIG": "x" * 300_000}), INVALID, "env takes"),
    ("relative cwd", start_req(argv=["true"], cwd="tmp"), INVALID, "cwd 'tmp' is relative"),
    ("missing cwd", start_req(argv=["true"], cwd="/no/such/dir"), INVALID, "does not exist"),
    ("NaN cpu", limits(cpu=math.nan), INVALID, "limits.cpu must be a finite number"),
    ("negative cpu", limits(cpu=-1), INVALID, "cpu must be positive"),
    ("zero cpu", limits(cpu=0), INVALID, "cpu must be positive"),
    ("zero memory", limits(memory_bytes=0), INVALID, "memory must be positive"),
    ("tiny memory", limits(memory_bytes=1024), INVALID, "memory of 1024 bytes is below the minimum"),
    ("zero pids", limits(pids=0), INVALID, "pids must be positive"),
    ("pids above the maximum", limits(pids=100_000), INVALID, "pids of 100000 is above the maximum"),
    ("cpu above the host", limits(cpu=10_000), INVALID, "cpu of 10000"),
    ("bad job id", lambda s: s.GetJob(pb.GetJobRequest(job_id="nope"), timeout=10), INVALID, "not a job id"),
    ("empty job id", lambda s: s.GetJob(pb.GetJobRequest(job_id=""), timeout=10), INVALID, "job_id is empty"),
    (
        "path-like job id",
        lambda s: s.StreamOutput(pb.StreamOutputRequest(job_id="../x"), timeout=10),
        INVALID,
        "'../x' is not a job id",
    ),
    (
        "non-canonical job id",
        lambda s: s.StopJob(
            pb.StopJobRequest(job_id="{" + "12345678-1234-1234-1234-123456789ABC" + "}"), timeout=10
        ),
        INVALID,
        "not in canonical form",
    ),
    (
        "negative grace",
        lambda s: s.StopJob(
            pb.StopJobRequest(job_id="12345678-1234-1234-1234-123456789abc", grace_seconds=-1), timeout=10
        ),
        INVALID,
        "grace_seconds must be a finite number",
    ),
    (
        "unknown list scope",
        lambda s: s.ListJobs(pb.ListJobsRequest(scope=99), timeout=10),  # type: ignore[arg-type]
        INVALID,
        "scope 99 is not a known ListScope",
    ),
    (
        "user scope without a user",
        lambda s: s.ListJobs(pb.ListJobsRequest(scope=pb.LIST_SCOPE_USER), timeout=10),
        INVALID,
        "needs user",
    ),
    (
        "invalid user name",
        lambda s: s.ListJobs(pb.ListJobsRequest(scope=pb.LIST_SCOPE_USER, user="../etc"), timeout=10),
        INVALID,
        "not a valid user name",
    ),
]


@pytest.mark.parametrize(
    ("call", "code", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_request_gets_its_status_and_message(
    server: RunningServer, call: Callable[[Any], Any], code: grpc.StatusCode, message: str
) -> None:
    client = server.client("alice")
    exc = rpc_error(lambda: call(client.stub))
    assert exc.code() == code
    assert message in exc.details()
    assert "Traceback" not in exc.details()
    # The server goes on serving.
    assert client.start(["true"]).state in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_EXITED)


def test_oversized_message_is_refused_by_grpc(server: RunningServer) -> None:
    client = server.client("alice")
    exc = rpc_error(lambda: client.start(["echo", "x" * (2 * MIB)]))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.list() is not None


def test_unset_limits_take_the_defaults(server: RunningServer) -> None:
    job = server.client("alice").start(["true"])
    assert job.limits.cpu == 1.0
    assert job.limits.memory_bytes == 512 * MIB
    assert job.limits.pids == 256
    assert not job.limits.HasField("io_read_bps")
    assert job.controller != ""


def test_requested_limits_within_the_maximum_are_applied(server: RunningServer) -> None:
    job = server.client("alice").start(["true"], limits=pb.Limits(cpu=0.5, memory_bytes=64 * MIB, pids=32))
    assert (job.limits.cpu, job.limits.memory_bytes, job.limits.pids) == (0.5, 64 * MIB, 32)


def test_limit_above_the_configured_maximum_names_the_limit(
    make_server: Callable[..., RunningServer],
) -> None:

    server = make_server(max_limits=Limits(cpu=1.0, memory=256 * MIB, pids=64))
    exc = rpc_error(lambda: server.client("alice").start(["true"], limits=pb.Limits(memory_bytes=300 * MIB)))
    assert exc.code() == INVALID
    assert "memory of 314572800 is above the maximum allowed here (268435456)" in exc.details()


def test_per_user_running_job_cap(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(max_running_jobs_per_user=2)
    alice, bob = server.client("alice"), server.client("bob")
    jobs = [alice.start(["sleep", "300"]) for _ in range(2)]
    exc = rpc_error(lambda: alice.start(["sleep", "300"]))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "user alice already runs 2 jobs" in exc.details()
    assert bob.start(["true"]).owner == "bob"  # the cap is per user
    alice.stop(jobs[0].id, grace=0)
    assert alice.start(["true"]).owner == "alice"  # room again once one ended


def test_command_that_cannot_be_executed_is_a_failed_job_not_an_rpc_error(server: RunningServer) -> None:
    job = server.client("alice").start(["/no/such/command"])
    assert job.state == pb.JOB_STATE_FAILED_TO_START
    assert job.reason


def test_offset_past_the_end_of_an_ended_job_is_out_of_range(server: RunningServer) -> None:
    client = server.client("alice")
    job = client.start(["echo", "hello"])
    ended = client.wait_ended(job.id)
    assert ended.output_bytes == 6
    assert client.output(job.id, offset=3, follow=False) == b"lo\n"
    assert client.output(job.id, offset=6, follow=False) == b""
    exc = rpc_error(lambda: client.output(job.id, offset=7, follow=False))
    assert exc.code() == grpc.StatusCode.OUT_OF_RANGE


def test_stopping_an_ended_job_returns_it(server: RunningServer) -> None:
    client = server.client("alice")
    job = client.start(["true"])
    client.wait_ended(job.id)
    stopped = client.stop(job.id)
    assert stopped.state == pb.JOB_STATE_EXITED
    assert stopped.exit_code == 0


def test_job_fields_round_trip(server: RunningServer) -> None:
    client = server.client("alice")
    job = client.start(["sh", "-c", "echo $FOO; exit 3"], env={"FOO": "bar"}, cwd="/tmp")
    assert list(job.argv) == ["sh", "-c", "echo $FOO; exit 3"]
    assert job.cwd == "/tmp"
    assert set(job.namespaces) == {"pid", "mount", "net", "uts", "ipc"}
    ended = client.wait_ended(job.id)
    assert ended.state == pb.JOB_STATE_EXITED
    assert ended.exit_code == 3
    assert ended.HasField("ended_at")
    assert client.output(job.id) == b"bar\n"
    assert ended.cwd == "/tmp"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xff\xff", "not a valid StartJob message"),
        (b"\x0a\x02\xff\xfe", "not a valid StartJob message"),  # argv[0] is not UTF-8
    ],
)
def test_undecodable_request_is_invalid_argument(server: RunningServer, payload: bytes, message: str) -> None:
    client = server.client("alice")
    raw = client.channel.unary_unary("/jobworker.v1.JobWorker/StartJob")
    exc = rpc_error(lambda: raw(payload, timeout=10))
    assert exc.code() == INVALID
    assert message in exc.details()
    assert client.list() == []


def test_unexpected_error_is_internal_with_a_log_reference_not_a_traceback(tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("the server's jobs run in cgroups and namespaces: needs root")

    class BrokenWorker(Worker):
        def running_count(self, owner: str | None = None) -> int:
            if owner == "alice":
                raise RuntimeError("secret internal detail")
            return super().running_count(owner)

    server = JobServer(test_config(tmp_path / "state"), worker_factory=BrokenWorker)
    port = server.start()
    client = Client(port, "alice")
    try:
        with structlog.testing.capture_logs() as logged:
            exc = rpc_error(lambda: client.start(["true"]))
        assert exc.code() == grpc.StatusCode.INTERNAL
        assert exc.details().startswith("internal error (server log reference ")
        assert "secret" not in exc.details()
        assert "Traceback" not in exc.details()
        ref = exc.details().rsplit(" ", 1)[-1].rstrip(")")
        assert client.list() == []  # the server goes on serving
    finally:
        client.close()
        server.stop(grace=2)
    [error] = [e for e in logged if e.get("ref") == ref]
    assert error["event"] == "unexpected error"
    assert "secret internal detail" in str(error["exc_info"])


def test_with_the_none_backend_jobs_run_without_default_limits_and_limits_are_refused(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(controller="none")
    client = server.client("alice")
    job = client.wait_ended(client.start(["echo", "unlimited"]).id)
    assert job.state == pb.JOB_STATE_EXITED and job.exit_code == 0
    assert job.controller == "none"
    assert not job.limits.HasField("memory_bytes")
    exc = rpc_error(lambda: client.start(["true"], limits=pb.Limits(memory_bytes=64 * MIB)))
    assert exc.code() == INVALID
    assert "memory" in exc.details()


def test_status_reports_the_jobs_working_directory(server: RunningServer, tmp_path: Path) -> None:
    client = server.client("alice")
    job = client.start(["true"], cwd=str(tmp_path))
    assert job.cwd == str(tmp_path)
    assert client.wait_ended(job.id).cwd == str(tmp_path)


def test_concurrent_starts_of_one_user_never_exceed_the_cap(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(max_running_jobs_per_user=3)
    barrier = threading.Barrier(10)
    outcomes: list[str] = []
    lock = threading.Lock()

    def start() -> None:
        client = server.client("alice")
        barrier.wait(timeout=30)
        try:
            client.start(["sleep", "30"])
            outcome = "started"
        except grpc.RpcError as exc:
            outcome = exc.code().name
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=start) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["RESOURCE_EXHAUSTED"] * 7 + ["started"] * 3
    admin = server.client("carl")
    for job in admin.list(scope=pb.LIST_SCOPE_ALL):
        admin.stop(job.id, grace=0)
