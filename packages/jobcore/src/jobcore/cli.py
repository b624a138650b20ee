"""`python -m jobcore`: run a command as a local job (a small `systemd-run`), or probe the host.

python -m jobcore run [OPTIONS] -- CMD [ARG...]
python -m jobcore probe [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import attrs

from jobcore import __version__, units
from jobcore.controllers import load_controller, probe_all
from jobcore.errors import InvalidSpec, JobError
from jobcore.spec import Isolation, JobSpec, Limits, RunAs
from jobcore.status import JobState
from jobcore.worker import DEFAULT_GRACE, DEFAULT_OUTPUT_CAP, Worker

#: Exit status when jobcore itself fails (bad option, cannot start the Worker), as `docker run` does.
EXIT_JOBCORE_FAILED = 125
#: Exit status when the command could not be executed (as a shell reports "command not found").
EXIT_FAILED_TO_START = 127

RUN_EPILOG = """\
The command runs with its own PID, mount, network, UTS and IPC namespaces (turn each off with the
--no-*-ns options or --host-network) and under the limits given. Its output goes to stdout byte for
byte (stdout and stderr interleaved as they arrived); diagnostics go to stderr. Ctrl-C stops the job
(SIGTERM, then SIGKILL after --grace seconds); a second Ctrl-C kills it at once.

exit status: the command's exit code; 128+N when it was killed by signal N; 127 when it could not be
executed; 125 when jobcore itself failed (bad option, unusable host).

examples:
  python -m jobcore run -- echo hello
  python -m jobcore run --memory 256M --cpu 0.5 --pids 64 -- stress --vm 1 --vm-bytes 100M --timeout 5
  python -m jobcore run --io-write 10M/s --cwd /var/tmp -- dd if=/dev/zero of=f bs=1M count=50 oflag=direct
  python -m jobcore run --host-network --env GREETING=hi -- sh -c 'echo $GREETING; hostname'
"""


def _size(text: str) -> int:
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> int:
    try:
        return units.parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cpu(text: str) -> float:
    try:
        return units.parse_cpu(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a whole number") from None


def _env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"invalid --env {text!r}: expected NAME=VALUE")
    return name, value


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe a job (the same as `jobctl start`'s)."""
    limits = parser.add_argument_group("limits")
    limits.add_argument("--cpu", type=_cpu, metavar="CORES", help="CPU limit in cores, e.g. 0.5")
    limits.add_argument("--memory", type=_size, metavar="SIZE", help="memory limit, e.g. 512M, 1G (no swap)")
    limits.add_argument("--io-read", type=_rate, metavar="SIZE/s", help="disk read limit, e.g. 10M/s")
    limits.add_argument("--io-write", type=_rate, metavar="SIZE/s", help="disk write limit, e.g. 10M/s")
    limits.add_argument("--io-read-iops", type=_count, metavar="N", help="disk read operations per second")
    limits.add_argument("--io-write-iops", type=_count, metavar="N", help="disk write operations per second")
    limits.add_argument("--pids", type=_count, metavar="N", help="most processes and threads at once")
    job = parser.add_argument_group("job")
    job.add_argument(
        "--env", type=_env, action="append", default=[], metavar="K=V", help="set a variable (repeatable)"
    )
    job.add_argument(
        "--cwd", metavar="DIR", help="absolute working directory (default: a scratch directory of its own)"
    )
    job.add_argument(
        "--user", type=_run_as, metavar="UID[:GID]",
        help="run the command as this uid (and gid; default: the uid), with no supplementary groups "
        "(default: your own user)",
    )  # fmt: skip
    iso = parser.add_argument_group("isolation")
    iso.add_argument("--host-network", action="store_true", help="share the host's network")
    for ns, what in (("pid", "PID"), ("mount", "mount"), ("uts", "UTS (hostname)"), ("ipc", "IPC")):
        iso.add_argument(f"--no-{ns}-ns", action="store_true", help=f"share the host's {what} namespace")
    iso.add_argument(
        "--no-sandbox", action="store_true",
        help="no sandbox: the host's filesystem as it is, the user keeps its capabilities "
        "(implied by --no-mount-ns)",
    )  # fmt: skip


def _run_as(text: str) -> RunAs:
    try:
        return RunAs.parse(text)
    except InvalidSpec as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def spec_from_args(args: argparse.Namespace, owner: str = "local") -> JobSpec:
    limits = Limits(
        cpu=args.cpu,
        memory=args.memory,
        pids=args.pids,
        io_read_bps=args.io_read,
        io_write_bps=args.io_write,
        io_read_iops=args.io_read_iops,
        io_write_iops=args.io_write_iops,
    )
    isolation = Isolation(
        pid=not args.no_pid_ns,
        mount=not args.no_mount_ns,
        net=not args.host_network,
        uts=not args.no_uts_ns,
        ipc=not args.no_ipc_ns,
        sandbox=not (args.no_sandbox or args.no_mount_ns),
    )
    return JobSpec(
        args.command,
        env=dict(args.env),
        cwd=args.cwd,
        limits=limits,
        isolation=isolation,
        owner=owner,
        user=args.user,
    )


class _Parser(argparse.ArgumentParser):
    """Bad options exit 125 (jobcore itself failed), as the help promises, not argparse's 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m jobcore",
        description="Run a command as an isolated, resource-limited job on this machine, or probe it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m jobcore run -- echo hello\n  python -m jobcore probe --json",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="action", required=True, metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="run CMD as a job, stream its output, exit with its status",
        description="Run CMD as a job and stream its output; exit with the job's exit status.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=RUN_EPILOG,
    )
    run.add_argument("--controller", default="auto", help="resource-controller backend (default: auto)")
    run.add_argument(
        "--state-dir", help="keep the job's state here (default: a temporary directory, removed)"
    )
    run.add_argument(
        "--output-cap",
        type=_size,
        default=DEFAULT_OUTPUT_CAP,
        metavar="SIZE",
        help="most output stored; past it the job is killed (default 1G)",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="time between SIGTERM and SIGKILL on Ctrl-C (default 10)",
    )
    add_job_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    probe = sub.add_parser(
        "probe",
        help="report the resource-controller backends usable here",
        description="Report every registered resource-controller backend's capabilities, and which one "
        "'auto' picks.",
    )
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _fail(message: str, code: int = EXIT_JOBCORE_FAILED) -> NoReturn:
    print(f"jobcore: {message}", file=sys.stderr)
    sys.exit(code)


def _probe(as_json: bool) -> int:
    reports = probe_all()
    try:
        chosen: str | None = load_controller("auto").name
    except JobError:
        chosen = None
    if as_json:
        print(
            json.dumps(
                {"auto": chosen, "backends": {n: attrs.asdict(c) for n, c in reports.items()}}, indent=2
            )
        )
        return 0
    for name, caps in reports.items():
        mark = " (auto picks this)" if name == chosen else ""
        print(f"{name}{mark}: {'available' if caps.available else 'unavailable'}")
        if caps.reason:
            print(f"  reason: {caps.reason}")
        if caps.available:
            print(f"  mode: {caps.mode}")
            for root in caps.job_roots:
                print(f"  job root: {root}")
            print(f"  enforceable limits: {', '.join(caps.enforceable) or 'none'}")
            for feature, present in sorted(caps.features.items()):
                print(f"  {feature}: {'yes' if present else 'no'}")
        for note in caps.notes:
            print(f"  note: {note}")
    return 0


def _run(args: argparse.Namespace) -> int:
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _fail("no command given: python -m jobcore run [OPTIONS] -- CMD [ARG...]")
    args.command = command
    try:
        spec = spec_from_args(args)
    except JobError as exc:
        _fail(str(exc))
    temporary = args.state_dir is None
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="jobcore-run-")
    try:
        with Worker(state_dir, controller=args.controller, output_cap=args.output_cap) as worker:
            return _run_job(worker, spec, args.grace)
    except JobError as exc:
        _fail(str(exc))
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)


def _run_job(worker: Worker, spec: JobSpec, grace: float) -> int:
    status = worker.start(spec)
    if status.state is JobState.FAILED_TO_START:
        print(f"jobcore: {status.reason}", file=sys.stderr)
        return EXIT_FAILED_TO_START
    interrupts = 0

    def on_interrupt(_signum: int, _frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        wait = grace if interrupts == 1 else 0.0
        print(f"jobcore: stopping job {status.id} (grace {wait:g} s)", file=sys.stderr)
        threading.Thread(target=_stop_quietly, args=(worker.stop, status.id, wait), daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    out = sys.stdout.buffer
    try:
        for chunk in worker.output(status.id):
            try:
                out.write(chunk)
                out.flush()
            except BrokenPipeError:
                # Nobody reads our output any more: stop the job, as a pipeline would.
                _stop_quietly(worker.stop, status.id, grace)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                break
    finally:
        signal.signal(signal.SIGINT, previous)
    final = worker.wait(status.id)
    if final.oom_killed:
        print(f"jobcore: job {final.id} was killed by the OOM killer", file=sys.stderr)
    elif final.output_capped:
        print(f"jobcore: job {final.id}: {final.reason}", file=sys.stderr)
    return final.shell_exit_code


def _stop_quietly(stop: Callable[[str, float], Any], job_id: str, grace: float) -> None:
    try:
        stop(job_id, grace)
    except JobError as exc:
        print(f"jobcore: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "probe":
        return _probe(args.json)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
