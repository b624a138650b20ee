"""Authorization, per RPC: the owner may, another user gets NOT_FOUND (as for no such job), an admin may."""

from __future__ import annotations

import uuid

import grpc
import pytest
import structlog.testing
from server_harness import RunningServer, cert_paths, marked_job, processes_with, rpc_error

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb


@pytest.fixture
def alice_job(server: RunningServer) -> tuple[RunningServer, pb.Job, str]:
    marker = f"authz-{uuid.uuid4().hex}"
    job = server.client("alice").start(marked_job(marker, marker))
    return server, job, marker


def _not_found_like_missing(exc: grpc.RpcError, job_id: str) -> None:
    assert exc.code() == grpc.StatusCode.NOT_FOUND
    assert exc.details() == f"job {job_id} not found"


def test_identity_is_the_lower_cased_cn(alice_job: tuple[RunningServer, pb.Job, str]) -> None:
    _server, job, _marker = alice_job
    assert job.owner == "alice"
    assert job.state == pb.JOB_STATE_RUNNING


def test_get_job_owner_and_admin_allowed_other_user_not_found(
    alice_job: tuple[RunningServer, pb.Job, str],
) -> None:
    server, job, _ = alice_job
    assert server.client("alice").get(job.id).id == job.id
    assert server.client("carl").get(job.id).owner == "alice"
    _not_found_like_missing(rpc_error(lambda: server.client("bob").get(job.id)), job.id)
    missing = str(uuid.uuid4())
    _not_found_like_missing(rpc_error(lambda: server.client("bob").get(missing)), missing)


def test_stream_output_owner_and_admin_allowed_other_user_not_found(
    alice_job: tuple[RunningServer, pb.Job, str],
) -> None:
    server, job, marker = alice_job
    for name in ("alice", "carl"):
        deadline_output = b""
        for _ in range(200):
            deadline_output = server.client(name).output(job.id, follow=False)
            if deadline_output:
                break
        assert deadline_output == f"{marker}\n".encode()
    _not_found_like_missing(rpc_error(lambda: server.client("bob").output(job.id, follow=False)), job.id)


def test_list_jobs_shows_own_jobs_only_unless_admin(alice_job: tuple[RunningServer, pb.Job, str]) -> None:
    server, job, _ = alice_job
    bob_job = server.client("bob").start(["true"])
    assert [j.id for j in server.client("alice").list()] == [job.id]
    assert [j.id for j in server.client("bob").list()] == [bob_job.id]
    assert [j.id for j in server.client("alice").list(pb.LIST_SCOPE_USER, "alice")] == [job.id]
    assert {j.id for j in server.client("carl").list(pb.LIST_SCOPE_ALL)} == {job.id, bob_job.id}
    assert [j.id for j in server.client("carl").list(pb.LIST_SCOPE_USER, "bob")] == [bob_job.id]
    assert server.client("carl").list() == []


def test_list_jobs_of_others_needs_admin(server: RunningServer) -> None:
    alice = server.client("alice")
    exc = rpc_error(lambda: alice.list(pb.LIST_SCOPE_ALL))
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin" in exc.details()
    exc = rpc_error(lambda: alice.list(pb.LIST_SCOPE_USER, "bob"))
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED


def test_stop_job_other_user_not_found_owner_stops(alice_job: tuple[RunningServer, pb.Job, str]) -> None:
    server, job, marker = alice_job
    _not_found_like_missing(rpc_error(lambda: server.client("bob").stop(job.id)), job.id)
    assert server.client("alice").get(job.id).state == pb.JOB_STATE_RUNNING
    assert processes_with(marker), "the job's processes are there before the stop"
    stopped = server.client("alice").stop(job.id, grace=1)
    assert stopped.state == pb.JOB_STATE_KILLED
    assert stopped.stop_requested
    assert processes_with(marker) == []


def test_admin_may_stop_anyones_job(alice_job: tuple[RunningServer, pb.Job, str]) -> None:
    server, job, marker = alice_job
    assert processes_with(marker)
    stopped = server.client("carl").stop(job.id, grace=1)
    assert stopped.state == pb.JOB_STATE_KILLED
    assert stopped.owner == "alice"
    assert processes_with(marker) == []


def test_start_job_is_owned_by_the_caller(server: RunningServer) -> None:
    job = server.client("bob").start(["true"])
    assert job.owner == "bob"
    carl_job = server.client("carl").start(["true"])
    assert carl_job.owner == "carl"
    _not_found_like_missing(rpc_error(lambda: server.client("alice").get(carl_job.id)), carl_job.id)


def test_one_audit_record_per_request(server: RunningServer) -> None:
    alice, bob = server.client("alice"), server.client("bob")
    with structlog.testing.capture_logs() as logged:
        job = alice.start(["echo", "audited"])
        alice.output(job.id)
        rpc_error(lambda: bob.get(job.id))
        rpc_error(lambda: server.client(None, *cert_paths("test/no-ou")).list())
    audit = [e for e in logged if e["event"] == "rpc"]
    assert [(e["method"].rsplit("/", 1)[-1], e["user"], e["job_id"], e["code"]) for e in audit] == [
        ("StartJob", "alice", job.id, "OK"),
        ("StreamOutput", "alice", job.id, "OK"),
        ("GetJob", "bob", job.id, "NOT_FOUND"),
        ("ListJobs", None, None, "PERMISSION_DENIED"),
    ]
    assert all(isinstance(e["duration_ms"], float) and e["peer"].startswith("ipv4:127.0.0.1:") for e in audit)
    assert audit[0]["role"] == "user"
    assert "OU" in audit[3]["detail"]
