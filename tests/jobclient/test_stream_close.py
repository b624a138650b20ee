"""`OutputStream.close()` from another thread ends a followed stream that is waiting for its next
message, quietly (issue 14: kept from trying to read streams on the iterating thread, see
docs/benchmarks.md, "1 GiB through the stack")."""

from __future__ import annotations

import threading

from fake_jobworker import FakeJobWorker

from jobclient import Client
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb


def test_close_from_another_thread_ends_a_waiting_stream_quietly(
    client: Client, servicer: FakeJobWorker
) -> None:
    servicer.add_job(pb.Job(id="j1", state=pb.JOB_STATE_RUNNING), output=b"first")
    stream = client.output("j1")  # follows: the fake server holds the call open until StopJob
    try:
        assert next(stream) == b"first"
        closer = threading.Timer(0.2, stream.close)
        closer.start()
        ended = threading.Event()
        rest: list[bytes] = []

        def drain() -> None:
            rest.extend(stream)  # blocks for the next message until close()
            ended.set()

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        assert ended.wait(30), "close() from another thread did not end the stream"
        assert rest == [] and stream.offset == len(b"first")
    finally:
        client.stop("j1")
