"""What the kernel's same-page merging (KSM) would do to memory per idle job: an experiment (issue 14).

    .venv/bin/python bench/ksm_experiment.py [--jobs 100] [--wait 240]

jobcore does not offer this (docs/benchmarks.md, "What is in a shim's private pages", says why: the
memory-deduplication side channel between users' jobs and the shims). To measure it anyway, this copies
this checkout's jobcore to a temporary directory and patches the copy's launcher so that, after its
`gc.freeze()`, it calls `madvise(MADV_MERGEABLE)` over each of its writable private mappings (which
every shim inherits; a command's `execve` starts a new address space, so no job's memory is marked).
Then, in turn:

* the unpatched tree with KSM as the host has it;
* the patched tree with KSM switched on (`/sys/kernel/mm/ksm/run` = 1, `pages_to_scan` 2000,
  `sleep_millisecs` 10), waiting up to `--wait` seconds for three full scans;

each with `--jobs` idle `sleep 900` jobs of a fresh Worker, and prints a shim's median Pss and
Private_Dirty and the Worker + launcher + shims Pss per job (as run_all.py counts memory per idle job).
KSM's three settings are restored on exit, whatever happens. Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "packages" / "jobcore" / "src"
KSM = Path("/sys/kernel/mm/ksm")
FAST = {"pages_to_scan": "2000", "sleep_millisecs": "10"}

#: Inserted into the copy's launcher right after its gc.freeze().
_PATCH = """
    import ctypes as _ctypes

    _libc = _ctypes.CDLL("libc.so.6", use_errno=True)
    _libc.madvise.argtypes = [_ctypes.c_void_p, _ctypes.c_size_t, _ctypes.c_int]
    with open("/proc/self/maps") as _maps:
        for _line in _maps:
            _fields = _line.split()
            if "w" in _fields[1] and "p" in _fields[1] and not _line.rstrip().endswith(
                ("[stack]", "[vvar]", "[vdso]", "[vsyscall]")
            ):
                _start, _end = (int(x, 16) for x in _fields[0].split("-"))
                _libc.madvise(_start, _end - _start, 12)  # MADV_MERGEABLE
"""

#: Runs in a child process with PYTHONPATH on the tree to measure.
_MEASURE = r"""
import os, statistics, sys, time
sys.path.insert(0, sys.argv[3])
from shim_memory import children, fresh_worker, idle_jobs, rollup

jobs, wait = int(sys.argv[1]), float(sys.argv[2])
ksm = lambda name: int(open(f"/sys/kernel/mm/ksm/{name}").read())
with fresh_worker() as worker:
    ours = [os.getpid(), worker.launcher_pid]
    before = sum(rollup(p)["Pss"] for p in ours)
    with idle_jobs(worker, jobs, ("sleep", "900"), grace=1):
        began, scans = time.monotonic(), ksm("full_scans")
        while ksm("run") == 1 and time.monotonic() - began < wait and ksm("full_scans") < scans + 3:
            time.sleep(1)
        shims = [rollup(p) for p in children(worker.launcher_pid)]
        after = sum(s["Pss"] for s in shims) + sum(rollup(p)["Pss"] for p in ours)
        print(
            f"{statistics.median(s['Pss'] for s in shims):.0f} "
            f"{statistics.median(s['Private_Dirty'] for s in shims):.0f} "
            f"{(after - before) / jobs / 1024:.2f} {ksm('full_scans') - scans} "
            f"{ksm('pages_shared')} {ksm('pages_sharing')} {time.monotonic() - began:.0f}"
        )
"""


def patched_copy(where: Path) -> Path:
    """This checkout's jobcore, copied to `where`, with the launcher patched; returns the src dir."""
    target = where / "src"
    shutil.copytree(SRC, target, ignore=shutil.ignore_patterns("__pycache__"))
    launcher = target / "jobcore" / "launcher.py"
    text = launcher.read_text()
    anchor = "    gc.freeze()\n"
    if text.count(anchor) != 1:
        raise SystemExit(f"cannot patch {launcher}: no single `gc.freeze()` line to insert after")
    launcher.write_text(text.replace(anchor, anchor + _PATCH, 1))
    return target


def measure(tree: Path, jobs: int, wait: float) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(jobs), str(wait), str(HERE)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the measurement failed: {done.stderr[-2000:]}")
    return done.stdout.split()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100, help="idle jobs per measurement (default 100)")
    parser.add_argument("--wait", type=float, default=240, help="most seconds to wait for KSM's scans")
    args = parser.parse_args()
    if os.geteuid() != 0 or not KSM.is_dir():
        raise SystemExit("ksm_experiment.py needs root and a kernel with KSM (/sys/kernel/mm/ksm)")
    saved = {name: (KSM / name).read_text().strip() for name in ("run", *FAST)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ksm-tree-") as tmp:
        tree = patched_copy(Path(tmp))
        rows.append((f"as the host has KSM (run={saved['run']}), this tree", measure(SRC, args.jobs, 0)))
        try:
            for name, value in FAST.items():
                (KSM / name).write_text(value)
            (KSM / "run").write_text("1")
            rows.append(("KSM on, launcher's mappings mergeable", measure(tree, args.jobs, args.wait)))
        finally:
            (KSM / "run").write_text(saved["run"])
            for name in FAST:
                (KSM / name).write_text(saved[name])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.jobs} idle jobs per row; load {load}; KSM settings restored to {saved}")
    print(f"{'':40} {'shim Pss':>9} {'shim PD':>8} {'MiB/job':>8}  KSM after the wait")
    for name, (pss, dirty, per_job, scans, shared, sharing, waited) in rows:
        print(
            f"{name:40} {pss:>6} kB {dirty:>5} kB {per_job:>8}  "
            f"{scans} full scans in {waited} s, {shared} pages shared by {sharing}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
