"""Where a job start's time goes, from the timestamps a start leaves behind (library level, no server).

    .venv/bin/python bench/start_breakdown.py [--starts 50]

For each `Worker.start(JobSpec(['/bin/true'], ...))` it takes: the call's entry time; `created_at` in
spec.json (written after validation and the cgroup's creation); `started_at` in run.json (written by the
shim once the command was spawned: the launcher forked the shim, the shim forked the command's process,
which joined the cgroup, entered its namespaces, mounted /proc and exec'd); and the time start()
returned. (shim.json's mtime cannot split the middle: file times come from the kernel's coarse
clock, one scheduler tick.) Then it times a process joining a fresh job cgroup, and `subprocess.Popen`
with and without `preexec_fn`. Prints medians, with all namespaces and with none, under the same limits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobcore import Isolation, JobSpec, Limits, Worker
from jobcore.controllers import load_controller

SEGMENTS = (
    "validate + cgroup create",
    "spec write -> command exec'd (launcher, shim, command)",
    "report back to the Worker",
)


def one(worker: Worker, spec: JobSpec, state: Path) -> list[float]:
    t0 = time.time()
    status = worker.start(spec)
    t4 = time.time()
    d = state / status.id
    t1 = json.loads((d / "spec.json").read_text())["created_at"]
    t3 = json.loads((d / "run.json").read_text())["started_at"]
    return [(b - a) * 1000 for a, b in ((t0, t1), (t1, t3), (t3, t4))] + [(t4 - t0) * 1000]


def probe_cgroup_join(n: int) -> None:
    """Time moving a process into a fresh job cgroup, per hierarchy (what the command's child does)."""
    controller = load_controller("auto")
    if controller.name == "none":
        return
    samples: dict[str, list[float]] = {}
    for i in range(n):
        handle = controller.create("benchprobe", f"probe-{os.getpid()}-{i}", Limits(pids=64), "/")
        child = subprocess.Popen(["sleep", "30"])
        try:
            for directory in getattr(handle, "_dirs", []):
                t = time.perf_counter()
                Path(directory, "cgroup.procs").write_text(str(child.pid))
                samples.setdefault(directory.split("/")[4], []).append((time.perf_counter() - t) * 1000)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            handle.destroy()
    print(f"joining a fresh job cgroup ({controller.name}), median ms per hierarchy, {n} samples:")
    for name, values in samples.items():
        print(f"  {name:42} {statistics.median(values):7.2f}")
    print(f"  {'sum':42} {sum(statistics.median(v) for v in samples.values()):7.2f}")


def probe_fork(n: int) -> None:
    """subprocess.Popen of /bin/true from this (jobcore-importing) process: fork + preexec_fn, as the shim
    spawns, vs the vfork/posix_spawn path Popen takes without preexec_fn."""
    for name, kwargs in (
        ("Popen, preexec_fn (fork)", {"preexec_fn": lambda: None}),
        ("Popen, no preexec_fn", {}),
    ):
        values = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.Popen(["/bin/true"], **kwargs).wait()  # type: ignore[call-overload]
            values.append((time.perf_counter() - t) * 1000)
        print(f"  {name:42} {statistics.median(values):7.2f} ms (start to exit of /bin/true)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=50)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="start-breakdown-"))
    limits = Limits(cpu=1, memory=256 << 20, pids=64)
    try:
        with Worker(state, output_cap=None) as worker:
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            print(f"backend {worker.controller.name}, load {load}")
            for name, isolation in (("all namespaces", Isolation()), ("no namespaces", Isolation.none())):
                spec = JobSpec(["/bin/true"], isolation=isolation, limits=limits)
                one(worker, spec, state)  # warm-up
                rows = [one(worker, spec, state) for _ in range(args.starts)]
                print(f"{name} + limits, {args.starts} starts, median ms:")
                for i, seg in enumerate((*SEGMENTS, "total Worker.start()")):
                    print(f"  {seg:54} {statistics.median(r[i] for r in rows):7.2f}")
            for st in worker.list():
                worker.wait(st.id, timeout=30)
        probe_cgroup_join(min(args.starts, 20))
        probe_fork(args.starts)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
