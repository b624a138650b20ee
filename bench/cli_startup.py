"""jobctl start-up cost, as ratios to baselines measured in the same run (issue 14).

    .venv/bin/python bench/cli_startup.py                 # import + --help, against `python -c pass`
    .venv/bin/python bench/cli_startup.py --server        # also `jobctl run -- true` on a real jobserver
    .venv/bin/python bench/cli_startup.py --server --ssh  # ... and vs a new-connection `ssh host true`
    .venv/bin/python bench/cli_startup.py --runs 40 --importtime
    .venv/bin/python bench/cli_startup.py --server --ssh --before /tmp/old/packages/jobclient/src

`--before SRC` adds the same commands run with another jobclient source tree first on PYTHONPATH
(e.g. `git archive main packages/jobclient | tar -x -C /tmp/old`), so that a change is measured
against the code it replaces in the same run.

Each figure is the median (and p90) wall time of `--runs` fresh processes, interleaved round-robin so
that load drifting during the run hits every command alike. `--server` starts a jobserver (needs root,
as every job runs in cgroups and namespaces) on 127.0.0.1 with the checked-in certificates; `--ssh`
starts the throwaway sshd of bench/ssh_anchor.py and runs `ssh` with multiplexing off, so each run
pays a whole new connection, as a person typing `ssh host true` does. `--importtime` also prints the
ten most expensive imports of `import jobclient.cli` (`python -X importtime`, cumulative).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
CERTS = REPO / "certs"


def _time_once(argv: Sequence[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def measure(commands: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, list[float]]:
    """Wall seconds of each command, `runs` times, round-robin (after one warm-up run each)."""
    for argv in commands.values():
        _time_once(argv, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(_time_once(argv, env))
    return times


def importtime_top(env: dict[str, str], count: int = 10) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the most expensive imports of `import jobclient.cli`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import jobclient.cli"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cumulative, name = line.removeprefix("import time:").split("|")
        rows.append((int(cumulative), name.rstrip()))
    top_level = [(us, name.strip()) for us, name in rows if not name.startswith("  ") or name.strip()]
    return sorted(top_level, reverse=True)[:count]


def _row(name: str, values: list[float], base: float) -> str:
    median = statistics.median(values)
    p90 = statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else median
    return f"{name:<36} {median * 1000:8.1f} {p90 * 1000:8.1f} {median / base:8.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    parser.add_argument("--server", action="store_true", help="also time `jobctl run -- true` (root)")
    parser.add_argument("--ssh", action="store_true", help="with --server: also a new-connection ssh")
    parser.add_argument("--importtime", action="store_true", help="print the costliest imports")
    parser.add_argument("--before", metavar="SRC", help="also time these commands with this jobclient source")
    args = parser.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_"))}
    env.update(JOBCTL_USER="alice", JOBCTL_CERTS=str(CERTS))
    jobctl = str(BIN / "jobctl")
    commands = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "python -c 'import jobclient.cli'": [sys.executable, "-c", "import jobclient.cli"],
        "jobctl --help": [jobctl, "--help"],
    }
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp, _Services(Path(tmp), args) as services:
        if services.server_address:
            env["JOBCTL_SERVER"] = services.server_address
            commands["jobctl run -- true"] = [jobctl, "run", "--", "true"]
        if services.ssh_argv:
            commands["ssh host true (new connection)"] = [*services.ssh_argv, "true"]
        if args.before:
            main_of = "import sys; from jobclient.cli import main; sys.argv[0] = 'jobctl'; sys.exit(main())"
            before = [sys.executable, "-c", f"import sys; sys.path.insert(0, {args.before!r}); {main_of}"]
            commands["(before) import jobclient.cli"] = [
                sys.executable, "-c", f"import sys; sys.path.insert(0, {args.before!r}); import jobclient.cli"
            ]  # fmt: skip
            commands["(before) jobctl --help"] = [*before, "--help"]
            if services.server_address:
                commands["(before) jobctl run -- true"] = [*before, "run", "--", "true"]
        times = measure(commands, args.runs, env)
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"{'command':<36} {'median':>8} {'p90':>8} {'ratio':>9}   (ms; ratio to python -c pass)")
    for name, values in times.items():
        print(_row(name, values, base))
    if "jobctl run -- true" in times and "ssh host true (new connection)" in times:
        ours = statistics.median(times["jobctl run -- true"])
        ssh = statistics.median(times["ssh host true (new connection)"])
        print(f"jobctl run -- true / ssh host true (new connection) = {ours / ssh:.2f}x (target <= 0.5x)")
    if args.importtime:
        print("\ncostliest imports of `import jobclient.cli` (cumulative, us):")
        for us, name in importtime_top(env):
            print(f"  {us:8d}  {name}")
    load = os.getloadavg()[0]
    print(f"\n{args.runs} runs each, interleaved; load average {load:.2f}; Python {sys.version.split()[0]}")
    return 0


class _Services:
    """The jobserver and sshd the optional figures need, stopped on exit."""

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.server_address = ""
        self.ssh_argv: list[str] = []
        self._server: object = None
        self._ssh: object = None

    def __enter__(self) -> _Services:
        if not self.args.server:
            return self
        sys.path.insert(0, str(HERE))
        from run_all import Server

        server = Server(self.workdir)
        self._server = server
        server.start()
        self.server_address = server.address
        if self.args.ssh:
            from ssh_anchor import SshAnchor, ensure_installed

            ensure_installed(install=True)
            anchor = SshAnchor(self.workdir / "ssh", _free_port())
            self._ssh = anchor
            anchor.start()
            # Multiplexing off: every run makes (and tears down) its own connection. ssh keeps the first
            # value of an option, so the anchor's ControlPath is dropped rather than overridden.
            options = anchor.argv[1:-1]
            kept: list[str] = []
            for flag, value in zip(options[::2], options[1::2], strict=True):
                if not value.startswith("ControlPath="):
                    kept += [flag, value]
            self.ssh_argv = [
                "ssh",
                *kept,
                "-o",
                "ControlMaster=no",
                "-o",
                "ControlPath=none",
                anchor.argv[-1],
            ]
        return self

    def __exit__(self, *exc: object) -> None:
        ssh: object = self._ssh
        if ssh is not None:
            ssh.stop()  # type: ignore[attr-defined]
        server: object = self._server
        if server is not None:
            server.stop()  # type: ignore[attr-defined]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
