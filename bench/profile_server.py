"""Profile the jobserver with py-spy while one benchmark operation runs in a loop; print the hot frames.

    .venv/bin/pip install py-spy      # a profiling tool only: not in requirements/dev.lock
    .venv/bin/python bench/profile_server.py start          # StartJob of /bin/true, idle server
    .venv/bin/python bench/profile_server.py start --idle-jobs 500   # the same with 500 jobs running
    .venv/bin/python bench/profile_server.py start --idle-jobs 500 --same-user  # ... of the same user
    .venv/bin/python bench/profile_server.py list --idle-jobs 500    # ListJobs with 500 jobs running
    .venv/bin/python bench/profile_server.py stream         # 1 GiB to one SDK client (server and client)
    .venv/bin/python bench/profile_server.py ab --before /tmp/old/packages [--mode start|run|burst]

`ab` needs no py-spy: it runs two servers, one on this checkout's packages and one on `--before`'s (e.g.
`git archive main packages | tar -x -C /tmp/old`), each with a client process of the same tree, and
drives them in turns (the order alternating each round) so that the machine's load hits both alike.
`start`: sequential `Client.start(['/bin/true'])` (all namespaces, limits); `run`: sequential
`Client.run(['true'])` (all namespaces, the server's default limits, the sandbox); `burst`: 20 client
threads x a few starts at once (the rate). `--history N` first gives the user N ended jobs, as a
long-lived server has (the retention policy keeps up to 1000 per user). Each server runs in a cpuacct
cgroup of its own (created under this process's, removed at the end), which its launcher, shims and
jobs inherit, and each client in another: the CPU per job of the server process alone
(/proc/PID/stat), of the server's whole tree and of the client are printed beside the wall times, with
medians over rounds and the ratio new/old.

Starts a jobserver exactly as bench/run_all.py does, runs `py-spy record --format raw` on the server (and,
for `stream`, on this process too), and prints each profile's top frames by inclusive and by own
samples. Raw profiles are kept in the printed directory. Every job started is stopped on exit.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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
from typing import Any

from run_all import BENCH_LIMITS, BIN, CERTS, CONFIG, GIB, REPO, Server, stop_all_jobs

from jobclient import Client, Credentials, Isolation


def py_spy(
    pid: int, seconds: int, out: Path, native: bool = False, gil: bool = False
) -> subprocess.Popen[bytes]:
    argv = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
    argv += ["--format", "raw", "--output", str(out)]
    # --native (C frames too) needs py-spy to pause the process for each sample.
    argv.append("--native" if native else "--nonblocking")
    if gil:
        argv.append("--gil")  # only the thread holding the GIL: Python's CPU, not threads blocked in C
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


# ------------------------------------------------------------------------------------- ab: old vs new

AB_CLIENT = r"""
import json, sys, threading, time
from jobclient import Client, Credentials, Isolation, Limits
address, threads = sys.argv[1], int(sys.argv[2])
limits = Limits(cpu=1.0, memory=256 << 20, pids=64)
clients = [Client(address, credentials=Credentials.for_user("alice"), timeout=60) for _ in range(threads)]
for c in clients:
    c.list()  # connected before anything is timed
print("ready", flush=True)
for line in sys.stdin:
    mode, count = line.split()
    count = int(count)
    out = []
    if mode == "start":
        for _ in range(count):
            t = time.perf_counter()
            clients[0].start(["/bin/true"], limits=limits, isolation=Isolation())
            out.append((time.perf_counter() - t) * 1000)
    elif mode == "run":
        for _ in range(count):
            t = time.perf_counter()
            job = clients[0].run(["true"], isolation=Isolation(), out=lambda _c: None)
            out.append((time.perf_counter() - t) * 1000)
            assert job.exit_code == 0, job
    else:  # burst: every client `count` starts at once; one figure, the rate
        barrier = threading.Barrier(len(clients) + 1)
        errors = []
        def burst(client):
            barrier.wait()
            for _ in range(count):
                try:
                    client.start(["/bin/true"], limits=limits)
                except Exception as exc:
                    errors.append(repr(exc))
        ts = [threading.Thread(target=burst, args=(c,)) for c in clients]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        out.append(len(clients) * count / (time.perf_counter() - t0))
        if errors:
            out.append(errors[:3])
    time.sleep(0.5)  # the jobs' ends (and the server's end-of-job work) fall inside this turn
    print(json.dumps(out), flush=True)
"""


def _own_cpuacct() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            return Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
    raise SystemExit("ab needs a cgroup v1 cpuacct hierarchy")


def _proc_cpu(pid: int) -> float:
    """CPU seconds of process `pid`'s threads alive now (schedstat: nanoseconds, where /proc/PID/stat
    counts 10 ms ticks). The server's threads are its pools' and the Worker's, which live as long as it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    """`argv` run by a shell that first moves itself into `cgroup` (what it execs stays there)."""
    return ["sh", "-c", 'echo 0 > "$0/cgroup.procs" && exec "$@"', str(cgroup), *argv]


class AbSide:
    """A jobserver and a client process, both importing the packages under `packages`."""

    def __init__(
        self, name: str, packages: Path, workdir: Path, threads: int, server_args: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.server_args = server_args
        self.workdir = workdir
        self.threads = threads
        base = _own_cpuacct()
        self.server_cg = base / f"profile-ab-{os.getpid()}-{name}-server"
        self.client_cg = base / f"profile-ab-{os.getpid()}-{name}-client"
        srcs = [packages / member / "src" for member in ("jobcore", "jobclient", "jobserver")]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, srcs)), JOBCTL_CERTS=str(CERTS))
        self.server: subprocess.Popen[bytes] | None = None
        self.client: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self) -> None:
        """Start the server, then the client (`close()` cleans up whatever was started)."""
        self.server_cg.mkdir()
        self.client_cg.mkdir()
        port_file = self.workdir / "port"
        log_path = self.workdir / "server.log"
        argv = [sys.executable, "-m", "jobserver.cli", "--config", str(CONFIG), "--listen", "127.0.0.1:0"]
        argv += ["--port-file", str(port_file), "--cert", str(CERTS / "server.crt")]
        argv += ["--key", str(CERTS / "server.key"), "--ca", str(CERTS / "ca.crt")]
        argv += ["--state-dir", str(self.workdir / "state"), "--log-format", "json", *self.server_args]
        with log_path.open("wb") as log:
            self.server = subprocess.Popen(
                _in_cgroup(self.server_cg, argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{int(port_file.read_text())}"
        self.client = subprocess.Popen(
            _in_cgroup(self.client_cg, [sys.executable, "-c", AB_CLIENT, self.address, str(self.threads)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.client.stdout is not None
        if self.client.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{self.name} client did not start")

    def usage(self) -> tuple[float, float, float]:
        """CPU seconds so far: the server process, its cgroup (launcher, shims, jobs), the client's."""

        def group(cg: Path) -> float:
            return int((cg / "cpuacct.usage").read_text()) / 1e9

        assert self.server is not None
        return _proc_cpu(self.server.pid), group(self.server_cg), group(self.client_cg)

    def turn(self, mode: str, count: int) -> tuple[list[Any], tuple[float, ...]]:
        assert self.client is not None and self.client.stdin is not None and self.client.stdout is not None
        before = self.usage()
        self.client.stdin.write(f"{mode} {count}\n")
        self.client.stdin.flush()
        line = self.client.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} client died")
        after = self.usage()
        return json.loads(line), tuple(a - b for a, b in zip(after, before, strict=True))

    def close(self) -> None:
        if self.client is not None and self.client.poll() is None:
            assert self.client.stdin is not None
            self.client.stdin.close()
            try:
                self.client.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.client.kill()
                self.client.wait()
        if self.server is not None and self.server.poll() is None:
            with contextlib.suppress(Exception):
                stop_all_jobs(self.address)
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        # The server's Worker made its job cgroups' parent (remote-jobs/<owner>) under its own cgroup.
        for top in (self.client_cg, self.server_cg):
            groups = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for cg in [*groups, top]:
                for _ in range(50):  # bounded: the server's last processes leave within moments
                    try:
                        cg.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)


def _med(values: list[float]) -> str:
    if not values:
        return "-"
    q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return f"{statistics.median(values):7.2f} (p10 {q[0]:.2f}, p90 {q[-1]:.2f})"


def ab(args: argparse.Namespace) -> int:
    threads = 20 if args.mode == "burst" else 1
    root = Path(tempfile.mkdtemp(prefix="ab-", dir=args.workdir))
    sides: list[AbSide] = []
    try:
        for name, packages, extra in (
            ("new", REPO / "packages", ()),
            ("old", Path(args.before), tuple(args.before_args.split())),
        ):
            (root / name).mkdir()
            sides.append(AbSide(name, packages, root / name, threads, extra))
            sides[-1].start()
        for side in sides:  # a history of ended jobs (what a long-lived server has), then a warm-up
            if args.history:
                side.turn("start", args.history)
            side.turn(args.mode, 2)
        per_job = args.per_round * threads
        figures: dict[str, dict[str, list[float]]] = {s.name: collections.defaultdict(list) for s in sides}
        load0 = os.getloadavg()
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                result, (server, tree, client) = side.turn(args.mode, args.per_round)
                f = figures[side.name]
                if args.mode == "burst":
                    f["rate (starts/s)"].append(result[0])
                    if len(result) > 1:
                        print(f"{side.name}: errors {result[1]}")
                else:
                    f["wall ms"] += result
                f["server process CPU ms/job"].append(1000 * server / per_job)
                f["server tree CPU ms/job"].append(1000 * tree / per_job)
                f["client CPU ms/job"].append(1000 * client / per_job)
        load1 = os.getloadavg()
        print(
            f"ab {args.mode}: {args.rounds} rounds x {args.per_round} per turn"
            f"{' x 20 clients' if threads > 1 else ''}, load {load0[0]:.2f} -> {load1[0]:.2f}"
        )
        for key in figures["new"]:
            new, old = figures["new"][key], figures["old"][key]
            ratio = statistics.median(new) / statistics.median(old)
            print(f"  {key:28s} new {_med(new)}  old {_med(old)}  new/old {ratio:.2f}x")
    finally:
        for side in sides:
            side.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["start", "list", "stream", "ab"])
    parser.add_argument("--before", help="ab: the packages/ directory of the code to compare with")
    parser.add_argument(
        "--mode", choices=["start", "run", "burst"], default="start", help="ab: what to drive"
    )
    parser.add_argument("--rounds", type=int, default=10, help="ab: turns per side")
    parser.add_argument("--per-round", type=int, default=10, help="ab: operations per turn (per client)")
    parser.add_argument("--workdir", default=None, help="ab: where the state directories go")
    parser.add_argument("--history", type=int, default=0, help="ab: ended jobs of the user first")
    parser.add_argument("--before-args", default="", help="ab: more jobserver flags for the old side")
    parser.add_argument("--keep", action="store_true", help="ab: keep the servers' state and logs")
    parser.add_argument("--idle-jobs", type=int, default=0)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--same-user", action="store_true", help="start: as bob, the owner of the idle jobs (default alice)"
    )
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--gil", action="store_true", help="py-spy --gil (the thread holding the GIL only)")
    args = parser.parse_args()
    if args.what == "ab":
        if not args.before:
            parser.error("ab needs --before")
        return ab(args)
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
            profiles.append((path, py_spy(pid, args.seconds, path, args.native, args.gil)))
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
