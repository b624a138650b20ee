"""Worker.start() and start-to-end of `/bin/true`, this checkout against another jobcore, interleaved.

    .venv/bin/python bench/start_ab.py --before /tmp/old/packages/jobcore/src [--rounds 20] [--per-round 5]

Two worker processes — one importing jobcore from this checkout, one from `--before` (e.g. `git archive
main packages/jobcore | tar -x -C /tmp/old`) — each own a Worker (all namespaces, the sandbox, limits:
the server's defaults) in a temporary state directory. They take turns, a few starts each, so that the
machine's drifting load hits both alike. Per start: `Worker.start()`'s time, and the time from the call
until the Worker saw the job end (`wait`). Prints medians and p90s and the ratio after/before, with the
load average. Library level: no server, no gRPC.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "packages" / "jobcore" / "src"

CHILD = r"""
import json, shutil, sys, tempfile, time
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


def spawn(src: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def pct(values: list[float]) -> str:
    values = sorted(values)
    return f"{statistics.median(values):7.2f} / {values[int(0.9 * (len(values) - 1))]:7.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, type=Path, help="the other jobcore's src directory")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=5)
    args = ap.parse_args()
    procs = {"before": spawn(args.before), "after": spawn(SRC)}
    results: dict[str, list[list[float]]] = {name: [] for name in procs}
    load0 = os.getloadavg()
    try:
        for _ in range(args.rounds):
            for name, proc in procs.items():
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(f"{args.per_round}\n")
                proc.stdin.flush()
                results[name] += json.loads(proc.stdout.readline())
    finally:
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=60)
    load1 = os.getloadavg()
    n = args.rounds * args.per_round
    print(f"{n} starts each, interleaved; load {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"{'':8} {'Worker.start() p50 / p90 ms':>30} {'start to end p50 / p90 ms':>30}")
    for name, rows in results.items():
        print(f"{name:8} {pct([r[0] for r in rows]):>30} {pct([r[1] for r in rows]):>30}")
    for i, what in enumerate(("Worker.start()", "start to end")):
        before = statistics.median(r[i] for r in results["before"])
        after = statistics.median(r[i] for r in results["after"])
        print(f"after / before, {what}: {after / before:.2f}x")


if __name__ == "__main__":
    main()
