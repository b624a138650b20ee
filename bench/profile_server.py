"""Profile the jobserver with py-spy while one benchmark operation runs in a loop; print the hot frames.

    .venv/bin/pip install py-spy      # a profiling tool only: not in requirements/dev.lock
    .venv/bin/python bench/profile_server.py start          # StartJob of /bin/true, idle server
    .venv/bin/python bench/profile_server.py start --idle-jobs 500   # the same with 500 jobs running
    .venv/bin/python bench/profile_server.py start --idle-jobs 500 --same-user  # ... of the same user
    .venv/bin/python bench/profile_server.py list --idle-jobs 500    # ListJobs with 500 jobs running
    .venv/bin/python bench/profile_server.py stream         # 1 GiB to one SDK client (server and client)

Starts a jobserver exactly as bench/run_all.py does, runs `py-spy record --format raw` on the server (and,
for `stream`, on this process too), and prints each profile's top frames by inclusive and by own
samples. Raw profiles are kept in the printed directory. Every job started is stopped on exit.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_all import BENCH_LIMITS, BIN, GIB, Server, stop_all_jobs

from jobclient import Client, Credentials, Isolation


def py_spy(pid: int, seconds: int, out: Path, native: bool = False) -> subprocess.Popen[bytes]:
    argv = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
    argv += ["--format", "raw", "--output", str(out)]
    # --native (C frames too) needs py-spy to pause the process for each sample.
    argv.append("--native" if native else "--nonblocking")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize(path: Path, top: int = 25) -> str:
    """Top frames of a collapsed-stack (raw) profile: inclusive and own share of the samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        for frame in dict.fromkeys(frames[1:]):  # frames[0] is the thread
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{path.name}: {total} samples"]
    lines.append("  inclusive:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    lines.append("  own:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top // 2)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["start", "list", "stream"])
    parser.add_argument("--idle-jobs", type=int, default=0)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--same-user", action="store_true", help="start: as bob, the owner of the idle jobs (default alice)"
    )
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rjw-profile-"))
    outdir = Path(tempfile.mkdtemp(prefix="rjw-profile-out-"))
    server = Server(workdir)
    try:
        server.start()
        alice = Client(server.address, credentials=Credentials.for_user("alice"), timeout=60)
        bob = Client(server.address, credentials=Credentials.for_user("bob"), timeout=60)
        for _ in range(args.idle_jobs):
            bob.start(["sleep", "600"])
        time.sleep(1)
        targets = {"server": server.pid}
        if args.what == "stream":
            targets["client"] = os.getpid()
        profiles = []
        for name, pid in targets.items():
            path = outdir / f"{name}-{args.what}-{args.idle_jobs}.txt"
            profiles.append((path, py_spy(pid, args.seconds, path, args.native)))
        time.sleep(1)  # py-spy attached
        deadline = time.monotonic() + args.seconds - 2
        count = 0
        t = time.perf_counter()
        while time.monotonic() < deadline and count < 100_000:
            if args.what == "start":
                starter = bob if args.same_user else alice
                starter.start(["/bin/true"], limits=BENCH_LIMITS, isolation=Isolation())
            elif args.what == "list":
                bob.list()
            else:
                job = alice.start(["head", "-c", str(GIB), "/dev/zero"])
                for _ in alice.output(job.id):
                    pass
            count += 1
        elapsed = time.perf_counter() - t
        print(f"{args.what} with {args.idle_jobs} idle jobs: {count} operations in {elapsed:.1f} s")
        print(f"  ({1000 * elapsed / max(1, count):.1f} ms each)")
        for path, proc in profiles:
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0 or not path.exists():
                print(f"py-spy failed: {err.decode()[-500:]}")
                continue
            print(summarize(path))
        alice.close()
        bob.close()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            stop_all_jobs(server.address)
        server.stop()
        server.kill_leftover_shims()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"raw profiles: {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
