"""StreamOutput's hand-encoded responses (issue 14): `EncodedOutput` must be byte for byte what protobuf
writes for the same data and offset, the server must serialize StreamOutput (and only it) with
`serialize_output`, and the metrics must count an encoded response's bytes without reading its data
back (a copy of each MiB)."""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobserver import listing
from jobserver.metrics import ServerMetrics
from jobserver.server import add_to_server
from jobserver.service import EncodedOutput, serialize_output


@pytest.mark.parametrize("size", [1, 127, 128, 16_383, 16_384, 1 << 20, (1 << 20) + 1])
@pytest.mark.parametrize("offset", [0, 1, 127, 128, 300, 2**32, 2**64 - 1])
def test_an_encoded_response_is_what_protobuf_serializes(size: int, offset: int) -> None:
    data = random.Random(size ^ offset).randbytes(size)
    encoded = EncodedOutput(data, offset)
    expected = pb.StreamOutputResponse(data=data, offset=offset).SerializeToString()
    assert serialize_output(encoded) == encoded.wire == expected
    assert encoded.output_bytes == size
    parsed = pb.StreamOutputResponse.FromString(encoded.wire)
    assert (parsed.data, parsed.offset) == (data, offset)


def test_empty_data_at_offset_zero_is_the_empty_message_as_in_protobuf() -> None:
    assert EncodedOutput(b"", 0).wire == pb.StreamOutputResponse().SerializeToString() == b""


def test_a_protobuf_message_is_serialized_by_protobuf() -> None:
    # the indexed path's responses carry a stream and a time
    message = pb.StreamOutputResponse(data=b"abc", offset=7, stream=pb.OUTPUT_STREAM_STDERR, time=1.5e9)
    assert serialize_output(message) == message.SerializeToString()


class _Recorder:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.registered[service] = handlers


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


def test_only_stream_output_and_list_jobs_are_serialized_by_hand_and_all_are_registered_both_ways() -> None:
    generated, ours = _Recorder(), _Recorder()
    servicer = pb_grpc.JobWorkerServicer()
    pb_grpc.add_JobWorkerServicer_to_server(servicer, generated)  # type: ignore[arg-type]
    add_to_server(servicer, ours)  # type: ignore[arg-type]
    (name,) = generated.registered
    want, got = generated.registered[name], ours.registered[name]
    assert set(got) == set(want) and "StreamOutput" in got
    for method, handler in got.items():
        by_hand = {"StreamOutput": serialize_output, "ListJobs": listing.serialize_page}
        expected = by_hand.get(method, want[method].response_serializer)
        assert handler.response_serializer == expected, method
        assert handler.request_deserializer == want[method].request_deserializer, method
        assert handler.response_streaming == want[method].response_streaming, method
        (generic,) = ours.generic
        looked_up = generic.service(_Details(f"/{name}/{method}"))
        assert looked_up.response_serializer == expected, method


class _NoDataReads:
    """An encoded response whose data must not be read back."""

    output_bytes = 1 << 20

    @property
    def data(self) -> bytes:
        raise AssertionError("the metrics read the data of an encoded response")


def _streamed_total(metrics: ServerMetrics) -> float:
    value = metrics.registry.get_sample_value("jobserver_streamed_bytes_total")
    assert value is not None
    return value


def test_metrics_count_an_encoded_response_by_its_length_without_reading_its_data() -> None:
    metrics = ServerMetrics()
    metrics.streamed(_NoDataReads())
    metrics.streamed(EncodedOutput(b"x" * 1000, 5))
    metrics.streamed(pb.StreamOutputResponse(data=b"abc"))  # the indexed path's messages
    metrics.streamed(pb.StreamOutputResponse())  # no data: counts nothing
    assert _streamed_total(metrics) == (1 << 20) + 1000 + 3
