"""`ProbeServer`: the standard gRPC health service in plaintext, for probes that hold no certificate.

The API port is mutual TLS only, so a kubelet gRPC probe, `grpc_health_probe` or a load balancer's
health check cannot use the health service there. `--health-listen` opens a second, plaintext gRPC
server that serves `grpc.health.v1.Health` (Check and Watch, from `grpcio-health-checking`) and
nothing else: no job method is reachable through it, and it tells only SERVING / NOT_SERVING for
`""` (the whole server) and `jobworker.v1.JobWorker`. It listens on HOST:PORT or on a Unix socket
(`unix:/run/jobworker/health.sock`), on its own small thread pool, so a flood of probes cannot take
threads from the API.
"""

from __future__ import annotations

import os
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jobserver.errors import ProbeError

#: Threads of the probe server; more calls at once than `MAX_CALLS` are refused (RESOURCE_EXHAUSTED).
THREADS = 2
MAX_CALLS = 16


class ProbeServer:
    def __init__(self, services: tuple[str, ...]) -> None:
        self._services = ("", *services)
        self._health = health.HealthServicer()
        for name in self._services:
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._executor: futures.ThreadPoolExecutor | None = None
        self._server: grpc.Server | None = None
        self._unix_path: Path | None = None

    def start(self, address: str) -> int:
        """Listen on `address` (HOST:PORT or unix:PATH); returns the bound TCP port (0 for a socket)."""
        unix_path = None
        if address.startswith("unix:"):
            unix_path = Path(address.removeprefix("unix:").removeprefix("//"))
            if unix_path.is_socket():
                unix_path.unlink()  # left by an earlier server that was killed; a bind would fail on it
        self._executor = futures.ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="jobserver-probe")
        server = grpc.server(
            self._executor, maximum_concurrent_rpcs=MAX_CALLS, options=[("grpc.so_reuseport", 0)]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            port: int = server.add_insecure_port(address)
        except RuntimeError as exc:
            self._executor.shutdown()
            raise ProbeError(f"cannot listen on {address} for health probes: {exc}") from None
        server.start()
        self._server = server
        self._unix_path = unix_path  # ours to remove at stop (never a file we could not bind to)
        return 0 if unix_path else port

    def stop(self) -> None:
        """NOT_SERVING to every watcher, then close; safe to call more than once."""
        self._health.enter_graceful_shutdown()
        if self._server is not None:
            self._server.stop(1).wait(5)
            self._server = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._unix_path is not None:
            try:
                os.unlink(self._unix_path)
            except FileNotFoundError:
                pass
            self._unix_path = None
