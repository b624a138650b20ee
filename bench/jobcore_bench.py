"""jobcore benchmark: start latency and output throughput, with the local baselines measured in the
same run. `make bench-jobcore` (or `python bench/jobcore_bench.py [--starts N] [--gib G]`).

Prints a table of medians and p95s, and the ratios to the baselines:
  * Worker.start() of /bin/true (returns once exec'd), with all namespaces, with none, and with
    namespaces + cgroup limits, vs subprocess.run(['/bin/true'])
  * start-to-exit of `true` (start() + wait())
  * throughput of `head -c 1G /dev/zero` through the shim to 1 reader and to 20 readers, vs a plain
    pipe read by this process
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from jobcore import Isolation, JobSpec, Limits, Worker

CHUNK = 256 * 1024


def percentiles(samples: list[float]) -> tuple[float, float]:
    """Median and p95 (nearest rank)."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Wall time of n sequential calls, in milliseconds."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def pipe_throughput(nbytes: int) -> float:
    proc = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = 0
    t = time.perf_counter()
    while chunk := os.read(fd, CHUNK):
        got += len(chunk)
    elapsed = time.perf_counter() - t
    proc.wait()
    assert got == nbytes
    return nbytes / elapsed


def job_throughput(worker: Worker, nbytes: int, readers: int) -> tuple[float, int]:
    status = worker.start(JobSpec(["head", "-c", str(nbytes), "/dev/zero"]))
    digests: list[str] = []
    lock = threading.Lock()

    def read() -> None:
        h = hashlib.blake2b() if readers > 1 else None
        got = 0
        for chunk in worker.output(status.id, chunk_size=CHUNK):
            got += len(chunk)
            if h is not None:
                h.update(chunk)
        with lock:
            digests.append(f"{got}:{h.hexdigest() if h else ''}")

    t = time.perf_counter()
    threads = [threading.Thread(target=read) for _ in range(readers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    worker.wait(status.id)
    assert len(set(digests)) == 1 and digests[0].startswith(f"{nbytes}:"), digests
    return nbytes / elapsed, len(set(digests))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=200)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--controller", default="auto")
    args = parser.parse_args()
    nbytes = int(args.gib * (1 << 30))
    state = tempfile.mkdtemp(prefix="jobcore-bench-")
    rows: list[tuple[str, str, str]] = []
    try:
        with Worker(state, controller=args.controller, output_cap=None) as worker:
            true = ["/bin/true"]
            variants = {
                "start, all namespaces": JobSpec(true),
                "start, no namespaces": JobSpec(true, isolation=Isolation.none()),
                "start, namespaces + limits": JobSpec(true, limits=Limits(cpu=1, memory=256 << 20, pids=64))
                if worker.controller.name != "none"
                else None,
            }
            ids: list[str] = []
            base = percentiles(timed(lambda: subprocess.run(true, check=True), args.starts))
            rows.append(("subprocess.run(['/bin/true'])", f"{base[0]:.2f} / {base[1]:.2f} ms", "1.00x"))
            for name, spec in variants.items():
                if spec is None:
                    continue
                worker.start(spec)  # warm-up
                samples = timed(lambda spec=spec: ids.append(worker.start(spec).id), args.starts)  # type: ignore[misc]
                p50, p95 = percentiles(samples)
                rows.append(
                    (
                        f"Worker.start(), {name[7:]}",
                        f"{p50:.2f} / {p95:.2f} ms",
                        f"{p50 / base[0]:.1f}x (+{p50 - base[0]:.2f} ms)",
                    )
                )
                for job_id in ids:
                    worker.wait(job_id)
                ids.clear()
            e2e = percentiles(timed(lambda: worker.wait(worker.start(JobSpec(true)).id), args.starts // 2))
            rows.append(
                (
                    "start-to-exit of true (start + wait)",
                    f"{e2e[0]:.2f} / {e2e[1]:.2f} ms",
                    f"{e2e[0] / base[0]:.1f}x",
                )
            )
            pipe = pipe_throughput(nbytes)
            rows.append((f"plain pipe, {args.gib:g} GiB", f"{pipe / 1e6:.0f} MB/s", "1.00x"))
            one, _ = job_throughput(worker, nbytes, 1)
            rows.append(
                (f"job output, 1 reader, {args.gib:g} GiB", f"{one / 1e6:.0f} MB/s", f"{one / pipe:.2f}x")
            )
            twenty, _ = job_throughput(worker, nbytes, 20)
            rows.append(
                (
                    f"job output, 20 readers (each {args.gib:g} GiB)",
                    f"{twenty / 1e6:.0f} MB/s per reader, {20 * twenty / 1e6:.0f} MB/s total",
                    f"{20 * twenty / pipe:.2f}x total",
                )
            )
            backend = worker.controller.name
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(
        f"jobcore benchmark — {platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, backend {backend}, {args.starts} starts"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'p50 / p95 or rate':28}  vs baseline")
    for name, value, ratio in rows:
        print(f"{name.ljust(width)}  {value:28}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
