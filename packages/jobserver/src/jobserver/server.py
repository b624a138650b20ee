"""`JobServer`: assembles the state directory, the job store, the jobcore Worker and the gRPC server.

Lifecycle: `start()` opens everything (and closes what it opened if a later step fails) and returns the
bound port; `stop()` refuses new calls, lets unary calls in flight finish within the grace period, ends
the output streams at once, joins every server thread and closes the Worker *without stopping jobs*:
their shims keep running and the next server re-attaches to them.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent import futures
from pathlib import Path

import grpc
import structlog
from grpc_reflection.v1alpha import reflection

import jobserver
from jobclient._malloc import keep_freed_buffers
from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobcore.errors import JobError
from jobserver import listing
from jobserver.certinfo import OID_EC_PUBLIC_KEY, parse_pem
from jobserver.config import ServerConfig
from jobserver.direct_issuer import DirectIssuers
from jobserver.errors import CertificateError, IdentityError, OperationsError, StartupError, StoreError
from jobserver.health import HealthService, ServingStatus
from jobserver.identities import UserIds
from jobserver.interceptor import GuardInterceptor
from jobserver.jobs import Jobs, record_end
from jobserver.lifecycle import JobEvents
from jobserver.limits_per_user import CallShares
from jobserver.metrics import ServerMetrics
from jobserver.operations import Operations, job_state_counts
from jobserver.retention import RetentionPolicy, RetentionSweeper
from jobserver.service import SERVICE_NAME, JobWorkerService, serialize_output
from jobserver.store import JobStore
from jobserver.worker_api import WorkerAPI, WorkerFactory

#: The OS-level name of the threads that serve calls (visible in `top -H`, /proc/<pid>/task/*/comm).
RPC_THREAD_NAME = "jobserver-rpc"
#: What a client may send the server before any handler reads it: HTTP/2's initial stream window.
#: gRPC's default is 64 KiB, but BDP probing (on by default) raises it on a busy connection to at least
#: 4 MiB, and a request waiting in the queue (up to `max_queued_calls` of them) is then buffered whole:
#: measured, 100 queued ~900 KB StartJob requests held 95 MiB of the server's memory, 8 MiB with
#: probing off (docs/benchmarks.md, "HTTP/2 flow control"). The server only receives small requests;
#: what it sends is paced by the client's window, which these do not touch.
INITIAL_WINDOW_BYTES = 64 * 1024
TRANSPORT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", INITIAL_WINDOW_BYTES),
]


def _name_os_thread() -> None:
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(RPC_THREAD_NAME)
    except OSError:
        pass  # only a name


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def check_private_key_mode(path: Path) -> None:
    """Refuse a private key that anyone but its owner may read, as ssh does."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError as exc:
        raise StartupError(f"cannot read the server key {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise StartupError(
            f"the private key {path} is readable by group or others (mode {mode:04o}); "
            f"fix it with: chmod 600 {path}"
        )


def prepare_state_dir(path: Path) -> None:
    """The state directory: ours alone (0700, owned by the server's user), created when missing.
    Jobs never see it either way (the sandbox hides it); this keeps every other local user out too."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        os.chown(path, os.geteuid(), os.getegid())
    if st.st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    """Mutual TLS: our ECDSA certificate, client certificates required and verified against the CA."""
    cert = _read(config.cert, "server certificate")
    check_private_key_mode(config.key)
    key = _read(config.key, "server key")
    ca = _read(config.ca, "CA certificate")
    try:
        info = parse_pem(cert)
    except CertificateError as exc:
        raise StartupError(f"the server certificate {config.cert} cannot be read: {exc}") from None
    if info.public_key_algorithm != OID_EC_PUBLIC_KEY:
        # With an RSA key the TLS 1.2 suites we leave enabled could be negotiated (docs/jobserver.md).
        raise StartupError(
            f"the server certificate {config.cert} must have an ECDSA key: TLS 1.3-only relies on it"
        )
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def retention_policy(config: ServerConfig) -> RetentionPolicy:
    return RetentionPolicy(
        max_age_seconds=config.retention_max_age_seconds,
        max_ended_jobs_per_user=config.retention_max_ended_jobs_per_user,
        interval_seconds=config.retention_interval_seconds,
    )


class _Handlers:
    """Stands in for a grpc.Server to collect what `add_JobWorkerServicer_to_server` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass  # the same handlers as below, which `add_to_server` registers both ways

    def add_registered_method_handlers(
        self, _service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = dict(handlers)


def add_to_server(service: JobWorkerService, server: grpc.Server) -> None:
    """Register `service` as the generated `add_JobWorkerServicer_to_server` does, with the
    responses of StreamOutput and ListJobs serialized by `serialize_output` and
    `listing.serialize_page` (both hand their wire forms over as they are)."""
    collected = _Handlers()
    pb_grpc.add_JobWorkerServicer_to_server(service, collected)
    handlers = collected.handlers
    handlers["StreamOutput"] = handlers["StreamOutput"]._replace(response_serializer=serialize_output)
    handlers["ListJobs"] = handlers["ListJobs"]._replace(response_serializer=listing.serialize_page)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class JobServer:
    def __init__(self, config: ServerConfig, worker_factory: WorkerFactory | None = None) -> None:
        self.config = config
        self._log = structlog.get_logger("jobserver")
        self._worker_factory = worker_factory
        self._stack = contextlib.ExitStack()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._service: JobWorkerService | None = None
        self._health = HealthService((SERVICE_NAME,))
        self.metrics = ServerMetrics()
        self.events = JobEvents(self.metrics)
        self.operations = Operations(config, self.metrics, (SERVICE_NAME,))
        self._stopped = threading.Event()
        self.port: int | None = None
        self.worker: WorkerAPI | None = None

    def _make_worker(self, store: JobStore) -> WorkerAPI:
        from jobcore import Limits, Worker
        from jobcore.controllers import load_controller

        factory: WorkerFactory = self._worker_factory or Worker
        config = self.config
        controller = load_controller(config.controller)
        default_limits, max_limits = config.default_limits, config.max_limits
        if controller.name == "none":
            # Nothing can be limited: default (and maximum) limits would make every job fail.
            self._log.warning(
                "resource-controller backend 'none': NOTHING IS LIMITED; default and maximum limits are "
                "not applied, and jobs that ask for limits are refused"
            )
            default_limits = max_limits = Limits()
        return factory(
            config.jobs_dir,
            controller=controller,
            default_limits=default_limits,
            max_limits=max_limits,
            output_cap=config.output_cap,
            on_job_ended=lambda status: record_end(store, self.events, status),
            hidden_paths=[str(p) for p in config.paths_hidden_from_jobs()],
        )

    def start(self) -> int:
        """Open the state, re-attach to jobs, listen; returns the bound port."""
        try:
            return self._start()
        except BaseException:
            self._stack.close()
            raise

    def _start(self) -> int:
        config = self.config
        keep_freed_buffers()  # output streams: reuse freed 1 MiB buffers (jobclient/_malloc.py)
        if jobserver.GRPC_IMPORTED_FIRST:
            self._log.warning(
                "grpc was imported before jobserver: TLS 1.2 may be negotiated at the handshake; "
                "such calls are still refused (UNAUTHENTICATED)"
            )
        credentials = server_credentials(config)
        try:
            issuers = DirectIssuers(_read(config.ca, "CA certificate"))
        except CertificateError as exc:
            raise StartupError(f"the CA certificate {config.ca} cannot be used: {exc}") from None
        try:
            prepare_state_dir(config.state_dir)
            config.jobs_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create the state directory {config.state_dir}: {exc}") from None
        try:
            user_ids = UserIds(config.user_ids_path, config.uid_range, config.user_ids)
        except IdentityError as exc:
            raise StartupError(str(exc)) from None
        self._stack.callback(user_ids.close)
        try:
            store = JobStore(config.database_path)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        self._stack.callback(store.close)
        try:
            worker = self._make_worker(store)
        except JobError as exc:
            raise StartupError(f"cannot start the job worker on {config.jobs_dir}: {exc}") from None
        self.worker = worker
        self._stack.callback(worker.close)
        jobs = Jobs(
            worker,
            store,
            config.max_running_jobs_per_user,
            events=self.events,
            stop_wait=config.stop_wait_seconds,
            output_quota=config.output_user_quota,
        )
        running_before = {r.id for r in store.list() if not r.status.state.ended}
        report = jobs.reconcile()
        self.events.ended_while_down(running_before, store)
        self.metrics.count_jobs_with(lambda: job_state_counts(store))
        self._log.info(
            "state reconciled",
            state_dir=str(config.state_dir),
            **{k: getattr(report, k) for k in ("refreshed", "adopted", "vanished", "running")},
        )
        sweeper = RetentionSweeper(jobs, retention_policy(config))
        sweeper.start()
        self._stack.callback(sweeper.close)
        self._service = JobWorkerService(jobs, config, user_ids)
        workers = config.max_concurrent_streams + config.unary_threads
        self._executor = futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=RPC_THREAD_NAME, initializer=_name_os_thread
        )
        self._stack.callback(self._executor.shutdown, wait=True, cancel_futures=True)
        shares = CallShares(config.calls_per_user, config.streams_per_user)
        server = grpc.server(
            self._executor,
            interceptors=[GuardInterceptor(metrics=self.metrics, shares=shares, issuers=issuers)],
            options=[
                ("grpc.max_receive_message_length", config.max_receive_message_bytes),
                ("grpc.so_reuseport", 0),
                *TRANSPORT_OPTIONS,
            ],
            # Past the pool, a bounded queue: a burst of calls refused at once by the per-user shares
            # must not make gRPC refuse everyone else's calls meanwhile.
            maximum_concurrent_rpcs=workers + config.max_queued_calls,
        )
        add_to_server(self._service, server)
        server.add_generic_rpc_handlers([self._health.handler()])
        reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME), server)
        try:
            port: int = server.add_secure_port(config.listen, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {config.listen}: {exc}") from None
        if not port:
            raise StartupError(f"cannot listen on {config.listen}")
        server.start()
        self._server = server
        self._stack.callback(server.stop, None)
        self.port = port
        self._log.info("listening", address=config.listen, port=port, controller=worker.controller.name)
        self._stack.callback(self.operations.close)
        try:
            self.operations.start(port)
        except OperationsError as exc:
            raise StartupError(str(exc)) from None
        if config.port_file:
            _write_port_file(config.port_file, port)
        return port

    @property
    def open_streams(self) -> int:
        """How many StreamOutput calls hold a reader of job output now (each holds a thread and an
        fd until its call ends; the `max_concurrent_streams` setting bounds them)."""
        return 0 if self._service is None else len(self._service.streams)

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop (see the module docstring). Safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        self._health.set_all(ServingStatus.NOT_SERVING)
        self.operations.stopping()
        if self._server is not None:
            done = self._server.stop(grace)
            if self._service is not None:
                self._service.streams.close_all()
            done.wait(grace + 5)
        self._stack.close()  # joins the RPC threads, closes the Worker (jobs keep running) and the store
        self._log.info("stopped")

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()
