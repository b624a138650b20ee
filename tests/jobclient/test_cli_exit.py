"""How the `jobctl` process ends (issue 14): the console script freezes the collector before exiting.

The interpreter's collections while it shuts down went through every object grpc, protobuf and asyncio
had loaded: 24-50 ms of a `jobctl run -- true` at load 3-5 (docs/benchmarks.md, "jobctl start-up").
`console_main` moves them to the permanent generation (`gc.freeze()`) once `main()` has returned.
Timing is not asserted: the tests check the mechanism (the installed script's entry point, and that
the objects are frozen by the time the interpreter's exit handlers run), and that `main()` itself,
which a program may call in-process, leaves the collector alone.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

from fake_jobworker import CERTS, FakeServer
from jobctl_runner import JOBCTL

#: Runs an entry point with atexit reporting the frozen count: exit handlers run before the
#: interpreter's shutdown collections, so this is what those collections will skip.
_PROBE = """
import atexit, gc, sys
atexit.register(lambda: sys.stderr.write(f"FROZEN {{gc.get_freeze_count()}}\\n"))
sys.argv = ["jobctl", *{argv!r}]
from jobclient import cli
sys.exit(cli.{entry}({args}))
"""


def _frozen_at_exit(
    entry: str, argv: list[str], env: dict[str, str], *, pass_argv: bool = False
) -> tuple[int, int, str]:
    code = _PROBE.format(argv=argv, entry=entry, args=repr(argv) if pass_argv else "")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    line = next((x for x in done.stderr.splitlines() if x.startswith("FROZEN ")), None)
    assert line is not None, done.stderr
    return done.returncode, int(line.removeprefix("FROZEN ")), done.stderr


def _env(target: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_"))}
    env.update(JOBCTL_SERVER=target, JOBCTL_USER="alice", JOBCTL_CERTS=str(CERTS))
    return env


def test_the_installed_jobctl_script_runs_console_main() -> None:
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "jobctl"]
    assert script.value == "jobclient.cli:console_main"
    assert "console_main()" in JOBCTL.read_text()  # the venv's script is regenerated from that


def test_console_main_freezes_the_collector_before_the_interpreter_exits() -> None:
    server = FakeServer()
    try:
        status, frozen, stderr = _frozen_at_exit("console_main", ["run", "--", "true"], _env(server.target))
    finally:
        server.stop()
    assert status == 0, stderr
    assert len(server.servicer.calls("StartJob")) == 1  # it did run the job over the real channel
    assert frozen > 10_000  # grpc's, protobuf's and asyncio's objects, not a handful


def test_console_main_freezes_on_a_failure_exit_too() -> None:
    # Nothing listens there: exit status 125 (`run` could not reach the server), and still frozen.
    status, frozen, stderr = _frozen_at_exit("console_main", ["run", "--", "true"], _env("127.0.0.1:9"))
    assert status == 125
    assert "cannot reach the job server at 127.0.0.1:9" in stderr
    assert frozen > 0


def test_main_itself_leaves_the_collector_alone() -> None:
    # main() may be called by a longer-lived program (or a test): only the console script freezes.
    server = FakeServer()
    try:
        status, frozen, stderr = _frozen_at_exit(
            "main", ["run", "--", "true"], _env(server.target), pass_argv=True
        )
    finally:
        server.stop()
    assert status == 0, stderr
    assert frozen == 0
