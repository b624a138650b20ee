"""Human-readable text for jobs (jobctl's status, list and stop output)."""

from __future__ import annotations

import datetime
import shlex
import signal as signals
from collections.abc import Callable, Sequence

from jobclient.models import Job, JobState, Limits, ResourceUsage
from jobclient.units import format_size


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def state_text(job: Job) -> str:
    """`running (pid 42)`, `exited (code 3)`, `killed (signal 9 SIGKILL, OOM)`, `failed to start`..."""
    state = job.state
    if state is JobState.RUNNING:
        detail = f"pid {job.pid}" if job.pid is not None else ""
    elif state is JobState.EXITED:
        detail = f"code {job.exit_code}" if job.exit_code is not None else ""
    elif state is JobState.KILLED:
        detail = f"signal {job.signal} {signal_name(job.signal)}" if job.signal is not None else ""
    else:
        detail = ""
    notes = (
        detail,
        "OOM-killed" if job.oom_killed else "",
        "stop requested" if job.stop_requested and not job.ended else "",
    )
    extras = [note for note in notes if note]
    text = state.value.replace("_", " ")
    return f"{text} ({', '.join(extras)})" if extras else text


def short_state(job: Job) -> str:
    """The state column of `jobctl list`: `running`, `exited(0)`, `killed(9)`..."""
    if job.state is JobState.EXITED and job.exit_code is not None:
        return f"exited({job.exit_code})"
    if job.state is JobState.KILLED and job.signal is not None:
        return f"killed({job.signal}{',oom' if job.oom_killed else ''})"
    return job.state.value


def _time(t: datetime.datetime | None) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


def _duration(job: Job) -> str:
    if job.started_at is None:
        return "-"
    end = job.ended_at or datetime.datetime.now(datetime.UTC)
    seconds = max(0.0, (end - job.started_at).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def limits_text(limits: Limits) -> str:
    parts = []
    if limits.cpu is not None:
        parts.append(f"cpu {limits.cpu:g} {'core' if limits.cpu == 1 else 'cores'}")
    if limits.memory is not None:
        parts.append(f"memory {format_size(limits.memory)}")
    if limits.pids is not None:
        parts.append(f"pids {limits.pids}")
    if limits.io_read_bps is not None:
        parts.append(f"io read {format_size(limits.io_read_bps)}/s")
    if limits.io_write_bps is not None:
        parts.append(f"io write {format_size(limits.io_write_bps)}/s")
    if limits.io_read_iops is not None:
        parts.append(f"io read {limits.io_read_iops} iops")
    if limits.io_write_iops is not None:
        parts.append(f"io write {limits.io_write_iops} iops")
    return ", ".join(parts) or "none"


def usage_text(usage: ResourceUsage) -> str:
    parts = []
    if usage.cpu_seconds is not None:
        parts.append(f"cpu {usage.cpu_seconds:.2f}s")
    if usage.memory_peak_bytes is not None:
        parts.append(f"memory peak {format_size(usage.memory_peak_bytes)}")
    if usage.io_read_bytes is not None:
        parts.append(f"io read {format_size(usage.io_read_bytes)}")
    if usage.io_write_bytes is not None:
        parts.append(f"io write {format_size(usage.io_write_bytes)}")
    return ", ".join(parts) or "not measured"


def _user_text(job: Job) -> str:
    if job.uid is None:
        return "-"
    return f"uid {job.uid}, gid {job.gid}" + (", sandboxed" if job.sandboxed else ", no sandbox")


def status_text(job: Job) -> str:
    """The multi-line `jobctl status` report."""
    rows = [
        ("Job", job.id),
        ("Owner", job.owner),
        ("Command", shlex.join(job.argv)),
        ("State", state_text(job)),
    ]
    if job.reason:
        rows.append(("Reason", job.reason))
    rows += [
        ("Started", _time(job.started_at)),
        ("Ended", _time(job.ended_at)),
        ("Duration", _duration(job)),
        ("Directory", job.cwd or "/"),
        ("Limits", limits_text(job.limits)),
        ("Usage", usage_text(job.usage)),
        ("Controller", job.controller or "-"),
        ("Namespaces", ", ".join(job.namespaces) or "none"),
        ("User", _user_text(job)),
        (
            "Output",
            format_size(job.output_bytes) + (" (capped: the job was stopped)" if job.output_capped else ""),
        ),
    ]
    width = max(len(name) for name, _ in rows) + 2
    return "\n".join(f"{name + ':':<{width}}{value}" for name, value in rows)


def human_duration(seconds: float) -> str:
    """Like docker's: `Less than a second`, `5 seconds`, `About a minute`, `5 minutes`, `2 hours`..."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        n = int(seconds)
        return f"{n} second{'s' if n != 1 else ''}"
    minutes = seconds / 60
    if minutes < 2:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = minutes / 60
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    days = hours / 24
    if days < 14:
        return f"{int(days)} days"
    if days < 60:
        return f"{int(days / 7)} weeks"
    return f"{int(days / 30)} months"


def human_status(job: Job, now: datetime.datetime | None = None) -> str:
    """The STATUS column of `jobctl list`: `Up 5 minutes`, `Exited (0) 2 hours ago`, `Killed (SIGTERM)
    10 seconds ago`, `Failed to start`, `Lost`."""
    now = now or datetime.datetime.now(datetime.UTC)
    if job.state is JobState.RUNNING:
        if job.started_at is None:
            return "Up"
        return f"Up {human_duration((now - job.started_at).total_seconds())}"
    if job.state is JobState.EXITED:
        head = f"Exited ({job.exit_code})" if job.exit_code is not None else "Exited"
    elif job.state is JobState.KILLED:
        name = signal_name(job.signal) if job.signal is not None else "?"
        head = f"Killed ({name}{', OOM' if job.oom_killed else ''})"
    elif job.state is JobState.FAILED_TO_START:
        head = "Failed to start"
    elif job.state is JobState.LOST:
        head = "Lost"
    else:
        head = job.state.value.capitalize()
    if job.ended_at is None:
        return head
    return f"{head} {human_duration((now - job.ended_at).total_seconds()).lower()} ago"


def _exit_cell(job: Job) -> str:
    status = job.exit_status
    return "-" if status is None else str(status)


LIST_COLUMNS: dict[str, tuple[str, Callable[[Job], str]]] = {
    # name: (header, cell)
    "id": ("ID", lambda j: j.id),
    "owner": ("OWNER", lambda j: j.owner),
    "state": ("STATE", short_state),
    "status": ("STATUS", human_status),
    "started": ("STARTED", lambda j: _time(j.started_at)),
    "ended": ("ENDED", lambda j: _time(j.ended_at)),
    "duration": ("DURATION", _duration),
    "command": ("COMMAND", lambda j: shlex.join(j.argv)),
    "pid": ("PID", lambda j: "-" if j.pid is None else str(j.pid)),
    "exit": ("EXIT", _exit_cell),
}
DEFAULT_LIST_COLUMNS = ["id", "owner", "state", "started", "status", "command"]


def jobs_table(jobs: Sequence[Job], columns: Sequence[str] = DEFAULT_LIST_COLUMNS) -> str:
    """The `jobctl list` table of `columns` (names of LIST_COLUMNS), aligned; the last is not padded."""
    header = [LIST_COLUMNS[c][0] for c in columns]
    rows = [[LIST_COLUMNS[c][1](j) for c in columns] for j in jobs]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(columns))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)
