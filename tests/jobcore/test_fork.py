"""`jobcore.linux.fork`: the fork the launcher (of each shim) and the shim (of the command) use. In a
single-threaded process it skips CPython's after-fork processing — no os.register_at_fork hook runs
— because what those hooks run in a freshly forked child copies ~0.3 MiB of the parent's pages per
shim (docs/benchmarks.md, "What a shim's pages are"); with another thread alive it is os.fork()."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from jobcore_testing import requires_root

from jobcore import Isolation, JobSpec, JobState, Worker

HERE = str(Path(__file__).resolve().parent)

# Run in a fresh interpreter: a hook, once registered, cannot be removed from this one.
_SCRIPT = r"""
import os, sys, threading, time
from jobcore import linux
os.register_at_fork(after_in_child=lambda: os.write(1, b"child-hook "),
                    after_in_parent=lambda: os.write(1, b"parent-hook "))
if sys.argv[1] == "threaded":
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
pid = linux.fork()
if pid == 0:
    os.write(1, b"child-ran ")
    os._exit(7)
_, status = os.waitpid(pid, 0)
os.write(1, f"exit={os.waitstatus_to_exitcode(status)}".encode())
"""


def _run(mode: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return sorted(out.split())


def test_a_single_threaded_fork_runs_no_at_fork_hook() -> None:
    assert _run("single") == ["child-ran", "exit=7"]


def test_with_another_thread_it_is_os_fork_and_the_hooks_run() -> None:
    assert _run("threaded") == ["child-hook", "child-ran", "exit=7", "parent-hook"]


@requires_root
@pytest.mark.parametrize("isolation", [Isolation(), Isolation.none()], ids=["isolated", "no-isolation"])
def test_no_at_fork_hook_of_the_launcher_runs_in_a_shim_or_a_command(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolation: Isolation
) -> None:
    # The backend's module, imported by the launcher before any fork, registers a hook that notes
    # every child it runs in: neither the shim (the launcher's child) nor the command's process
    # (the shim's child, until its exec) may run it.
    from atfork_backend import AtForkController

    marker = tmp_path / "atfork"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JOBCORE_TEST_ATFORK_FILE", str(marker))
    with Worker(state_dir, controller=AtForkController()) as worker:
        job = worker.start(JobSpec(["true"], isolation=isolation))
        final = worker.wait(job.id, timeout=30)
    assert final.state is JobState.EXITED and final.exit_code == 0, final.reason
    assert not marker.exists(), f"at-fork hook ran in: {marker.read_text().split()}"
