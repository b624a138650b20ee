"""The systemd unit: delegated cgroup subtree, jobs survive a stop, and systemd accepts the file."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
from server_harness import REPO

UNIT = REPO / "deploy" / "jobserver.service"


def _service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def test_unit_delegates_cgroups_and_leaves_jobs_running_on_stop() -> None:
    service = _service_section()
    assert service["Delegate"] == "yes"
    assert service["KillMode"] == "process"
    assert service["KillSignal"] == "SIGTERM"
    assert "--state-dir /var/lib/jobworker" in service["ExecStart"]


def test_unit_waits_for_readiness_and_opens_the_operator_endpoints() -> None:
    service = _service_section()
    assert service["Type"] == "notify"  # the server sends READY=1 (tests/jobserver/test_operations.py)
    assert service["NotifyAccess"] == "main"
    assert "--health-listen unix:/run/jobworker/health.sock" in service["ExecStart"]
    assert service["RuntimeDirectory"] == "jobworker"
    assert "--metrics-listen 127.0.0.1:" in service["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # ExecStart must name an existing program for verify: point it at this checkout's entry point.
    entry = shutil.which("jobserver") or str(REPO / ".venv" / "bin" / "jobserver")
    unit = tmp_path / "jobserver.service"
    unit.write_text(UNIT.read_text().replace("/opt/jobworker/venv/bin/jobserver", entry))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "jobserver.service" not in result.stderr, result.stderr
