"""Every line the server logs is one JSON object in one format (issue 13): structlog's events, the
standard `logging` records of jobcore (and grpc, and any library) and Python warnings alike, each with
`event`, `level`, `logger` and `timestamp`, at the configured level."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from server_harness import ServerProcess

from jobcore import Worker
from jobserver.logs import configure_logging

KEYS = {"event", "level", "logger", "timestamp"}
NONE_WARNING = "jobcore: resource-controller backend 'none': NOTHING IS LIMITED (no cgroups)"


def _lines(text: str) -> list[dict[str, Any]]:
    """Each line as JSON; a line that is not JSON fails the test, quoted."""
    parsed = []
    for line in text.splitlines():
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return parsed


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """The server's logging set-up on a buffer, then back to the suite's (conftest: JSON to stderr)."""
    out = io.StringIO()
    configure_logging("json", "info", out)
    yield out
    configure_logging("json")


def test_a_real_jobcore_warning_is_a_json_line_like_the_servers_own(
    logged: io.StringIO, tmp_path: Path
) -> None:
    structlog.get_logger("jobserver").info("server event", port=1)
    with Worker(tmp_path / "jobs", controller="none"):  # jobcore warns through the standard logging
        pass
    lines = _lines(logged.getvalue())
    ours = next(line for line in lines if line["event"] == "server event")
    theirs = next(line for line in lines if line["event"] == NONE_WARNING)
    assert theirs["level"] == "warning" and theirs["logger"] == "jobcore"
    assert ours["logger"] == "jobserver" and ours["port"] == 1
    assert set(ours) - {"port"} == set(theirs) == KEYS  # the same format


def test_the_level_filters_stdlib_records_and_their_exceptions_render_alike(logged: io.StringIO) -> None:
    jobcore = logging.getLogger("jobcore")
    jobcore.info("removed stale cgroup %s", "/sys/fs/cgroup/x")  # an info line is kept at info
    jobcore.debug("stats of job %s: %s", "j", "gone")  # below the level
    structlog.get_logger("jobserver").debug("also below")
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("grpc._server").exception("Exception calling application")
    lines = _lines(logged.getvalue())
    events = [line["event"] for line in lines]
    assert "removed stale cgroup /sys/fs/cgroup/x" in events
    assert not [e for e in events if e.startswith(("stats of job", "also below"))]
    failure = next(line for line in lines if line["logger"] == "grpc._server")
    assert failure["level"] == "error" and failure["exception"][0]["exc_value"] == "bad value"
    assert "frames" in failure["exception"][0] and "locals" not in failure["exception"][0]["frames"][0]
    assert all(set(line) >= KEYS for line in lines)


def test_reconfiguring_replaces_the_handler(logged: io.StringIO) -> None:
    again = io.StringIO()
    configure_logging("json", "warning", again)
    logging.getLogger("jobcore").warning("once")
    logging.getLogger("jobcore").info("filtered")
    assert logged.getvalue() == ""
    assert [line["event"] for line in _lines(again.getvalue())] == ["once"]


def test_a_real_server_process_logs_jobcores_warning_as_json_in_the_same_format(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    proc = ServerProcess(tmp_path / "state", tmp_path, "--controller", "none")
    server_processes.append(proc)
    assert proc.terminate() == 0
    lines = _lines(proc.log_text())
    jobcore = [line for line in lines if line["logger"] == "jobcore"]
    assert [line["event"] for line in jobcore] == [NONE_WARNING]
    assert jobcore[0]["level"] == "warning"
    listening = next(line for line in lines if line["event"] == "listening")
    assert listening["logger"] == "jobserver"
    assert all(set(line) >= KEYS for line in lines), [line for line in lines if not set(line) >= KEYS]


def test_python_warnings_become_json_lines() -> None:
    # In a fresh interpreter: pytest records warnings itself, around every test.
    probe = (
        "import sys, warnings\n"
        "from jobserver.logs import configure_logging\n"
        "configure_logging('json', 'info', sys.stdout)\n"
        "warnings.simplefilter('always')\n"
        "warnings.warn('something is deprecated', DeprecationWarning, stacklevel=1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    [warned] = _lines(done.stdout)
    assert warned["logger"] == "py.warnings" and warned["level"] == "warning"
    assert "DeprecationWarning: something is deprecated" in warned["event"]
