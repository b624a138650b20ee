"""Where a job's memory goes: a shim's pages, split into inherited (copy-on-write) and new mappings.

    .venv/bin/python bench/shim_memory.py [--jobs 50]

Starts a jobcore Worker on a temporary state directory, runs `--jobs` idle `sleep 600` jobs, and for a
sample shim reports from /proc/PID/smaps: Private_Dirty per mapping, split into mappings that the
launcher also has at the same address (inherited through fork(): their private dirty pages were copied on
write) and mappings created after the fork. For scale it also forks, from a process that imported what
the launcher imports and froze the collector the same way, a child that only sleeps: the floor of any
forked CPython process here. Stops every job on exit.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobcore import JobSpec, Worker

HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def mappings(pid: int) -> dict[tuple[int, int], dict[str, int | str]]:
    """(start, end) -> {name, Rss, Pss, Private_Dirty, Shared_Dirty, ...} in kB."""
    out: dict[tuple[int, int], dict[str, int | str]] = {}
    current: dict[str, int | str] = {}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = HEADER.match(line)
        if m:
            current = {"name": m.group(3).strip() or "[anon]"}
            out[(int(m.group(1), 16), int(m.group(2), 16))] = current
            continue
        f = re.match(r"^(\w+):\s+(\d+) kB", line)
        if f:
            current[f.group(1)] = int(f.group(2))
    return out


def rollup(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(p) for p in task.read_text().split()]
    return out


def split(shim: int, launcher: int) -> tuple[dict[str, int], dict[str, int]]:
    """Private_Dirty kB by mapping name: (inherited from the launcher, created after the fork)."""
    parent = mappings(launcher)
    inherited: dict[str, int] = {}
    new: dict[str, int] = {}
    for key, m in mappings(shim).items():
        name = os.path.basename(str(m["name"])) if str(m["name"]).startswith("/") else str(m["name"])
        target = inherited if key in parent else new
        target[name] = target.get(name, 0) + int(m.get("Private_Dirty", 0))
    return inherited, new


def bare_fork_floor(popen: bool = False) -> dict[str, int]:
    """Private_Dirty etc. of a child forked from a launcher-like process that then only sleeps (after
    one `subprocess.Popen(['/bin/true'], preexec_fn=...)` as the shim spawns its command, if `popen`)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the launcher-like parent: same imports, same gc.freeze()
        os.close(read_fd)
        import jobcore.launcher  # noqa: F401

        gc.freeze()
        child = os.fork()
        if child == 0:
            if popen:
                subprocess.Popen(["/bin/true"], preexec_fn=lambda: None).wait()  # noqa: PLW1509
            time.sleep(600)
            os._exit(0)
        os.write(write_fd, f"{child}\n".encode())
        time.sleep(600)
        os._exit(0)
    os.close(write_fd)
    child = int(os.read(read_fd, 64).decode())
    os.close(read_fd)
    time.sleep(1)
    try:
        return rollup(child)
    finally:
        for p in (child, pid):
            os.kill(p, 9)
        os.waitpid(pid, 0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="shim-memory-")
    try:
        with Worker(state) as worker:
            ids = [worker.start(JobSpec(["sleep", "600"])).id for _ in range(args.jobs)]
            try:
                time.sleep(2)
                me = os.getpid()
                launcher = next(
                    p for p in children(me) if b"jobcore.launcher" in Path(f"/proc/{p}/cmdline").read_bytes()
                )
                shims = children(launcher)
                figs = [rollup(p) for p in shims]
                print(f"{len(shims)} shims (launcher pid {launcher}); medians in kB:")
                for key in ("Rss", "Pss", "Private_Dirty", "Private_Clean", "Shared_Dirty", "Shared_Clean"):
                    print(f"  {key:14} {statistics.median(f.get(key, 0) for f in figs):8.0f}")
                lr = rollup(launcher)
                print(f"launcher: Rss {lr['Rss']} Pss {lr['Pss']} Private_Dirty {lr['Private_Dirty']} kB")
                inherited, new = split(shims[len(shims) // 2], launcher)
                print(
                    "sample shim Private_Dirty in mappings inherited from the launcher: "
                    f"{sum(inherited.values())} kB"
                )
                for name, kb in sorted(inherited.items(), key=lambda kv: -kv[1])[:8]:
                    print(f"    {name:44} {kb:6} kB")
                print(f"sample shim Private_Dirty in mappings created after fork(): {sum(new.values())} kB")
                for name, kb in sorted(new.items(), key=lambda kv: -kv[1])[:8]:
                    print(f"    {name:44} {kb:6} kB")
                for popen in (False, True):
                    floor = bare_fork_floor(popen)
                    what = (
                        "spawns /bin/true with Popen(preexec_fn=...) then sleeps" if popen else "only sleeps"
                    )
                    print(
                        "floor: a child forked from a launcher-like process (same imports, gc.freeze) that "
                        f"{what}: Private_Dirty {floor['Private_Dirty']} kB, Pss {floor['Pss']} kB, "
                        f"Rss {floor['Rss']} kB"
                    )
            finally:
                for job_id in ids:
                    worker.stop(job_id, grace=2)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
