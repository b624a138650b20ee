"""`Operations`: what the server offers operators next to its API port.

* the Prometheus endpoint (`--metrics-listen`, `jobserver.metrics`);
* the plaintext health endpoint for probes (`--health-listen`, `jobserver.probes`);
* systemd's readiness protocol (`jobserver.sd_notify`): `READY=1` once the API port and both endpoints
  listen, `STOPPING=1` when a graceful stop begins.

`JobServer` starts it once the API port listens (before the port file is written: a server whose
endpoints cannot listen does not start), and on the way down tells systemd and turns the probes
NOT_SERVING first, before the API port closes.
"""

from __future__ import annotations

import structlog

from jobserver.config import ServerConfig
from jobserver.errors import NotifyError, OperationsError, ProbeError
from jobserver.metrics import MetricsEndpoint, ServerMetrics
from jobserver.probes import ProbeServer
from jobserver.sd_notify import notify
from jobserver.store import JobStore


class Operations:
    def __init__(self, config: ServerConfig, metrics: ServerMetrics, services: tuple[str, ...]) -> None:
        self._config = config
        self._log = structlog.get_logger("jobserver")
        self._metrics = MetricsEndpoint(metrics) if config.metrics_listen else None
        self._probes = ProbeServer(services) if config.health_listen else None
        #: Bound ports (None when the endpoint is off; 0 for a health endpoint on a Unix socket).
        self.metrics_port: int | None = None
        self.health_port: int | None = None

    def start(self, api_port: int) -> None:
        config = self._config
        if self._metrics is not None and config.metrics_listen:
            try:
                self.metrics_port = self._metrics.start(config.metrics_listen)
            except (OSError, ValueError) as exc:
                raise OperationsError(
                    f"--metrics-listen: cannot listen on {config.metrics_listen}: {exc}"
                ) from None
            self._log.info(
                "metrics listening", address=config.metrics_listen, port=self.metrics_port, path="/metrics"
            )
        if self._probes is not None and config.health_listen:
            try:
                self.health_port = self._probes.start(config.health_listen)
            except ProbeError as exc:
                raise OperationsError(f"--health-listen: {exc}") from None
            self._log.info("health probes listening", address=config.health_listen, port=self.health_port)
        self._notify("READY=1", f"STATUS=serving on port {api_port}")

    def stopping(self) -> None:
        """A graceful stop begins: tell systemd, and turn the probes NOT_SERVING and close them."""
        self._notify("STOPPING=1", "STATUS=stopping")
        if self._probes is not None:
            self._probes.stop()

    def close(self) -> None:
        if self._probes is not None:
            self._probes.stop()
        if self._metrics is not None:
            self._metrics.stop()

    def _notify(self, *assignments: str) -> None:
        try:
            if notify(*assignments):
                self._log.debug("notified systemd", message=" ".join(assignments))
        except NotifyError as exc:
            self._log.warning("cannot notify systemd", error=str(exc))


def job_state_counts(store: JobStore) -> dict[str, int]:
    """Jobs per state from the job records (read at each scrape)."""
    counts: dict[str, int] = {}
    for record in store.list():
        counts[record.status.state.value] = counts.get(record.status.state.value, 0) + 1
    return counts
