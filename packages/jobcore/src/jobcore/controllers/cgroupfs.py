"""File operations on a cgroup file system, shared by the cgroup v1 and v2 backends.

Every write goes through `CgroupFiles.write`, which raises `CgroupWriteError` naming the file, the value
and the kernel's errno. The backends take a `CgroupFiles` so the v2 tests can substitute a fake kernel
over a plain directory tree.
"""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import time
from collections.abc import Iterable, Iterator

from jobcore.errors import ControllerError

#: Job cgroups live in `<parent>/remote-jobs/<owner>/<job_id>`.
JOBS_DIR = "remote-jobs"
#: A job id is a single path component; jobcore's are UUIDs.
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
#: Same shape as spec.OWNER_RE, which JobSpec enforces.
_OWNER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,63}$")


class CgroupWriteError(ControllerError):
    """The kernel refused a write to a cgroup interface file."""

    def __init__(self, path: str, value: str, error: OSError) -> None:
        super().__init__(f"cannot write {value!r} to {path}: {error.strerror or error}")
        self.path = path
        self.value = value
        self.errno = error.errno


def check_names(owner: str, job_id: str) -> None:
    """Raise ControllerError unless owner and job_id are safe single path components."""
    if not _OWNER_RE.fullmatch(owner):
        raise ControllerError(f"owner {owner!r} cannot name a cgroup directory")
    if not _JOB_ID_RE.fullmatch(job_id):
        raise ControllerError(f"job id {job_id!r} cannot name a cgroup directory")


class CgroupFiles:
    """The file-system operations the backends perform on a cgroup hierarchy (the real kernel's)."""

    def write(self, path: str, value: str) -> None:
        """Write `value` to the interface file `path` in one write(2), as the kernel expects.

        Never creates the file: a missing interface file is an error (O_CREAT would hide it).
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise CgroupWriteError(path, value, e) from e

    def read(self, path: str) -> str:
        """The contents of the interface file `path`; ControllerError naming it when unreadable."""
        try:
            with open(path) as f:
                return f.read()
        except OSError as e:
            raise ControllerError(f"cannot read {path}: {e.strerror or e}") from e

    def read_optional(self, path: str) -> str | None:
        """Like `read`, but None when the file (or its cgroup) does not exist."""
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ControllerError(f"cannot read {path}: {e.strerror or e}") from e

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def mkdir(self, path: str) -> bool:
        """Create the cgroup directory `path`; False when it already existed."""
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
        except OSError as e:
            raise ControllerError(f"cannot create cgroup {path}: {e.strerror or e}") from e
        return True

    def rmdir(self, path: str) -> None:
        """Remove the cgroup directory `path` (raises OSError: ENOENT, EBUSY, ENOTEMPTY...)."""
        os.rmdir(path)

    def subdirs(self, path: str) -> list[str]:
        """Names of the child cgroups of `path` ([] when `path` does not exist)."""
        return self._children(path) or []

    def _children(self, path: str) -> list[str] | None:
        """The child cgroups of `path`; None when `path` does not exist. A directory whose link count
        is 2 has none (cgroupfs keeps it at 2 + subdirectories, as ext4 and tmpfs do): one stat, rather
        than a scan of its 20-40 interface files — a job's cgroups, walked at every kill and removal,
        have no children."""
        try:
            if os.stat(path).st_nlink == 2:
                return []
            with os.scandir(path) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return None

    def walk_down(self, path: str) -> Iterator[str]:
        """`path` and every cgroup below it, deepest first (the order rmdir needs); nothing when
        `path` does not exist."""
        children = self._children(path)
        if children is None:
            return
        for name in children:
            yield from self.walk_down(os.path.join(path, name))
        yield path


def tree_pids(files: CgroupFiles, roots: Iterable[str]) -> list[int]:
    """Every pid in cgroup.procs of `roots` and of the cgroups below them, without duplicates."""
    seen: dict[int, None] = {}
    for root in roots:
        for path in files.walk_down(root):
            text = files.read_optional(os.path.join(path, "cgroup.procs"))
            for pid in (text or "").split():
                seen[int(pid)] = None
    return list(seen)


def sigkill_all(pids: Iterable[int]) -> None:
    """SIGKILL each pid; ones already gone are fine."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def wait_exited(pids: Iterable[int], deadline: float) -> None:
    """Wait until every process in `pids` has exited, or until `deadline` (time.monotonic()).

    Event-driven: a pidfd per process, polled together; a pidfd becomes readable when its process
    exits (no busy polling, and no reaping: the processes need not be our children).
    """
    fds = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        pending = set(fds)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for fd, _events in poller.poll(remaining * 1000):
                pending.discard(fd)
                poller.unregister(fd)
    finally:
        for fd in fds:
            os.close(fd)


def kill_until_empty(files: CgroupFiles, roots: list[str], deadline: float) -> list[int]:
    """SIGKILL everything in `roots` (and below) until cgroup.procs is empty everywhere; wait for each
    death through pidfds. Returns the pids still there at `deadline` ([] on success)."""
    backoff = 0.001
    while True:
        pids = tree_pids(files, roots)
        if not pids:
            return []
        if time.monotonic() >= deadline:
            return pids
        sigkill_all(pids)
        before = time.monotonic()
        wait_exited(pids, deadline)
        if time.monotonic() - before < 0.0005:
            # Nothing to wait on (the processes were exiting already but still listed): back off a
            # little rather than spin on cgroup.procs.
            time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 0.05)


def rmdir_retrying(files: CgroupFiles, path: str, deadline: float) -> bool:
    """rmdir `path`, retrying EBUSY (the kernel releases a cgroup a moment after its last task exits)
    with a bounded exponential backoff. True when removed or already gone; False on timeout.
    Raises ControllerError for any other failure."""
    backoff = 0.001
    while True:
        try:
            files.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise ControllerError(f"cannot remove cgroup {path}: {e.strerror or e}") from e
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(backoff, remaining))
        backoff = min(backoff * 2, 0.1)


def remove_if_empty(files: CgroupFiles, path: str) -> bool:
    """rmdir `path` when it has no child cgroup and no process; losing a race to a concurrent job start
    (ENOTEMPTY, EBUSY) is fine. True when `path` is gone."""
    try:
        files.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EBUSY, errno.EEXIST):
            return False
        raise ControllerError(f"cannot remove cgroup {path}: {e.strerror or e}") from e
    return True


def job_dirs(files: CgroupFiles, jobs_root: str) -> list[tuple[str, str]]:
    """The (owner, job_id) pairs under a `remote-jobs` directory."""
    return [
        (owner, job)
        for owner in files.subdirs(jobs_root)
        for job in files.subdirs(os.path.join(jobs_root, owner))
    ]
