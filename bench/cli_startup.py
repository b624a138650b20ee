"""jobctl start-up cost, as ratios to baselines measured in the same run (issue 14).

    .venv/bin/python bench/cli_startup.py                 # import + --help, against `python -c pass`
    .venv/bin/python bench/cli_startup.py --server        # also `jobctl run -- true` on a real jobserver
    .venv/bin/python bench/cli_startup.py --server --ssh  # ... and vs a new-connection `ssh host true`
    .venv/bin/python bench/cli_startup.py --runs 40 --importtime
    .venv/bin/python bench/cli_startup.py --server --ssh --before /tmp/old/packages/jobclient/src

`--before SRC` adds the same commands run with another jobclient source tree first on PYTHONPATH
(e.g. `git archive main packages/jobclient | tar -x -C /tmp/old`), so that a change is measured
against the code it replaces in the same run.

`--target HOST:PORT` uses a jobserver already running there instead of starting one (`--server` is
implied); `--ssh-port N` puts the throwaway sshd on port N (default: a free port).

`--bytecode cache` gives the timed processes a bytecode cache of their own (PYTHONPYCACHEPREFIX in the
temporary directory, PYTHONDONTWRITEBYTECODE unset): the warm-up run writes it, the timed runs read
it, as an installed wheel's precompiled modules are read. The default (`--bytecode env`) runs them
in this environment as it is: where PYTHONDONTWRITEBYTECODE=1 is set (this machine's shells) and the
jobclient source is an editable checkout without __pycache__, every process compiles the jobclient
modules it imports.

`--breakdown` then times the phases of `jobctl run -- true` inside the process (and of the
`--before` tree's, interleaved): interpreter start, each group of imports, the parser, the channel
set-up, each RPC, and the interpreter's exit after main() returned. Medians of `--runs`.

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
    parser.add_argument("--target", metavar="HOST:PORT", help="use this running jobserver (implies --server)")
    parser.add_argument(
        "--ssh-port", metavar="N", type=int, default=0, help="the sshd's port (default: free)"
    )
    parser.add_argument(
        "--bytecode", choices=("env", "cache"), default="env",
        help="env: as this environment is (default); cache: a bytecode cache of the bench's own",
    )  # fmt: skip
    parser.add_argument(
        "--breakdown", action="store_true", help="with --server: time the phases of `jobctl run -- true`"
    )
    args = parser.parse_args(argv)
    args.server = args.server or bool(args.target)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_"))}
    env.update(JOBCTL_USER="alice", JOBCTL_CERTS=str(CERTS))
    jobctl = str(BIN / "jobctl")
    commands = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "python -c 'import jobclient.cli'": [sys.executable, "-c", "import jobclient.cli"],
        "jobctl --help": [jobctl, "--help"],
    }
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp, _Services(Path(tmp), args) as services:
        if args.bytecode == "cache":
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        if services.server_address:
            env["JOBCTL_SERVER"] = services.server_address
            commands["jobctl run -- true"] = [jobctl, "run", "--", "true"]
        if services.ssh_argv:
            commands["ssh host true (new connection)"] = [*services.ssh_argv, "true"]
        if args.before:
            # A script shaped like the console script pip writes (a file, not `-c`), on the old tree:
            # its console_main where it has one (the entry point since 2026-12-02), else main().
            script = Path(tmp) / "jobctl-before"
            script.write_text(
                f"import re\nimport sys\nsys.path.insert(0, {args.before!r})\n"
                "from jobclient import cli\nsys.argv[0] = 'jobctl'\n"
                "sys.exit((getattr(cli, 'console_main', None) or cli.main)())\n"
            )
            before = [sys.executable, str(script)]
            commands["(before) import jobclient.cli"] = [
                sys.executable, "-c", f"import sys; sys.path.insert(0, {args.before!r}); import jobclient.cli"
            ]  # fmt: skip
            commands["(before) jobctl --help"] = [*before, "--help"]
            if services.server_address:
                commands["(before) jobctl run -- true"] = [*before, "run", "--", "true"]
        times = measure(commands, args.runs, env)
        phases = {}
        if args.breakdown and services.server_address:
            trees = {"after": None, **({"before": args.before} if args.before else {})}
            phases = breakdown(trees, args.runs, env)
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"{'command':<36} {'median':>8} {'p90':>8} {'ratio':>9}   (ms; ratio to python -c pass)")
    for name, values in times.items():
        print(_row(name, values, base))
    if "jobctl run -- true" in times and "ssh host true (new connection)" in times:
        ours = statistics.median(times["jobctl run -- true"])
        ssh = statistics.median(times["ssh host true (new connection)"])
        print(f"jobctl run -- true / ssh host true (new connection) = {ours / ssh:.2f}x (target <= 0.5x)")
    if phases:
        print_breakdown(phases)
    if args.importtime:
        print("\ncostliest imports of `import jobclient.cli` (cumulative, us):")
        for us, name in importtime_top(env):
            print(f"  {us:8d}  {name}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    dont_write = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    print(
        f"\n{args.runs} runs each, interleaved; load average (1/5/15 min) {load}; "
        f"Python {sys.version.split()[0]}; bytecode: {args.bytecode}"
        f"{'' if args.bytecode == 'cache' else f' (PYTHONDONTWRITEBYTECODE={dont_write!r})'}"
    )
    return 0


#: `jobctl run -- true` in one process, with the time of each phase (wall clock, shared with the parent
#: for the interpreter's start and exit). The imports are done first, in the order jobctl needs them,
#: so that each group is timed; then main() runs with its steps wrapped.
_PHASE_PROBE = r"""
import os, sys, time
_first = time.time()
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
_spent = {}
def _add(label, since):
    now = time.time()
    _spent[label] = _spent.get(label, 0.0) + now - since
    return now
t = _first
import jobclient.cli as cli
t = _add("import jobclient.cli", t)
getattr(cli, "_defer_unused_modules", lambda: None)()  # as console_main does first, where the tree has it
import grpc
t = _add("import grpc (+ asyncio, grpc.aio unless deferred)", t)
from jobclient.proto.jobworker.v1 import jobworker_pb2, jobworker_pb2_grpc
t = _add("import the generated code (protobuf runtime)", t)
import jobclient.client, jobclient.credentials, jobclient.models, jobclient._render, jobclient._malloc
t = _add("import the SDK (attrs, models, client, render)", t)
def _wrap(owner, name, label):
    original = getattr(owner, name)
    def timed(*args, **kwargs):
        since = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            _add(label, since)
    setattr(owner, name, timed)
_wrap(cli, "build_parser", "build the parser, parse")
_wrap(cli, "_connect", "settings, read + check the key pair, channel")
_wrap(jobclient.client.Client, "start", "StartJob (TCP + TLS handshake + the server's start)")
_wrap(jobclient.client.Client, "wait", "StreamOutput + GetJob")
_wrap(jobclient.client.Client, "status", "GetJob")
_main = cli.main
def main(*args):
    since = time.time()
    status = _main(*args)
    _add("main()", since)
    _spent["main returned"] = time.time()
    sys.stderr.write("PHASES " + repr((_first, _spent)) + chr(10))
    return status
cli.main = main
sys.argv = ["jobctl", "run", "--", "true"]
entry = getattr(cli, "console_main", None) or cli.main
sys.exit(entry())
"""


_START_LABEL = "StartJob (TCP + TLS handshake + the server's start)"


def _phases_once(env: dict[str, str]) -> dict[str, float]:
    import ast

    spawned = time.time()
    done = subprocess.run(
        [sys.executable, "-c", _PHASE_PROBE],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    ended = time.time()
    line = next((x for x in done.stderr.decode().splitlines() if x.startswith("PHASES ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"the phase probe failed ({done.returncode}): {done.stderr.decode()[-800:]}")
    first, spent = ast.literal_eval(line.removeprefix("PHASES "))
    wait = spent.pop("StreamOutput + GetJob")
    steps = ["build the parser, parse", "settings, read + check the key pair, channel", _START_LABEL]
    phases = {"interpreter start (to the first line)": first - spawned}
    phases.update((k, v) for k, v in spent.items() if k.startswith("import"))
    phases.update((k, spent[k]) for k in steps)
    # `run` takes the job's end from the stream's trailers; GetJob only where they did not carry it.
    phases["StreamOutput (until the job has ended)"] = wait - spent.get("GetJob", 0.0)
    phases["GetJob"] = spent.get("GetJob", 0.0)
    phases["the rest of main() (signals, malloc tuning, close)"] = (
        spent["main()"] - wait - sum(spent[k] for k in steps)
    )
    phases["interpreter exit (after main() returned)"] = ended - spent["main returned"]
    phases["total (process wall time)"] = ended - spawned
    return phases


def breakdown(
    trees: dict[str, str | None], runs: int, env: dict[str, str]
) -> dict[str, list[dict[str, float]]]:
    """Per tree (None: the installed jobclient), `runs` phase timings, round-robin after a warm-up."""
    envs = {name: env if src is None else dict(env, PYTHONPATH=src) for name, src in trees.items()}
    for tree_env in envs.values():
        _phases_once(tree_env)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(runs):
        for name, tree_env in envs.items():
            results[name].append(_phases_once(tree_env))
    return results


def print_breakdown(results: dict[str, list[dict[str, float]]]) -> None:
    names = list(results)
    print(f"\nwhere `jobctl run -- true` spends its time (median ms of {len(results[names[0]])} runs):")
    print(f"{'phase':<56} " + " ".join(f"{n:>8}" for n in names))
    for phase in results[names[0]][0]:
        medians = [statistics.median(r[phase] for r in results[n]) * 1000 for n in names]
        print(f"{phase:<56} " + " ".join(f"{m:8.1f}" for m in medians))


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

        if self.args.target:
            self.server_address = self.args.target
        else:
            server = Server(self.workdir)
            self._server = server
            server.start()
            self.server_address = server.address
        if self.args.ssh:
            from ssh_anchor import SshAnchor, ensure_installed

            ensure_installed(install=True)
            anchor = SshAnchor(self.workdir / "ssh", self.args.ssh_port or _free_port())
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
