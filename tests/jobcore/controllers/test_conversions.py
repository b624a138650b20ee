"""Table tests of the pure functions: value conversions, parsers, block-device resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobcore.controllers.block_device import resolve_block_device, whole_disk
from jobcore.controllers.conversions import (
    blkio_throttle_writes,
    cpu_max_value,
    cpu_quota_us,
    io_max_value,
    limits_from_dict,
    limits_to_dict,
    parse_blkio_service_bytes,
    parse_flat_keyed,
    parse_io_stat,
    parse_pids,
    parse_populated,
    v1_memory_writes,
)
from jobcore.controllers.mounts import cgroup_dir, parse_mountinfo, parse_proc_cgroup
from jobcore.errors import InvalidLimit
from jobcore.spec import Limits

MiB = 1 << 20
UNLIMITED = 9223372036854771712


@pytest.mark.parametrize(
    ("cores", "quota"),
    [
        (0.5, 50_000),
        (1, 100_000),
        (2, 200_000),
        (1.25, 125_000),
        (0.01, 1_000),
        (0.001, 1_000),
        (0.333, 33_300),
    ],
)
def test_cpu_cores_become_a_cfs_quota_per_100ms(cores: float, quota: int) -> None:
    assert cpu_quota_us(cores) == quota


@pytest.mark.parametrize(
    ("cores", "line"), [(0.5, "50000 100000"), (2, "200000 100000"), (0.01, "1000 100000")]
)
def test_cpu_max_is_quota_then_period(cores: float, line: str) -> None:
    assert cpu_max_value(cores) == line


@pytest.mark.parametrize(
    ("limit", "memsw", "writes"),
    [
        # a new cgroup: memsw is unlimited, so the limit goes first, then memsw down to it
        (
            100 * MiB,
            UNLIMITED,
            [("memory.limit_in_bytes", str(100 * MiB)), ("memory.memsw.limit_in_bytes", str(100 * MiB))],
        ),
        # raising above the current memsw: memsw first, or the kernel says EINVAL
        (
            200 * MiB,
            100 * MiB,
            [("memory.memsw.limit_in_bytes", str(200 * MiB)), ("memory.limit_in_bytes", str(200 * MiB))],
        ),
        # no swap accounting: only the limit
        (64 * MiB, None, [("memory.limit_in_bytes", str(64 * MiB))]),
    ],
)
def test_v1_memory_writes_keep_memsw_at_or_above_the_limit(
    limit: int, memsw: int | None, writes: list[tuple[str, str]]
) -> None:
    assert v1_memory_writes(limit, memsw) == writes


@pytest.mark.parametrize(
    ("limits", "writes", "io_max"),
    [
        (Limits(), [], None),
        (
            Limits(io_write_bps=10 * MiB),
            [("blkio.throttle.write_bps_device", f"254:0 {10 * MiB}")],
            f"254:0 wbps={10 * MiB}",
        ),
        (
            Limits(io_read_bps=1, io_write_bps=2, io_read_iops=3, io_write_iops=4),
            [
                ("blkio.throttle.read_bps_device", "254:0 1"),
                ("blkio.throttle.write_bps_device", "254:0 2"),
                ("blkio.throttle.read_iops_device", "254:0 3"),
                ("blkio.throttle.write_iops_device", "254:0 4"),
            ],
            "254:0 rbps=1 wbps=2 riops=3 wiops=4",
        ),
    ],
)
def test_io_limits_become_per_device_lines(
    limits: Limits, writes: list[tuple[str, str]], io_max: str | None
) -> None:
    assert blkio_throttle_writes((254, 0), limits) == writes
    assert io_max_value((254, 0), limits) == io_max


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n", {"usage_usec": 1500000}),
        ("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n", {"max": 3, "oom_kill": 1}),
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", {"oom_kill": 2, "under_oom": 0}),
        ("", {}),
    ],
)
def test_flat_keyed_files_parse_to_ints(text: str, values: dict[str, int]) -> None:
    parsed = parse_flat_keyed(text)
    assert {k: parsed[k] for k in values} == values


@pytest.mark.parametrize(
    ("text", "totals"),
    [
        ("254:0 rbytes=4096 wbytes=52428800 rios=1 wios=50 dbytes=0 dios=0\n", (4096, 52428800)),
        ("254:0 rbytes=1 wbytes=2 rios=0 wios=0\n7:0 rbytes=10 wbytes=20 rios=0 wios=0\n", (11, 22)),
        ("", (0, 0)),
    ],
)
def test_io_stat_sums_bytes_over_devices(text: str, totals: tuple[int, int]) -> None:
    assert parse_io_stat(text) == totals


@pytest.mark.parametrize(
    ("text", "totals"),
    [
        (
            "254:0 Read 4096\n254:0 Write 52428800\n254:0 Sync 52432896\n254:0 Async 0\n"
            "254:0 Discard 0\n254:0 Total 52432896\nTotal 52432896\n",
            (4096, 52428800),
        ),
        ("7:0 Read 1\n7:0 Write 2\n254:0 Read 10\n254:0 Write 20\nTotal 33\n", (11, 22)),
        ("Total 0\n", (0, 0)),
    ],
)
def test_blkio_service_bytes_sum_read_and_write(text: str, totals: tuple[int, int]) -> None:
    assert parse_blkio_service_bytes(text) == totals


@pytest.mark.parametrize(
    ("text", "populated"), [("populated 1\nfrozen 0\n", True), ("populated 0\nfrozen 1\n", False)]
)
def test_cgroup_events_populated(text: str, populated: bool) -> None:
    assert parse_populated(text) is populated


def test_cgroup_procs_parse_to_pids() -> None:
    assert parse_pids("12\n345\n") == [12, 345]
    assert parse_pids("") == []


def test_limits_survive_the_json_round_trip() -> None:
    limits = Limits(cpu=0.5, memory=64 * MiB, pids=10, io_write_bps=MiB, io_device="/dev/vda")
    assert limits_from_dict(limits_to_dict(limits)) == limits
    assert limits_to_dict(Limits()) == {}


MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /process_api /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 254:0 / /mnt/with\\040space rw - ext4 /dev/vda rw
"""


def test_mountinfo_is_parsed_with_co_mounted_controllers_and_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.fstype for m in mounts] == ["tmpfs", "cgroup", "cgroup", "cgroup2", "ext4"]
    assert mounts[1].super_options == ("rw", "cpu", "cpuacct")
    assert mounts[4].mount_point == "/mnt/with space"
    assert (mounts[4].major, mounts[4].minor) == (254, 0)


@pytest.mark.parametrize(
    ("mount_index", "cgroup_path", "directory"),
    [
        (1, "/", "/sys/fs/cgroup/cpu,cpuacct"),
        (1, "/a/b", "/sys/fs/cgroup/cpu,cpuacct/a/b"),
        # the mount shows the hierarchy from /process_api down
        (2, "/process_api/x", "/sys/fs/cgroup/memory/x"),
        (2, "/process_api", "/sys/fs/cgroup/memory"),
        (2, "/elsewhere", None),
        (2, "/process_api_other", None),
    ],
)
def test_a_cgroup_path_maps_into_its_mount(mount_index: int, cgroup_path: str, directory: str | None) -> None:
    assert cgroup_dir(parse_mountinfo(MOUNTINFO)[mount_index], cgroup_path) == directory


def test_proc_cgroup_lines_by_hierarchy() -> None:
    text = "9:name=systemd:/\n4:memory:/process_api/1b02\n2:cpu,cpuacct:/\n0::/harness/runner\n"
    assert parse_proc_cgroup(text) == {
        "name=systemd": "/",
        "memory": "/process_api/1b02",
        "cpu,cpuacct": "/",
        "": "/harness/runner",
    }


@pytest.fixture
def fake_sys(tmp_path: Path) -> Path:
    """/sys/dev/block with a disk 8:0, its partition 8:1 and a device-mapper device 253:0."""
    devices = tmp_path / "devices"
    disk = devices / "pci0000:00" / "block" / "sda"
    (disk / "sda1").mkdir(parents=True)
    (disk / "dev").write_text("8:0\n")
    (disk / "sda1" / "dev").write_text("8:1\n")
    (disk / "sda1" / "partition").write_text("1\n")
    dm = devices / "virtual" / "block" / "dm-0"
    dm.mkdir(parents=True)
    (dm / "dev").write_text("253:0\n")
    links = tmp_path / "dev" / "block"
    links.mkdir(parents=True)
    (links / "8:0").symlink_to(disk)
    (links / "8:1").symlink_to(disk / "sda1")
    (links / "253:0").symlink_to(dm)
    return tmp_path


@pytest.mark.parametrize(
    ("device", "disk"), [((8, 1), (8, 0)), ((8, 0), (8, 0)), ((253, 0), (253, 0)), ((9, 9), None)]
)
def test_a_partition_resolves_to_its_whole_disk(
    fake_sys: Path, device: tuple[int, int], disk: tuple[int, int] | None
) -> None:
    assert whole_disk(*device, sys_root=str(fake_sys)) == disk


def test_a_path_on_the_root_disk_resolves_to_that_disk() -> None:
    st = os.stat("/")
    if os.major(st.st_dev) == 0:
        pytest.skip("/ is not on a block device here")
    major, minor = resolve_block_device("/")
    assert os.path.exists(f"/sys/dev/block/{major}:{minor}")
    assert not os.path.exists(f"/sys/dev/block/{major}:{minor}/partition")


@pytest.mark.parametrize("path", ["/dev/shm", "/proc/self", "/does/not/exist"])
def test_a_path_without_a_block_device_is_refused_by_name(path: str) -> None:
    if not os.path.exists(os.path.dirname(path) or path) and path != "/does/not/exist":
        pytest.skip(f"{path} does not exist here")
    with pytest.raises(InvalidLimit, match=path):
        resolve_block_device(path)


def test_tmpfs_refusal_names_the_file_system_type() -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    with pytest.raises(InvalidLimit, match="tmpfs"):
        resolve_block_device("/dev/shm")
