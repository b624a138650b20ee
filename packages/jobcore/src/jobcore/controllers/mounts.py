"""Parsing of /proc/<pid>/mountinfo and /proc/<pid>/cgroup: where the cgroup hierarchies are mounted
and where the calling process sits in each of them."""

from __future__ import annotations

import os
import re

import attrs

#: mountinfo escapes space, tab, newline and backslash in paths as octal (\040, \011, \012, \134).
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@attrs.frozen
class MountInfo:
    """One line of mountinfo (see proc(5))."""

    major: int
    minor: int
    #: The directory of the mounted file system that is the root of this mount.
    root: str
    mount_point: str
    fstype: str
    source: str
    super_options: tuple[str, ...]


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Every mount in a mountinfo file's text, in file order."""
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        major, _, minor = fields[2].partition(":")
        mounts.append(
            MountInfo(
                major=int(major),
                minor=int(minor),
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fstype=tail[0],
                source=_unescape(tail[1]) if len(tail) > 1 else "",
                super_options=tuple(tail[2].split(",")) if len(tail) > 2 else (),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """The lines of /proc/<pid>/cgroup as {hierarchy: path}: "memory", "cpu,cpuacct", "name=systemd", or
    "" for the cgroup v2 line ("0::/path")."""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    return paths


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def cgroup_dir(mount: MountInfo, cgroup_path: str) -> str | None:
    """The directory of `cgroup_path` (as /proc/<pid>/cgroup shows it) under `mount`, or None when the
    mount does not show that cgroup (its root is elsewhere in the hierarchy)."""
    root = mount.root.rstrip("/")
    if cgroup_path != root and not cgroup_path.startswith(root + "/"):
        return None
    rel = cgroup_path[len(root) :].lstrip("/")
    return os.path.join(mount.mount_point, rel) if rel else mount.mount_point


def mount_of_device(mounts: list[MountInfo], major: int, minor: int) -> MountInfo | None:
    """The first mount whose file system has device number major:minor (st_dev of a file in it)."""
    for m in mounts:
        if (m.major, m.minor) == (major, minor):
            return m
    return None
