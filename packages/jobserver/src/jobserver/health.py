"""The standard gRPC health service (`grpc.health.v1.Health`), Check only, hand-built.

Why hand-built rather than a vendored, compiled `health.proto`: the two messages have one field each
(`HealthCheckRequest.service`, a string; `HealthCheckResponse.status`, an enum), so their wire format
is a few bytes we can read and write directly. Generated code would need its own regeneration step, a
lint exclusion, and it would register `grpc.health.v1.*` in protobuf's global descriptor pool, where it
clashes with `grpcio-health-checking` if a process (a test, a client tool) ever imports both. The
encoding is checked against protobuf's own in the tests.

Watch is not served (UNIMPLEMENTED); gRPC clients treat that as "health checking not available" and
probes (grpc-health-probe, Kubernetes) use Check.
"""

from __future__ import annotations

import enum
import threading

import grpc

from jobserver.errors import MalformedMessageError, NotFound
from jobserver.wire import varint

SERVICE_NAME = "grpc.health.v1.Health"


class ServingStatus(enum.IntEnum):
    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3  # Watch only


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedMessageError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def decode_check_request(data: bytes) -> str:
    """The `service` field of a HealthCheckRequest (field 1, a string); other fields are skipped."""
    service = ""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise MalformedMessageError("truncated field")
            if field == 1:
                try:
                    service = data[pos : pos + length].decode("utf-8")
                except UnicodeDecodeError:
                    raise MalformedMessageError("service is not UTF-8") from None
            pos += length
        else:
            raise MalformedMessageError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise MalformedMessageError("truncated field")
    return service


def encode_check_response(status: ServingStatus) -> bytes:
    """A HealthCheckResponse: field 1 (varint) = status; proto3 omits the default 0."""
    return b"" if status == 0 else bytes((0x08, int(status)))


def decode_check_response(data: bytes) -> ServingStatus:
    status = 0
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        if key != 0x08:
            raise MalformedMessageError("unexpected field in HealthCheckResponse")
        status, pos = _read_varint(data, pos)
    return ServingStatus(status)


def encode_check_request(service: str) -> bytes:
    raw = service.encode("utf-8")
    if not raw:
        return b""
    return b"\x0a" + varint(len(raw)) + raw


class HealthService:
    """Serving status per service name ("" is the whole server)."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self._lock = threading.Lock()
        self._status = {name: ServingStatus.SERVING for name in ("", *services)}

    def set_all(self, status: ServingStatus) -> None:
        with self._lock:
            for name in self._status:
                self._status[name] = status

    def check(self, service: str, context: grpc.ServicerContext) -> ServingStatus:
        with self._lock:
            status = self._status.get(service)
        if status is None:
            raise NotFound(f"unknown service {service[:100]!r}")
        return status

    def handler(self) -> grpc.GenericRpcHandler:
        def check(request: str, context: grpc.ServicerContext) -> ServingStatus:
            return self.check(request, context)

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    check,
                    request_deserializer=decode_check_request,
                    response_serializer=encode_check_response,
                )
            },
        )
