"""How the shim spawns the command (jobcore.command.spawn_command: fork, the job's set-up, execve, an
error pipe; issue 14 replaced subprocess.Popen(preexec_fn=...) by it): what the command inherits and how
each way of failing is reported must be what Popen gave."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from jobcore_testing import CONTROLLER, requires_root, run_to_end

from jobcore import JobSpec, JobState, Worker

pytestmark = requires_root


def test_the_command_holds_only_stdin_stdout_and_stderr(worker: Worker) -> None:
    # the shell's fds, listed by a child of it (whose own directory fd is not the shell's)
    out, status = run_to_end(worker, ["sh", "-c", "ls /proc/$$/fd"])
    assert status.exit_code == 0
    assert out.split() == [b"0", b"1", b"2"]


def test_stdin_is_dev_null_and_stdout_stderr_are_the_output_pipes(worker: Worker) -> None:
    out, _ = run_to_end(
        worker, ["sh", "-c", "readlink /proc/self/fd/0; readlink /proc/self/fd/1 /proc/self/fd/2"]
    )
    lines = out.decode().split()
    assert lines[0] == "/dev/null"
    assert lines[1].startswith("pipe:") and lines[2].startswith("pipe:")


def test_no_signal_is_ignored_or_blocked_in_the_command(worker: Worker) -> None:
    # CPython ignores SIGPIPE and SIGXFSZ; the command must get them back at their defaults, and an
    # ignored disposition would survive exec
    out, _ = run_to_end(worker, ["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"])
    assert sorted(out.decode().split()) == sorted(
        ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
    )


def test_a_closed_pipe_kills_the_writer_with_sigpipe_as_on_a_shell(worker: Worker) -> None:
    out, _status = run_to_end(worker, ["sh", "-c", "(yes; echo yes-exited $? >&2) | head -c 1 >/dev/null"])
    assert b"yes-exited 141" in out  # 128 + SIGPIPE: killed by the signal, not EPIPE-and-exit


def test_a_command_not_on_the_jobs_path_names_itself_and_enoent(worker: Worker, tmp_path: Path) -> None:
    status = worker.start(JobSpec(["no-such-tool-x"], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}))
    assert status.state is JobState.FAILED_TO_START
    assert status.reason is not None
    assert "cannot run 'no-such-tool-x'" in status.reason
    assert "No such file or directory (ENOENT): no-such-tool-x" in status.reason


def test_a_non_executable_match_on_the_path_is_reported_over_later_misses(
    worker: Worker, tmp_path: Path
) -> None:
    # subprocess's rule: the first error other than ENOENT/ENOTDIR wins over the "not found" of the rest
    (tmp_path / "tool").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "tool").chmod(0o644)
    status = worker.start(JobSpec(["tool"], env={"PATH": f"{tmp_path}:/nonexistent"}, cwd=str(tmp_path)))
    assert status.state is JobState.FAILED_TO_START
    assert status.reason is not None and "Permission denied (EACCES)" in status.reason


def test_a_later_match_on_the_path_runs_after_misses_and_a_file_in_the_way(
    worker: Worker, tmp_path: Path
) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text("#!/bin/sh\necho found\n")
    (tmp_path / "bin" / "tool").chmod(0o755)
    (tmp_path / "afile").write_text("")  # a PATH entry that is a file: ENOTDIR, skipped
    path = f"/nonexistent:{tmp_path / 'afile'}:{tmp_path / 'bin'}"
    out, status = run_to_end(worker, ["tool"], env={"PATH": path}, cwd=str(tmp_path))
    assert status.exit_code == 0
    assert out == b"found\n"


IGNORING_PARENT = r"""
import signal, sys
from jobcore import JobSpec, Worker
with Worker(sys.argv[1], controller=sys.argv[2]) as worker:
    job = worker.start(JobSpec(["grep", "^SigIgn:", "/proc/self/status"]))
    worker.wait(job.id, timeout=30)
    sys.stdout.buffer.write(b"".join(worker.output(job.id)))
"""


def _ignore_what_a_background_shell_does() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGALRM, signal.SIGTSTP, signal.SIGRTMIN + 3):
        signal.signal(sig, signal.SIG_IGN)


def test_signals_the_workers_process_ignores_are_not_passed_on_to_the_command(tmp_path: Path) -> None:
    """A Worker started with signals ignored (by a background shell, nohup, make -j) starts its jobs
    with every signal at its default: an ignored disposition survives exec, so the shim must reset
    each one, not only the two CPython ignores."""
    done = subprocess.run(
        [sys.executable, "-c", IGNORING_PARENT, str(tmp_path / "state"), CONTROLLER],
        capture_output=True,
        timeout=120,
        preexec_fn=_ignore_what_a_background_shell_does,
        check=True,
    )
    assert done.stdout.split() == [b"SigIgn:", b"0000000000000000"]


def test_signals_not_at_default_lists_the_ignored_and_the_handled_ones() -> None:
    """What the command's process resets before exec (the rest already are at SIG_DFL)."""
    probe = (
        "import signal; from jobcore import linux\n"
        "signal.signal(signal.SIGUSR2, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGHUP, lambda *_: None)\n"
        "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
        "print(linux.signals_not_at_default())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    listed = set(ast.literal_eval(out))
    assert {signal.SIGUSR2, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ} <= listed
    assert not listed & {signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP}


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"PATH": ""},
        {"PATH": "/usr/bin:/bin"},
        {"PATH": "/usr/local/bin/:/bin//:"},
        {"PATH": ":relative/dir::/bin"},
        {"PATH": "/dir with space:/bin", "HOME": "/root"},
    ],
)
@pytest.mark.parametrize("name", ["tool", "./tool", "/bin/tool", "sub/tool"])
def test_the_command_is_searched_where_os_get_exec_path_and_os_path_join_say(
    env: dict[str, str], name: str
) -> None:
    # _executables writes out what subprocess does (os.get_exec_path(env), then os.path.join) without
    # running their Python code in every shim: it must give the same candidates, in the same order
    from jobcore.command import _executables

    if os.path.dirname(name):
        expected = [os.fsencode(name)]
    else:
        expected = [os.path.join(os.fsencode(d), os.fsencode(name)) for d in os.get_exec_path(env)]
    assert _executables(name, env) == expected
