"""What a job is asked to be: `JobSpec`, its resource `Limits` and its namespace `Isolation`.

All three are frozen attrs classes validated at construction, so an invalid request fails before
anything is created on disk or in a cgroup.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from jobcore.errors import InvalidLimit, InvalidSpec

#: Smallest memory limit accepted: below this even a shell cannot start, so it is surely a mistake.
MIN_MEMORY_BYTES = 4 * 1024 * 1024
#: The job's init and its command are both counted against `pids`.
MIN_PIDS = 2
MAX_IO_BPS = 10**13
MAX_IO_IOPS = 10**9
#: execve refuses argv+env beyond ARG_MAX (2 MiB here); refuse earlier with a clear message.
MAX_ARGV_ENV_BYTES = 1024 * 1024

OWNER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[^=\x00]+$")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@functools.cache
def host_cpu_count() -> int:
    return os.cpu_count() or 1


@functools.cache
def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@functools.cache
def host_pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except OSError:
        return 4194304


def _positive_int(name: str, value: int | None, minimum: int, maximum: int, unit: str = "") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidLimit(f"{name} must be a whole number{unit and ' of ' + unit}, got {value!r}")
    if value <= 0:
        raise InvalidLimit(f"{name} must be positive, got {value}")
    if value < minimum:
        raise InvalidLimit(f"{name} of {value}{unit and ' ' + unit} is below the minimum of {minimum}")
    if value > maximum:
        raise InvalidLimit(f"{name} of {value}{unit and ' ' + unit} is above the maximum of {maximum}")


def _validate_cpu(_inst: Any, _attr: Any, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidLimit(f"cpu must be a number of cores, got {value!r}")
    if not math.isfinite(value):
        raise InvalidLimit(f"cpu must be a finite number of cores, got {value}")
    if value <= 0:
        raise InvalidLimit(f"cpu must be positive, got {value}")
    if value < 0.01:
        raise InvalidLimit(f"cpu of {value} cores is below the minimum of 0.01")
    if value > host_cpu_count():
        raise InvalidLimit(f"cpu of {value} cores is more than this host has ({host_cpu_count()})")


def _validate_memory(_inst: Any, _attr: Any, value: int | None) -> None:
    _positive_int("memory", value, MIN_MEMORY_BYTES, host_memory_bytes(), "bytes")


def _validate_pids(_inst: Any, _attr: Any, value: int | None) -> None:
    _positive_int("pids", value, MIN_PIDS, host_pid_max())


def _io_validator(name: str, maximum: int) -> Any:
    def check(_inst: Any, _attr: Any, value: int | None) -> None:
        _positive_int(name, value, 1, maximum)

    return check


def _validate_io_device(_inst: Any, _attr: Any, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise InvalidLimit(f"io_device must be an absolute path, got {value!r}")


@attrs.frozen
class Limits:
    """Resource limits of one job. `None` means "not limited" (or: use the Worker's default).

    cpu is in cores (0.5 = half of one core), memory in bytes (swap is never allowed past it),
    io_* on the whole disk behind the job's working directory (or `io_device`), pids the most tasks.
    """

    cpu: float | None = attrs.field(default=None, validator=_validate_cpu)
    memory: int | None = attrs.field(default=None, validator=_validate_memory)
    pids: int | None = attrs.field(default=None, validator=_validate_pids)
    io_read_bps: int | None = attrs.field(default=None, validator=_io_validator("io_read_bps", MAX_IO_BPS))
    io_write_bps: int | None = attrs.field(default=None, validator=_io_validator("io_write_bps", MAX_IO_BPS))
    io_read_iops: int | None = attrs.field(default=None, validator=_io_validator("io_read_iops", MAX_IO_IOPS))
    io_write_iops: int | None = attrs.field(
        default=None, validator=_io_validator("io_write_iops", MAX_IO_IOPS)
    )
    io_device: str | None = attrs.field(default=None, validator=_validate_io_device)

    RESOURCE_FIELDS = (
        "cpu",
        "memory",
        "pids",
        "io_read_bps",
        "io_write_bps",
        "io_read_iops",
        "io_write_iops",
    )

    def requested(self) -> dict[str, float | int]:
        """The limits that are set, by name."""
        return {k: v for k in self.RESOURCE_FIELDS if (v := getattr(self, k)) is not None}

    def has_io(self) -> bool:
        return any(getattr(self, k) is not None for k in self.RESOURCE_FIELDS if k.startswith("io_"))

    def resolve(self, defaults: Limits, maximum: Limits) -> Limits:
        """The limits to apply: each unset field takes its default; none may exceed its maximum.

        Raises InvalidLimit naming the first field that asks for more than `maximum` allows.
        """
        values: dict[str, Any] = {}
        for name in self.RESOURCE_FIELDS:
            asked = getattr(self, name)
            value = asked if asked is not None else getattr(defaults, name)
            cap = getattr(maximum, name)
            if value is not None and cap is not None and value > cap:
                raise InvalidLimit(f"{name} of {value} is above the maximum allowed here ({cap})")
            if value is None and cap is not None:
                value = cap
            values[name] = value
        values["io_device"] = self.io_device or defaults.io_device
        return Limits(**values)


@attrs.frozen
class Isolation:
    """Which namespaces a job gets, and whether it runs in the sandbox. All on by default;
    `net=False` shares the host's network.

    The sandbox (docs/sandbox.md): the host's filesystem read-only and nosuid, a private /tmp,
    /var/tmp and /dev/shm, a minimal /dev, the Worker's state directory and its `hidden_paths`
    inaccessible, a writable working directory; and no capability (not even in the bounding set),
    no_new_privs and no core dumps. It needs the mount namespace.
    """

    pid: bool = True
    mount: bool = True
    net: bool = True
    uts: bool = True
    ipc: bool = True
    sandbox: bool = True

    def __attrs_post_init__(self) -> None:
        if self.sandbox and not self.mount:
            raise InvalidSpec(
                "the sandbox needs a mount namespace: with mount=False, also give sandbox=False "
                "(the job then sees and may write the host's filesystem as its user)"
            )

    def enabled(self) -> tuple[str, ...]:
        return tuple(n for n in ("pid", "mount", "net", "uts", "ipc") if getattr(self, n))

    @classmethod
    def none(cls) -> Isolation:
        """No namespace and no sandbox: the job shares everything with the host."""
        return cls(pid=False, mount=False, net=False, uts=False, ipc=False, sandbox=False)


#: uids and gids a job may run as: any but the kernel's "no id" value (-1 as unsigned).
MAX_ID = 2**32 - 2


def _validate_id(_inst: Any, attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise InvalidSpec(f"{attribute.name} must be a whole number from 0 to {MAX_ID}, got {value!r}")


@attrs.frozen
class RunAs:
    """The user a job's command runs as: uid and gid, with no supplementary groups."""

    uid: int = attrs.field(validator=_validate_id)
    gid: int = attrs.field(validator=_validate_id)

    @classmethod
    def parse(cls, text: str) -> RunAs:
        """ "UID" or "UID:GID" (the gid defaults to the uid)."""
        uid, _, gid = text.partition(":")
        try:
            return cls(int(uid), int(gid or uid))
        except ValueError:
            raise InvalidSpec(f"user must be UID or UID:GID (numbers), got {text!r}") from None


def _to_argv(value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidSpec(f"argv must be a list of strings, got {type(value).__name__}")
    return tuple(value)


def _validate_argv(_inst: Any, _attr: Any, argv: tuple[str, ...]) -> None:
    if not argv:
        raise InvalidSpec("argv is empty: give the command to run and its arguments")
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise InvalidSpec(f"argv[{i}] must be a string, got {type(arg).__name__}")
        if "\x00" in arg:
            raise InvalidSpec(f"argv[{i}] contains a NUL byte")
    if not argv[0]:
        raise InvalidSpec("argv[0] is empty: give the command to run")


def _to_env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"env must be a mapping of names to values, got {type(value).__name__}")
    return dict(value)


def _validate_env(_inst: Any, _attr: Any, env: dict[str, str]) -> None:
    for key, val in env.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise InvalidSpec(f"env entry {key!r} must map a string to a string")
        if not ENV_NAME_RE.fullmatch(key):
            raise InvalidSpec(f"env name {key!r} is invalid: it must be non-empty, without '=' or NUL")
        if "\x00" in val:
            raise InvalidSpec(f"env value of {key} contains a NUL byte")


def _validate_cwd(_inst: Any, _attr: Any, cwd: str | None) -> None:
    if cwd is None:
        return
    if not isinstance(cwd, str) or "\x00" in cwd:
        raise InvalidSpec(f"cwd must be a path string without NUL bytes, got {cwd!r}")
    if not cwd.startswith("/"):
        raise InvalidSpec(f"cwd {cwd!r} is relative: give an absolute path")


def _validate_owner(_inst: Any, _attr: Any, owner: str) -> None:
    if not isinstance(owner, str) or not OWNER_RE.fullmatch(owner):
        raise InvalidSpec(
            f"owner {owner!r} is invalid: use 1-64 lower-case letters, digits, '_', '.' or '-', "
            "starting with a letter or '_'"
        )


@attrs.frozen
class JobSpec:
    """A command to run as a job. argv is executed directly (no shell); PATH is searched for argv[0].

    env is the job's whole environment (nothing is inherited from the Worker's process); PATH defaults
    to a standard one when absent. cwd must be an absolute path to an existing directory; without one
    the job works in a scratch directory of its own (with the sandbox; `/` without it).

    user: who the command runs as; None runs it as the Worker's own user (root, for a Worker running
    as root: with the sandbox, a root without any capability in a read-only view of the host).
    """

    argv: tuple[str, ...] = attrs.field(converter=_to_argv, validator=_validate_argv)
    env: dict[str, str] = attrs.field(factory=dict, converter=_to_env, validator=_validate_env)
    cwd: str | None = attrs.field(default=None, validator=_validate_cwd)
    limits: Limits = attrs.field(factory=Limits, validator=attrs.validators.instance_of(Limits))
    isolation: Isolation = attrs.field(factory=Isolation, validator=attrs.validators.instance_of(Isolation))
    owner: str = attrs.field(default="local", validator=_validate_owner)
    user: RunAs | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(RunAs))
    )

    def __attrs_post_init__(self) -> None:
        size = sum(len(os.fsencode(a)) + 1 for a in self.argv)
        size += sum(len(os.fsencode(k)) + len(os.fsencode(v)) + 2 for k, v in self.env.items())
        if size > MAX_ARGV_ENV_BYTES:
            raise InvalidSpec(f"argv and env take {size} bytes, more than the {MAX_ARGV_ENV_BYTES} allowed")

    def exec_env(self) -> dict[str, str]:
        """The environment the command is executed with."""
        env = dict(self.env)
        env.setdefault("PATH", DEFAULT_PATH)
        return env
