"""How the cgroup v1 backend finds its hierarchies: from mountinfo and /proc/<pid>/cgroup, with
co-mounted controllers (cpu,cpuacct) sharing one directory, separately mounted ones not, and a mount
whose root is not the hierarchy's root (a container's view)."""

from __future__ import annotations

from pathlib import Path

from jobcore.controllers.cgroup_v1 import CgroupV1Controller


def layout(tmp_path: Path, mounts: dict[str, str], cgroups: str) -> CgroupV1Controller:
    """A controller over fake mount points: {"cpu,cpuacct": "/"} -> a cgroup v1 mount of those
    controllers at tmp_path/<name> whose root is "/"."""
    lines = []
    for i, (controllers, root) in enumerate(mounts.items()):
        point = tmp_path / controllers
        point.mkdir()
        lines.append(f"{30 + i} 20 0:{40 + i} {root} {point} rw - cgroup cgroup rw,{controllers}")
    lines.append(f"90 20 0:99 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw")
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n")
    (tmp_path / "cgroup").write_text(cgroups)
    for line in cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in mounts:  # the caller's cgroup exists (and is writable) on its mount
            rel = path[len(mounts[controllers].rstrip("/")) :].lstrip("/")
            (tmp_path / controllers / rel).mkdir(parents=True, exist_ok=True)
    return CgroupV1Controller(mountinfo=str(tmp_path / "mountinfo"), proc_cgroup=str(tmp_path / "cgroup"))


def test_co_mounted_cpu_and_cpuacct_share_one_job_root(tmp_path: Path) -> None:
    c = layout(tmp_path, {"cpu,cpuacct": "/", "memory": "/"}, "3:memory:/svc\n2:cpu,cpuacct:/\n0::/\n")
    caps = c.probe()
    assert caps.available, caps.reason
    assert caps.mode == "cgroup1-hybrid"
    assert set(caps.job_roots) == {
        f"cpu,cpuacct={tmp_path}/cpu,cpuacct/remote-jobs",
        f"memory={tmp_path}/memory/svc/remote-jobs",
    }


def test_separately_mounted_cpu_and_cpuacct_get_a_root_each(tmp_path: Path) -> None:
    c = layout(tmp_path, {"cpu": "/", "cpuacct": "/"}, "2:cpuacct:/a\n1:cpu:/a\n")
    assert set(c.probe().job_roots) == {
        f"cpu={tmp_path}/cpu/a/remote-jobs",
        f"cpuacct={tmp_path}/cpuacct/a/remote-jobs",
    }


def test_a_mount_showing_part_of_the_hierarchy_is_resolved_against_its_root(tmp_path: Path) -> None:
    # Inside a container the memory mount's root is the container's cgroup, /docker/abc.
    c = layout(tmp_path, {"memory": "/docker/abc"}, "4:memory:/docker/abc/worker\n")
    assert c.probe().job_roots == (f"memory={tmp_path}/memory/worker/remote-jobs",)


def test_without_v1_hierarchies_it_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    c = layout(tmp_path, {}, "0::/\n")
    caps = c.probe()
    assert not caps.available
    assert "no cgroup v1 hierarchy" in caps.reason
