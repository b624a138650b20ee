"""Value conversions between `Limits` and cgroup interface files, and parsers of what the kernel reports.

Pure functions, table-tested (runc keeps these apart from the file I/O for the same reason: the formats
are where the bugs are).
"""

from __future__ import annotations

from jobcore.spec import Limits

#: The CFS period jobcore writes: 100 ms, the kernel's default and runc's.
CFS_PERIOD_US = 100_000
#: The kernel refuses a CFS quota below 1 ms.
MIN_CFS_QUOTA_US = 1_000

#: Limits io field -> (cgroup v1 blkio throttle file, cgroup v2 io.max key).
IO_FIELDS: dict[str, tuple[str, str]] = {
    "io_read_bps": ("blkio.throttle.read_bps_device", "rbps"),
    "io_write_bps": ("blkio.throttle.write_bps_device", "wbps"),
    "io_read_iops": ("blkio.throttle.read_iops_device", "riops"),
    "io_write_iops": ("blkio.throttle.write_iops_device", "wiops"),
}


def cpu_quota_us(cores: float, period_us: int = CFS_PERIOD_US) -> int:
    """CFS quota in microseconds per `period_us` that allows `cores` CPUs (0.5 -> 50000 of 100000)."""
    return max(MIN_CFS_QUOTA_US, round(cores * period_us))


def cpu_max_value(cores: float, period_us: int = CFS_PERIOD_US) -> str:
    """The cgroup v2 cpu.max line ("quota period") for `cores` CPUs."""
    return f"{cpu_quota_us(cores, period_us)} {period_us}"


def v1_memory_writes(limit: int, current_memsw: int | None) -> list[tuple[str, str]]:
    """The (file, value) writes that set a v1 memory limit of `limit` bytes with no swap on top.

    The kernel keeps memory.memsw.limit_in_bytes >= memory.limit_in_bytes at every step and refuses a
    write that would break that (EINVAL). So when the new limit is above the current memsw limit, memsw
    is raised first; otherwise (a new cgroup: memsw is unlimited) memory.limit_in_bytes goes first.
    `current_memsw` is None when the kernel has no memsw files (swap accounting off).
    """
    limit_write = ("memory.limit_in_bytes", str(limit))
    if current_memsw is None:
        return [limit_write]
    memsw_write = ("memory.memsw.limit_in_bytes", str(limit))
    if limit > current_memsw:
        return [memsw_write, limit_write]
    return [limit_write, memsw_write]


def blkio_throttle_writes(device: tuple[int, int], limits: Limits) -> list[tuple[str, str]]:
    """The cgroup v1 (file, "MAJ:MIN value") writes for the IO limits that are set."""
    major, minor = device
    writes = []
    for field, (filename, _key) in IO_FIELDS.items():
        value = getattr(limits, field)
        if value is not None:
            writes.append((filename, f"{major}:{minor} {value}"))
    return writes


def io_max_value(device: tuple[int, int], limits: Limits) -> str | None:
    """The cgroup v2 io.max line ("MAJ:MIN rbps=.. wbps=..") for the IO limits that are set, or None."""
    keys = [
        f"{key}={getattr(limits, field)}" for field, (_f, key) in IO_FIELDS.items() if getattr(limits, field)
    ]
    if not keys:
        return None
    major, minor = device
    return f"{major}:{minor} " + " ".join(keys)


def parse_flat_keyed(text: str) -> dict[str, int]:
    """A "key value" per line file (cpu.stat, memory.events, memory.oom_control) as a dict."""
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                values[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return values


def parse_io_stat(text: str) -> tuple[int, int]:
    """(read bytes, written bytes) summed over the devices of a cgroup v2 io.stat."""
    read = written = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                written += int(value)
    return read, written


def parse_blkio_service_bytes(text: str) -> tuple[int, int]:
    """(read bytes, written bytes) summed over the devices of a v1 blkio.*io_service_bytes file, whose
    lines are "MAJ:MIN Read N", "MAJ:MIN Write N", ... and a final "Total N"."""
    read = written = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        if parts[1] == "Read":
            read += int(parts[2])
        elif parts[1] == "Write":
            written += int(parts[2])
    return read, written


def parse_pids(text: str) -> list[int]:
    """The pids of a cgroup.procs file."""
    return [int(line) for line in text.split()]


def parse_populated(text: str) -> bool:
    """Whether cgroup.events says `populated 1` (a process is in the cgroup or below it)."""
    return parse_flat_keyed(text).get("populated", 0) != 0


def limits_to_dict(limits: Limits) -> dict[str, float | int | str]:
    """The limits that are set (io_device included) as plain JSON."""
    values: dict[str, float | int | str] = dict(limits.requested())
    if limits.io_device is not None:
        values["io_device"] = limits.io_device
    return values


def limits_from_dict(values: dict[str, float | int | str]) -> Limits:
    """The inverse of `limits_to_dict`: the limits as they were applied, not checked again against
    this host (one that shrank since must still be able to rebuild, and remove, the job's cgroup)."""
    from jobcore.records import stored_limits

    return stored_limits(values)
