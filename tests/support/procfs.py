"""Identity and liveness of a process, from /proc/<pid>/stat.

A pid alone does not name a process: once it is reaped, the kernel may give the pid to a new one. The
pair (pid, start time in clock ticks since boot) does, and it is what the job records store (the
shim's and the job init's `start_ticks`).

The zombie rule, decided once for every suite:

* `process_start_ticks` answers "which process holds this pid?". A zombie still holds its pid (the
  kernel cannot reuse it until the parent reaps it), so a zombie has its start time, as in
  `jobcore.linux.process_start_ticks`, the rule the code under test uses to recognise its own
  processes. Returning None for a zombie would make a recorded (pid, start) look free for reuse while
  it is not.
* `is_running` answers "is the process we started still running?" (leak and survivor checks). A
  zombie runs nothing, holds no memory, files or cgroup membership; only its parent's wait is
  missing. So a zombie is not running. On these machines PID 1 is a container init that may never
  reap orphans, so counting zombies as survivors would report leaks that are not the project's.
"""

from __future__ import annotations

import os


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None: no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return data[data.rindex(b")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None if no process holds
    `pid`. A zombie holds its pid and has its start time (module docstring)."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def is_running(pid: int, start_ticks: int | None) -> bool:
    """True if the process that holds `pid` is the one that started at `start_ticks` and it has not
    exited (a zombie or a dying task is not running)."""
    fields = _stat(pid)
    if fields is None or start_ticks is None or int(fields[19]) != start_ticks:
        return False
    return fields[0] not in (b"Z", b"X", b"x")


def processes_with(marker: str, *, zombies: bool = True) -> list[int]:
    """Pids of the processes (this one aside) whose command line contains `marker`; without the
    zombies if `zombies` is False (the survivor checks that follow the zombie rule above)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() not in cmdline:
            continue
        if not zombies:
            fields = _stat(int(entry))
            if fields is None or fields[0] in (b"Z", b"X", b"x"):
                continue
        found.append(int(entry))
    return found
