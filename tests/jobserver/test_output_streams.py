"""StreamOutput: many concurrent watchers see the same bytes; watchers that leave cost nothing after."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent import futures
from pathlib import Path

import grpc
from server_harness import Client, RunningServer, ServerProcess, rpc_error, wait_for

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobserver.server import RPC_THREAD_NAME

# About 2 MB of output written over a second or so, so that followers join while it is produced.
NOISY_JOB = [
    "sh",
    "-c",
    "for i in $(seq 1 40); do head -c 50000 /dev/urandom | od -An -tx1 | head -c 50000; sleep 0.02; done",
]


def _follow_digest(client: Client, job_id: str, barrier: threading.Barrier) -> tuple[str, int]:
    req = pb.StreamOutputRequest(job_id=job_id, offset=0, follow=True)
    digest, size, expected_offset = hashlib.sha256(), 0, 0
    barrier.wait(timeout=60)
    for response in client.stub.StreamOutput(req, timeout=120):
        assert response.offset == expected_offset
        expected_offset += len(response.data)
        digest.update(response.data)
        size += len(response.data)
    return digest.hexdigest(), size


def test_fifty_concurrent_followers_receive_identical_output(server: RunningServer) -> None:
    owner = server.client("alice")
    job = owner.start(NOISY_JOB)
    clients = [server.client("alice" if i % 2 else "carl") for i in range(10)]
    barrier = threading.Barrier(50)
    with futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: _follow_digest(clients[i % 10], job.id, barrier), range(50)))
    ended = owner.get(job.id)
    assert ended.state == pb.JOB_STATE_EXITED
    stored = owner.output(job.id, follow=False)
    assert len(stored) == ended.output_bytes == 2_000_000
    assert set(results) == {(hashlib.sha256(stored).hexdigest(), len(stored))}


def test_follow_from_an_offset_and_without_follow(server: RunningServer) -> None:
    client = server.client("alice")
    job = client.start(["sh", "-c", "echo one; sleep 0.3; echo two"])
    first = next(
        iter(client.stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True), timeout=30))
    )
    assert first.data.startswith(b"one")
    assert client.output(job.id, offset=4, follow=True) == b"two\n"
    assert client.output(job.id, offset=0, follow=False) == b"one\ntwo\n"


def test_stream_limit_answers_resource_exhausted(make_server: object) -> None:
    server: RunningServer = make_server(max_concurrent_streams=2, max_streams_per_user=2)  # type: ignore[operator]
    client = server.client("alice")
    job = client.start(["sleep", "300"])
    req = pb.StreamOutputRequest(job_id=job.id, follow=True)
    open_streams = [client.stub.StreamOutput(req, timeout=60) for _ in range(2)]
    assert wait_for(lambda: server.server.open_streams == 2)
    exc = rpc_error(lambda: client.stub.StreamOutput(req, timeout=30))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for stream in open_streams:
        stream.cancel()
    assert wait_for(lambda: server.server.open_streams == 0)
    client.stop(job.id, grace=0)


def _counts(pid: int) -> tuple[int, int, int]:
    """(threads other than the two pools', RPC pool threads, open fds) of a process; see the caller."""
    other = pool = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # the thread just ended
        if name == RPC_THREAD_NAME:
            pool += 1
        elif name == "event_engine":
            continue
        else:
            other += 1
    return other, pool, len(os.listdir(f"/proc/{pid}/fd"))


def _names(pid: int) -> list[str]:
    return sorted(
        Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{pid}/task")
    )


def _leave_mid_stream(port: int, job_id: str, barrier: threading.Barrier) -> None:
    client = Client(port, "alice")
    try:
        stream = client.stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id, follow=True), timeout=60)
        first = next(iter(stream), None)
        assert first is not None, "the stream ended before any output"
        assert first.data
        barrier.wait(timeout=60)  # every client of the round is mid-stream at once
    finally:
        client.close()  # goes away mid-stream: the server sees the call cancelled


def test_clients_leaving_mid_stream_leave_no_threads_or_fds(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    config = tmp_path / "jobserver.toml"
    config.write_text("[server]\nmax_concurrent_streams = 30\nmax_streams_per_user = 30\nunary_threads = 4\n")
    proc = ServerProcess(tmp_path / "state", tmp_path, "--config", str(config))
    server_processes.append(proc)
    client = proc.client("alice")
    # One line, then silence: a handler would block in its read forever unless the departure wakes it.
    job = client.start(["sh", "-c", "echo tick; exec sleep 300"])
    served = 0

    def round_of(n: int) -> None:
        nonlocal served
        barrier = threading.Barrier(n)
        with futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda _: _leave_mid_stream(proc.port, job.id, barrier), range(n)))
        served += n
        # A stream's audit record is written once its handler has released everything.
        assert wait_for(lambda: proc.log_text().count('"code": "CANCELLED"') >= served, 30), proc.log_text()[
            -3000:
        ]

    # Two thread pools keep idle threads for the next calls, each bounded on its own: the RPC pool
    # (at most 30 + 4 here) and gRPC's C-core "event_engine" pool (sized by gRPC; it grows under
    # load and trims extra threads after idling). Every other thread, and every fd, must be back to
    # where it was after a warm-up round.
    round_of(20)
    other, _pool, fds = _counts(proc.pid)
    for _ in range(10):
        round_of(20)

    def settled() -> bool:
        now = _counts(proc.pid)
        return now[0] <= other and now[2] <= fds

    assert wait_for(settled, 90, interval=0.5), (
        f"(other threads, pool, fds) {_counts(proc.pid)}; before {other}, {fds}; {_names(proc.pid)}"
    )
    assert _counts(proc.pid)[1] <= 34
    assert _names(proc.pid).count("event_engine") <= 16
    assert proc.log_text().count('"code": "CANCELLED"') == 220
    client.stop(job.id, grace=0)
    client.close()
    assert proc.terminate() == 0
