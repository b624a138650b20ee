"""What a job that writes its output a few bytes at a time costs outside its own limits.

    .venv/bin/python bench/trickle_cost.py [--seconds 5]
    .venv/bin/python bench/trickle_cost.py --before /tmp/old/packages/jobcore/src [--seconds 5]

For each writer below, a fresh jobcore Worker (a temporary state directory, the machine's backend) runs
one job (cpu 0.5, as a user would be limited) for `--seconds` after a second of warm-up, and prints:
its shim's CPU (utime + stime from /proc/PID/stat, as a share of one core: the shim is not in the job's
cgroup, so no limit of the job bounds it), the Worker process's CPU (in a server, the server's: its
watcher thread wakes for the job's directory's inotify events), and the output and index sizes stored.
With --before, each writer also runs on another jobcore (e.g. `git archive main packages/jobcore | tar
-x -C /tmp/old`), turn by turn, in a child process with that tree on PYTHONPATH. Every job is stopped
and every state directory removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "packages" / "jobcore" / "src"

#: The jobs' interpreter: the system's, which a job's sandbox shows (a venv under /tmp would not be).
JOB_PYTHON = "/usr/bin/python3"

WRITERS = {
    "1 byte per write": "import os\nwhile True: os.write(1, b'x')",
    "16 bytes per write": "import os\nwhile True: os.write(1, b'x' * 16)",
    "stdout and stderr, 1 byte each": "import os\nwhile True: os.write(1, b'x'); os.write(2, b'y')",
    "1 byte every 1 ms": "import os, time\nwhile True: os.write(1, b'x'); time.sleep(0.001)",
}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(program: str, seconds: float) -> dict[str, float]:
    """One job running `program` in this process's jobcore (whichever PYTHONPATH gives)."""
    from jobcore import JobSpec, Limits, Worker, jobdir
    from jobcore.controllers import load_controller

    state = tempfile.mkdtemp(prefix="trickle-cost-")
    try:
        with Worker(state, controller=load_controller("auto")) as worker:
            job = worker.start(JobSpec([JOB_PYTHON, "-c", program], limits=Limits(cpu=0.5, pids=16)))
            try:
                shim = jobdir.read_json(worker.state_dir / job.id / jobdir.SHIM)
                assert shim is not None, "the shim did not record itself"
                time.sleep(1.0)
                shim0, me0, t0 = (
                    _cpu_seconds(shim["pid"]),
                    resource.getrusage(resource.RUSAGE_SELF),
                    time.time(),
                )
                time.sleep(seconds)
                shim1, me1, t1 = (
                    _cpu_seconds(shim["pid"]),
                    resource.getrusage(resource.RUSAGE_SELF),
                    time.time(),
                )
                directory = worker.state_dir / job.id
                output = (directory / jobdir.OUTPUT).stat().st_size
                index = (directory / jobdir.OUTPUT_INDEX).stat().st_size
            finally:
                worker.stop(job.id, grace=0)
        worker_cpu = (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)
        return {
            "shim": (shim1 - shim0) / (t1 - t0),
            "worker": worker_cpu / (t1 - t0),
            "output": output / 1e6,
            "index": index / 1e6,
        }
    finally:
        shutil.rmtree(state, ignore_errors=True)


def run_side(src: Path, name: str, seconds: float) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run(
        [sys.executable, __file__, "--one", name, "--seconds", str(seconds)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(label: str, r: dict[str, float]) -> str:
    return (
        f"  {label:8} shim {100 * r['shim']:5.1f} %  Worker {100 * r['worker']:5.1f} %  "
        f"output {r['output']:8.2f} MB  index {r['index']:7.2f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each job is measured")
    parser.add_argument("--before", type=Path, help="another jobcore's src directory: compare with it")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(WRITERS[args.one], args.seconds)))
        return
    print(
        f"trickle cost: one job (cpu 0.5) per writer, {args.seconds:.0f} s each, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print("CPU as a share of one core, over the measured seconds")
    for name in WRITERS:
        print(name)
        print(row("this", run_side(SRC, name, args.seconds)))
        if args.before is not None:
            print(row("before", run_side(args.before, name, args.seconds)))


if __name__ == "__main__":
    main()
