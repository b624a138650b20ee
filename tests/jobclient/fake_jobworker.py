"""A scripted, in-process stand-in for the job server: the real generated servicer over real mTLS.

It runs a grpc server on 127.0.0.1 with the checked-in server certificate, requiring client
certificates signed by the checked-in CA, so the SDK and `jobctl` talk to it exactly as they would to
the real server. Behaviour is scripted per job with a `Plan`, and any method can be made to abort
with a status code. Every request is recorded with the caller's certificate CN.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import attrs
import grpc

from jobclient.client import FINAL_JOB_KEY
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc

CERTS = Path(__file__).resolve().parents[2] / "certs"
WAIT_BOUND = 20.0  # no fake ever blocks longer than this


@attrs.define
class Plan:
    """How the next started job behaves."""

    chunks: list[bytes] = attrs.Factory(list)
    """Output produced by the job (sent in these chunk boundaries)."""
    state: pb.JobState = pb.JOB_STATE_EXITED
    """Final state once the output is produced (or once stopped, with hold)."""
    exit_code: int | None = 0
    signal: int | None = None
    oom_killed: bool = False
    reason: str = ""
    hold: bool = False
    """Keep running after the output until StopJob is called."""
    after_stop: list[bytes] = attrs.Factory(list)
    """Output produced while stopping (only with hold)."""
    start_state: pb.JobState = pb.JOB_STATE_RUNNING
    """State StartJob reports (FAILED_TO_START for a command that cannot run)."""


@attrs.define
class FakeJob:
    job: pb.Job
    plan: Plan
    output: bytearray
    stopped: threading.Event = attrs.Factory(threading.Event)


class FakeJobWorker(pb_grpc.JobWorkerServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, FakeJob] = {}
        self.plan = Plan()
        self.fail: dict[str, tuple[grpc.StatusCode, str]] = {}
        """Method name -> (code, message) to abort with."""
        self.crash: set[str] = set()
        """Methods that raise an unexpected exception (grpc answers UNKNOWN)."""
        self.delay: dict[str, float] = {}
        """Method name -> seconds to sleep before answering."""
        self.stop_released = threading.Event()
        self.stop_released.set()
        """Cleared: StopJob blocks until it is set (bounded)."""
        self.requests: list[tuple[str, str, Any]] = []
        """(method, caller CN, request) of every call."""
        self.list_result: list[pb.Job] | None = None
        self.final_trailer: Callable[[pb.Job], bytes] | None = None
        """Set: a follow stream ends with these bytes (given the ended job) as its trailing metadata
        jobclient.client.FINAL_JOB_KEY, as jobserver sends; unset: no trailer (an older server)."""

    # --- scripting helpers -------------------------------------------------------------------------
    def add_job(self, job: pb.Job, output: bytes = b"") -> None:
        with self.lock:
            self.jobs[job.id] = FakeJob(job, Plan(hold=job.state == pb.JOB_STATE_RUNNING), bytearray(output))

    def calls(self, method: str) -> list[Any]:
        return [request for name, _, request in self.requests if name == method]

    # --- plumbing ----------------------------------------------------------------------------------
    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        cn = context.auth_context().get("x509_common_name", [b"?"])[0].decode()
        with self.lock:
            self.requests.append((method, cn, request))
        time.sleep(self.delay.get(method, 0))
        if method in self.crash:
            raise RuntimeError(f"scripted crash in {method}")
        if method in self.fail:
            code, message = self.fail[method]
            context.abort(code, message)

    def _get(self, job_id: str, context: grpc.ServicerContext) -> FakeJob:
        with self.lock:
            fake = self.jobs.get(job_id)
        if fake is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id} not found")
        assert fake is not None
        return fake

    def _finish(self, fake: FakeJob, *, stopped: bool) -> None:
        with self.lock:
            job = fake.job
            if job.state != pb.JOB_STATE_RUNNING:
                return
            plan = fake.plan
            if stopped and plan.hold:
                job.state, job.signal = pb.JOB_STATE_KILLED, 15
                fake.output += b"".join(plan.after_stop)
            else:
                job.state = plan.state
                if plan.exit_code is not None and plan.state == pb.JOB_STATE_EXITED:
                    job.exit_code = plan.exit_code
                if plan.signal is not None:
                    job.signal = plan.signal
                job.oom_killed = plan.oom_killed
                job.reason = plan.reason
            job.ended_at = time.time()
            job.ClearField("pid")
            job.output_bytes = len(fake.output)

    # --- the service -------------------------------------------------------------------------------
    def StartJob(self, request: pb.StartJobRequest, context: grpc.ServicerContext) -> pb.StartJobResponse:  # noqa: N802  (generated servicer's names)
        self._enter("StartJob", request, context)
        cn = context.auth_context()["x509_common_name"][0].decode()
        plan = self.plan
        job = pb.Job(
            id=str(uuid.uuid4()),
            owner=cn.lower(),
            argv=request.argv,
            state=plan.start_state,
            started_at=time.time(),
            cwd=request.cwd or "/",
            limits=request.limits,
            controller="cgroup1",
            namespaces=["pid", "mount", "net", "uts", "ipc"],
        )
        if plan.start_state == pb.JOB_STATE_RUNNING:
            job.pid = 4242
        else:
            job.reason = plan.reason
            job.ClearField("started_at")
        fake = FakeJob(job, plan, bytearray(b"".join(plan.chunks)))
        job.output_bytes = len(fake.output)
        with self.lock:
            self.jobs[job.id] = fake
        return pb.StartJobResponse(job=job)

    def StopJob(self, request: pb.StopJobRequest, context: grpc.ServicerContext) -> pb.StopJobResponse:  # noqa: N802  (generated servicer's names)
        self._enter("StopJob", request, context)
        fake = self._get(request.job_id, context)
        if not self.stop_released.wait(WAIT_BOUND):
            context.abort(grpc.StatusCode.INTERNAL, "test StopJob was never released")
        with self.lock:
            fake.job.stop_requested = True
        self._finish(fake, stopped=True)
        fake.stopped.set()
        with self.lock:
            return pb.StopJobResponse(job=fake.job)

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.GetJobResponse:  # noqa: N802  (generated servicer's names)
        self._enter("GetJob", request, context)
        fake = self._get(request.job_id, context)
        with self.lock:
            return pb.GetJobResponse(job=fake.job)

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:  # noqa: N802  (generated servicer's names)
        self._enter("ListJobs", request, context)
        with self.lock:
            jobs = self.list_result if self.list_result is not None else [f.job for f in self.jobs.values()]
            return pb.ListJobsResponse(jobs=jobs)

    def StreamOutput(  # noqa: N802
        self, request: pb.StreamOutputRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamOutputResponse]:
        self._enter("StreamOutput", request, context)
        fake = self._get(request.job_id, context)
        offset = request.offset
        # Send in the plan's chunk boundaries where possible, to exercise many small messages.
        with self.lock:
            sizes = [len(c) for c in fake.plan.chunks] or [len(fake.output)]
        for size in sizes:
            with self.lock:
                data = bytes(fake.output[offset : offset + max(size, 1)])
            if data:
                yield pb.StreamOutputResponse(data=data, offset=offset)
                offset += len(data)
        if not request.follow:
            with self.lock:
                rest = bytes(fake.output[offset:])
            if rest:
                yield pb.StreamOutputResponse(data=rest, offset=offset)
            return
        if fake.plan.hold:
            if not fake.stopped.wait(WAIT_BOUND):
                context.abort(grpc.StatusCode.INTERNAL, "test job was never stopped")
        else:
            self._finish(fake, stopped=False)
        with self.lock:
            rest = bytes(fake.output[offset:])
            job = pb.Job()
            job.CopyFrom(fake.job)
        if rest:
            yield pb.StreamOutputResponse(data=rest, offset=offset)
        if self.final_trailer is not None:
            context.set_trailing_metadata(((FINAL_JOB_KEY, self.final_trailer(job)),))


class FakeServer:
    """The fake servicer served over mTLS on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.servicer = FakeJobWorker()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_JobWorkerServicer_to_server(self.servicer, self.server)
        credentials = grpc.ssl_server_credentials(
            [((CERTS / "server.key").read_bytes(), (CERTS / "server.crt").read_bytes())],
            root_certificates=(CERTS / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.target = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.servicer.stop_released.set()
        with self.servicer.lock:
            for fake in self.servicer.jobs.values():
                fake.stopped.set()
        self.server.stop(grace=None).wait(10)
