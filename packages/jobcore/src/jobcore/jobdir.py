"""The on-disk layout of one job: `<state_dir>/<job_id>/`, and atomic JSON files in it.

spec.json    what to run (written by the Worker before the shim exists)
shim.json    the shim's pid and start time (written by the shim first thing)
run.json     the started command: its pid, start time, namespaces (written by the shim after exec)
stop.json    a stop request: grace period and time (written by the Worker)
exit.json    how the job ended (written by the shim, last; or by a Worker for a lost job)
output       the raw output bytes, stdout and stderr interleaved in arrival order
output.idx   one fixed-size record per chunk: offset, length, stream, time (see output_log)

The records' contents are typed in `jobcore.records`, which reads and writes them.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any

from jobcore.errors import InvalidJobId

JOB_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

SPEC = "spec.json"
SHIM = "shim.json"
RUN = "run.json"
STOP = "stop.json"
EXIT = "exit.json"
OUTPUT = "output"
#: The job's scratch directory (its working directory when it names none), owned by its user.
SCRATCH = "work"
OUTPUT_INDEX = "output.idx"


def new_job_id() -> str:
    return str(uuid.uuid4())


def check_job_id(job_id: object) -> str:
    """Return `job_id` if it is shaped like a job id; raise InvalidJobId otherwise (never a path)."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise InvalidJobId(
            f"invalid job id {job_id!r}: expected a UUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        )
    return job_id


#: json.dumps(data, separators=(",", ":")) without building an encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def write_json(path: str | os.PathLike[str], data: dict[str, Any], *, durable: bool = False) -> None:
    """Write `data` to `path` atomically (temp file + rename); with durable, fsync file and directory."""
    # String operations rather than pathlib's: a shim writes three records, and every line of Python
    # it runs for the first time after its fork copies pages of the launcher's (docs/benchmarks.md).
    parent, name = os.path.split(os.fspath(path))
    tmp = f"{parent}/.{name}" if parent else f".{name}"
    tmp = f"{tmp}.{os.getpid()}.{threading.get_ident()}.tmp"
    payload = _ENCODER.encode(data).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, payload)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if durable:
        dfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file does not exist."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data
