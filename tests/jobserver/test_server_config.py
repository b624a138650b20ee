"""Configuration: built-in defaults < config file < environment < flags; a bad config is a clear error."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import CERTS, Client, ServerProcess, wait_for

from jobcore.spec import Limits
from jobserver.config import DEFAULT_LIMITS, ServerConfig, load_config
from jobserver.errors import ConfigError

MIB = 1024 * 1024


def test_built_in_defaults() -> None:
    config = load_config([], environ={})
    assert config.listen == "localhost:50051"
    assert config.state_dir == Path("/var/lib/jobworker")
    assert config.controller == "auto"
    assert config.default_limits == DEFAULT_LIMITS == Limits(cpu=1.0, memory=512 * MIB, pids=256)
    assert not config.default_limits.has_io()
    assert config.max_limits.cpu is not None


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    path = tmp_path / "jobserver.toml"
    path.write_text('[server]\nlisten = "file:1"\nstate_dir = "/from/file"\ncontroller = "cgroup1"\n')
    env = {"JOBSERVER_CONFIG": str(path), "JOBSERVER_LISTEN": "env:2", "JOBSERVER_STATE_DIR": "/from/env"}
    config = load_config(["--listen", "flag:3"], environ=env)
    assert config.listen == "flag:3"
    assert config.state_dir == Path("/from/env")
    assert config.controller == "cgroup1"
    assert load_config(["--config", str(path)], environ={}).listen == "file:1"


def test_config_file_sets_limits_and_caps(tmp_path: Path) -> None:
    path = tmp_path / "jobserver.toml"
    path.write_text(
        """
[limits.default]
cpu = 0.5
memory = "256M"
pids = 64
io_write_bps = "10M/s"

[limits.max]
memory = "1G"
pids = 512

[requests]
max_running_jobs_per_user = 3
max_argv_bytes = "64K"

[output]
cap = "16M"
"""
    )
    config = load_config(["--config", str(path)], environ={})
    assert config.default_limits == Limits(cpu=0.5, memory=256 * MIB, pids=64, io_write_bps=10 * MIB)
    assert config.max_limits.memory == 1024 * MIB
    assert config.max_limits.pids == 512
    assert config.max_running_jobs_per_user == 3
    assert config.max_argv_bytes == 64 * 1024
    assert config.output_cap == 16 * MIB


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\n", "is not valid TOML"),
        ("[server]\nlisten_on = 'x'\n", "unknown setting 'listen_on'"),
        ("[limits.default]\nmemroy = '1G'\n", "unknown limit 'memroy'"),
        ("[limits.default]\nmemory = 'lots'\n", "invalid size 'lots'"),
        ("[limits.default]\ncpu = -1\n", "cpu must be positive"),
        ("[limits.default]\npids = 1000\n[limits.max]\npids = 100\n", "pids of 1000 is above the maximum"),
        ("[requests]\nmax_running_jobs_per_user = 0\n", "must be positive"),
        ("[server]\nlisten = 'nohost'\n", "is not HOST:PORT"),
        ("[server]\nlog_format = 'xml'\n", "log format 'xml'"),
        ("[bogus]\n", "unknown setting 'bogus'"),
    ],
)
def test_bad_config_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "jobserver.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(["--config", str(path)], environ={})


def test_bad_config_exits_with_status_2_and_a_message(tmp_path: Path) -> None:
    path = tmp_path / "jobserver.toml"
    path.write_text("[limits.default]\nmemroy = '1G'\n")
    result = subprocess.run(
        [sys.executable, "-m", "jobserver.cli", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("jobserver: error: ")
    assert "unknown limit 'memroy'" in result.stderr
    assert "Traceback" not in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "jobserver.cli", "--config", str(tmp_path / "nope.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "cannot read config file" in missing.stderr


def test_missing_certificate_is_a_clear_startup_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobserver.cli", "--cert", str(tmp_path / "none.crt"), "--key",
         str(CERTS / "server.key"), "--ca", str(CERTS / "ca.crt"), "--state-dir", str(tmp_path / "s"),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot read the server certificate {tmp_path / 'none.crt'}" in result.stderr


def test_flags_win_over_environment_in_the_server(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    port_file = tmp_path / "env-port"
    env = {"JOBSERVER_PORT_FILE": str(port_file), "JOBSERVER_LOG_FORMAT": "console"}
    # ServerProcess passes --port-file and --log-format: the flags must win over these variables.
    proc = ServerProcess(tmp_path / "state", tmp_path, env=env)
    server_processes.append(proc)
    assert not port_file.exists()
    assert '"event": "listening"' in proc.log_text()  # JSON from the flag, not the console renderer
    proc.kill()


def test_server_configured_from_the_environment_alone(
    server_processes: list[ServerProcess], tmp_path: Path
) -> None:
    port_file = tmp_path / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSERVER_")}
    env.update(
        JOBSERVER_LISTEN="127.0.0.1:0",
        JOBSERVER_CERT=str(CERTS / "server.crt"),
        JOBSERVER_KEY=str(CERTS / "server.key"),
        JOBSERVER_CA=str(CERTS / "ca.crt"),
        JOBSERVER_STATE_DIR=str(tmp_path / "state"),
        JOBSERVER_PORT_FILE=str(port_file),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobserver.cli"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert wait_for(lambda: port_file.exists() or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        client = Client(int(port_file.read_text()), "alice")
        assert client.list() == []
        client.close()
        assert (tmp_path / "state" / "jobserver.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stderr:
            proc.stderr.close()


def test_defaults_must_fit_the_maximums() -> None:
    with pytest.raises(ConfigError, match="exceeds its maximum"):
        from jobserver.config import validate

        validate(ServerConfig(default_limits=Limits(pids=100), max_limits=Limits(pids=50)))
