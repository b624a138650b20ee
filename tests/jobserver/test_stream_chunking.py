"""StreamOutput's large messages (issue 14): up to 1 MiB of output per response, every byte exactly once
and in order, the offsets right from any starting point, and the SDK's and jobctl's receive paths
(`decode_output`, the allocator tuning) byte-identical with the output file the server stores."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from server_harness import CERTS, RunningServer

from jobclient import Client as SdkClient
from jobclient import Credentials
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobcore import jobdir
from jobserver.service import STREAM_CHUNK_BYTES

MIB = 1 << 20
#: 5 MiB and an odd tail of random bytes: five full messages and a short one.
SIZE = 5 * MIB + 12_345
RANDOM_JOB = ["head", "-c", str(SIZE), "/dev/urandom"]


def _stored(server: RunningServer, job_id: str) -> bytes:
    """The job's output as the server stores it on disk (jobcore's layout)."""
    return (Path(server.server.worker.state_dir) / job_id / jobdir.OUTPUT).read_bytes()


def _responses(
    server: RunningServer, job_id: str, offset: int = 0, follow: bool = False
) -> list[pb.StreamOutputResponse]:
    client = server.client("alice")
    req = pb.StreamOutputRequest(job_id=job_id, offset=offset, follow=follow)
    return list(client.stub.StreamOutput(req, timeout=120))


def _ended_job(server: RunningServer) -> str:
    client = server.client("alice")
    job = client.start(RANDOM_JOB)
    ended = client.wait_ended(job.id, timeout=60)
    assert ended.state == pb.JOB_STATE_EXITED and ended.exit_code == 0
    assert ended.output_bytes == SIZE
    return job.id


def test_a_stored_output_comes_in_full_one_mib_messages_with_contiguous_offsets(
    server: RunningServer,
) -> None:
    job_id = _ended_job(server)
    stored = _stored(server, job_id)
    responses = _responses(server, job_id)
    assert [len(r.data) for r in responses] == [STREAM_CHUNK_BYTES] * 5 + [12_345]
    assert [r.offset for r in responses] == [i * STREAM_CHUNK_BYTES for i in range(6)]
    assert b"".join(r.data for r in responses) == stored
    assert len(stored) == SIZE


def test_a_stream_from_an_odd_offset_starts_there_and_ends_at_the_last_byte(server: RunningServer) -> None:
    job_id = _ended_job(server)
    stored = _stored(server, job_id)
    start = MIB + 7
    responses = _responses(server, job_id, offset=start)
    assert responses[0].offset == start
    expected = start
    for r in responses:
        assert r.offset == expected and 0 < len(r.data) <= STREAM_CHUNK_BYTES
        expected += len(r.data)
    assert b"".join(r.data for r in responses) == stored[start:]
    assert _responses(server, job_id, offset=SIZE) == []


def test_following_a_running_job_gets_every_byte_once_in_messages_of_at_most_one_mib(
    server: RunningServer,
) -> None:
    client = server.client("alice")
    # written in bursts while the follower reads, so that messages are cut at what is there
    job = client.start(["sh", "-c", "for i in 1 2 3 4 5 6; do head -c 700000 /dev/urandom; sleep 0.05; done"])
    responses = _responses(server, job.id, follow=True)
    data = b"".join(r.data for r in responses)
    assert len(data) == 4_200_000
    assert max(len(r.data) for r in responses) <= STREAM_CHUNK_BYTES
    offsets = [r.offset for r in responses]
    assert offsets == [sum(len(r.data) for r in responses[:i]) for i in range(len(responses))]
    assert data == _stored(server, job.id)


def _sdk(server: RunningServer) -> SdkClient:
    return SdkClient(f"127.0.0.1:{server.port}", credentials=Credentials.for_user("alice"), timeout=60)


def test_the_sdk_receives_the_large_messages_byte_identical_and_resumes_at_its_offset(
    server: RunningServer,
) -> None:
    job_id = _ended_job(server)
    stored = _stored(server, job_id)
    with _sdk(server) as sdk:
        with sdk.output(job_id, follow=False) as stream:
            assert b"".join(stream) == stored
            assert stream.offset == SIZE
        # leave after two messages, resume from the offset the stream reports
        with sdk.output(job_id, offset=3, follow=False) as stream:
            head = next(stream) + next(stream)
            resume_at = stream.offset
        assert resume_at == 3 + len(head)
        with sdk.output(job_id, offset=resume_at, follow=False) as stream:
            rest = b"".join(stream)
        assert head + rest == stored[3:]


def test_jobctl_run_writes_a_multi_mib_output_byte_identical(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    jobctl = Path(sys.executable).parent / "jobctl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCTL_")}
    with out.open("wb") as f:
        done = subprocess.run(
            [
                str(jobctl),
                "--server",
                f"127.0.0.1:{server.port}",
                "--ca",
                str(CERTS / "ca.crt"),
                "--cert",
                str(CERTS / "alice.crt"),
                "--key",
                str(CERTS / "alice.key"),
                "run",
                "--",
                *RANDOM_JOB,
            ],
            stdout=f,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    (job,) = [j for j in server.client("alice").list() if list(j.argv) == RANDOM_JOB]
    stored = _stored(server, job.id)
    assert len(stored) == SIZE
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(stored).hexdigest()
