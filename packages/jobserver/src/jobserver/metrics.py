"""Prometheus metrics: what the server counts, and the plaintext HTTP endpoint that serves them.

`ServerMetrics` owns one `CollectorRegistry` per server (not prometheus-client's global one, so that
several servers in one process, as in the tests, each count their own). It is fed by:

* `GuardInterceptor` — every call: `jobserver_rpcs_total{method,code}` and
  `jobserver_rpc_duration_seconds{method}`; open output streams and the bytes they carried;
* `jobserver.lifecycle.JobEvents` — job starts (by outcome), stop requests, job ends (by state), OOM kills;
* a scrape-time read of the job records — `jobserver_jobs{state}`.

`MetricsEndpoint` serves `GET /metrics` (text exposition format) on `--metrics-listen`; any other path
answers 404. It is plaintext and unauthenticated, like every Prometheus target: bind it to a loopback
or otherwise private address (docs/jobserver.md, "Metrics").
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

import jobserver
from jobcore.status import JobState, JobStatus

#: Seconds: from a fast GetJob (~1 ms) to a StopJob that waits out a long grace, or a long stream.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class _JobStates(Collector):
    """`jobserver_jobs{state}`, read from the job records at scrape time (never stale, nothing to sync)."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, int]] | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("jobserver_jobs", "Jobs known to the server, by state", labels=["state"])
        counts = self.source() if self.source is not None else {}
        for state in JobState:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self._rpcs = Counter(
            "jobserver_rpcs", "RPCs served, by method and status code", ["method", "code"], registry=reg
        )
        self._rpc_seconds = Histogram(
            "jobserver_rpc_duration_seconds",
            "Time from the start of a call to its end (a stream: its whole life), by method",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=reg,
        )
        self._open_streams = Gauge(
            "jobserver_open_streams", "Server-streaming calls open now (StreamOutput)", registry=reg
        )
        self._streamed = Counter(
            "jobserver_streamed_bytes", "Bytes of job output sent to clients by StreamOutput", registry=reg
        )
        self._starts = Counter(
            "jobserver_job_starts",
            "Jobs started, by outcome (running, or failed_to_start: the command never ran)",
            ["outcome"],
            registry=reg,
        )
        self._stops = Counter(
            "jobserver_job_stops", "StopJob requests that acted on a running job", registry=reg
        )
        self._ended = Counter(
            "jobserver_jobs_ended", "Jobs that ended, by final state", ["state"], registry=reg
        )
        self._oom = Counter("jobserver_job_oom_kills", "Jobs the kernel's OOM killer ended", registry=reg)
        info = Gauge("jobserver_build_info", "The running jobserver's version", ["version"], registry=reg)
        info.labels(version=jobserver.__version__).set(1)
        self._states = _JobStates()
        reg.register(self._states)
        #: Each label set's children, looked up once: `labels()` checks and sorts its arguments at
        #: every call (~20 µs), four times per job. Bounded: methods are the registered ones, codes
        #: and states enums.
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = make()
        return child

    def count_jobs_with(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Where `jobserver_jobs{state}` reads its counts from at scrape time."""
        self._states.source = source

    def rpc_done(self, method: str, code: str, seconds: float) -> None:
        self._child(("rpcs", method, code), lambda: self._rpcs.labels(method=method, code=code)).inc()
        self._child(("rpc_seconds", method), lambda: self._rpc_seconds.labels(method=method)).observe(seconds)

    def stream_opened(self) -> None:
        self._open_streams.inc()

    def stream_closed(self) -> None:
        self._open_streams.dec()

    def streamed(self, response: Any) -> None:
        """Count the output bytes of one streamed response: its `output_bytes` when it says (an
        encoded response, jobserver.service.EncodedOutput: its data is not read back, which would copy
        it), else the length of its `data` (responses without `data` count nothing)."""
        size = getattr(response, "output_bytes", None)
        if size is None:
            data = getattr(response, "data", None)
            size = len(data) if isinstance(data, bytes) else 0
        if size:
            self._streamed.inc(size)

    def job_started(self, status: JobStatus) -> None:
        outcome = "failed_to_start" if status.state is JobState.FAILED_TO_START else "running"
        self._child(("starts", outcome), lambda: self._starts.labels(outcome=outcome)).inc()

    def job_stopped(self) -> None:
        self._stops.inc()

    def job_ended(self, status: JobStatus) -> None:
        state = status.state.value
        self._child(("ended", state), lambda: self._ended.labels(state=state)).inc()
        if status.oom_killed:
            self._oom.inc()


class _QuietHandler(WSGIRequestHandler):
    #: Seconds a scraper may stall a read or write: bounds how long a stop waits for its thread.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape on stderr would not be JSON


def _only_metrics_path(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: metrics are at /metrics\n"]
        return app(environ, start_response)

    return wsgi


class MetricsEndpoint:
    """`GET /metrics` over plain HTTP on HOST:PORT, served by one thread (plus one per scrape)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._app = _only_metrics_path(make_wsgi_app(metrics.registry))
        self._httpd: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, address: str) -> int:
        """Listen on `address` (HOST:PORT, port 0 picks one); returns the bound port. OSError if it cannot."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = False  # server_close() joins each scrape's thread (bounded by the timeout)

        httpd = make_server(host, int(port), self._app, Server, handler_class=_QuietHandler)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="jobserver-metrics", daemon=True)
        self._thread.start()
        return int(httpd.server_address[1])

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._httpd = self._thread = None
