"""What a client can make the server hold in memory through HTTP/2 flow control, measured on a real
`jobserver` process (its VmRSS): a queued call's request is held only up to the server's fixed initial
window (jobserver.server.TRANSPORT_OPTIONS), and a follower that stops reading pins a bounded amount
however large a window it advertises."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from server_harness import CERTS, ServerProcess, wait_for

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

MIB = 1 << 20


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _peak_growth(pid: int, base: float, seconds: float) -> float:
    """The largest RSS growth over `base` seen in `seconds` (sampled; the server settles in ~1 s)."""
    peak = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, _rss_mib(pid) - base)
        time.sleep(0.2)
    return peak


def test_queued_calls_cannot_make_the_server_buffer_their_whole_requests(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    """Every RPC thread busy, then 80 StartJob calls of ~900 KB each wait in the server's queue: gRPC
    has their requests, no handler has read them. With BDP probing (gRPC's default) the window grows
    past 1 MiB and all of each request is taken in (measured +95 MiB for 100 such calls); with the
    fixed 64 KiB window at most 64 KiB each."""
    config = tmp_path / "jobserver.toml"
    config.write_text(
        textwrap.dedent(
            """\
            [server]
            unary_threads = 4
            max_calls_per_user = 4
            max_concurrent_streams = 1
            [requests]
            stop_wait_seconds = 15
            """
        )
    )
    server = ServerProcess(tmp_path / "state", tmp_path, "--config", str(config))
    server_processes.append(server)
    alice, bob, carl = server.client("alice"), server.client("bob"), server.client("carl")
    blockers = []
    try:
        # 5 threads (unary_threads + max_concurrent_streams), each held by a StopJob that waits for a
        # job ignoring SIGTERM to be killed at the end of its grace period
        jobs = []
        for client in (alice, alice, alice, alice, bob):
            job = client.start(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
            jobs.append((client, job))
        for client, job in jobs:
            assert wait_for(lambda c=client, j=job: c.output(j.id, follow=False) == b"ready\n")
        blockers = [
            c.stub.StopJob.future(pb.StopJobRequest(job_id=j.id, grace_seconds=6), timeout=60)
            for c, j in jobs
        ]
        time.sleep(1)  # the five handlers are waiting
        base = _rss_mib(server.pid)
        count, size = 80, 900 * 1024
        # argv empty: refused as invalid once a handler reads it, so no job is ever started from these
        request = pb.StartJobRequest(argv=[], env={"BIG": "x" * size})
        queued = [carl.stub.StartJob.future(request, timeout=60) for _ in range(count)]
        growth = _peak_growth(server.pid, base, 3.0)
        assert all(not f.done() for f in queued), "the calls were to be queued behind the blockers"
        whole = count * size / MIB  # ~70 MiB if every request were taken in
        assert growth < whole / 3, f"{count} queued requests grew the server by {growth:.0f} MiB"
        for f in queued:
            f.cancel()
    finally:
        for f in blockers:
            f.result(timeout=60)  # the jobs are killed at the end of their grace period
        for client in (alice, bob, carl):
            client.close()
    assert server.terminate() == 0


_STALLED_FOLLOWER = """
import os, signal, sys
import grpc
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb, jobworker_pb2_grpc as pb_grpc
port, job_id, n, certs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
def read(name):
    with open(os.path.join(certs, name), "rb") as f:
        return f.read()
credentials = grpc.ssl_channel_credentials(read("ca.crt"), read("alice.key"), read("alice.crt"))
# a hostile receiver: a fixed 64 MiB window per stream that it advertises and then never reads
options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 64 << 20),
           ("grpc.max_receive_message_length", 64 << 20)]
streams = []
for _ in range(n):
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials, options)
    stream = pb_grpc.JobWorkerStub(channel).StreamOutput(pb.StreamOutputRequest(job_id=job_id))
    next(stream)
    streams.append((channel, stream))
print("reading no more", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_a_follower_that_stops_reading_pins_a_bounded_amount_of_server_memory(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    """A guard of the property flow control gives (it held before this file's options too): 8
    followers of a 256 MiB output, each on its own connection advertising a 64 MiB window, read one
    message and then their process is stopped. The server has one message in flight per stream
    (gRPC's synchronous server waits for each to be sent), so it holds a few MiB per stream, not
    what is left of the output nor the window."""
    server = ServerProcess(tmp_path / "state", tmp_path)
    server_processes.append(server)
    alice = server.client("alice")
    follower: subprocess.Popen[bytes] | None = None
    try:
        job = alice.start(["head", "-c", str(256 * MIB), "/dev/zero"])
        assert alice.wait_ended(job.id, timeout=120).output_bytes == 256 * MIB
        base = _rss_mib(server.pid)
        script = tmp_path / "stalled_follower.py"
        script.write_text(_STALLED_FOLLOWER)
        n = 8
        argv = [sys.executable, str(script), str(server.port), job.id, str(n), str(CERTS)]
        follower = subprocess.Popen(argv, stdout=subprocess.PIPE)
        assert follower.stdout is not None
        assert follower.stdout.readline() == b"reading no more\n"
        assert wait_for(lambda: _stopped(follower.pid), timeout=10)
        growth = _peak_growth(server.pid, base, 3.0)
        assert growth < n * 8, f"{n} stalled followers grew the server by {growth:.0f} MiB"
    finally:
        if follower is not None:
            follower.kill()
            follower.wait(timeout=10)
        alice.close()
    assert server.terminate() == 0


def _stopped(pid: int) -> bool:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0] == "T"
