"""`python -m jobcore run|probe`: byte-exact output, exit codes, Ctrl-C, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from jobcore_testing import CONTROLLER, JOB_PYTHON, requires_root

pytestmark = requires_root

JOBCORE = [sys.executable, "-m", "jobcore"]


def jobcore(*args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*JOBCORE, *args], capture_output=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


def test_run_streams_output_byte_for_byte_and_exits_with_the_jobs_code() -> None:
    script = "import sys; sys.stdout.buffer.write(bytes(range(256))); sys.exit(5)"
    result = jobcore("run", "--controller", CONTROLLER, "--", JOB_PYTHON, "-c", script)
    assert result.stdout == bytes(range(256))
    assert result.returncode == 5


def test_run_exits_128_plus_n_when_the_job_is_killed_by_signal_n() -> None:
    result = jobcore("run", "--", "sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + signal.SIGTERM


def test_run_of_a_missing_command_exits_127_with_the_reason() -> None:
    result = jobcore("run", "--", "/no/such/cmd")
    assert result.returncode == 127
    assert b"cannot run '/no/such/cmd': No such file or directory" in result.stderr


def test_run_applies_env_cwd_and_isolation_options(tmp_path: object) -> None:
    result = jobcore(
        "run",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--cwd",
        str(tmp_path),
        "--host-network",
        "--",
        "sh",
        "-c",
        "echo $A $B; pwd; ls /sys/class/net | grep -c .",
    )
    lines = result.stdout.decode().splitlines()
    assert lines[:2] == ["1 x=y", str(tmp_path)]
    assert int(lines[2]) == len(os.listdir("/sys/class/net"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], b"no command given"),
        (["run", "--memory", "lots", "--", "true"], b"invalid size 'lots'"),
        (["run", "--cpu", "-1", "--", "true"], b"cpu must be positive"),
        (["run", "--pids", "1", "--", "true"], b"pids of 1 is below the minimum of 2"),
        (["run", "--env", "NOEQUALS", "--", "true"], b"expected NAME=VALUE"),
        (["run", "--cwd", "relative", "--", "true"], b"is relative"),
        (["run", "--controller", "nope", "--", "true"], b"unknown resource-controller backend 'nope'"),
        (["run", "--controller", "none", "--memory", "64M", "--", "true"], b"memory"),
        (["frobnicate"], b"invalid choice"),
        (["run", "--bogus", "--", "true"], b"unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_get_a_clear_message_and_exit_125(args: list[str], message: bytes) -> None:
    # 125 (jobcore itself failed), as `python -m jobcore run --help` promises; never argparse's 2.
    result = jobcore(*args)
    assert result.returncode == 125, result
    # The error is the last line (the `none` backend announces itself loudly first).
    assert message in result.stderr.splitlines()[-1], result.stderr
    assert b"Traceback" not in result.stderr


def test_ctrl_c_stops_the_job_gracefully() -> None:
    proc = subprocess.Popen(
        [
            *JOBCORE,
            "run",
            "--",
            "sh",
            "-c",
            "trap 'echo stopping; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert out == b"stopping\n"
    assert proc.returncode == 0
    assert b"stopping job" in err


def test_a_second_ctrl_c_kills_the_job_at_once() -> None:
    proc = subprocess.Popen(
        [
            *JOBCORE,
            "run",
            "--grace",
            "60",
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.1; done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL


def test_help_documents_every_option_with_examples() -> None:
    result = jobcore("run", "--help")
    text = result.stdout.decode()
    for option in (
        "--cpu",
        "--memory",
        "--io-read",
        "--io-write",
        "--pids",
        "--env",
        "--cwd",
        "--host-network",
        "examples:",
        "exit status",
    ):
        assert option in text


def test_probe_reports_the_backends_and_which_auto_picks() -> None:
    result = jobcore("probe", "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert set(report["backends"]) >= {"cgroup1", "cgroup2", "none"}
    assert report["auto"] in report["backends"]
    assert report["backends"][report["auto"]]["available"] is True
    assert any("nothing is limited" in note.lower() for note in report["backends"]["none"]["notes"])
    human = jobcore("probe").stdout.decode()
    assert "(auto picks this)" in human
