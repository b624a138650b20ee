"""Worker.start() and start-to-end of `/bin/true`, this checkout against another jobcore, interleaved.

    .venv/bin/python bench/start_ab.py --before /tmp/old/packages/jobcore/src [--rounds 20] [--per-round 5]

Two worker processes — one importing jobcore from this checkout, one from `--before` (e.g. `git archive
main packages/jobcore | tar -x -C /tmp/old`) — each own a Worker (all namespaces, the sandbox, limits:
the server's defaults) in a temporary state directory. They take turns, a few starts each, so that the
machine's drifting load hits both alike. Per start: `Worker.start()`'s time, and the time from the call
until the Worker saw the job end (`wait`). Prints medians and p90s and the ratio after/before, with the
load average. Library level: no server, no gRPC.

Each worker process runs in a cpuacct cgroup of its own (v1; created below this process's, removed at
the end), which its launcher, shims and jobs inherit: so the CPU time one start-to-end costs all of
them together is printed too. CPU time moves far less with the machine's load than wall time does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "packages" / "jobcore" / "src"

CHILD = r"""
import json, os, shutil, sys, tempfile, time
if sys.argv[1]:
    with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
        f.write("0")
from jobcore import JobSpec, Limits, Worker
from jobcore.controllers import load_controller
state = tempfile.mkdtemp(prefix="start-ab-")
worker = Worker(state, controller=load_controller("auto"))
limits = Limits(cpu=1.0, memory=512 << 20, pids=256)
try:
    print("ready", flush=True)
    for line in sys.stdin:
        out = []
        for _ in range(int(line)):
            t0 = time.perf_counter()
            status = worker.start(JobSpec(["/bin/true"], owner="startab", limits=limits))
            t1 = time.perf_counter()
            worker.wait(status.id, timeout=30)
            t2 = time.perf_counter()
            out.append([(t1 - t0) * 1000, (t2 - t0) * 1000])
            worker.remove(status.id)
        print(json.dumps(out), flush=True)
finally:
    worker.close()
    shutil.rmtree(state, ignore_errors=True)
"""


def own_cpuacct() -> Path | None:
    """This process's cgroup in the v1 cpuacct hierarchy (None without one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            mount = Path("/sys/fs/cgroup") / controllers
            if (mount / "cpuacct.usage").exists() or mount.exists():
                return mount / path.lstrip("/")
    return None


def spawn(src: Path, cgroup: Path | None) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cgroup or "")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _remove_tree(group: Path) -> None:
    """rmdir `group` and what the Workers left below it (remote-jobs/), once their processes left."""
    deadline = time.monotonic() + 10
    for directory in sorted((d for d in group.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        directory.rmdir()
    while True:
        try:
            group.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _cpu_ns(group: Path | None) -> float:
    return float((group / "cpuacct.usage").read_text()) if group is not None else 0.0


def pct(values: list[float]) -> str:
    values = sorted(values)
    return f"{statistics.median(values):7.2f} / {values[int(0.9 * (len(values) - 1))]:7.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, type=Path, help="the other jobcore's src directory")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=5)
    args = ap.parse_args()
    base = own_cpuacct()
    groups: dict[str, Path | None] = {}
    for name in ("before", "after"):
        groups[name] = None
        if base is not None:
            groups[name] = base / f"start-ab-{name}-{os.getpid()}"
            groups[name].mkdir()  # type: ignore[union-attr]
    procs = {"before": spawn(args.before, groups["before"]), "after": spawn(SRC, groups["after"])}
    results: dict[str, list[list[float]]] = {name: [] for name in procs}
    cpu: dict[str, float] = {name: 0.0 for name in procs}
    load0 = os.getloadavg()
    try:
        for _ in range(args.rounds):
            for name, proc in procs.items():
                assert proc.stdin is not None and proc.stdout is not None
                used = _cpu_ns(groups[name])
                proc.stdin.write(f"{args.per_round}\n")
                proc.stdin.flush()
                results[name] += json.loads(proc.stdout.readline())
                cpu[name] += _cpu_ns(groups[name]) - used
    finally:
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=60)
        for group in groups.values():
            if group is not None:
                _remove_tree(group)
    load1 = os.getloadavg()
    n = args.rounds * args.per_round
    print(f"{n} starts each, interleaved; load {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"{'':8} {'Worker.start() p50 / p90 ms':>30} {'start to end p50 / p90 ms':>30}")
    for name, rows in results.items():
        print(f"{name:8} {pct([r[0] for r in rows]):>30} {pct([r[1] for r in rows]):>30}")
    if base is not None:
        for name in procs:
            print(f"{name:8} CPU per job, Worker + launcher + shim + job: {cpu[name] / n / 1e6:.2f} ms")
        print(f"after / before, CPU per job: {cpu['after'] / cpu['before']:.2f}x")
    for i, what in enumerate(("Worker.start()", "start to end")):
        before = statistics.median(r[i] for r in results["before"])
        after = statistics.median(r[i] for r in results["after"])
        print(f"after / before, {what}: {after / before:.2f}x")


if __name__ == "__main__":
    main()
