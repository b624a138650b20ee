"""Pure parts of the server: the certificate reader, the health-check codec, identity rules, the store."""

from __future__ import annotations

import errno
import sqlite3
import ssl
from pathlib import Path

import attrs
import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from server_harness import CERTS

from jobcore.spec import Limits
from jobcore.status import JobState, JobStatus, ResourceUsage
from jobserver.certinfo import (
    OID_CLIENT_AUTH,
    OID_COMMON_NAME,
    OID_EC_PUBLIC_KEY,
    OID_ORGANIZATIONAL_UNIT,
    OID_SERVER_AUTH,
    CertificateError,
    parse_der,
    parse_pem,
)
from jobserver.errors import CallError
from jobserver.health import (
    ServingStatus,
    decode_check_request,
    decode_check_response,
    encode_check_request,
    encode_check_response,
)
from jobserver.identity import Identity, Role, identity_from_auth_context
from jobserver.interceptor import failure_for
from jobserver.store import JobStore


def test_certificate_reader_finds_subject_eku_and_key_type() -> None:
    alice = parse_pem((CERTS / "alice.crt").read_text())
    assert alice.subject_values(OID_COMMON_NAME) == ("Alice",)
    assert alice.subject_values(OID_ORGANIZATIONAL_UNIT) == ("user",)
    assert alice.extended_key_usages == frozenset({OID_CLIENT_AUTH})
    assert alice.public_key_algorithm == OID_EC_PUBLIC_KEY
    server = parse_pem((CERTS / "server.crt").read_bytes())
    assert server.extended_key_usages == frozenset({OID_SERVER_AUTH})
    assert parse_pem((CERTS / "test" / "no-cn.crt").read_text()).subject_values(OID_COMMON_NAME) == ()


@pytest.mark.parametrize(
    "der",
    [b"", b"\x30", b"\x30\x05\x01", b"\x30\x84\xff\xff\xff\xff", b"\x02\x01\x00", b"\x30\x00\x30\x00"],
)
def test_certificate_reader_rejects_malformed_der(der: bytes) -> None:
    with pytest.raises(CertificateError):
        parse_der(der)


def test_certificate_reader_rejects_truncated_certificates() -> None:
    der = ssl.PEM_cert_to_DER_cert((CERTS / "alice.crt").read_text())
    for cut in range(1, len(der), 7):
        with pytest.raises(CertificateError):
            parse_der(der[:cut])


def _health_messages() -> tuple[type, type]:
    """HealthCheckRequest/Response built by protobuf itself, in a private pool, to check our codec."""
    fd = descriptor_pb2.FileDescriptorProto(
        name="health_test.proto", package="grpc.health.v1", syntax="proto3"
    )
    req = fd.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=9, label=1)
    resp = fd.message_type.add(name="HealthCheckResponse")
    resp.field.add(name="status", number=1, type=5, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
    )


@pytest.mark.parametrize("service", ["", "jobworker.v1.JobWorker", "x" * 300, "ünïcode"])
def test_health_codec_matches_protobuf(service: str) -> None:
    request_cls, response_cls = _health_messages()
    assert encode_check_request(service) == request_cls(service=service).SerializeToString()
    assert decode_check_request(request_cls(service=service).SerializeToString()) == service
    for status in (ServingStatus.UNKNOWN, ServingStatus.SERVING, ServingStatus.NOT_SERVING):
        assert encode_check_response(status) == response_cls(status=int(status)).SerializeToString()
        assert decode_check_response(response_cls(status=int(status)).SerializeToString()) == status


def _auth(cert: Path, version: bytes = b"TLSv1.3") -> dict[str, list[bytes]]:
    return {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [cert.read_bytes()],
        "ssl_tls_version": [version],
    }


def test_identity_from_certificates() -> None:
    assert identity_from_auth_context(_auth(CERTS / "alice.crt")) == Identity("alice", Role.USER)
    assert identity_from_auth_context(_auth(CERTS / "carl.crt")) == Identity("carl", Role.ADMIN)


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        ({}, grpc.StatusCode.UNAUTHENTICATED),
        (_auth(CERTS / "alice.crt", b"TLSv1.2"), grpc.StatusCode.UNAUTHENTICATED),
        ({**_auth(CERTS / "alice.crt"), "x509_pem_cert": [b"garbage"]}, grpc.StatusCode.UNAUTHENTICATED),
        (_auth(CERTS / "test" / "no-client-auth.crt"), grpc.StatusCode.PERMISSION_DENIED),
        (_auth(CERTS / "test" / "unknown-ou.crt"), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_identity_refusals(auth: dict[str, list[bytes]], code: grpc.StatusCode) -> None:
    with pytest.raises(CallError) as info:
        identity_from_auth_context(auth)
    failure = failure_for(info.value)
    assert failure is not None and failure.code == code


def _status(job_id: str, state: JobState, owner: str = "alice") -> JobStatus:
    return JobStatus(
        id=job_id,
        owner=owner,
        argv=("true",),
        state=state,
        usage=ResourceUsage(cpu_seconds=0.5),
        limits=Limits(cpu=1.0, memory=512 << 20),
    )


def test_store_round_trips_and_never_downgrades_an_ended_record(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db")
    try:
        ended = _status("1", JobState.EXITED)
        store.put(ended)
        store.put(attrs.evolve(_status("1", JobState.RUNNING), cwd="/tmp"))  # a late "started" write
        record = store.get("1")
        assert record is not None
        assert record.status == ended
        store.put(_status("2", JobState.RUNNING, owner="bob"), created_at=5.0)
        assert [r.id for r in store.list("bob")] == ["2"]
        assert {r.id for r in store.list()} == {"1", "2"}
        assert store.get("3") is None
    finally:
        store.close()
    reopened = JobStore(tmp_path / "db")
    try:
        assert reopened.ids() == {"1", "2"}
    finally:
        reopened.close()


def test_full_state_disk_maps_to_resource_exhausted() -> None:
    enospc = OSError(errno.ENOSPC, "No space left on device", "/var/lib/jobworker/jobs/x/spec.json")
    sqlite_full = sqlite3.OperationalError("database or disk is full")
    sqlite_full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    for exc in (enospc, sqlite_full):
        failure = failure_for(exc)
        assert failure is not None
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "no space left" in failure.message
    assert failure_for(OSError(errno.EIO, "I/O error")) is None  # stays INTERNAL, with a log reference
