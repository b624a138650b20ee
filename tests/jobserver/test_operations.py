"""The operator's surface: Prometheus metrics, plaintext health probes, reflection, lifecycle events,
log level, gRPC's C-core lines in the JSON log, systemd readiness."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families
from server_harness import CERTS, RunningServer, ServerProcess, channel_credentials, rpc_error, wait_for
from structlog.testing import capture_logs

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobcore import jobdir
from jobserver.cli import main as jobserver_main
from jobserver.config import load_config
from jobserver.errors import NotifyError
from jobserver.sd_notify import notify

MiB = 1 << 20
START = "/jobworker.v1.JobWorker/StartJob"
GET = "/jobworker.v1.JobWorker/GetJob"
STREAM = "/jobworker.v1.JobWorker/StreamOutput"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server(metrics_listen="127.0.0.1:0")


def metrics_port(server: RunningServer) -> int:
    port = server.server.operations.metrics_port
    assert port
    return port


def test_metrics_count_rpcs_by_method_and_code_jobs_and_streamed_bytes(metered: RunningServer) -> None:
    alice = metered.client("alice")
    done = alice.start(["sh", "-c", "echo hello; echo world >&2"])
    assert alice.wait_ended(done.id).state == pb.JOB_STATE_EXITED
    running = alice.start(["sleep", "60"])
    rpc_error(lambda: alice.get(str(uuid.uuid4())))
    alice.stop(running.id, grace=0.5)
    failed = alice.start(["/no/such/program"])
    assert failed.state == pb.JOB_STATE_FAILED_TO_START

    samples = scrape(metrics_port(metered))
    assert sample(samples, "jobserver_rpcs_total", method=START, code="OK") == 3
    assert sample(samples, "jobserver_rpcs_total", method=GET, code="NOT_FOUND") == 1
    assert sample(samples, "jobserver_rpc_duration_seconds_count", method=START) == 3
    assert sample(samples, "jobserver_rpc_duration_seconds_bucket", method=START, le="+Inf") == 3
    assert sample(samples, "jobserver_streamed_bytes_total") == len(b"hello\nworld\n")
    assert sample(samples, "jobserver_open_streams") == 0
    assert sample(samples, "jobserver_job_starts_total", outcome="running") == 2
    assert sample(samples, "jobserver_job_starts_total", outcome="failed_to_start") == 1
    assert sample(samples, "jobserver_job_stops_total") == 1
    assert wait_for(
        lambda: sample(scrape(metrics_port(metered)), "jobserver_jobs_ended_total", state="killed") == 1
    )
    samples = scrape(metrics_port(metered))
    assert sample(samples, "jobserver_jobs_ended_total", state="exited") == 1
    assert sample(samples, "jobserver_jobs", state="exited") == 1
    assert sample(samples, "jobserver_jobs", state="killed") == 1
    assert sample(samples, "jobserver_jobs", state="failed_to_start") == 1
    assert sample(samples, "jobserver_jobs", state="running") == 0
    assert sample(samples, "jobserver_build_info", version="0.1.0") == 1


def test_metrics_show_an_open_stream_while_it_is_open(metered: RunningServer) -> None:
    alice = metered.client("alice")
    job = alice.start(["sh", "-c", "echo first; sleep 60"])
    stream = alice.stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True), timeout=60)
    assert next(stream).data == b"first\n"
    assert sample(scrape(metrics_port(metered)), "jobserver_open_streams") == 1
    stream.cancel()
    assert wait_for(lambda: sample(scrape(metrics_port(metered)), "jobserver_open_streams") == 0)
    alice.stop(job.id, grace=0)


def test_metrics_endpoint_serves_only_its_path(metered: RunningServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(metered)}/", timeout=10)
    assert refused.value.code == 404


@pytest.mark.skipif(shutil.which("stress") is None, reason="needs stress (apt)")
def test_an_oom_kill_is_counted_and_logged(metered: RunningServer) -> None:
    if metered.server.worker.controller.name == "none":
        pytest.skip("the none backend enforces no memory limit")
    alice = metered.client("alice")
    with capture_logs() as events:
        job = alice.start(
            ["stress", "--vm", "1", "--vm-bytes", "300M", "--vm-keep", "--timeout", "60"],
            limits=pb.Limits(memory_bytes=100 * MiB),
        )
        final = alice.wait_ended(job.id, timeout=60)
        assert final.oom_killed
        assert wait_for(lambda: any(e["event"] == "job oom-killed" for e in events))
    oom = next(e for e in events if e["event"] == "job oom-killed")
    assert oom["job_id"] == job.id and oom["user"] == "alice" and oom["log_level"] == "warning"
    assert sample(scrape(metrics_port(metered)), "jobserver_job_oom_kills_total") == 1


def test_job_lifecycle_events_are_logged(server: RunningServer) -> None:
    alice = server.client("alice")
    with capture_logs() as events:
        exited = alice.start(["sh", "-c", "exit 3"])
        alice.wait_ended(exited.id)
        failed = alice.start(["/no/such/program"])
        stopped = alice.start(["sleep", "60"])
        alice.stop(stopped.id, grace=0.5)
        lost = alice.start(["sleep", "60"])
        # Kill the job's shim: the Worker finds it gone without an exit record, marks the job lost.
        shim = json.loads((server.state_dir / "jobs" / lost.id / jobdir.SHIM).read_text())
        os.kill(shim["pid"], signal.SIGKILL)
        assert wait_for(lambda: alice.get(lost.id).state == pb.JOB_STATE_LOST)
        assert wait_for(lambda: any(e["event"] == "job lost" for e in events))
        assert wait_for(lambda: any(e["event"] == "job killed" for e in events))

    def one(event: str, job_id: str) -> dict[str, Any]:
        found = [e for e in events if e["event"] == event and e.get("job_id") == job_id]
        assert len(found) == 1, (event, job_id, events)
        return found[0]

    assert one("job started", exited.id)["pid"] > 0
    assert one("job exited", exited.id)["exit_code"] == 3
    assert "no/such/program" in one("job failed to start", failed.id)["reason"]
    assert one("job stop requested", stopped.id)["grace"] == 0.5
    assert one("job killed", stopped.id)["stop_requested"] is True
    assert one("job lost", lost.id)["log_level"] == "warning"
    assert all(e["user"] == "alice" for e in events if e["event"].startswith("job "))


def test_jobs_that_ended_while_no_server_ran_are_reported_at_start(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = ServerProcess(state, tmp_path)
    server_processes.append(first)
    client = first.client("alice")
    job = client.start(["sh", "-c", "sleep 1; exit 7"])
    client.close()
    first.proc.kill()  # SIGKILL: the job ends while no server runs
    first.kill()
    exit_record = state / "jobs" / job.id / jobdir.EXIT
    assert wait_for(exit_record.exists, 30), "the job did not end on its own"
    second = ServerProcess(state, tmp_path)
    server_processes.append(second)
    assert second.terminate() == 0
    events = [json.loads(line) for line in second.log_text().splitlines()]
    exited = [e for e in events if e["event"] == "job exited" and e["job_id"] == job.id]
    assert exited and exited[0]["exit_code"] == 7 and exited[0]["while_down"] is True


def test_plaintext_health_probe_on_its_own_port(make_server: Callable[..., RunningServer]) -> None:
    running = make_server(health_listen="127.0.0.1:0")
    port = running.server.operations.health_port
    assert port and port != running.port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "jobworker.v1.JobWorker"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        unknown = rpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=10))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        # Nothing but health is reachable without a certificate.
        jobs = pb_grpc.JobWorkerStub(channel)
        assert rpc_error(lambda: jobs.ListJobs(pb.ListJobsRequest(), timeout=10)).code() == (
            grpc.StatusCode.UNIMPLEMENTED
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=running.server.stop, kwargs={"grace": 1})
        stopper.start()
        # The probe learns of a graceful stop before the API port closes.
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopper.join(30)
    # The API port itself is TLS-only: a plaintext health check there fails.
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        assert rpc_error(
            lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        ).code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)


def test_health_probe_on_a_unix_socket_is_removed_at_stop(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    path = tmp_path / "health.sock"
    path.write_text("")  # not a socket: must not be removed
    with pytest.raises(Exception, match="health"):
        make_server(health_listen=f"unix:{path}", state_dir=tmp_path / "s1")
    path.unlink()
    running = make_server(health_listen=f"unix:{path}", state_dir=tmp_path / "s2")
    assert path.is_socket()
    with grpc.insecure_channel(f"unix:{path}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    running.server.stop(grace=1)
    assert not path.exists()


def test_reflection_lists_the_api_to_an_authenticated_caller(server: RunningServer) -> None:
    with grpc.secure_channel(f"127.0.0.1:{server.port}", channel_credentials("alice")) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "jobworker.v1.JobWorker" in database.get_services()
        method = database.FindFileContainingSymbol("jobworker.v1.JobWorker")
        assert method.package == "jobworker.v1"
    cert, key = CERTS / "test" / "unknown-ou.crt", CERTS / "test" / "unknown-ou.key"
    with grpc.secure_channel(f"127.0.0.1:{server.port}", channel_credentials(None, cert, key)) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _tls12_handshake(port: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(sock)


def test_grpc_core_lines_are_json_events_and_log_level_filters_them(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    default = ServerProcess(tmp_path / "a", tmp_path)
    server_processes.append(default)
    _tls12_handshake(default.port)
    assert wait_for(lambda: "NO_SHARED_CIPHER" in default.log_text(), 10)
    assert default.terminate() == 0
    events = [json.loads(line) for line in default.log_text().splitlines()]  # every line is JSON
    handshake = [e for e in events if e["event"] == "grpc" and "NO_SHARED_CIPHER" in e["message"]]
    assert handshake and handshake[0]["level"] == "info" and ".cc:" in handshake[0]["source"]

    quiet = ServerProcess(tmp_path / "b", tmp_path, "--log-level", "warning")
    server_processes.append(quiet)
    _tls12_handshake(quiet.port)
    time.sleep(0.5)  # time to log what it would (an absence has no event to wait for)
    assert quiet.terminate() == 0
    events = [json.loads(line) for line in quiet.log_text().splitlines()]
    assert not [e for e in events if e["level"] in ("debug", "info")], events


def test_readiness_and_stopping_are_notified_to_systemd(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        proc = ServerProcess(tmp_path / "state", tmp_path, env={"NOTIFY_SOCKET": str(path)})
        server_processes.append(proc)
        ready = sock.recv(4096).decode().split("\n")
        assert ready[0] == "READY=1" and ready[1] == f"STATUS=serving on port {proc.port}"
        proc.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode().split("\n")[0] == "STOPPING=1"
        assert proc.proc.wait(60) == 0


def test_sd_notify_speaks_to_abstract_sockets_and_names_a_bad_one(tmp_path: Path) -> None:
    name = f"jobserver-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(100) == b"READY=1"
    assert notify("READY=1", environ={}) is False
    with pytest.raises(NotifyError, match=r"notify\.sock"):
        notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    with pytest.raises(NotifyError, match="neither an absolute path"):
        notify("READY=1", environ={"NOTIFY_SOCKET": "relative"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-level", "loud"], "log level 'loud' is not one of debug, info, warning, error"),
        (["--metrics-listen", "9100"], "metrics listen address '9100' is not HOST:PORT"),
        (["--health-listen", "unix:"], "health listen address 'unix:' is not HOST:PORT or unix:PATH"),
    ],
)
def test_bad_operations_flags_are_configuration_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert jobserver_main(args) == 2
    assert message in capsys.readouterr().err


def test_operations_settings_come_from_file_environment_and_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "jobserver.toml"
    config_file.write_text(
        "[server]\n"
        'log_level = "warning"\nmetrics_listen = "127.0.0.1:9464"\nhealth_listen = "unix:/run/h.sock"\n'
    )
    from_file = load_config(["--config", str(config_file)], environ={})
    assert (from_file.log_level, from_file.metrics_listen, from_file.health_listen) == (
        "warning",
        "127.0.0.1:9464",
        "unix:/run/h.sock",
    )
    env = {"JOBSERVER_LOG_LEVEL": "debug", "JOBSERVER_HEALTH_LISTEN": "127.0.0.1:8081"}
    layered = load_config(["--config", str(config_file), "--metrics-listen", "[::1]:9100"], environ=env)
    assert (layered.log_level, layered.metrics_listen, layered.health_listen) == (
        "debug",
        "[::1]:9100",
        "127.0.0.1:8081",
    )
    defaults = load_config([], environ={})
    assert (defaults.log_level, defaults.metrics_listen, defaults.health_listen) == ("info", None, None)


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        jobserver_main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == "jobserver 0.1.0 (remote-job-worker-server)\n"


def test_a_metrics_address_in_use_stops_the_start_with_its_flag_named(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AssertionError, match="did not start") as failed:
            server_processes.append(
                ServerProcess(tmp_path / "s", tmp_path, "--metrics-listen", f"127.0.0.1:{port}")
            )
    assert f"--metrics-listen: cannot listen on 127.0.0.1:{port}" in str(failed.value)


def _fds() -> dict[str, str]:
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return found


def test_the_endpoints_leave_no_thread_or_socket_behind(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    def serve_once(state: Path) -> RunningServer:
        running = make_server(metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0", state_dir=state)
        scrape(metrics_port(running))
        with grpc.insecure_channel(f"127.0.0.1:{running.server.operations.health_port}") as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        running.server.stop(grace=1)
        return running

    serve_once(tmp_path / "warm-up")  # gRPC's process-wide event engine keeps a few fds of its own
    before = {t.ident for t in threading.enumerate()}
    fds_before = _fds()
    running = serve_once(tmp_path / "measured")
    ours = ("jobserver-metrics", "jobserver-probe", "Thread-")
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith(ours)]
    assert left == []
    assert wait_for(lambda: len(_fds()) <= len(fds_before), timeout=10), set(_fds().items()) - set(
        fds_before.items()
    )
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", metrics_port(running))) != 0  # closed
