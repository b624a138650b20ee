"""Where a job's memory goes: a shim's pages, split into inherited (copy-on-write) and new mappings.

    .venv/bin/python bench/shim_memory.py [--jobs 50]
    .venv/bin/python bench/shim_memory.py --before /tmp/old/packages/jobcore/src [--rounds 3] [--jobs 50]

Starts a jobcore Worker on a temporary state directory, runs `--jobs` idle `sleep 600` jobs, and for a
sample shim reports from /proc/PID/smaps: Private_Dirty per mapping, split into mappings that the
launcher also has at the same address (inherited through fork(): their private dirty pages were copied on
write) and mappings created after the fork. For scale it also forks, from a process that imported what
the launcher imports and froze the collector the same way, a child that only sleeps: the floor of any
forked CPython process here. Stops every job on exit.

With --before, it compares this checkout's jobcore with another one (e.g. `git archive main
packages/jobcore | tar -x -C /tmp/old`): `--rounds` runs of each, taking turns, each a fresh Worker
and `--jobs` shims, and prints the medians over the rounds of the per-shim medians, with their range.
The jobs are started one after another, so every shim but the last also holds the pages its launcher
wrote while preparing the next job (a launcher's write after a fork leaves the page it copied to the
only other process mapping it): what a shim costs in a server that keeps starting jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
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


def bare_fork_floor(popen: bool = False, raw: bool = False) -> dict[str, int]:
    """Private_Dirty etc. of a child forked from a launcher-like process that then only sleeps (after
    one `subprocess.Popen(['/bin/true'], preexec_fn=...)` as the shim spawns its command, if `popen`);
    forked with `jobcore.linux.fork` (no at-fork hooks run: how the launcher forks a shim) if `raw`,
    else with os.fork()."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the launcher-like parent: same imports, same gc.freeze()
        os.close(read_fd)
        import jobcore.launcher  # noqa: F401
        from jobcore import linux

        gc.freeze()
        child = linux.fork() if raw else os.fork()
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


@contextlib.contextmanager
def fresh_worker() -> Iterator[Worker]:
    """A Worker on a temporary state directory, removed on exit (bench/shim_pages.py and
    bench/ksm_experiment.py use it too)."""
    state = tempfile.mkdtemp(prefix="shim-memory-")
    try:
        with Worker(state) as worker:
            yield worker
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def idle_jobs(
    worker: Worker, jobs: int, argv: Sequence[str] = ("sleep", "600"), grace: float = 2
) -> Iterator[list[str]]:
    """`jobs` idle jobs of `argv` on `worker` (their ids, in the order started), settled for 2 s;
    every one stopped on exit."""
    ids = [worker.start(JobSpec(list(argv))).id for _ in range(jobs)]
    try:
        time.sleep(2)
        yield ids
    finally:
        for job_id in ids:
            worker.stop(job_id, grace=grace)


FIELDS = ("Rss", "Pss", "Private_Dirty", "Private_Clean", "Shared_Dirty", "Shared_Clean")
SRC = Path(__file__).resolve().parent.parent / "packages" / "jobcore" / "src"


def measure(jobs: int) -> dict[str, float]:
    """Per-shim medians (kB) over `jobs` idle jobs of one fresh Worker, and the launcher's figures."""
    with fresh_worker() as worker, idle_jobs(worker, jobs):
        figs = [rollup(p) for p in children(worker.launcher_pid)]
        out = {key: float(statistics.median(f.get(key, 0) for f in figs)) for key in FIELDS}
        out["shims"] = len(figs)
        launcher = rollup(worker.launcher_pid)
        out["launcher Pss"] = launcher["Pss"]
        out["launcher Private_Dirty"] = launcher["Private_Dirty"]
        return out


def compare(before: Path, rounds: int, jobs: int) -> None:
    sides = {"before": before, "after": SRC}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    load0 = os.getloadavg()[0]
    for _ in range(rounds):
        for name, src in sides.items():
            out = subprocess.run(
                [sys.executable, __file__, "--jobs", str(jobs), "--json"],
                env=dict(os.environ, PYTHONPATH=str(src)),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[name].append(json.loads(out))
    load1 = os.getloadavg()[0]
    print(f"{rounds} rounds of {jobs} idle jobs each, taking turns; load {load0:.2f} -> {load1:.2f}")
    print("per-shim medians, kB: median over the rounds [min - max]")
    print(f"{'':24} {'before':>22} {'after':>22}  after/before")
    for key in (*FIELDS, "launcher Private_Dirty", "launcher Pss"):
        cells = []
        for name in sides:
            values = [r[key] for r in results[name]]
            cells.append((statistics.median(values), min(values), max(values)))
        (b, bmin, bmax), (a, amin, amax) = cells
        ratio = f"{a / b:.2f}x" if b else "-"
        print(f"{key:24} {b:8.0f} [{bmin:5.0f} - {bmax:5.0f}] {a:8.0f} [{amin:5.0f} - {amax:5.0f}]  {ratio}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--before", type=Path, help="another jobcore's src directory: compare with it")
    parser.add_argument("--rounds", type=int, default=3, help="with --before: runs of each")
    parser.add_argument("--json", action="store_true", help="print only the medians, as JSON")
    args = parser.parse_args()
    if args.before is not None:
        compare(args.before, args.rounds, args.jobs)
        return 0
    if args.json:
        print(json.dumps(measure(args.jobs)))
        return 0
    with fresh_worker() as worker, idle_jobs(worker, args.jobs) as ids:
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
            f"sample shim Private_Dirty in mappings inherited from the launcher: {sum(inherited.values())} kB"
        )
        for name, kb in sorted(inherited.items(), key=lambda kv: -kv[1])[:8]:
            print(f"    {name:44} {kb:6} kB")
        print(f"sample shim Private_Dirty in mappings created after fork(): {sum(new.values())} kB")
        for name, kb in sorted(new.items(), key=lambda kv: -kv[1])[:8]:
            print(f"    {name:44} {kb:6} kB")
        last = json.loads((worker.state_dir / ids[-1] / "shim.json").read_text())["pid"]
        print(
            "the last shim started (whose launcher prepared no job after forking it): "
            f"Private_Dirty {rollup(last)['Private_Dirty']} kB"
        )
        for popen, raw in ((False, False), (False, True), (True, False)):
            floor = bare_fork_floor(popen, raw)
            what = "spawns /bin/true with Popen(preexec_fn=...) then sleeps" if popen else "only sleeps"
            how = "jobcore.linux.fork()" if raw else "os.fork()"
            print(
                f"floor: a child forked ({how}) from a launcher-like process (imports, gc.freeze) "
                f"that {what}: Private_Dirty {floor['Private_Dirty']} kB, Pss {floor['Pss']} kB, "
                f"Rss {floor['Rss']} kB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
