"""What the job sandbox adds to a start: Worker.start() of /bin/true with all namespaces, with and
without the sandbox (read-only view, private /tmp and /dev, hidden paths, uid switch, no capabilities),
and subprocess.run(['/bin/true']) as the baseline — all three measured interleaved in one loop, so
that a noisy machine slows each of them alike.

    .venv/bin/python bench/sandbox_cost.py [--starts 300] [--controller auto]

Prints p50/p95 of each, the sandbox's added p50 in ms, and each p50 as a ratio to subprocess.run.
Issue 11's budget: the sandbox adds under 3 ms p50.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from jobcore_bench import percentiles

from jobcore import Isolation, JobSpec, RunAs, Worker

TRUE = ["/bin/true"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=300)
    parser.add_argument("--controller", default="auto")
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="jobcore-sandbox-bench-")
    specs = {
        "sandbox": JobSpec(TRUE, user=RunAs(500999, 500999)),
        "no sandbox": JobSpec(TRUE, isolation=Isolation(sandbox=False)),
    }
    samples: dict[str, list[float]] = {"subprocess.run": [], **{k: [] for k in specs}}
    try:
        with Worker(state, controller=args.controller, output_cap=None) as worker:
            for spec in specs.values():
                worker.wait(worker.start(spec).id)  # warm-up
            for _ in range(args.starts):
                t = time.perf_counter()
                subprocess.run(TRUE, check=True)
                samples["subprocess.run"].append((time.perf_counter() - t) * 1000)
                for name, spec in specs.items():
                    t = time.perf_counter()
                    job = worker.start(spec)
                    samples[name].append((time.perf_counter() - t) * 1000)
                    worker.wait(job.id)
            backend = worker.controller.name
    finally:
        shutil.rmtree(state, ignore_errors=True)
    stats = {name: percentiles(values) for name, values in samples.items()}
    base = stats["subprocess.run"][0]
    print(
        f"sandbox cost — {platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, backend {backend}, {args.starts} interleaved rounds, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'measure':40}  {'p50 / p95':20}  vs subprocess.run")
    for name, (p50, p95) in stats.items():
        label = name if name == "subprocess.run" else f"Worker.start(), all namespaces, {name}"
        print(f"{label:40}  {p50:7.2f} / {p95:7.2f} ms  {p50 / base:.1f}x")
    added = stats["sandbox"][0] - stats["no sandbox"][0]
    print(f"the sandbox adds {added:+.2f} ms p50 ({added / base:+.1f}x subprocess.run); budget < 3 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
