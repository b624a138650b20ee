"""jobctl's `rm` and `prune`: deleting ended jobs (their records and stored output) on the server.

Kept apart from cli.py's other commands; cli.py registers them (`add_commands`, `COMMANDS`). Both
print each deleted job id on stdout and each failure as one `jobctl: ...` line on stderr; when any
job could not be deleted, the last failure is raised again so that jobctl exits with its status.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobclient.errors import JobClientError

if TYPE_CHECKING:  # grpc: not imported at jobctl's start (tests/jobclient/test_cli_imports.py)
    from jobclient.client import Client

RM_EPILOG = """\
Deletes ended jobs: their records and their stored output, for good. A running job is refused
(stop it first); someone else's job is not found, unless you are an admin. Prints each deleted id.

examples:
  jobctl --user alice rm 6f1c0e52-... 0b9e4a13-...
  jobctl --user alice --json list | jq -r '.[] | select(.state=="exited") | .id' |
    xargs jobctl --user alice rm
"""

PRUNE_EPILOG = """\
Deletes your ended jobs (an admin: with --all, everyone's), or only those that ended more than
AGE ago with --older-than (AGE: 3600, 90s, 15m, 12h, 7d, 2w). Running jobs are never touched.
Prints each deleted id; the server also applies its own retention policy (see its docs).

examples:
  jobctl --user alice prune
  jobctl --user alice prune --older-than 7d
  jobctl --user carl prune --all --older-than 30d
"""

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)", re.ASCII)


def parse_age(text: str) -> float:
    """Seconds in "3600", "90s", "15m", "12h", "7d", "2w"."""
    match = _AGE_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected an age such as 3600, 12h, 7d or 2w, got {text!r}")
    return float(match.group(1)) * _AGE_UNITS[match.group(2) or "s"]


def add_commands(commands: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add `rm` and `prune` to jobctl's subcommand parsers."""
    p = commands.add_parser(
        "rm", help="delete ended jobs and their output", epilog=RM_EPILOG, formatter_class=formatter
    )
    p.description = "Delete ended jobs: their records and stored output."
    p.add_argument("job_ids", metavar="JOB_ID", nargs="+")
    p = commands.add_parser(
        "prune", help="delete your ended jobs (or those older than an age)", epilog=PRUNE_EPILOG,
        formatter_class=formatter,
    )  # fmt: skip
    p.description = "Delete ended jobs, all of them or those that ended more than AGE ago."
    p.add_argument(
        "--older-than", metavar="AGE", type=parse_age, default=None,
        help="only jobs that ended more than AGE ago, e.g. 7d (default: every ended job)",
    )  # fmt: skip
    p.add_argument("--all", action="store_true", help="every user's ended jobs (admins)")


def _deleted(job_id: str) -> None:
    sys.stdout.write(job_id + "\n")
    sys.stdout.flush()


def _delete_each(client: Client, job_ids: list[str]) -> int:
    last: JobClientError | None = None
    for job_id in job_ids:
        try:
            client.delete(job_id)
        except JobClientError as exc:
            if last is not None:
                print(f"jobctl: {last.message}", file=sys.stderr, flush=True)
            last = exc
            continue
        _deleted(job_id)
    if last is not None:
        raise last  # jobctl reports it and exits with its status
    return 0


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    return _delete_each(client, list(args.job_ids))


def cmd_prune(client: Client, args: argparse.Namespace) -> int:
    cutoff = None if args.older_than is None else time.time() - args.older_than
    ended = [
        job.id
        for job in client.list(all_users=args.all)
        if job.ended and (cutoff is None or (job.ended_at is not None and job.ended_at.timestamp() < cutoff))
    ]
    if not ended:
        print("jobctl: no ended jobs to delete", file=sys.stderr, flush=True)
        return 0
    return _delete_each(client, ended)


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {"rm": cmd_rm, "prune": cmd_prune}
