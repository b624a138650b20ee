"""`jobctl`: the command-line client of the Remote Job Worker."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

# grpc's C core logs some failures (a refused TLS handshake...) to stderr by itself, and reads this
# once, when grpc is imported: set it first, so that every jobctl error is the one line jobctl prints.
# Set GRPC_VERBOSITY yourself to see grpc's logs.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from jobclient import _conversions as conv
from jobclient import _render as render
from jobclient import cli_removal
from jobclient.client import DEFAULT_TARGET, Client, write_all
from jobclient.credentials import CERTS_ENV, Credentials
from jobclient.errors import (
    CredentialsError,
    DeadlineExceeded,
    JobClientError,
    ServerError,
    Unavailable,
)
from jobclient.models import Isolation, Job, JobState, Limits
from jobclient.units import parse_cpu, parse_rate, parse_size

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_REFUSED = 4
EXIT_SERVER_ERROR = 5
EXIT_RUN_FAILED = 125
EXIT_FAILED_TO_START = 127
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away

MAIN_EPILOG = """\
identity (one of):
  --user NAME                  NAME.crt, NAME.key and ca.crt from the certificates folder:
                               $JOBCTL_CERTS, else the certs/ folder of the source checkout
  --cert F --key F --ca F      explicit files (all three)

environment (an option on the command line wins):
  JOBCTL_SERVER   --server          JOBCTL_USER  --user      JOBCTL_CERTS  --certs
  JOBCTL_CERT     --cert            JOBCTL_KEY   --key       JOBCTL_CA     --ca
  JOBCTL_JSON     --json (1/true/yes/on or 0/false/no/off)     JOBCTL_RECONNECT  --reconnect

exit status:
  0    success
  1    internal error in jobctl (a bug: please report it)
  2    usage error: bad option or value, missing or unreadable certificate/key file
  3    cannot reach the server: not running, wrong address, TLS handshake refused, timeout
  4    the server refused the request: job not found, permission denied, invalid
       argument, too many jobs, failed precondition
  5    the server failed (internal error)
  127  start/run: the command could not be started (job state failed_to_start)
  130  interrupted (Ctrl-C)
  141  stdout was closed early (e.g. `| head`)
  `jobctl run` exits with the JOB's status instead: its exit code, or 128+N when it was
  killed by signal N; and with 125 when jobctl itself failed (any of 1-5 above, or the job
  was lost), as `docker run` does. A job can exit with 125 too: to be certain, use
  `jobctl start`, `jobctl logs -f` and `jobctl status --json`.

examples:
  jobctl --user alice run -- sh -c 'echo hello; exit 3'; echo $?        # hello, 3
  id=$(jobctl --user alice start --memory 512M --cpu 0.5 -- sleep 60)
  jobctl --user alice status $id
  jobctl --user alice logs -f $id
  jobctl --user alice stop --grace 2 $id
  jobctl --user carl list --all                                       # carl is an admin
  JOBCTL_USER=bob JOBCTL_SERVER=10.0.0.5:50051 jobctl --json list
"""

START_EPILOG = """\
The command runs without a shell; put `--` before it so its own options are not read as
jobctl's. Sizes take binary suffixes: 512K, 512M, 1G (K = 1024); rates end in /s (10M/s).
`start` prints only the job id on stdout (the whole job with --json).

examples:
  jobctl --user alice start -- sleep 30
  jobctl --user alice start --memory 256M --pids 64 --env GREETING=hi -- sh -c 'echo $GREETING'
  jobctl --user alice start --cpu 0.5 --io-write 10M/s --cwd /tmp -- dd if=/dev/zero of=f bs=1M count=100
  jobctl --user alice start --host-network -- curl -s https://example.com
"""

RUN_EPILOG = """\
Starts the job, streams its output (stdout and stderr, interleaved as produced) to stdout
byte for byte, and exits with the job's exit code, or 128+N when it was killed by signal N.
Ctrl-C stops the job (SIGTERM, then SIGKILL after the server's grace period) and exits with
its status; a second Ctrl-C stops waiting (exit 130) and leaves the job to the server.
Exit 125 means jobctl itself failed (the message on stderr says why); 127 that the command
could not be started.

examples:
  jobctl --user alice run -- uname -a
  jobctl --user alice run --memory 64M -- python3 -c 'b = bytearray(1 << 30)'; echo $?  # 137: OOM
  jobctl --user alice run -- sh -c 'exit 3' || echo "failed with $?"
"""

STATUS_EPILOG = """\
Shows state, exit code or signal, OOM kill, times, resource usage and the limits applied.

examples:
  jobctl --user alice status 6f1c0e52-...
  jobctl --user alice --json status 6f1c0e52-... | jq -r .state
"""

LOGS_EPILOG = """\
Writes the job's output from its first byte to stdout, exactly as the command wrote it
(binary-safe). Without -f it stops at the output stored so far; with -f it keeps streaming
until the job ends.

examples:
  jobctl --user alice logs 6f1c0e52-...
  jobctl --user alice logs -f 6f1c0e52-... | grep ERROR
"""

STOP_EPILOG = """\
Sends SIGTERM to the job, then SIGKILL after the grace period; returns once it has ended and
prints its final state. Stopping a job that has already ended is not an error.

examples:
  jobctl --user alice stop 6f1c0e52-...
  jobctl --user alice stop --grace 0 6f1c0e52-...
"""

LIST_EPILOG = """\
Lists jobs oldest first: id, owner, state, start time, command. Users see their own jobs;
an admin may ask for everyone's (--all) or one user's (--user NAME).

examples:
  jobctl --user alice list
  jobctl --user carl list --all
  jobctl --user carl list --user bob
  jobctl --user alice --json list
"""


class UsageError(Exception):
    """A bad command line or local configuration; exit status 2 (125 for `run`)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UsageError(f"${name} must be 1/true/yes/on or 0/false/no/off, not {value!r}")


def _typed(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = what  # argparse names the type in its messages
    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive integer")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a number of seconds")
    return value


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env takes NAME=VALUE, got {text!r}")
    return name, value


def _add_job_options(p: argparse.ArgumentParser) -> None:
    limits = p.add_argument_group("limits (unset = the server's default)")
    limits.add_argument("--cpu", metavar="CORES", type=_typed(parse_cpu, "cpu"), help="CPU cores, e.g. 0.5")
    limits.add_argument(
        "--memory", metavar="SIZE", type=_typed(parse_size, "memory"), help="memory, e.g. 512M"
    )
    limits.add_argument(
        "--io-read", metavar="SIZE/s", type=_typed(parse_rate, "io-read"), help="disk read rate"
    )
    limits.add_argument(
        "--io-write", metavar="SIZE/s", type=_typed(parse_rate, "io-write"), help="disk write rate"
    )
    limits.add_argument("--io-read-iops", metavar="N", type=_typed(_positive_int, "io-read-iops"))
    limits.add_argument("--io-write-iops", metavar="N", type=_typed(_positive_int, "io-write-iops"))
    limits.add_argument(
        "--pids", metavar="N", type=_typed(_positive_int, "pids"), help="most processes/threads"
    )
    job = p.add_argument_group("environment and isolation")
    job.add_argument(
        "--env", metavar="NAME=VALUE", action="append", type=_env_pair, default=[],
        help="set a variable (repeatable); the job inherits nothing else",
    )  # fmt: skip
    job.add_argument(
        "--cwd", metavar="DIR", help="absolute working directory (default: a scratch directory of its own)"
    )
    job.add_argument("--host-network", action="store_true", help="share the host's network")
    job.add_argument("--no-pid-ns", action="store_true", help="share the host's PID namespace")
    job.add_argument("--no-mount-ns", action="store_true", help="share the host's mount namespace")
    job.add_argument("--no-uts-ns", action="store_true", help="share the host's hostname")
    job.add_argument("--no-ipc-ns", action="store_true", help="share the host's IPC namespace")
    job.add_argument(
        "--no-sandbox", action="store_true",
        help="the host's filesystem as it is and the user's capabilities (needs the server's permission)",
    )  # fmt: skip
    job.add_argument(
        "--root", action="store_true", help="run as root, not as your own uid (needs the server's permission)"
    )
    p.add_argument("command", nargs="+", metavar="CMD [ARG...]", help="the command and its arguments")


def _json_option(p: argparse.ArgumentParser) -> None:
    # Also accepted after the command name; SUPPRESS keeps the global value when absent.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    """jobctl's argument parser (defaults come from the environment at call time)."""
    fmt = argparse.RawDescriptionHelpFormatter
    env = os.environ.get
    parser = _Parser(
        prog="jobctl",
        description="Run Linux commands as isolated, resource-limited jobs on a Remote Job Worker server.",
        epilog=MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument(
        "--server", metavar="HOST:PORT", default=env("JOBCTL_SERVER") or DEFAULT_TARGET,
        help=f"the server (default {DEFAULT_TARGET})",
    )  # fmt: skip
    parser.add_argument("--user", metavar="NAME", help="use NAME's certificate from the certificates folder")
    parser.add_argument("--certs", metavar="DIR", help=f"the certificates folder for --user (${CERTS_ENV})")
    parser.add_argument("--cert", metavar="FILE", help="client certificate (PEM)")
    parser.add_argument("--key", metavar="FILE", help="client private key (PEM)")
    parser.add_argument("--ca", metavar="FILE", help="CA certificate that signed the server's (PEM)")
    parser.add_argument(
        "--tls-server-name", metavar="NAME",
        help="expect NAME in the server's certificate instead of the --server host, e.g. "
        "--server 127.0.0.1:50051 --tls-server-name worker-1.example.com",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", help="machine-readable output (start, status, stop, list)"
    )
    parser.add_argument(
        "--reconnect", metavar="SECONDS", type=_typed(_seconds, "reconnect"),
        default=env("JOBCTL_RECONNECT") or "60",
        help="how long `run` keeps following its job while the server is unreachable, e.g. "
        "restarting (default 60)",
    )  # fmt: skip
    commands = parser.add_subparsers(
        dest="command_name", metavar="COMMAND", required=True, parser_class=_Parser
    )

    job_usage = "%(prog)s [-h] [options] -- CMD [ARG...]"
    p = commands.add_parser(
        "start", help="start a job; print its id", epilog=START_EPILOG, formatter_class=fmt, usage=job_usage
    )
    p.description = "Start a job and print its id."
    _json_option(p)
    _add_job_options(p)

    p = commands.add_parser(
        "run",
        help="start a job, stream its output, exit with its status",
        epilog=RUN_EPILOG,
        formatter_class=fmt,
        usage=job_usage,
    )
    p.description = "Start a job, stream its output live and exit with the job's exit status."
    _add_job_options(p)

    p = commands.add_parser("status", help="show a job's status", epilog=STATUS_EPILOG, formatter_class=fmt)
    p.description = "Show a job's status."
    _json_option(p)
    p.add_argument("job_id", metavar="JOB_ID")

    p = commands.add_parser("logs", help="print a job's output", epilog=LOGS_EPILOG, formatter_class=fmt)
    p.description = "Print a job's output from its first byte."
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming until the job ends")
    p.add_argument("job_id", metavar="JOB_ID")

    p = commands.add_parser("stop", help="stop a job", epilog=STOP_EPILOG, formatter_class=fmt)
    p.description = "Stop a job."
    _json_option(p)
    p.add_argument(
        "--grace", metavar="SECONDS", type=_typed(_seconds, "grace"),
        help="seconds between SIGTERM and SIGKILL (server default: 10)",
    )  # fmt: skip
    p.add_argument("job_id", metavar="JOB_ID")

    p = commands.add_parser("list", help="list jobs", epilog=LIST_EPILOG, formatter_class=fmt)
    p.description = "List jobs."
    _json_option(p)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--all", action="store_true", help="every user's jobs (admins)")
    scope.add_argument("--user", dest="list_user", metavar="NAME", help="NAME's jobs (admins; or yourself)")
    cli_removal.add_commands(commands, fmt)
    return parser


def _credentials(args: argparse.Namespace) -> Credentials:
    files = (args.cert, args.key, args.ca)
    if args.user is not None and any(files):
        raise UsageError("give either --user or --cert/--key/--ca, not both")
    if args.user is None and not any(files):
        env_files = (os.environ.get("JOBCTL_CERT"), os.environ.get("JOBCTL_KEY"), os.environ.get("JOBCTL_CA"))
        env_user = os.environ.get("JOBCTL_USER")
        if env_user and any(env_files):
            raise UsageError("both $JOBCTL_USER and $JOBCTL_CERT/$JOBCTL_KEY/$JOBCTL_CA are set: unset one")
        files = env_files
        args.user = env_user or None
        if args.user is None and not any(files):
            raise UsageError("who are you? give --user NAME (or set $JOBCTL_USER), or --cert, --key and --ca")
    if args.user is not None:
        return Credentials.for_user(args.user, args.certs)
    cert, key, ca = files
    if not (cert and key and ca):
        missing = [flag for flag, value in zip(("--cert", "--key", "--ca"), files, strict=True) if not value]
        raise UsageError(f"--cert, --key and --ca go together: missing {', '.join(missing)}")
    return Credentials.from_files(cert=cert, key=key, ca=ca)


def _limits(args: argparse.Namespace) -> Limits:
    try:
        return Limits(
            cpu=args.cpu,
            memory=args.memory,
            pids=args.pids,
            io_read_bps=args.io_read,
            io_write_bps=args.io_write,
            io_read_iops=args.io_read_iops,
            io_write_iops=args.io_write_iops,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _start(client: Client, args: argparse.Namespace) -> Job:
    isolation = Isolation(
        pid=not args.no_pid_ns,
        mount=not args.no_mount_ns,
        net=not args.host_network,
        uts=not args.no_uts_ns,
        ipc=not args.no_ipc_ns,
        sandbox=not (args.no_sandbox or args.no_mount_ns),
        run_as_root=args.root,
    )
    return client.start(
        args.command, env=dict(args.env), cwd=args.cwd, limits=_limits(args), isolation=isolation
    )


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _diag(message: str) -> None:
    print(f"jobctl: {message}", file=sys.stderr, flush=True)


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    job = _start(client, args)
    if args.json:
        _print_json(conv.job_to_json(job))
    else:
        _print(job.id)
    if job.state is JobState.FAILED_TO_START:
        _diag(f"job {job.id} failed to start: {job.reason or 'no reason given'}")
        return EXIT_FAILED_TO_START
    return EXIT_OK


class _CountingStdout:
    """Writes chunks to stdout (flushed each) and counts them, so a follow can resume where it left.

    While installed as the SIGINT handler, a Ctrl-C that lands between writing a chunk and counting it
    is deferred until both are done: otherwise the resumed stream would repeat the chunk. (Blocking the
    signal is not enough: the kernel may deliver it to one of grpc's threads.) A second Ctrl-C during
    the same write is not deferred, so a stuck stdout cannot make jobctl deaf.
    """

    def __init__(self) -> None:
        self.count = 0
        self._writing = False
        self._deferred = False

    def __call__(self, chunk: bytes) -> None:
        self._writing = True
        try:
            write_all(sys.stdout.buffer, chunk)
            self.count += len(chunk)
        finally:
            self._writing = False
        if self._deferred:
            self._deferred = False
            raise KeyboardInterrupt

    def on_sigint(self, signum: int, frame: object) -> None:
        if self._writing and not self._deferred:
            self._deferred = True
            return
        raise KeyboardInterrupt


def _run_exit_status(job: Job) -> int:
    if job.oom_killed:
        _diag(f"job {job.id} ran out of memory (OOM-killed)")
    if job.state is JobState.KILLED and job.signal is not None and not job.oom_killed:
        _diag(f"job {job.id} was killed by {render.signal_name(job.signal)}")
    status = job.exit_status
    if status is not None:
        return status
    if job.state is JobState.FAILED_TO_START:
        _diag(f"job {job.id} failed to start: {job.reason or 'no reason given'}")
        return EXIT_FAILED_TO_START
    reason = f": {job.reason}" if job.reason else ""
    _diag(f"job {job.id} ended {render.state_text(job)}{reason}; its exit status is unknown")
    return EXIT_RUN_FAILED


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    job = _start(client, args)
    if job.state is JobState.FAILED_TO_START:
        return _run_exit_status(job)
    out = _CountingStdout()
    previous = signal.signal(signal.SIGINT, out.on_sigint)
    try:
        try:
            job = client.wait(job.id, out=out)
        except KeyboardInterrupt:
            _diag(f"stopping job {job.id} (Ctrl-C again to stop waiting)")
            try:
                client.stop(job.id)
                job = client.wait(job.id, out=out, offset=out.count)
            except KeyboardInterrupt:
                _diag(f"no longer waiting; job {job.id} may still be running")
                return EXIT_INTERRUPTED
    except JobClientError as e:
        e.message += f"; job {job.id} may still be running (see `jobctl status {job.id}`)"
        raise
    except BrokenPipeError:
        # Like a local command whose reader went away: the job is stopped too.
        _silence_stdout()
        with contextlib.suppress(JobClientError):
            client.stop(job.id, grace=0)
        return EXIT_BROKEN_PIPE
    finally:
        signal.signal(signal.SIGINT, previous)
    return _run_exit_status(job)


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    job = client.status(args.job_id)
    if args.json:
        _print_json(conv.job_to_json(job))
    else:
        _print(render.status_text(job))
    return EXIT_OK


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    with client.output(args.job_id, offset=0, follow=args.follow) as stream:
        for chunk in stream:
            write_all(sys.stdout.buffer, chunk)
    return EXIT_OK


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    job = client.stop(args.job_id, grace=args.grace)
    if args.json:
        _print_json(conv.job_to_json(job))
    else:
        _print(f"{job.id} {render.state_text(job)}")
    return EXIT_OK


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    jobs = client.list(all_users=args.all, user=args.list_user)
    if args.json:
        _print_json([conv.job_to_json(job) for job in jobs])
    elif jobs:
        _print(render.jobs_table(jobs))
    else:
        _diag("no jobs")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "start": cmd_start,
    "run": cmd_run,
    "status": cmd_status,
    "logs": cmd_logs,
    "stop": cmd_stop,
    "list": cmd_list,
    **cli_removal.COMMANDS,
}


def _exit_status_for(error: JobClientError) -> int:
    if isinstance(error, CredentialsError):
        return EXIT_USAGE
    if isinstance(error, Unavailable | DeadlineExceeded):
        return EXIT_UNAVAILABLE
    if isinstance(error, ServerError):
        return EXIT_SERVER_ERROR
    return EXIT_REFUSED


def _silence_stdout() -> None:
    # Python flushes stdout at exit; with the reader gone that would print a second BrokenPipeError.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run jobctl; return its exit status (the console script passes it to sys.exit)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command: str | None = None
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(args_list)
        except UsageError:
            # Find out whether it was `run` (whose failures are 125) without trusting the bad parse.
            command = next((a for a in args_list if a in COMMANDS), None)
            raise
        command = args.command_name
        args.json = args.json or _env_flag("JOBCTL_JSON")
        credentials = _credentials(args)
        with Client(
            args.server,
            credentials=credentials,
            reconnect=args.reconnect,
            tls_server_name=args.tls_server_name,
        ) as client:
            return COMMANDS[args.command_name](client, args)
    except UsageError as e:
        _diag(str(e))
        return EXIT_RUN_FAILED if command == "run" else EXIT_USAGE
    except JobClientError as e:
        _diag(e.message)
        return EXIT_RUN_FAILED if command == "run" else _exit_status_for(e)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as e:  # a bug in jobctl: still one line, never a traceback
        _diag(f"internal error: {type(e).__name__}: {e}")
        return EXIT_RUN_FAILED if command == "run" else EXIT_INTERNAL
