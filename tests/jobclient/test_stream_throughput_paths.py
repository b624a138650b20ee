"""The SDK's fast receive path for `output()` (issue 14): `decode_output` reads StreamOutputResponse's
data and offset straight from the wire, and must agree with protobuf's own parser on every valid
encoding and refuse a malformed one; `keep_freed_buffers` must really stop the per-message page faults.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys

import pytest

from jobclient.client import decode_output
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 1 << 20, (1 << 20) + 1])
@pytest.mark.parametrize("offset", [0, 1, 300, 2**32, 2**64 - 1])
def test_it_agrees_with_protobuf_on_what_the_server_sends(size: int, offset: int) -> None:
    data = random.Random(size ^ offset).randbytes(size)
    for message in (
        pb.StreamOutputResponse(data=data, offset=offset),
        # what the indexed path sends: stream and time too, which output() skips
        pb.StreamOutputResponse(data=data, offset=offset, stream=pb.OUTPUT_STREAM_STDERR, time=1.5e9),
    ):
        wire = message.SerializeToString()
        decoded = decode_output(wire)
        parsed = pb.StreamOutputResponse.FromString(wire)
        assert (decoded.data, decoded.offset) == (parsed.data, parsed.offset) == (data, offset)
        assert type(decoded.data) is bytes


def test_field_order_unknown_fields_and_repeats_are_read_as_protobuf_reads_them() -> None:
    wire = b"".join(
        [
            _key(2, 0) + _varint(5),  # offset before data
            _key(9, 1) + struct.pack("<d", 2.5),  # unknown 64-bit field
            _key(1, 2) + _varint(3) + b"old",
            _key(10, 5) + struct.pack("<f", 1.0),  # unknown 32-bit field
            _key(11, 2) + _varint(4) + b"skip",  # unknown length-delimited field
            _key(1, 2) + _varint(3) + b"new",  # the last occurrence wins
            _key(2, 0) + _varint(7),
            _key(12, 0) + _varint(2**63),  # unknown varint
        ]
    )
    parsed = pb.StreamOutputResponse.FromString(wire)
    decoded = decode_output(wire)
    assert (decoded.data, decoded.offset) == (parsed.data, parsed.offset) == (b"new", 7)


def test_an_empty_message_is_no_data_at_offset_zero() -> None:
    decoded = decode_output(b"")
    assert (decoded.data, decoded.offset) == (b"", 0)


@pytest.mark.parametrize(
    "wire",
    [
        _key(1, 2) + _varint(10) + b"short",  # length past the end
        _key(1, 2),  # length missing
        _key(2, 0) + b"\x80\x80",  # varint cut off
        _key(2, 0) + b"\xff" * 11 + b"\x01",  # varint longer than 64 bits
        _key(9, 1) + b"\x00" * 3,  # fixed64 cut off
        _key(9, 5) + b"\x00",  # fixed32 cut off
        _key(3, 3),  # group start: not in this message
        _key(3, 4),  # group end
        _key(3, 6),  # no such wire type
        b"\x80",  # key cut off
    ],
)
def test_a_malformed_message_is_refused_with_a_clear_error(wire: bytes) -> None:
    with pytest.raises(ValueError, match="StreamOutputResponse"):
        decode_output(wire)


_FAULTS = """
import os, resource, sys
if sys.argv[1] == "tuned":
    from jobclient._malloc import keep_freed_buffers
    assert keep_freed_buffers()
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
fd = os.open("/dev/zero", os.O_RDONLY)
def message():  # what a stream does per 1 MiB message: read, build, serialize, free
    pb.StreamOutputResponse(data=os.read(fd, 1 << 20), offset=1).SerializeToString()
for _ in range(5):
    message()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    message()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return int(done.stdout)


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="glibc's mallopt")
def test_keeping_freed_buffers_stops_the_page_faults_of_each_one_mib_message() -> None:
    # Page faults are counted by the kernel, not timed: the figure does not move with the load.
    untuned, tuned = _page_faults("default"), _page_faults("tuned")
    assert untuned >= 50 * 256  # at least one fresh 1 MiB (256 pages) per message by default
    assert tuned < 50 * 16  # with the buffers kept, nearly none
