"""One user's flood never takes the server from the others: 300 concurrent calls of one identity
(StopJob with a long grace on a job that ignores SIGTERM, or follow streams) leave every other user's
GetJob, ListJobs, StartJob and StreamOutput answered (each within 10 s, the calls' deadline)."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable

import grpc
from server_harness import Client, RunningServer, processes_with, wait_for

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

FLOOD = 300
#: The deadline of every call of the users who are not flooding: they must be answered within it.
ANSWERED_WITHIN = 10.0


def _sigterm_ignoring_job(client: Client, marker: str) -> pb.Job:
    job = client.start(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done", marker])
    assert wait_for(lambda: client.output(job.id, follow=False) == b"ready\n")
    return job


def _others_are_served(bob: Client, carl: Client, bob_job: pb.Job, alice_job: pb.Job) -> None:
    """Every kind of call of another user (and an admin), each answered within the deadline."""
    t = ANSWERED_WITHIN
    assert bob.stub.GetJob(pb.GetJobRequest(job_id=bob_job.id), timeout=t).job.id == bob_job.id
    assert bob_job.id in {j.id for j in bob.stub.ListJobs(pb.ListJobsRequest(), timeout=t).jobs}
    started = bob.stub.StartJob(pb.StartJobRequest(argv=["true"]), timeout=t).job
    assert started.state in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_EXITED)
    stream = bob.stub.StreamOutput(pb.StreamOutputRequest(job_id=bob_job.id, follow=False), timeout=t)
    assert b"".join(r.data for r in stream) == b"bob\n"
    assert carl.stub.GetJob(pb.GetJobRequest(job_id=alice_job.id), timeout=t).job.owner == "alice"


def test_a_stop_flood_from_one_user_leaves_every_other_user_served(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(unary_threads=8, max_concurrent_streams=16)  # shares: 2 calls, 4 streams
    alice, bob, carl = server.client("alice"), server.client("bob"), server.client("carl")
    marker = f"flood-{uuid.uuid4().hex}"
    job = _sigterm_ignoring_job(alice, marker)
    bob_job = bob.start(["sh", "-c", "echo bob"])
    bob.wait_ended(bob_job.id)

    request = pb.StopJobRequest(job_id=job.id, grace_seconds=20)
    flood = [alice.stub.StopJob.future(request, timeout=120) for _ in range(FLOOD)]
    try:
        _others_are_served(bob, carl, bob_job, job)
        codes: collections.Counter[grpc.StatusCode] = collections.Counter()
        for call in flood:
            error = call.exception(timeout=60)
            codes[grpc.StatusCode.OK if error is None else error.code()] += 1
            if error is None:  # answered within the server's stop wait, the stop under way
                answered = call.result().job
                assert answered.state == pb.JOB_STATE_RUNNING and answered.stop_requested
            else:
                assert "calls in flight, the most one user may have at once" in error.details()
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    finally:
        for call in flood:
            call.cancel()
        server.server.worker.stop(job.id, grace=0)
    assert wait_for(lambda: not processes_with(marker))


def test_a_stream_flood_from_one_user_leaves_every_other_user_served(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(unary_threads=8, max_concurrent_streams=16)  # shares: 2 calls, 4 streams
    alice, bob, carl = server.client("alice"), server.client("bob"), server.client("carl")
    marker = f"flood-{uuid.uuid4().hex}"
    job = _sigterm_ignoring_job(alice, marker)
    bob_job = bob.start(["sh", "-c", "echo bob"])
    bob.wait_ended(bob_job.id)

    request = pb.StreamOutputRequest(job_id=job.id, follow=True)
    flood = [alice.stub.StreamOutput(request, timeout=120) for _ in range(FLOOD)]
    try:
        assert wait_for(lambda: sum(call.done() for call in flood) >= FLOOD - 4)
        assert server.server.open_streams == 4
        refused = [call for call in flood if call.done()]
        assert {call.code() for call in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "output streams open, the most one user may have at once (4)" in refused[0].details()
        _others_are_served(bob, carl, bob_job, job)
        # A follow stream of another user opens and delivers while alice's four stay open.
        follow = carl.stub.StreamOutput(request, timeout=ANSWERED_WITHIN)
        assert next(follow).data == b"ready\n"
        follow.cancel()
    finally:
        for call in flood:
            call.cancel()
        server.server.worker.stop(job.id, grace=0)
    assert wait_for(lambda: server.server.open_streams == 0)
    assert wait_for(lambda: not processes_with(marker))
