"""Thin, typed wrappers over the Linux system calls jobcore needs that Python 3.11 lacks.

unshare, mount, prctl and inotify go through libc with ctypes; each raises OSError with errno set.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
from collections.abc import Iterator


def _c_library() -> str:
    """The C library's file name: glibc's soname, else what ctypes.util finds (musl's libc.so...).

    ctypes.util is imported only for that fallback: it imports shutil, subprocess and tempfile (with
    bz2, lzma and random), ~1 MiB of the launcher that every shim would fork and tear down."""
    try:
        ctypes.CDLL("libc.so.6")
    except OSError:
        from ctypes.util import find_library

        return find_library("c") or "libc.so.6"
    return "libc.so.6"


_LIBC = _c_library()
_libc = ctypes.CDLL(_LIBC, use_errno=True)
#: The same C library, called with the GIL held (as os.fork() calls fork(2)); see `fork`.
_libc_gil = ctypes.PyDLL(_LIBC, use_errno=True)
_libc_gil.fork.restype = ctypes.c_int
_libc_gil.fork.argtypes = ()
# The functions used in every shim and job, looked up and typed once here (in the launcher, before any
# fork) rather than on first use in each forked child: ctypes' lookup, and the c_int/c_ulong objects an
# untyped call needs, are Python-level work that copies parent pages in every child.
_unshare = _libc.unshare
_unshare.argtypes = (ctypes.c_int,)
_unshare.restype = ctypes.c_int
_setns = _libc.setns
_setns.argtypes = (ctypes.c_int, ctypes.c_int)
_setns.restype = ctypes.c_int
_prctl = _libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int
_mount = _libc.mount
_mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_mount.restype = ctypes.c_int
_syscall = _libc.syscall  # variadic: its arguments stay typed per call

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

#: Isolation field name -> clone flag.
NAMESPACE_FLAGS = {
    "pid": CLONE_NEWPID,
    "mount": CLONE_NEWNS,
    "net": CLONE_NEWNET,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

#: mount_setattr(2) (Linux 5.12+): change the flags of a whole mount tree in one call.
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
_AT_FDCWD = -100
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
# The new mount API's numbers are the same on every architecture (the unified syscall table).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(os.uname().machine)
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

F_SETPIPE_SZ = 1031

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _check(result: int, filename: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), filename)
    return result


def unshare(flags: int) -> None:
    """unshare(2). Uses os.unshare where Python provides it (3.12+)."""
    native = getattr(os, "unshare", None)
    if native is not None:
        native(flags)
        return
    _check(_unshare(flags))


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    result = _mount(enc(source), enc(target), enc(fstype), flags, enc(data))
    _check(result, target)


def make_mounts_private() -> None:
    """Stop mount events propagating between this mount namespace and the host's."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def mount_proc() -> None:
    """Mount a fresh /proc that shows the calling process's PID namespace."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_sysfs() -> None:
    """Mount a fresh /sys: sysfs shows the network namespace of whoever mounts it, so a job with its
    own network namespace needs its own to see only its own interfaces in /sys/class/net."""
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def set_interface_up(name: str = "lo") -> None:
    """Bring a network interface up with the SIOCSIFFLAGS ioctl (no `ip` binary needed)."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | _IFF_UP))


def prctl(option: int, arg: int, arg3: int = 0) -> None:
    _check(_prctl(option, arg, arg3, 0, 0))


def set_process_name(name: str) -> None:
    """Name the calling process as `ps -o comm`, `top` and perf show it (at most 15 bytes are kept);
    its command line (`ps -f`) is unchanged. Best effort: a name is a convenience."""
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, name.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(
    path: str, set_flags: int = 0, clear_flags: int = 0, recursive: bool = False, fd: int | None = None
) -> None:
    """mount_setattr(2): set and clear MOUNT_ATTR_* flags of the mount at `path` — or of the mount
    `fd` (from open_tree) — and, `recursive`, of every mount below it. ENOSYS before Linux 5.12."""
    attr = _MountAttr(set_flags, clear_flags, 0, 0)
    flags = (AT_RECURSIVE if recursive else 0) | (AT_EMPTY_PATH if fd is not None else 0)
    result = _syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR),
        ctypes.c_int(_AT_FDCWD if fd is None else fd),
        b"" if fd is not None else os.fsencode(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(result, path)


def open_tree_clone(fd: int, recursive: bool = True) -> int:
    """open_tree(2) with OPEN_TREE_CLONE: a detached copy of the mount tree at `fd` (an O_PATH fd),
    as a new fd. Nothing is resolved by path, so nothing can be swapped under it."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    return _check(_syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(fd), b"", ctypes.c_uint(flags)))


def move_mount(tree_fd: int, target: str) -> None:
    """move_mount(2): attach the detached tree `tree_fd` at `target`."""
    result = _syscall(
        ctypes.c_long(_SYS_MOVE_MOUNT),
        ctypes.c_int(tree_fd),
        b"",
        ctypes.c_int(_AT_FDCWD),
        os.fsencode(target),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(result, target)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def clear_capabilities() -> None:
    """capset(2) with every set empty: the calling thread keeps no capability (even as uid 0)."""
    if _SYS_CAPSET is None:
        raise OSError(38, "capset: unknown system call number on this architecture")
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_syscall(ctypes.c_long(_SYS_CAPSET), ctypes.byref(header), ctypes.byref(data)))


class _KernelSigaction(ctypes.Structure):
    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("restorer", ctypes.c_void_p),
        ("mask", ctypes.c_uint64),
    ]


def default_signal(signum: int) -> None:
    """Set `signum`'s disposition to SIG_DFL with rt_sigaction(2) itself, for the signals glibc keeps
    for its own use (32 and 33, which its sigaction refuses) and that an ignoring parent (make -j does
    ignore them) would otherwise pass on through exec. For a process about to exec."""
    if _SYS_RT_SIGACTION is None:
        raise OSError(38, "rt_sigaction: unknown system call number on this architecture")
    action = _KernelSigaction(None, 0, None, 0)  # SIG_DFL
    _check(
        _syscall(
            ctypes.c_long(_SYS_RT_SIGACTION),
            ctypes.c_int(signum),
            ctypes.byref(action),
            None,
            ctypes.c_size_t(8),
        )
    )


def signals_not_at_default() -> list[int] | None:
    """The signals the calling process ignores or handles (its SigIgn and SigCgt in /proc/self/status),
    SIGKILL and SIGSTOP aside: those an exec would not bring back to SIG_DFL by itself, or (handled)
    whose handler must not run in a child before it execs. None when /proc cannot tell."""
    try:
        with open("/proc/self/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    mask = 0
    seen = 0
    for line in text.splitlines():
        if line.startswith((b"SigIgn:", b"SigCgt:")):
            mask |= int(line.split()[1], 16)
            seen += 1
    if seen != 2:
        return None
    return [n for n in range(1, 65) if mask >> (n - 1) & 1 and n not in (9, 19)]  # SIGKILL, SIGSTOP


def last_capability() -> int:
    """The highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def set_pipe_size(fd: int, size: int) -> None:
    """Grow a pipe's buffer (fewer wake-ups for bulk output); best effort, the default works too."""
    import fcntl

    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except OSError:
        pass


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None when the
    process does not exist. Together with the pid it identifies a process across pid reuse."""
    try:
        data = read_small_file(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


#: Where `fork` may skip CPython's after-fork processing: the versions whose PyOS_AfterFork_Child was
#: read for it (3.11, 3.12), with the GIL. Elsewhere it is os.fork().
_RAW_FORK = sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 12)


def fork() -> int:
    """fork(2) for a single-threaded process that will run little Python in the child: os.fork()
    without CPython's after-fork processing, when the caller has one thread; os.fork() otherwise.

    What os.fork() adds (PyOS_BeforeFork, PyOS_AfterFork_Child/Parent) is, besides the hooks of
    os.register_at_fork, the re-initialisation of locks and thread states that *other* threads may have
    held or owned at the fork: with one thread there are none, so what remains are the hooks —
    threading's, random's, logging's — which the launcher and the shim do not need in their children,
    and which, run cold in a freshly forked child, copy ~0.6 MiB of the parent's pages into an idle
    child and ~0.3 MiB into a shim (docs/benchmarks.md, "What a shim's pages are"). So: no
    os.register_at_fork hook runs in the child or the parent of this fork. Raises OSError."""
    if not _RAW_FORK or not single_threaded():
        return os.fork()
    pid: int = _libc_gil.fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def single_threaded() -> bool:
    """True when the calling process has one thread (what a fork() leaves in the child)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def setns(fd: int, nstype: int) -> None:
    """setns(2). Uses os.setns where Python provides it (3.12+)."""
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, nstype)
        return
    _check(_setns(fd, nstype))


def child_pids_of_self() -> list[int]:
    """Direct children of the calling process, as pids of /proc's (the host's) PID namespace."""
    return child_pids(int(os.readlink("/proc/self")))


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` from /proc/PID/task/*/children (needs CONFIG_PROC_CHILDREN)."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return children
    for tid in tasks:
        try:
            children.extend(map(int, read_small_file(f"/proc/{pid}/task/{tid}/children").split()))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return children


def read_small_file(path: str) -> bytes:
    """The whole content of a small file (/proc, /sys), read with os-level calls: no file object,
    whose Python and C layers a freshly forked shim would otherwise run for the first time."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


class Inotify:
    """An inotify instance (non-blocking, close-on-exec)."""

    _EVENT = struct.Struct("iIII")

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))

    def add_watch(self, path: str, mask: int) -> int:
        return _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask)), path)

    def rm_watch(self, wd: int) -> None:
        # EINVAL: the watch is already gone (its directory was removed); nothing to do.
        _libc.inotify_rm_watch(self.fd, wd)

    def read_events(self) -> Iterator[tuple[int, int, str]]:
        """Every queued event as (wd, mask, name); empty when none is queued."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = self._EVENT.unpack_from(data, offset)
            offset += self._EVENT.size
            name = data[offset : offset + length].rstrip(b"\0").decode(errors="replace")
            offset += length
            yield wd, mask, name

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
