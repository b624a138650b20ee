"""`jobctl`: the command-line client of the Remote Job Worker.

Start-up time matters (a CLI is started for every command), so this module imports only the standard
library's light modules and jobclient's grpc-free ones (`config`, `errors`, `units`, `_version`).
grpc, the generated code, attrs and the SDK are imported once the command line has been parsed and a
command needs the server; cattrs only for `--json`. `tests/jobclient/test_cli_imports.py` pins this.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

# grpc's C core logs some failures (a refused TLS handshake...) to stderr by itself, and reads this
# once, when grpc is imported: set it first, so that every jobctl error is the one line jobctl prints.
# Set GRPC_VERBOSITY yourself to see grpc's logs.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from jobclient import cli_removal, config
from jobclient._version import __version__
from jobclient.errors import (
    ConfigError,
    CredentialsError,
    DeadlineExceeded,
    JobClientError,
    JobNotFound,
    ServerError,
    Unavailable,
)
from jobclient.units import parse_cpu, parse_rate, parse_size

if TYPE_CHECKING:
    from jobclient.client import Client
    from jobclient.models import Job, Limits

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_REFUSED = 4
EXIT_SERVER_ERROR = 5
EXIT_RUN_FAILED = 125
EXIT_CANNOT_INVOKE = 126  # as a shell (and docker): the command exists but cannot be executed
EXIT_NOT_FOUND = 127  # as a shell (and docker): no such command
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away

#: errno names in a failed start's reason that mean "found but not executable" (exit 126).
_CANNOT_INVOKE = ("(EACCES)", "(EPERM)", "(ENOEXEC)", "(EISDIR)", "(ETXTBSY)")

MAIN_EPILOG = """\
identity (one of):
  --user NAME                  NAME.crt, NAME.key and ca.crt from the certificates folder:
                               $JOBCTL_CERTS, else the certs/ folder of the source checkout
  --cert F --key F --ca F      explicit files (all three)
  --context NAME               a context of the config file (below)

environment (an option on the command line wins; both win over the context):
  JOBCTL_SERVER   --server          JOBCTL_USER  --user      JOBCTL_CERTS  --certs
  JOBCTL_CERT     --cert            JOBCTL_KEY   --key       JOBCTL_CA     --ca
  JOBCTL_CONTEXT  --context         JOBCTL_CONFIG  the config file
  JOBCTL_TLS_SERVER_NAME  --tls-server-name  the name the server's certificate must hold
  JOBCTL_JSON     --json (1/true/yes/on or 0/false/no/off)     JOBCTL_RECONNECT  --reconnect

config file ($JOBCTL_CONFIG, default ~/.config/jobctl/config.toml), named contexts:
  current-context = "lab"
  [contexts.lab]
  server = "worker1.example.com"      # port 50051 unless given
  ca = "lab/ca.crt"                   # relative paths: from the config file's folder
  cert = "lab/alice.crt"
  key = "lab/alice.key"
  tls-server-name = "worker1"         # optional

exit status:
  0    success
  1    internal error in jobctl (a bug: please report it)
  2    usage error: bad option or value, bad config file, missing or unreadable
       certificate/key file
  3    cannot reach the server: not running, wrong address, TLS handshake refused, timeout
  4    the server refused the request: job not found, permission denied, invalid
       argument, too many jobs, failed precondition; an ambiguous job id prefix
  5    the server failed (internal error)
  126  start/run: the command exists but cannot be executed (permission denied...)
  127  start/run: the command was not found (or could not be started otherwise)
  130  interrupted (Ctrl-C)
  141  stdout was closed early (e.g. `| head`)
  `jobctl run` exits with the JOB's status instead: its exit code, or 128+N when it was
  killed by signal N; and with 125 when jobctl itself failed (any of 1-5 above, or the job
  was lost), as `docker run` does. A job can exit with 125 too: to be certain, use
  `jobctl start`, `jobctl logs -f` and `jobctl status --json`.

Job ids may be shortened to any unique prefix (`jobctl status 6f1c`).

examples:
  jobctl --user alice run -- sh -c 'echo hello; exit 3'; echo $?        # hello, 3
  id=$(jobctl --user alice start --memory 512M --cpu 0.5 -- sleep 60)
  jobctl --user alice status $id
  jobctl --user alice logs -f $id
  jobctl --user alice stop --grace 2 $id
  jobctl --user carl list --all                                       # carl is an admin
  JOBCTL_USER=bob JOBCTL_SERVER=10.0.0.5 jobctl --json list           # port 50051
  jobctl --context lab list
  source <(jobctl completion bash)
"""

START_EPILOG = """\
The command runs without a shell; put `--` before it so its own options are not read as
jobctl's. Sizes take binary suffixes: 512K, 512M, 1G (K = 1024); rates end in /s (10M/s).
The job's environment is only what --env and --env-file give it (PATH gets a default).
Its stdin is /dev/null: jobctl does not send its own stdin (it says so when stdin has data).
`start` prints only the job id on stdout (the whole job with --json).

examples:
  jobctl --user alice start -- sleep 30
  jobctl --user alice start --memory 256M --pids 64 --env GREETING=hi -- sh -c 'echo $GREETING'
  jobctl --user alice start --env HOME --env-file ./job.env -- env   # HOME as jobctl sees it
  jobctl --user alice start --cpu 0.5 --io-write 10M/s --cwd /tmp -- dd if=/dev/zero of=f bs=1M count=100
  jobctl --user alice start --host-network -- curl -s https://example.com
"""

RUN_EPILOG = """\
Starts the job, streams its output (stdout and stderr, interleaved as produced) to stdout
byte for byte, and exits with the job's exit code, or 128+N when it was killed by signal N.
Ctrl-C stops the job (SIGTERM, then SIGKILL after the server's grace period) while its
output keeps coming; a second Ctrl-C kills it at once (SIGKILL), as `python -m jobcore run`
does; a third stops waiting (exit 130) and leaves the job to the server.
Exit 125 means jobctl itself failed (the message on stderr says why); 126 that the command
cannot be executed, 127 that it was not found. The options are those of `start`.

examples:
  jobctl --user alice run -- uname -a
  jobctl --user alice run --memory 64M -- python3 -c 'b = bytearray(1 << 30)'; echo $?  # 137: OOM
  jobctl --user alice run -- sh -c 'exit 3' || echo "failed with $?"
"""

STATUS_EPILOG = """\
Shows state, exit code or signal, OOM kill, times, resource usage and the limits applied.
Several ids: one report each, separated by a blank line (a JSON array with --json); an id
that fails is reported on stderr, the others are still shown, and the exit status is 4.

examples:
  jobctl --user alice status 6f1c0e52-...
  jobctl --user alice status 6f1c 9a2b
  jobctl --user alice --json status 6f1c0e52-... | jq -r .state
"""

LOGS_EPILOG = """\
Writes the job's output from its first byte to stdout, exactly as the command wrote it
(binary-safe). Without -f it stops at the output stored so far; with -f it keeps streaming
until the job ends. --stdout/--stderr keep one stream; --since and --tail start later;
-t prefixes every line with the time it was written (RFC 3339, UTC).
--offset N starts at byte N of the whole output: the number a broken follow reports.

examples:
  jobctl --user alice logs 6f1c0e52-...
  jobctl --user alice logs -f 6f1c0e52-... | grep ERROR
  jobctl --user alice logs --tail 20 -f 6f1c
  jobctl --user alice logs --stderr --since 10m -t 6f1c
  jobctl --user alice logs --since 2026-12-01T20:00:00Z 6f1c
  jobctl --user alice logs --offset 1048576 6f1c
"""

STOP_EPILOG = """\
Sends SIGTERM to each job, then SIGKILL after the grace period; returns once they have
ended and prints each final state. Stopping a job that has already ended is not an error.
Several ids are stopped at once; an id that fails is reported, and the exit status is 4.

examples:
  jobctl --user alice stop 6f1c0e52-...
  jobctl --user alice stop --grace 0 6f1c 9a2b
  jobctl --user alice stop $(jobctl --user alice list -q --state running)
"""

WAIT_EPILOG = """\
Waits until each job has ended and prints its exit status, one line per job, as `docker wait`
does: the exit code, 128+N when killed by signal N, 126/127 when it could not start, 125 when
it was lost. jobctl exits 0 once all have ended (4 if an id is unknown).

examples:
  jobctl --user alice wait 6f1c0e52-...
  id=$(jobctl --user alice start -- sh -c 'exit 3'); jobctl --user alice wait $id   # 3
"""

LIST_EPILOG = """\
Lists jobs oldest first. Users see their own jobs; an admin may ask for everyone's (--all)
or one user's (--user NAME). STATUS reads like docker's: "Up 5 minutes",
"Exited (0) 2 hours ago". --format picks columns, comma-separated, from:
  id, owner, state, status, started, ended, duration, command, pid, exit
(default: id,owner,state,started,status,command). --json prints every field, running jobs'
live usage included (up to 1 s old; `jobctl status ID` reads it afresh).

examples:
  jobctl --user alice list
  jobctl --user alice list -q --state running
  jobctl --user alice list --format id,status,duration
  jobctl --user carl list --all
  jobctl --user carl list --user bob
  jobctl --user alice --json list
"""

COMPLETION_EPILOG = """\
Prints a shell completion script: commands, options, and job ids (from `jobctl list -q`,
with the server and identity of the environment or the current context).

examples:
  source <(jobctl completion bash)                      # this shell
  jobctl completion bash > ~/.local/share/bash-completion/completions/jobctl
"""

JOB_STATES = ("running", "exited", "killed", "failed_to_start", "lost")


class UsageError(Exception):
    """A bad command line or local configuration; exit status 2 (125 for `run`)."""


class AmbiguousJobId(JobClientError):
    """A job id prefix that matches more than one job."""


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


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{text!r} is not a whole number (0 or more)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a number of seconds")
    return value


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a duration before now (`90s`, `10m`, `1h30m`, `2d`), an RFC 3339 / ISO 8601 time
    (`2026-12-01T20:00:00Z`; without a zone: UTC), or a Unix time (`1764619200`). Returns Unix time."""
    import re
    import time

    value = text.strip()
    if re.fullmatch(r"(\d+(\.\d+)?[smhd])+", value):
        seconds = sum(
            float(n) * _DURATION_UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([smhd])", value)
        )
        return (time.time() if now is None else now) - seconds
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    import datetime

    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: expected a duration (10m, 1h30m), an RFC 3339 time "
            "(2026-12-01T20:00:00Z) or a Unix time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _env_item(text: str) -> tuple[str, str | None]:
    """`--env NAME=VALUE`, or `--env NAME`: NAME's value in jobctl's own environment."""
    name, sep, value = text.partition("=")
    if not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"--env takes NAME=VALUE or NAME, got {text!r}")
    return name, value if sep else None


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
        "--env", metavar="NAME[=VALUE]", action="append", type=_env_item, default=[],
        help="set a variable (repeatable); NAME alone passes jobctl's own value of NAME; "
        "the job inherits nothing else",
    )  # fmt: skip
    job.add_argument(
        "--env-file", metavar="FILE", action="append", default=[],
        help="read variables from FILE: NAME=VALUE or NAME lines, # comments (repeatable; --env wins)",
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


def _job_ids(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="job ids, or unique prefixes of them")


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
    parser.add_argument("--version", action="version", version=f"jobctl {__version__}")
    parser.add_argument(
        "--server", metavar="HOST[:PORT]",
        help=f"the server (default $JOBCTL_SERVER, the context's, else {config.DEFAULT_SERVER}; "
        f"port {config.DEFAULT_PORT} unless given)",
    )  # fmt: skip
    parser.add_argument(
        "--context", metavar="NAME", help="use context NAME of the config file ($JOBCTL_CONTEXT)"
    )
    parser.add_argument("--user", metavar="NAME", help="use NAME's certificate from the certificates folder")
    parser.add_argument(
        "--certs", metavar="DIR", help=f"the certificates folder for --user (${config.CERTS_ENV})"
    )
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
        help="how long `run`, `wait` and `logs -f` keep following a job while the server is "
        "unreachable, e.g. restarting (default 60; $JOBCTL_RECONNECT)",
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

    p = commands.add_parser("status", help="show jobs' status", epilog=STATUS_EPILOG, formatter_class=fmt)
    p.description = "Show the status of one or more jobs."
    _json_option(p)
    _job_ids(p)

    p = commands.add_parser("logs", help="print a job's output", epilog=LOGS_EPILOG, formatter_class=fmt)
    p.description = "Print a job's output from its first byte."
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming until the job ends")
    p.add_argument(
        "--tail", metavar="N", type=_typed(_count, "tail"), help="start at the last N lines stored (0: none)"
    )
    p.add_argument(
        "--since", metavar="TIME", type=_typed(parse_since, "since"),
        help="start at output written since TIME: 10m, 1h30m, 2026-12-01T20:00:00Z, a Unix time",
    )  # fmt: skip
    p.add_argument(
        "-t", "--timestamps", action="store_true", help="prefix each line with the time it was written"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stdout", dest="stream", action="store_const", const="stdout", help="stdout only")
    which.add_argument("--stderr", dest="stream", action="store_const", const="stderr", help="stderr only")
    p.add_argument(
        "--offset", metavar="BYTES", type=_typed(_count, "offset"), default=0,
        help="start at this byte of the whole output (resume a broken follow)",
    )  # fmt: skip
    p.add_argument("job_id", metavar="JOB_ID", help="a job id, or a unique prefix of one")

    p = commands.add_parser("stop", help="stop jobs", epilog=STOP_EPILOG, formatter_class=fmt)
    p.description = "Stop one or more jobs."
    _json_option(p)
    p.add_argument(
        "--grace", metavar="SECONDS", type=_typed(_seconds, "grace"),
        help="seconds between SIGTERM and SIGKILL (server default: 10)",
    )  # fmt: skip
    _job_ids(p)

    p = commands.add_parser(
        "wait", help="wait for jobs to end; print their exit status", epilog=WAIT_EPILOG, formatter_class=fmt
    )
    p.description = "Wait until each job has ended; print its exit status."
    _job_ids(p)

    p = commands.add_parser("list", help="list jobs", epilog=LIST_EPILOG, formatter_class=fmt)
    p.description = "List jobs."
    _json_option(p)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--all", action="store_true", help="every user's jobs (admins)")
    scope.add_argument("--user", dest="list_user", metavar="NAME", help="NAME's jobs (admins; or yourself)")
    p.add_argument("-q", "--quiet", action="store_true", help="print job ids only, one a line")
    p.add_argument(
        "--state", metavar="STATE", action="append", type=_typed(_state_list, "state"), default=[],
        help=f"only jobs in STATE (repeatable or comma-separated: {', '.join(JOB_STATES)})",
    )  # fmt: skip
    p.add_argument(
        "--format", dest="columns", metavar="COLUMNS", type=_typed(_columns, "format"),
        help="columns to show, comma-separated (see below)",
    )  # fmt: skip

    p = commands.add_parser(
        "completion", help="print a shell completion script", epilog=COMPLETION_EPILOG, formatter_class=fmt
    )
    p.description = "Print a shell completion script."
    p.add_argument("shell", choices=["bash"], help="the shell (bash)")
    cli_removal.add_commands(commands, fmt)
    return parser


def _state_list(text: str) -> list[str]:
    states = [s.strip().replace("-", "_") for s in text.split(",") if s.strip()]
    for state in states:
        if state not in JOB_STATES:
            raise ValueError(f"unknown state {state!r} (one of {', '.join(JOB_STATES)})")
    return states


def _columns(text: str) -> list[str]:
    from jobclient._render import LIST_COLUMNS

    columns = [c.strip().lower() for c in text.split(",") if c.strip()]
    if not columns:
        raise ValueError("no columns given")
    for column in columns:
        if column not in LIST_COLUMNS:
            raise ValueError(f"unknown column {column!r} (one of {', '.join(LIST_COLUMNS)})")
    return columns


# ---------------------------------------------------------------------------- settings and helpers


def _settings(args: argparse.Namespace) -> config.Settings:
    try:
        return config.resolve(
            server=args.server,
            user=args.user,
            certs=args.certs,
            cert=args.cert,
            key=args.key,
            ca=args.ca,
            tls_server_name=args.tls_server_name,
            context=args.context,
        )
    except ConfigError as e:
        raise UsageError(e.message) from None


def _connect(args: argparse.Namespace) -> Client:
    from jobclient.client import Client
    from jobclient.credentials import credentials_for

    settings = _settings(args)
    return Client(
        settings.target,
        credentials=credentials_for(settings),
        reconnect=args.reconnect,
        tls_server_name=settings.tls_server_name,
    )


def _read_env_file(path: str) -> list[tuple[str, str | None]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read --env-file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--env-file {path} is not UTF-8 text") from None
    items = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            items.append(_env_item(text))
        except argparse.ArgumentTypeError:
            raise UsageError(f"--env-file {path}, line {number}: expected NAME=VALUE or NAME") from None
    return items


def _environment(args: argparse.Namespace) -> dict[str, str]:
    """The job's environment: the --env-file files in order, then --env (later wins)."""
    items = [item for path in args.env_file for item in _read_env_file(path)] + list(args.env)
    env: dict[str, str] = {}
    for name, value in items:
        if value is not None:
            env[name] = value
            continue
        local = os.environ.get(name)
        if local is None:
            raise UsageError(f"--env {name}: {name} is not set in jobctl's environment (give {name}=VALUE)")
        env[name] = local
    return env


def _limits(args: argparse.Namespace) -> Limits:
    from jobclient.models import Limits

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


def _note_dropped_stdin() -> None:
    """Say so when stdin holds data the job will never see (its stdin is /dev/null)."""
    import stat

    try:
        info = os.fstat(0)
    except OSError:
        return
    pending = 0
    if stat.S_ISREG(info.st_mode):
        try:
            pending = info.st_size - os.lseek(0, 0, os.SEEK_CUR)
        except OSError:
            pending = 0
    elif stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):
        import fcntl
        import termios

        buffer = bytearray(4)
        try:
            fcntl.ioctl(0, termios.FIONREAD, buffer)
            pending = int.from_bytes(buffer, sys.byteorder)
        except OSError:
            pending = 0
    if pending > 0:
        _diag("note: stdin is not sent to the job (its stdin is /dev/null); pass input as a file or argument")


def _start(client: Client, args: argparse.Namespace) -> Job:
    from jobclient.models import Isolation

    env = _environment(args)
    limits = _limits(args)
    _note_dropped_stdin()
    isolation = Isolation(
        pid=not args.no_pid_ns,
        mount=not args.no_mount_ns,
        net=not args.host_network,
        uts=not args.no_uts_ns,
        ipc=not args.no_ipc_ns,
        sandbox=not (args.no_sandbox or args.no_mount_ns),
        run_as_root=args.root,
    )
    return client.start(args.command, env=env, cwd=args.cwd, limits=limits, isolation=isolation)


def _print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def _job_json(job: Job) -> dict[str, Any]:
    from jobclient._json import job_to_json

    return job_to_json(job)


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _diag(message: str) -> None:
    print(f"jobctl: {message}", file=sys.stderr, flush=True)


def _is_full_id(text: str) -> bool:
    import re

    return re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text) is not None


class _IdResolver:
    """Expands job id prefixes with the caller's job list (fetched once, only when a prefix is given)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._ids: list[str] | None = None
        self._all: list[str] | None = None

    def _candidates(self, everyone: bool) -> list[str]:
        from jobclient.errors import PermissionDenied

        if not everyone:
            if self._ids is None:
                self._ids = [job.id for job in self._client.list()]
            return self._ids
        if self._all is None:
            try:
                self._all = [job.id for job in self._client.list(all_users=True)]
            except PermissionDenied:
                self._all = []
        return self._all

    def __call__(self, text: str) -> str:
        if _is_full_id(text):
            return text
        if not text:
            raise JobNotFound("an empty job id matches no job")
        for everyone in (False, True):  # an admin's prefix may name another user's job
            candidates = self._candidates(everyone)
            if text in candidates:
                return text
            matches = [job_id for job_id in candidates if job_id.startswith(text)]
            if len(matches) == 1:
                return matches[0]
            if matches:
                shown = ", ".join(sorted(matches)[:5]) + (", ..." if len(matches) > 5 else "")
                raise AmbiguousJobId(
                    f"job id prefix {text!r} is ambiguous: it matches {len(matches)} jobs ({shown}); "
                    "give more characters"
                )
        raise JobNotFound(f"job {text} not found")


# ---------------------------------------------------------------------------- commands


def _failed_to_start_status(job: Job) -> int:
    _diag(f"job {job.id} failed to start: {job.reason or 'no reason given'}")
    reason = job.reason or ""
    return EXIT_CANNOT_INVOKE if any(name in reason for name in _CANNOT_INVOKE) else EXIT_NOT_FOUND


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    from jobclient.models import JobState

    job = _start(client, args)
    if args.json:
        _print_json(_job_json(job))
    else:
        _print(job.id)
    if job.state is JobState.FAILED_TO_START:
        return _failed_to_start_status(job)
    return EXIT_OK


def _prepare_stream() -> None:
    """Before copying a job's output: let malloc reuse the stream's freed 1 MiB buffers (most of a
    stream's CPU time otherwise goes to page faults; jobclient/_malloc.py)."""
    from jobclient._malloc import keep_freed_buffers

    keep_freed_buffers()


class _CountingStdout:
    """Writes chunks to stdout (flushed each) and counts them, so a follow can resume where it left.

    While installed as the SIGINT handler, a Ctrl-C that lands between writing a chunk and counting it
    is deferred until both are done: otherwise the resumed stream would repeat the chunk. (Blocking the
    signal is not enough: the kernel may deliver it to one of grpc's threads.) A second Ctrl-C during
    the same write is not deferred, so a stuck stdout cannot make jobctl deaf.
    """

    def __init__(self) -> None:
        from jobclient.client import write_all

        self._write_all = write_all
        self.count = 0
        self._writing = False
        self._deferred = False

    def __call__(self, chunk: bytes) -> None:
        self._writing = True
        try:
            self._write_all(sys.stdout.buffer, chunk)
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


def _job_exit_status(job: Job, *, quiet: bool = False) -> int:
    """A shell's view of how the job ended (diagnostics on stderr unless quiet)."""
    from jobclient import _render as render
    from jobclient.models import JobState

    if not quiet:
        if job.oom_killed:
            _diag(f"job {job.id} ran out of memory (OOM-killed)")
        if job.state is JobState.KILLED and job.signal is not None and not job.oom_killed:
            _diag(f"job {job.id} was killed by {render.signal_name(job.signal)}")
    status = job.exit_status
    if status is not None:
        return status
    if job.state is JobState.FAILED_TO_START:
        if quiet:
            reason = job.reason or ""
            return EXIT_CANNOT_INVOKE if any(name in reason for name in _CANNOT_INVOKE) else EXIT_NOT_FOUND
        return _failed_to_start_status(job)
    if not quiet:
        reason = f": {job.reason}" if job.reason else ""
        _diag(f"job {job.id} ended {render.state_text(job)}{reason}; its exit status is unknown")
    return EXIT_RUN_FAILED


class _BackgroundStops:
    """StopJob calls made while `run` keeps following the job's output (Ctrl-C), joined at the end."""

    def __init__(self, client: Client) -> None:
        import threading

        self._client = client
        self._threading = threading
        self._threads: list[threading.Thread] = []
        self._finished = threading.Event()

    def stop(self, job_id: str, grace: float | None) -> None:
        def call() -> None:
            try:
                self._client.stop(job_id, grace=grace)
            except JobClientError as e:
                if not self._finished.is_set():  # not the channel closing under a call no longer needed
                    _diag(f"cannot stop job {job_id}: {e.message}")

        thread = self._threading.Thread(target=call, name="jobctl-stop", daemon=True)
        thread.start()
        self._threads.append(thread)

    def finish(self, timeout: float = 5.0) -> None:
        """The job has ended (or jobctl gives up): let the calls return (StopJob answers once the job
        has ended), within a bound."""
        self._finished.set()
        for thread in self._threads:
            thread.join(timeout)


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    from jobclient.models import JobState

    job = _start(client, args)
    if job.state is JobState.FAILED_TO_START:
        return _job_exit_status(job)
    _prepare_stream()
    out = _CountingStdout()
    stops = _BackgroundStops(client)
    previous = signal.signal(signal.SIGINT, out.on_sigint)
    interrupts = 0
    ended = False
    try:
        while True:
            try:
                job = client.wait(job.id, out=out, offset=out.count)
                ended = True
                break
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts == 1:
                    _diag(f"stopping job {job.id} (Ctrl-C again to kill it at once)")
                    stops.stop(job.id, None)
                elif interrupts == 2:
                    _diag(f"killing job {job.id} (Ctrl-C again to stop waiting)")
                    stops.stop(job.id, 0.0)
                else:
                    _diag(f"no longer waiting; job {job.id} may still be running")
                    return EXIT_INTERRUPTED
    except JobClientError as e:
        e.message += f"; job {job.id} may still be running (see `jobctl status {job.id}`)"
        raise
    except BrokenPipeError:
        # Like a local command whose reader went away: the job is stopped too.
        _silence_stdout()
        try:
            client.stop(job.id, grace=0)
        except JobClientError:
            pass
        return EXIT_BROKEN_PIPE
    finally:
        signal.signal(signal.SIGINT, previous)
        stops.finish(timeout=5.0 if ended else 0.0)
    return _job_exit_status(job)


def _for_each(
    client: Client, ids: Iterable[str], action: Callable[[str], Job], *, parallel: bool = False
) -> tuple[list[Job], int]:
    """Run `action` on every resolved id; report failures on stderr. Returns (jobs, exit status)."""
    resolve = _IdResolver(client)
    resolved: list[str] = []
    worst = EXIT_OK
    for text in ids:
        try:
            resolved.append(resolve(text))
        except JobClientError as e:
            _diag(e.message)
            worst = max(worst, _exit_status_for(e))
    results: list[Job | JobClientError] = []
    if parallel and len(resolved) > 1:
        from concurrent.futures import ThreadPoolExecutor

        def attempt(job_id: str) -> Job | JobClientError:
            try:
                return action(job_id)
            except JobClientError as e:
                return e

        with ThreadPoolExecutor(max_workers=min(16, len(resolved))) as pool:
            results = list(pool.map(attempt, resolved))
    else:
        for job_id in resolved:
            try:
                results.append(action(job_id))
            except JobClientError as e:
                results.append(e)
    jobs = []
    for result in results:
        if isinstance(result, JobClientError):
            if isinstance(result, Unavailable | DeadlineExceeded | ServerError):
                raise result
            _diag(result.message)
            worst = max(worst, _exit_status_for(result))
        else:
            jobs.append(result)
    return jobs, worst


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    from jobclient import _render as render

    jobs, worst = _for_each(client, args.job_ids, client.status)
    if args.json:
        data = [_job_json(job) for job in jobs]
        if len(args.job_ids) == 1 and data:
            _print_json(data[0])
        elif jobs or len(args.job_ids) > 1:
            _print_json(data)
    elif jobs:
        _print("\n\n".join(render.status_text(job) for job in jobs))
    return worst


class _Timestamper:
    """Prefixes every line with the time of the chunk that began it (RFC 3339, UTC, nanosecond-free)."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._at_line_start = True

    def __call__(self, data: bytes, when: Any) -> None:
        stamp = (when.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when is not None else "-").encode() + b" "
        parts = data.split(b"\n")
        out = bytearray()
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last and not part:
                break  # data ended with a newline: the next line starts in a later chunk
            if self._at_line_start:
                out += stamp
            out += part
            if not last:
                out += b"\n"
                self._at_line_start = True
            else:
                self._at_line_start = False
        self._write(bytes(out))


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    import time

    from jobclient.client import _Reconnect, write_all

    job_id = _IdResolver(client)(args.job_id)
    _prepare_stream()
    options: dict[str, Any] = {"follow": args.follow, "stream": args.stream}
    if args.since is not None:
        options["since"] = args.since
    if args.tail is not None:
        options["tail"] = args.tail
    offset = args.offset
    stamp = _Timestamper(lambda data: write_all(sys.stdout.buffer, data))
    retry = _Reconnect(client.reconnect)
    while True:
        try:
            if args.timestamps:
                with client.output_chunks(job_id, offset=offset, **options) as chunks:
                    try:
                        for chunk in chunks:
                            stamp(chunk.data, chunk.time)
                            retry.reset()
                    finally:
                        offset = chunks.offset
            else:
                with client.output(job_id, offset=offset, **options) as stream:
                    try:
                        for data in stream:
                            write_all(sys.stdout.buffer, data)
                            retry.reset()
                    finally:
                        offset = stream.offset
            return EXIT_OK
        except Unavailable as exc:
            if not args.follow or offset == args.offset:
                raise  # nothing received yet: a server that is down is reported at once, exit 3
            # A follow survives a server restart like `run` does: resume at the offset reached (the
            # tail and the start time were applied by then).
            options.pop("tail", None)
            options.pop("since", None)
            time.sleep(retry.next_delay(job_id, exc))


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    from jobclient import _render as render

    jobs, worst = _for_each(client, args.job_ids, lambda j: client.stop(j, grace=args.grace), parallel=True)
    if args.json:
        data = [_job_json(job) for job in jobs]
        _print_json(data[0] if len(args.job_ids) == 1 and data else data)
    else:
        for job in jobs:
            _print(f"{job.id} {render.state_text(job)}")
    return worst


def _wait_ended(client: Client, job_id: str) -> Job:
    """Block until the job has ended, following across server restarts (like `run`), without output."""
    import time

    from jobclient.client import _Reconnect

    retry = _Reconnect(client.reconnect)
    job = client.status(job_id)  # a server that is down, or an unknown job, is reported at once
    if job.ended:
        return job
    while True:
        try:
            with client.output(job_id, stream="none", follow=True) as stream:
                for _ in stream:
                    pass
            job = client.status(job_id)
        except Unavailable as exc:
            time.sleep(retry.next_delay(job_id, exc))
            continue
        if job.ended:
            return job
        time.sleep(retry.next_delay(job_id, None))


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    resolve = _IdResolver(client)
    worst = EXIT_OK
    for text in args.job_ids:
        try:
            job = _wait_ended(client, resolve(text))
        except (Unavailable, DeadlineExceeded, ServerError):
            raise
        except JobClientError as e:
            _diag(e.message)
            worst = max(worst, _exit_status_for(e))
            continue
        _print(str(_job_exit_status(job, quiet=True)))
    return worst


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    from jobclient import _render as render

    # JSON carries every field, running jobs' live usage included; the table shows none of it.
    jobs = client.list(all_users=args.all, user=args.list_user, include_usage=args.json)
    states = {state for group in args.state for state in group}
    if states:
        jobs = [job for job in jobs if job.state.value in states]
    if args.json:
        _print_json([_job_json(job) for job in jobs])
    elif args.quiet:
        for job in jobs:
            _print(job.id)
    elif jobs:
        _print(render.jobs_table(jobs, args.columns or render.DEFAULT_LIST_COLUMNS))
    else:
        _diag("no jobs")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "start": cmd_start,
    "run": cmd_run,
    "status": cmd_status,
    "logs": cmd_logs,
    "stop": cmd_stop,
    "wait": cmd_wait,
    "list": cmd_list,
    **cli_removal.COMMANDS,
}


def _exit_status_for(error: JobClientError) -> int:
    if isinstance(error, CredentialsError | ConfigError):
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


def _during_ctrl_c(error: BaseException) -> bool:
    """True when `error` was raised while a KeyboardInterrupt was being handled."""
    seen: set[int] = set()
    context = error.__context__
    while context is not None and id(context) not in seen:
        if isinstance(context, KeyboardInterrupt):
            return True
        seen.add(id(context))
        context = context.__context__
    return False


def _missing_dashes_hint(args_list: Sequence[str], message: str) -> str:
    """For start/run without `--`: say where it goes (the command's own options were read as ours)."""
    if "--" in args_list or not any(a in ("start", "run") for a in args_list):
        return message
    command = next(a for a in args_list if a in ("start", "run"))
    return f"{message}; put `--` before the command: jobctl {command} [options] -- CMD [ARG...]"


def console_main() -> int:
    """The `jobctl` console script: `main()` on sys.argv, for a process that ends right after.

    Before returning (the script passes the status to sys.exit), the objects alive (most of them the
    modules grpc and protobuf loaded) are moved to the collector's permanent generation
    (`gc.freeze()`): the collections the interpreter runs while it shuts down then skip them; they
    took 24-50 ms of a `jobctl run -- true` at load 3-5, 7-12 ms being left (docs/benchmarks.md,
    "jobctl start-up"). They have nothing to do for jobctl: the channel is closed by then, and the
    memory goes back with the process. The rest of the shutdown is as before (exit handlers, stdout
    flushed, the exit status).

    Before `main()`, asyncio, grpc.aio and protobuf's pure-Python message code are made lazy modules
    (`_defer_unused_modules`): grpc and protobuf import them, and no jobctl command uses them."""
    import gc

    _defer_unused_modules()
    status = main()
    gc.freeze()
    return status


#: What `_defer_unused_modules` defers, each imported by grpc or protobuf whether or not it is used:
#: `grpc._cython.cygrpc` imports asyncio and `grpc/__init__.py` grpc.aio (grpc's asyncio API);
#: protobuf's descriptor pool imports python_message (with text_format), its pure-Python message
#: implementation, which the upb implementation jobctl runs on never calls.
DEFERRED_MODULES = ("asyncio", "grpc.aio", "google.protobuf.internal.python_message")


class _DeferredModules:
    """A meta path finder that gives `DEFERRED_MODULES` the standard library's `LazyLoader`.

    Such a module is created when imported, and its code runs at the first attribute read (by then it
    is the real module: nothing that uses it can tell). The finder serves each name once and leaves
    everything else, submodules included, to the finders after it."""

    def __init__(self, names: Iterable[str]) -> None:
        self._names = set(names)

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self._names:
            return None
        self._names.discard(name)
        import importlib.machinery
        import importlib.util

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def _defer_unused_modules() -> None:
    """Make `DEFERRED_MODULES` lazy in this process (the jobctl console script only).

    `import grpc` loads asyncio (with concurrent.futures and more) and grpc.aio for grpc's asyncio
    API, and the generated code protobuf's pure-Python message classes: ~45 ms of a `jobctl run --
    true` that no jobctl command uses (the SDK's `Client` does not; AsyncClient imports asyncio
    itself). Deferred, their code runs only if something reads one of their attributes, and then
    as usual. A module already imported (by a sitecustomize, say) is left as it is. `main()` itself
    does not do this: a program that calls it in-process keeps its import system as it was."""
    names = [name for name in DEFERRED_MODULES if name not in sys.modules]
    if names:
        sys.meta_path.insert(0, _DeferredModules(names))


def main(argv: Sequence[str] | None = None) -> int:
    """Run jobctl; return its exit status (`console_main`, the console script, passes it to sys.exit)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command: str | None = None
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(args_list)
        except UsageError as e:
            # Find out whether it was `run` (whose failures are 125) without trusting the bad parse.
            command = next((a for a in args_list if a in COMMANDS), None)
            raise UsageError(_missing_dashes_hint(args_list, str(e))) from None
        command = args.command_name
        if command == "completion":
            from jobclient._completion import bash_script

            sys.stdout.write(bash_script(parser))
            return EXIT_OK
        args.json = args.json or _env_flag("JOBCTL_JSON")
        with _connect(args) as client:
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
        if _during_ctrl_c(e):
            # A Ctrl-C that lands inside grpc's locking can make the clean-up it triggers fail
            # ("release unlocked lock"): that is still the user's interrupt, not a bug.
            return EXIT_INTERRUPTED
        _diag(f"internal error: {type(e).__name__}: {e}")
        return EXIT_RUN_FAILED if command == "run" else EXIT_INTERNAL
