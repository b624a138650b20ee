"""Which block device an IO limit applies to: the whole disk behind a path.

cgroup IO throttling works per block device (MAJ:MIN), and the kernel only throttles a partition's IO
through its whole disk (the bio is remapped to the disk before the throttle sees it). So a path is
resolved to the st_dev of its file system, and a partition to its parent disk through
/sys/dev/block/MAJ:MIN/partition (runc does the same). Device-mapper and md devices have no `partition`
file and are throttled as they are.
"""

from __future__ import annotations

import os
import stat

from jobcore.controllers.mounts import mount_of_device, parse_mountinfo, read_text
from jobcore.errors import InvalidLimit


def whole_disk(major: int, minor: int, sys_root: str = "/sys") -> tuple[int, int] | None:
    """The whole disk of block device major:minor (itself when it is not a partition), or None when
    /sys/dev/block knows no such block device."""
    node = os.path.join(sys_root, "dev", "block", f"{major}:{minor}")
    if not os.path.exists(node):
        return None
    if not os.path.exists(os.path.join(node, "partition")):
        return major, minor
    # A partition's sysfs directory sits inside its disk's: .../block/vda/vda1.
    parent = os.path.dirname(os.path.realpath(node))
    try:
        dev = read_text(os.path.join(parent, "dev")).strip()
    except OSError:
        return None
    pmajor, _, pminor = dev.partition(":")
    return int(pmajor), int(pminor)


def _describe(path: str, st_dev: int, mountinfo: str) -> str:
    try:
        mount = mount_of_device(parse_mountinfo(read_text(mountinfo)), os.major(st_dev), os.minor(st_dev))
    except OSError:
        mount = None
    if mount is None:
        return f"{path} (device {os.major(st_dev)}:{os.minor(st_dev)})"
    return f"{path} (on {mount.fstype} {mount.source!r} mounted at {mount.mount_point})"


def resolve_block_device(
    path: str, *, sys_root: str = "/sys", mountinfo: str = "/proc/self/mountinfo"
) -> tuple[int, int]:
    """(major, minor) of the whole disk that holds `path`; a block device node stands for itself.

    Raises InvalidLimit naming the path and its file system when no block device is behind it (tmpfs,
    overlay, NFS, ...) or the path does not exist.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidLimit(f"cannot apply an IO limit to {path}: {e.strerror or e}") from e
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    major, minor = os.major(dev), os.minor(dev)
    if major == 0 and not stat.S_ISBLK(st.st_mode):
        # An anonymous device: tmpfs, overlay, proc... or btrfs, whose subvolumes get anonymous
        # st_dev numbers although a block device (the mount's source) is behind them.
        found = _block_source(major, minor, mountinfo)
        if found is not None:
            major, minor = found
    disk = whole_disk(major, minor, sys_root)
    if disk is None:
        raise InvalidLimit(
            f"cannot apply an IO limit to {_describe(path, dev, mountinfo)}: no block device is behind it; "
            "give a working directory (or io_device) on a disk"
        )
    return disk


def _block_source(major: int, minor: int, mountinfo: str) -> tuple[int, int] | None:
    try:
        mount = mount_of_device(parse_mountinfo(read_text(mountinfo)), major, minor)
        if mount is None or not mount.source.startswith("/dev/"):
            return None
        st = os.stat(mount.source)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)
