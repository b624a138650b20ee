"""`make demo`: start a jobserver with the checked-in certificates and drive it with jobctl.

Everything runs on 127.0.0.1 with a temporary state directory; the server is stopped at the end and
the jobs with it. Each step prints the command it runs, then its output.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def step(title: str, argv: list[str], env: dict[str, str], check: bool = True) -> str:
    shown = " ".join(shlex.quote(a) for a in argv)
    print(f"\n\033[1m# {title}\033[0m\n$ {shown}", flush=True)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)
    sys.stdout.write(result.stdout)
    sys.stdout.write(result.stderr)
    print(f"(exit {result.returncode})", flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"demo step failed: {shown}")
    return result.stdout.strip()


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="jobworker-demo-"))
    port = free_port()
    certs = ROOT / "certs"
    server_argv = [
        str(BIN / "jobserver"),
        "--listen",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(state / "state"),
        "--cert",
        str(certs / "server.crt"),
        "--key",
        str(certs / "server.key"),
        "--ca",
        str(certs / "ca.crt"),
        "--port-file",
        str(state / "port"),
        "--log-format",
        "json",
    ]
    print("$ " + " ".join(shlex.quote(a) for a in server_argv) + f"   (log: {state / 'server.log'})")
    log = open(state / "server.log", "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(server_argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (state / "port").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                sys.stdout.write((state / "server.log").read_text())
                raise SystemExit("the jobserver did not start")
            time.sleep(0.05)
        env = dict(os.environ, JOBCTL_SERVER=f"127.0.0.1:{port}", JOBCTL_CERTS=str(certs))
        jobctl = str(BIN / "jobctl")
        step(
            "run a command and stream its output; jobctl exits with the job's exit code",
            [
                jobctl,
                "--user",
                "alice",
                "run",
                "--",
                "sh",
                "-c",
                "echo hello from $(hostname); ps -e; exit 3",
            ],
            env,
            check=False,
        )
        job = step(
            "start a long job with limits (prints its id)",
            [
                jobctl,
                "--user",
                "alice",
                "start",
                "--memory",
                "64M",
                "--cpu",
                "0.5",
                "--pids",
                "32",
                "--",
                "sh",
                "-c",
                "for i in 1 2 3; do echo tick $i; sleep 0.3; done; sleep 60",
            ],
            env,
        )
        step(
            "follow its output from the first byte (Ctrl-C would stop following)",
            ["timeout", "2", jobctl, "--user", "alice", "logs", "-f", job],
            env,
            check=False,
        )
        step("its status", [jobctl, "--user", "alice", "status", job], env)
        step("bob cannot see alice's job", [jobctl, "--user", "bob", "status", job], env, check=False)
        step("carl (admin) lists everyone's jobs", [jobctl, "--user", "carl", "list", "--all"], env)
        step(
            "a memory hog under a 64M limit is OOM-killed",
            [
                jobctl,
                "--user",
                "alice",
                "run",
                "--memory",
                "64M",
                "--",
                "stress",
                "--vm",
                "1",
                "--vm-bytes",
                "200M",
                "--vm-keep",
                "--timeout",
                "20",
            ],
            env,
            check=False,
        )
        step(
            "stop the long job (SIGTERM, then SIGKILL after the grace period)",
            [jobctl, "--user", "alice", "stop", "--grace", "2", job],
            env,
        )
        step("its final status", [jobctl, "--user", "alice", "--json", "status", job], env)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        subprocess.run([sys.executable, "-c", _STOP_LEFTOVERS, str(state / "state")], check=False)
        subprocess.run(["rm", "-rf", str(state)], check=False)
    print("\ndemo finished: server stopped, state removed")
    return 0


# The server leaves jobs running on shutdown (by design, for the next start); the demo stops them.
_STOP_LEFTOVERS = """
import sys, pathlib
from jobcore import Worker, JobState
root = pathlib.Path(sys.argv[1])
for jobs in [p for p in root.rglob("*") if p.is_dir() and (p / ".lock").exists()]:
    with Worker(jobs) as w:
        for s in w.list():
            if s.state is JobState.RUNNING:
                w.stop(s.id, grace=0)
"""

if __name__ == "__main__":
    sys.exit(main())
