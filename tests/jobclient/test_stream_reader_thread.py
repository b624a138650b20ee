"""The blocking Client reads its output streams on the thread that iterates them (issue 14): each
message is taken from the call and decoded there, not handed over by the channel's spin thread; the
output is unchanged, and `close()` from another thread still ends a stream that is waiting."""

from __future__ import annotations

import os
import threading

import pytest
from fake_jobworker import FakeJobWorker, FakeServer, Plan

import jobclient.client as client_module
from jobclient import Client, Credentials
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb


def test_messages_are_decoded_on_the_iterating_thread_and_arrive_whole(
    server: FakeServer, servicer: FakeJobWorker, alice: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded_on: list[threading.Thread] = []
    real = client_module.decode_output

    def recording(raw: bytes) -> client_module.RawOutput:
        decoded_on.append(threading.current_thread())
        return real(raw)

    monkeypatch.setattr(client_module, "decode_output", recording)  # before the Client registers it
    big = os.urandom(2 * 1024 * 1024 + 5)
    servicer.plan = Plan(chunks=[big[i : i + 65536] for i in range(0, len(big), 65536)])
    got: list[bytes] = []
    readers: list[threading.Thread] = []

    def read() -> None:
        readers.append(threading.current_thread())
        with Client(server.target, credentials=alice, timeout=10) as c:
            job = c.start(["cat", "big"])
            got.extend(c.output(job.id))

    reader = threading.Thread(target=read, name="output-reader")
    reader.start()
    reader.join(60)
    assert not reader.is_alive()
    assert b"".join(got) == big
    assert len(decoded_on) >= len(servicer.plan.chunks)
    assert set(decoded_on) == set(readers) == {reader}


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
