"""Where a ListJobs of many running jobs spends its time, client and server side; old code vs new.

    .venv/bin/python bench/list_breakdown.py [--jobs 500] [--samples 40]
    .venv/bin/python bench/list_breakdown.py --before /tmp/old     # /tmp/old/packages/*/src: the old code

Starts one jobserver per variant (this tree; with --before also one running the old tree, with its
packages first on PYTHONPATH), each with its own temporary state directory, and on each N `sleep 600`
jobs of bob and 1 of alice. Each variant's client side runs in a child process of its own on the same
PYTHONPATH as its server, so "before" is the old code at both ends. Then, round-robin over the variants
and the measures (one sample of each in turn, so both variants see the same load):

* `sdk list, N`: `Client.list()` of bob's N jobs (what bench/run_all.py's target row times);
* `get`: `Client.status()` of one of bob's jobs (GetJob, which reads usage afresh);
* `sdk list, 1`: the same for alice's 1 job;
* `raw, default pages`: the ListJobs RPCs `list()` made before this work (pages of the server's
  default size until no next token), the responses kept as bytes (no parsing): server + transport;
* `raw, 1 page of N`: one ListJobs of page_size N as bytes;
* `parse N`: `ListJobsResponse.FromString` of those bytes (client);
* `convert N`: `job_from_proto` of each parsed job (client);
* `decode`: what `list()` does with the page's bytes: parse, then `jobclient._conversions.listed_job`
  of each job where it exists (it keeps the jobs of earlier listings), else `job_from_proto` (old code);
* `server handler`: the ListJobs calls' `duration_ms` from the server's own log, of the raw rows.

Every job is stopped and every server stopped on the way out.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

LIST_METHOD = "/jobworker.v1.JobWorker/ListJobs"


# ------------------------------------------------------------------------------ the measuring child


def child(address: str, jobs_wanted: int) -> None:
    """Measure on request: one line in (a measure's name), one JSON line out (ms, and details)."""
    from jobclient import Client, Credentials
    from jobclient import _conversions as conv
    from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

    bob = Client(address, credentials=Credentials.for_user("bob"), timeout=120)
    alice = Client(address, credentials=Credentials.for_user("alice"), timeout=120)
    # The admin carl lists bob's jobs in one page: the same handler, told apart in the server's log.
    carl = Client(address, credentials=Credentials.for_user("carl"), timeout=120)

    def raw_of(client: Client):  # type: ignore[no-untyped-def]
        return client._channel.unary_unary(
            LIST_METHOD, request_serializer=pb.ListJobsRequest.SerializeToString, response_deserializer=None
        )

    raw, raw_carl = raw_of(bob), raw_of(carl)
    whole = pb.ListJobsRequest(scope=pb.LIST_SCOPE_USER, user="bob", page_size=jobs_wanted)
    last: dict[str, object] = {}

    def timed(fn):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t) * 1000, out

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        what = line.strip()
        extra: dict[str, object] = {}
        if what == "sdk_n":
            ms, jobs = timed(bob.list)
            extra["jobs"] = len(jobs)
        elif what == "get":
            job_id = last.get("job_id") or bob.list()[0].id
            last["job_id"] = job_id
            ms, _ = timed(lambda: bob.status(job_id))  # noqa: B023
        elif what == "sdk_1":
            ms, jobs = timed(alice.list)
            extra["jobs"] = len(jobs)
        elif what == "raw_default":
            # Timed without the token parsing: each RPC's own time, summed.
            request, total, rpcs, size = pb.ListJobsRequest(scope=pb.LIST_SCOPE_OWN), 0.0, 0, 0
            while True:
                one, data = timed(lambda: raw(request, timeout=120))  # noqa: B023
                total, rpcs, size = total + one, rpcs + 1, size + len(data)
                token = pb.ListJobsResponse.FromString(data).next_page_token
                if not token:
                    break
                request.page_token = token
            ms, extra = total, {"rpcs": rpcs, "bytes": size}
        elif what == "raw_whole":
            ms, data = timed(lambda: raw_carl(whole, timeout=120))
            last["bytes"] = data
            extra["bytes"] = len(data)
        elif what == "parse":
            data = last.get("bytes") or raw_carl(whole, timeout=120)
            ms, response = timed(lambda: pb.ListJobsResponse.FromString(data))  # noqa: B023
            last["response"] = response
            extra["jobs"] = len(response.jobs)
        elif what == "convert":
            response = last.get("response") or pb.ListJobsResponse.FromString(raw_carl(whole, timeout=120))
            messages = list(response.jobs)  # type: ignore[attr-defined]
            ms, jobs = timed(lambda: [conv.job_from_proto(m) for m in messages])  # noqa: B023
            extra["jobs"] = len(jobs)
        elif what == "decode":
            # What list() does with a page: parse it, then conv.listed_job of each job where it exists
            # (the jobs of earlier listings kept by their bytes), else job_from_proto (the old code).
            data = last.get("bytes") or raw_carl(whole, timeout=120)
            convert = getattr(conv, "listed_job", conv.job_from_proto)
            ms, jobs = timed(lambda: [convert(m) for m in pb.ListJobsResponse.FromString(data).jobs])  # noqa: B023
            extra["jobs"] = len(jobs)
        else:
            print(json.dumps({"error": f"unknown measure {what!r}"}), flush=True)
            continue
        print(json.dumps({"ms": ms, **extra}), flush=True)
    for client in (bob, alice, carl):
        client.close()


# ------------------------------------------------------------------------------ the parent


def pct(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def handler_durations(log_path: Path) -> dict[str, list[float]]:
    """duration_ms of each logged ListJobs call, by the calling user."""
    out: dict[str, list[float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if '/ListJobs"' in line:
            with contextlib.suppress(ValueError, KeyError):
                record = json.loads(line)
                out.setdefault(record["user"], []).append(float(record["duration_ms"]))
    return out


def pythonpath(tree: Path | None) -> str:
    """PYTHONPATH that puts `tree`'s packages first (empty: this tree, as installed in the venv)."""
    if tree is None:
        return os.environ.get("PYTHONPATH", "")
    paths = [str(tree / "packages" / name / "src") for name in ("jobcore", "jobclient", "jobserver")]
    for path in paths:
        if not Path(path).is_dir():
            raise SystemExit(f"--before: {path} is not a directory")
    return os.pathsep.join(paths)


class Variant:
    def __init__(self, name: str, tree: Path | None, workdir: Path) -> None:
        from run_all import Server

        self.name = name
        # The old tree is not a checkout with certs/: its client is told where the certificates are.
        self.env = dict(os.environ, PYTHONPATH=pythonpath(tree), JOBCTL_CERTS=str(HERE.parent / "certs"))
        workdir.mkdir()
        self.server = Server(workdir)
        self.proc: subprocess.Popen[str] | None = None

    def start(self, jobs: int) -> None:
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = self.env["PYTHONPATH"]  # Server.start passes os.environ on
        try:
            self.server.start()
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        from jobclient import Client, Credentials

        address = self.server.address
        with Client(address, credentials=Credentials.for_user("alice"), timeout=60) as alice:
            alice.start(["sleep", "600"])

        def start_one(bob: Client) -> str:
            try:
                bob.start(["sleep", "600"])
                return ""
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"

        with (
            Client(address, credentials=Credentials.for_user("bob"), timeout=60) as bob,
            concurrent.futures.ThreadPoolExecutor(4) as pool,
        ):
            errors = [e for e in pool.map(lambda _: start_one(bob), range(jobs)) if e]
        if errors:
            raise RuntimeError(f"{self.name}: {len(errors)} starts failed, first: {errors[0]}")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", address, "--jobs", str(jobs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.proc.stdout is not None
        json.loads(self.proc.stdout.readline())

    def measure(self, what: str) -> dict[str, float]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        result: dict[str, float] = json.loads(self.proc.stdout.readline())
        if "error" in result:
            raise RuntimeError(str(result["error"]))
        return result

    def stop(self) -> None:
        from run_all import stop_all_jobs

        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        proc = self.server.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                stop_all_jobs(self.server.address)
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


MEASURES = ["get", "sdk_n", "sdk_1", "raw_default", "raw_whole", "parse", "convert", "decode"]
LABELS = {
    "get": "sdk Client.status() (GetJob), {n} running",
    "sdk_n": "sdk Client.list(), {n} jobs",
    "sdk_1": "sdk Client.list(), 1 job",
    "raw_default": "raw ListJobs, default pages, {n} jobs",
    "raw_whole": "raw ListJobs, 1 page of {n}",
    "parse": "client: parse the page of {n}",
    "convert": "client: job_from_proto x {n}",
    "decode": "client: the page's bytes to Jobs, as list()",
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500, help="bob's running jobs per server (default 500)")
    parser.add_argument("--samples", type=int, default=40, help="rounds of every measure (default 40)")
    parser.add_argument("--before", type=Path, metavar="TREE", help="also measure the old code in TREE")
    parser.add_argument("--child", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.jobs)
        return 0
    sys.path.insert(0, str(HERE))
    workdir = Path(tempfile.mkdtemp(prefix="list-breakdown-"))
    variants = [Variant("after", None, workdir / "after")]
    if args.before is not None:
        variants.insert(0, Variant("before", args.before.resolve(), workdir / "before"))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        t = time.monotonic()
        for variant in variants:
            variant.start(args.jobs)
        print(
            f"started {args.jobs} + 1 jobs on each of {len(variants)} servers in {time.monotonic() - t:.0f} s"
        )
        time.sleep(2)
        load_begin = load()
        for variant in variants:  # warm-up: connections, first usage reads
            for what in MEASURES:
                variant.measure(what)
        for _ in range(args.samples):
            for what in MEASURES:
                for variant in variants:
                    results.setdefault((variant.name, what), []).append(variant.measure(what))
        load_end = load()
        handler = {variant.name: handler_durations(variant.server.log_path) for variant in variants}
    finally:
        for variant in variants:
            variant.stop()
        with contextlib.suppress(OSError):
            subprocess.run(["rm", "-rf", str(workdir)], check=False)
    n = args.jobs
    print(
        f"load average (1/5/15 min): {load_begin} at the start, {load_end} at the end; {args.samples} rounds"
    )
    names = [v.name for v in variants]
    print(
        f"{'measure':42s}" + "".join(f"{name + ' p50 / p95 ms':>24s}" for name in names) + "   after/before"
    )
    medians: dict[tuple[str, str], float] = {}
    for what in MEASURES:
        cells = []
        for name in names:
            rows = results[(name, what)]
            p50, p95 = pct([r["ms"] for r in rows])
            medians[(name, what)] = p50
            detail = ""
            if "rpcs" in rows[0]:
                detail = f" ({int(rows[0]['rpcs'])} rpc)"
            cells.append(f"{p50:9.2f} / {p95:7.2f}{detail:>6s}")
        ratio = f"{medians[('after', what)] / medians[('before', what)]:.2f}x" if "before" in names else ""
        print(f"{LABELS[what].format(n=n):42s}" + "".join(f"{c:>24s}" for c in cells) + f"   {ratio}")
    for name in names:
        ratio = medians[(name, "sdk_n")] / medians[(name, "sdk_1")]
        print(f"{name}: sdk list of {n} / of 1 = {ratio:.1f}x")
    for name, by_user in handler.items():
        for user, label in (("carl", f"1 page of {n}"), ("bob", f"pages of bob's {n}"), ("alice", "1 job")):
            durations = by_user.get(user, [])
            if durations:
                p50, p95 = pct(durations)
                print(
                    f"{name}: server ListJobs handler ({label}, log duration_ms): "
                    f"{p50:.2f} / {p95:.2f} ms, {len(durations)} calls"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
