"""What moving a fresh process into a fresh cgroup costs, through `cgroup.procs` and through `tasks`.

    .venv/bin/python bench/cgroup_join.py [--samples 30] [--hierarchy pids] [--gaps 0,0.02,0.1,0.3]

A job's command joins its cgroups between fork and exec (jobcore/command.py). For each gap between
samples, this forks a child that writes "0" into a new cgroup's `cgroup.procs` (moves the whole
process) or `tasks` (moves the writing thread; v1 only), timing the write, round-robin. The gap
matters: moving a process takes the kernel's global cgroup_threadgroup_rwsem for writing, whose first
writer after a quiet spell waits out an RCU grace period. The cgroups are made below this process's own
in the given v1 hierarchy and removed again. Prints the median and the max per file and gap, with
the mount options of the cgroup2 mount (`favordynmods` changes the picture: docs/jobserver.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path


def own_cgroup(hierarchy: str) -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if hierarchy in controllers.split(","):
            return Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
    raise SystemExit(f"no v1 {hierarchy} hierarchy here (this measures cgroup v1's two files)")


def one(parent: Path, name: str, index: int) -> float:
    directory = parent / f"{name.replace('.', '-')}-{index}"
    directory.mkdir()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        t = time.perf_counter()
        fd = os.open(directory / name, os.O_WRONLY)
        os.write(fd, b"0")
        os.close(fd)
        os.write(w, repr(time.perf_counter() - t).encode())
        os._exit(0)
    os.close(w)
    took = float(os.read(r, 64))
    os.close(r)
    os.waitpid(pid, 0)
    directory.rmdir()
    return took * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--hierarchy", default="pids")
    ap.add_argument("--gaps", default="0,0.02,0.1,0.3")
    args = ap.parse_args()
    parent = own_cgroup(args.hierarchy) / f"cgroup-join-bench-{os.getpid()}"
    parent.mkdir()
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if " cgroup2 " in line]
    print(f"{os.uname().release}; load {os.getloadavg()[0]:.2f}; cgroup2 mount: {mounts or 'none'}")
    try:
        for gap in (float(g) for g in args.gaps.split(",")):
            taken: dict[str, list[float]] = {"cgroup.procs": [], "tasks": []}
            for i in range(args.samples):
                for name, values in taken.items():
                    values.append(one(parent, name, i))
                    time.sleep(gap)
            for name, values in taken.items():
                print(
                    f"gap {gap:5.2f} s  write 0 to {name:12}  median {statistics.median(values):6.2f} ms"
                    f"  max {max(values):6.2f} ms  ({len(values)} samples)"
                )
    finally:
        parent.rmdir()


if __name__ == "__main__":
    main()
