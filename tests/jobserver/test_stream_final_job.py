"""A follow stream that ends with its job carries the job's final status in its trailing metadata
(`FINAL_JOB_KEY`): what GetJob answers then, so that the SDK's run/wait make no GetJob call. Only
for a follow stream that reached the job's end, only to the caller who may see the job, and never
larger than gRPC's default metadata bound allows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from server_harness import CERTS, RunningServer, rpc_error, test_config

from jobclient import Client as SdkClient
from jobclient import Credentials, Isolation
from jobclient.client import FINAL_JOB_KEY as CLIENT_KEY
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobserver.errors import job_not_found
from jobserver.identity import Identity, Role
from jobserver.interceptor import CallInfo, _current
from jobserver.service import FINAL_JOB_KEY, FINAL_JOB_MAX_BYTES, JobWorkerService

GETJOB = "/jobworker.v1.JobWorker/GetJob"


def _follow(stub: Any, job_id: str, follow: bool = True) -> tuple[bytes, dict[str, bytes]]:
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id, follow=follow), timeout=60)
    data = b"".join(r.data for r in call)
    return data, dict(call.trailing_metadata() or ())


def test_the_key_is_the_one_the_client_reads() -> None:
    assert FINAL_JOB_KEY == CLIENT_KEY


def test_a_follow_stream_ends_with_the_final_job_getjob_would_give(server: RunningServer) -> None:
    alice = server.client("alice")
    job = alice.start(["sh", "-c", "echo hi; exit 3"])
    data, trailer = _follow(alice.stub, job.id)
    assert data == b"hi\n"
    final = pb.Job.FromString(trailer[FINAL_JOB_KEY])
    assert final == alice.get(job.id)
    assert (final.state, final.exit_code, final.output_bytes) == (pb.JOB_STATE_EXITED, 3, 3)
    # Read again once ended: the same.
    assert pb.Job.FromString(_follow(alice.stub, job.id)[1][FINAL_JOB_KEY]) == final


def test_no_trailer_without_follow_nor_for_a_status_too_large(server: RunningServer) -> None:
    alice = server.client("alice")
    job = alice.start(["true"])
    alice.wait_ended(job.id)
    assert FINAL_JOB_KEY not in _follow(alice.stub, job.id, follow=False)[1]
    long_argv = ["sh", "-c", "true", *(["x" * 100] * (FINAL_JOB_MAX_BYTES // 100 + 1))]
    big = alice.start(long_argv)
    assert FINAL_JOB_KEY not in _follow(alice.stub, big.id)[1]
    assert alice.get(big.id).state == pb.JOB_STATE_EXITED


def test_another_user_gets_no_stream_and_so_no_trailer(server: RunningServer) -> None:
    alice, bob = server.client("alice"), server.client("bob")
    job = alice.start(["true"])
    assert rpc_error(lambda: _follow(bob.stub, job.id)).code() == grpc.StatusCode.NOT_FOUND


def _getjob_calls(server: RunningServer) -> float:
    value = server.server.metrics.registry.get_sample_value(
        "jobserver_rpcs_total", {"method": GETJOB, "code": "OK"}
    )
    return value or 0.0


def test_the_sdks_run_makes_no_getjob_call(make_server: Callable[..., RunningServer]) -> None:
    server = make_server()
    with SdkClient(
        f"127.0.0.1:{server.port}", credentials=Credentials.for_user("alice", CERTS), timeout=30
    ) as sdk:
        out: list[bytes] = []
        job = sdk.run(["sh", "-c", "echo out; exit 2"], isolation=Isolation(), out=out.append)
        assert (b"".join(out), job.exit_code, job.output_bytes) == (b"out\n", 2, 4)
        assert sdk.run(["true"], out=out.append).exit_code == 0
        assert _getjob_calls(server) == 0
        # A status too large for the trailer: the SDK asks GetJob, and gets the same answer.
        long_argv = ["sh", "-c", "exit 5", *(["y" * 100] * (FINAL_JOB_MAX_BYTES // 100 + 1))]
        assert sdk.run(long_argv, out=out.append).exit_code == 5
        assert _getjob_calls(server) == 1


class _GoneJobs:
    """Jobs whose every job was deleted a moment ago."""

    def find(self, job_id: str, identity: Identity) -> Any:
        raise job_not_found(job_id)


class _Context:
    def __init__(self) -> None:
        self.trailer: Any = None

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailer = metadata


def test_a_job_deleted_as_its_stream_ends_leaves_the_stream_ok_without_a_trailer(tmp_path: Path) -> None:
    service = JobWorkerService(_GoneJobs(), test_config(tmp_path), user_ids=None)  # type: ignore[arg-type]
    context = _Context()
    token = _current.set(CallInfo(method="/x/StreamOutput", identity=Identity("alice", Role.USER)))
    try:
        service._send_final_status("00000000-0000-0000-0000-000000000000", context)  # type: ignore[arg-type]
    finally:
        _current.reset(token)
    assert context.trailer is None
