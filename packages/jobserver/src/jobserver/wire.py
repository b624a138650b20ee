"""Protobuf's wire format, the one piece the server writes by hand: a base-128 varint (lengths and
integer fields of the messages built without protobuf: StreamOutput's responses, ListJobs' framed
entries, the health probe's request)."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """`value` (>= 0) as a protobuf varint: 7 bits a byte, low first, the high bit set on all but the last."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
