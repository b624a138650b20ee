"""The job sandbox: the ordered steps that make a job a boundary between users.

They run in the command's process between fork and exec, as root, after it joined its cgroup and
entered its namespaces (bubblewrap's and runc's order: mounts first, then privileges, then exec):

    open what must stay reachable → the host's tree read-only (and nosuid) → a private /tmp and
    /var/tmp → a minimal /dev → a writable working directory → hide the server's paths (and expose
    the job's scratch directory through them) → a fresh /proc and /sys with their dangerous parts
    read-only → drop every privilege → exec

Each step raises `SandboxError` naming what it could not do. The plan comes from the job's spec record
(`Worker.start` computes it): `{"hide": [paths], "scratch": path | None, "cwd_bind": None | "ro" | "rw"}`.
"""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from jobcore import linux

if TYPE_CHECKING:
    from jobcore.records import SandboxPlan
    from jobcore.spec import RunAs

#: Device nodes a job gets in its /dev (the host's nodes, bind-mounted): nothing that reaches hardware.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
#: Parts of a fresh /proc that change the host, not the job: read-only even for a job running as uid 0.
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")
#: A mode-0 file bind-mounted over each hidden file (systemd's /run/systemd/inaccessible/reg).
_INACCESSIBLE = "/dev/.inaccessible"
_TMPFS_FLAGS = linux.MS_NOSUID | linux.MS_NODEV
_PROC_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
_NO_GID = 2**32 - 2
#: Highest capability number of this kernel: read once in the launcher, shared by every shim.
LAST_CAP = linux.last_capability()


def is_within(path: str, root: str) -> bool:
    """`path` is `root` or lies below it (both absolute and normalized)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


class SandboxError(Exception):
    """A sandbox step failed; the message says which and why."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


@contextmanager
def _step(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        text = exc.strerror or os.strerror(exc.errno or 0)
        where = f": {exc.filename}" if exc.filename else ""
        if exc.errno == 38:  # ENOSYS
            text += " (the sandbox needs Linux 5.12 or newer)"
        raise SandboxError(f"cannot {what}: {text}{where}", exc.errno) from exc


def _open_path(path: str, directory: bool = False) -> int:
    return os.open(path, os.O_PATH | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0))


def _bind(fd: int, target: str, recursive: bool = False) -> None:
    """Bind-mount what `fd` (an O_PATH fd opened before the view changed) refers to on `target`."""
    flags = linux.MS_BIND | (linux.MS_REC if recursive else 0)
    linux.mount(f"/proc/self/fd/{fd}", target, None, flags)


def _tmpfs(target: str, mode: int, flags: int = _TMPFS_FLAGS) -> None:
    linux.mount("tmpfs", target, "tmpfs", flags, f"mode={mode:o}")


def prepare_filesystem(plan: SandboxPlan, cwd: str, pid_namespace: bool, net_namespace: bool) -> None:
    """Build the job's view of the filesystem in its (new, private) mount namespace."""
    fds: dict[str, int] = {}
    try:
        with _step("open what the job keeps"):
            for name in DEVICES:
                fds[f"dev/{name}"] = _open_path(f"/dev/{name}")
            if plan.scratch:
                fds["scratch"] = _open_path(plan.scratch, directory=True)
            if plan.cwd_bind:
                fds["cwd"] = _open_path(cwd, directory=True)
                _check_opened_cwd(fds["cwd"], cwd, plan.hide)
        with _step("make the host's filesystem read-only"):
            linux.mount_setattr("/", linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID, recursive=True)
        with _step("mount a private /tmp"):
            _tmpfs("/tmp", 0o1777)
            if os.path.isdir("/var/tmp"):
                _tmpfs("/var/tmp", 0o1777)
        with _step("set up /dev"):
            _minimal_dev(fds)
        if "cwd" in fds:
            writable = plan.cwd_bind == "rw"
            with _step(f"bind the working directory {cwd}{' writable' if writable else ''}"):
                os.makedirs(cwd, mode=0o755, exist_ok=True)  # only where it is gone: under /tmp
                _bind_tree(fds["cwd"], cwd, writable)
        _hide(plan.hide, fds.get("scratch"), plan.scratch)
        if pid_namespace:
            with _step("mount /proc"):
                # hidepid: the job sees only the processes it may trace, so not its init (root, and
                # non-dumpable even to a uid-0 job), whose /proc/1/net and mountinfo are the host's.
                # gid: the group exempt from hidepid, by default 0 (a uid-0 job's): one nobody has.
                linux.mount("proc", "/proc", "proc", _PROC_FLAGS, f"hidepid=2,gid={_NO_GID}")
                for name in _PROC_READ_ONLY:
                    path = f"/proc/{name}"
                    if os.path.exists(path):
                        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
                        linux.mount_setattr(path, linux.MOUNT_ATTR_RDONLY, recursive=True)
        if net_namespace:
            with _step("mount /sys"):
                linux.mount("sysfs", "/sys", "sysfs", linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV)
    finally:
        for fd in fds.values():
            os.close(fd)


def _bind_tree(fd: int, target: str, writable: bool) -> None:
    """Bind what `fd` holds (with the mounts below it, which stay read-only) at `target`, writable or
    not: a detached clone made from the fd, made writable through its own fd, then attached — no
    step resolves the source by path, so nothing swapped in meanwhile can be made writable instead."""
    tree = linux.open_tree_clone(fd)
    try:
        if writable:
            linux.mount_setattr(target, clear_flags=linux.MOUNT_ATTR_RDONLY, fd=tree)
        linux.move_mount(tree, target)
    finally:
        os.close(tree)


def _check_opened_cwd(fd: int, cwd: str, hidden: Sequence[str]) -> None:
    """The Worker resolved the working directory and checked it at start; the job's user may have
    swapped a directory of its own for a symlink since. What the fd holds is what would be bound
    writable, so check that (no race left: the fd pins the directory)."""
    real = os.readlink(f"/proc/self/fd/{fd}")
    if real != cwd:
        raise SandboxError(f"the working directory {cwd} is now {real}: it changed since the job was started")
    for path in hidden:
        if is_within(real, path):
            raise SandboxError(f"the working directory {cwd} leads into {path}, which jobs may not see")


def _minimal_dev(fds: dict[str, int]) -> None:
    _tmpfs("/dev", 0o755, linux.MS_NOSUID | linux.MS_NOEXEC)
    for name in DEVICES:
        os.close(os.open(f"/dev/{name}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        _bind(fds[f"dev/{name}"], f"/dev/{name}")
    for name, target in _DEV_LINKS.items():
        os.symlink(target, f"/dev/{name}")
    os.close(os.open(_INACCESSIBLE, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0))
    os.chmod(_INACCESSIBLE, 0)
    os.mkdir("/dev/shm", 0o755)
    _tmpfs("/dev/shm", 0o1777)
    linux.mount_setattr("/dev", linux.MOUNT_ATTR_RDONLY)  # this mount only: shm stays writable


def _hide(paths: Sequence[str], scratch_fd: int | None, scratch: str | None) -> None:
    """Make each path inaccessible: an empty, read-only tmpfs over a directory, a mode-0 file over a
    file. A path already gone from the view (under the private /tmp, say) needs nothing. The job's
    scratch directory, which lives under the state directory, is then bound back at its own path."""
    hidden_dirs: list[str] = []
    for path in sorted(set(paths), key=len):
        if any(is_within(path, d) for d in hidden_dirs):
            continue  # under a directory already hidden
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with _step(f"hide {path} from the job"):
            if stat.S_ISDIR(st.st_mode):
                _tmpfs(path, 0o711, _TMPFS_FLAGS | linux.MS_NOEXEC)
                hidden_dirs.append(path)
            else:
                linux.mount(_INACCESSIBLE, path, None, linux.MS_BIND)
    if scratch_fd is not None and scratch is not None:
        with _step(f"mount the job's scratch directory {scratch}"):
            os.makedirs(scratch, mode=0o711, exist_ok=True)
            _bind_tree(scratch_fd, scratch, writable=True)
    for path in hidden_dirs:
        with _step(f"hide {path} from the job"):
            linux.mount_setattr(path, linux.MOUNT_ATTR_RDONLY)


def drop_privileges(user: RunAs | None, sandbox: bool) -> None:
    """Become the job's user with no supplementary groups; with the sandbox, also keep no capability
    (none in any set, none in the bounding set, so not even a set-uid root binary gets one back),
    no_new_privs (set-uid bits and file capabilities mean nothing on exec) and no core dumps."""
    if sandbox:
        with _step("drop the capability bounding set"):
            for cap in range(LAST_CAP + 1):
                linux.prctl(linux.PR_CAPBSET_DROP, cap)
    if user is not None:
        uid, gid = user.uid, user.gid
        with _step(f"run as uid {uid} gid {gid}"):
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
    if sandbox:
        with _step("drop capabilities"):
            linux.clear_capabilities()
            linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
