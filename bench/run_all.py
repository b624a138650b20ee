"""Whole-stack benchmark: jobserver + jobclient over mutual TLS, with ssh and local baselines in the same run.

    make bench                               # = .venv/bin/python bench/run_all.py
    .venv/bin/python bench/run_all.py --quick   # a smoke run (small sizes and counts, about a minute)

It starts a jobserver (its own temporary state directory, a free high port on 127.0.0.1, the settings in
bench/jobserver.toml, its log in a file) and a throwaway OpenSSH server on 127.0.0.1 with a multiplexed
connection (bench/ssh_anchor.py), then measures:

  * start latency of /bin/true with all namespaces and cpu/memory/pids limits: `jobctl start` (the CLI
    process) and SDK `Client.start`, vs `ssh host true` (multiplexed) and local `subprocess.run`;
  * run round trip: SDK `Client.run(['echo', 'hi'])` vs `ssh host echo hi`; SDK `Client.run(['true'])`
    (all namespaces, default limits, the sandbox) vs multiplexed `ssh host true`, and `jobctl run -- true`
    vs a new-connection `ssh host true`, each pair in one interleaved loop;
  * output throughput: `head -c 1G /dev/zero` streamed to one SDK client process (bench/stream_client.py,
    with and without the allocator tuning jobctl uses) and through `jobctl run > /dev/null`, vs through
    ssh to /dev/null vs a local pipe, interleaved;
  * fan-out: 50 concurrent followers (own client each) of one job writing 200 MiB of /dev/urandom:
    aggregate throughput and every follower's SHA-256 (all must be identical);
  * scale: 500 concurrent `sleep 600` jobs: PSS per job (server + launcher + shims, from
    /proc/PID/smaps_rollup), where a shim's memory goes (/proc/PID/smaps), GetJob/ListJobs latency at
    1 vs 500 jobs (SDK `Client.list()` back to back, and the raw ListJobs RPC of one page without the
    SDK's conversion; `Client.list()` without and with live usage asked every 0.6 s, so that each
    page is built afresh rather than served as kept); then stops them all;
  * concurrency: 20 clients starting 200 jobs at once: success rate and jobs per second;
  * then bench/jobcore_bench.py (library-level figures), unless --skip-jobcore.

Prints one table of medians, p95s and ratios, issue 14's targets met or missed, and the machine (CPU, cores,
RAM, kernel, Python, cgroup mode, load average sampled in every phase). Everything it started (server,
jobs, sshd and its multiplexing master, the authorized_keys entry) is stopped or removed on exit,
including Ctrl-C, SIGTERM and failures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobcore_bench import percentiles as pct
from jobcore_bench import timed
from ssh_anchor import SshAnchor, SshUnavailable, ensure_installed
from stream_client import follow_all, time_together

from jobclient import Client, Credentials, Isolation, Job, JobState, Limits
from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CERTS = REPO / "certs"
CONFIG = Path(__file__).resolve().parent / "jobserver.toml"
MIB = 1 << 20
GIB = 1 << 30
CHUNK = 256 * 1024
#: Set when the run is being torn down: the bench's own client threads start nothing more.
STOPPING = threading.Event()
#: The limits every latency job runs under ("all namespaces and limits on").
BENCH_LIMITS = Limits(cpu=1.0, memory=256 * MIB, pids=64)
JOBCTL_LIMITS = ["--cpu", "1", "--memory", "256M", "--pids", "64"]


# ---------------------------------------------------------------------------------------------- figures


@dataclass
class Row:
    measure: str
    median: str
    p95: str
    n: str = ""
    vs_ssh: str = ""
    vs_local: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[tuple[str, bool | None, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    loads: list[tuple[str, str]] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)

    def load(self, phase: str) -> None:
        self.loads.append((phase, " ".join(Path("/proc/loadavg").read_text().split()[:3])))

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"  FAILURE: {what}", flush=True)


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def ratio(a: float, b: float | None) -> str:
    return "" if not b else f"{a / b:.2f}x"


# ---------------------------------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    fs = subprocess.run(
        ["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True, check=False
    ).stdout
    mode = {"cgroup2fs": "cgroup v2 (unified)", "tmpfs": "cgroup v1 / hybrid"}.get(fs.strip(), fs.strip())
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "packages"],
        capture_output=True,
        text=True,
        check=False,
    )
    changed = [line[3:] for line in dirty.stdout.splitlines() if line[:2].strip()]
    return {
        "source": f"commit {head.stdout.strip() or '?'}"
        + (f" + uncommitted changes in {', '.join(changed)}" if changed else " (packages/ clean)"),
        "cpu": model.group(1).strip() if model else platform.processor() or "?",
        "cores": str(os.cpu_count()),
        "ram": f"{int(mem.group(1)) / (1 << 20):.1f} GiB" if mem else "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cgroup": mode,
    }


# ---------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class Server:
    """A jobserver subprocess on 127.0.0.1 (port 0: the kernel picks a free high port)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state = workdir / "state"
        self.log_path = workdir / "jobserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> None:
        port_file = self.workdir / "port"
        argv = [
            str(BIN / "jobserver"),
            "--config",
            str(CONFIG),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--cert",
            str(CERTS / "server.crt"),
            "--key",
            str(CERTS / "server.key"),
            "--ca",
            str(CERTS / "ca.crt"),
            "--state-dir",
            str(self.state),
            "--log-format",
            "json",
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),  # the log is read during the run
                start_new_session=True,  # a terminal's Ctrl-C goes to the bench, which stops the jobs first
            )
        (self.workdir / "server.pid").write_text(str(self.proc.pid))
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"jobserver did not start; its log: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{int(port_file.read_text())}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self, pid: int) -> list[int]:
        out: list[int] = []
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                out += [int(p) for p in task.read_text().split()]
        return out

    def shim_pids(self) -> dict[str, int]:
        """job id -> shim pid, for every shim alive (verified by its start time, as jobcore does)."""
        out: dict[str, int] = {}
        for shim_json in (self.state / "jobs").glob("*/shim.json"):
            try:
                info = json.loads(shim_json.read_text())
            except (OSError, ValueError):
                continue
            pid = int(info["pid"])
            if read_start_ticks(pid) == int(info.get("start_ticks", -1)):
                out[shim_json.parent.name] = pid
        return out

    def log_durations(self, method: str) -> list[float]:
        """duration_ms of every logged call of `method` (e.g. StartJob), in log order."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'JobWorker/{method}"' in line:
                with contextlib.suppress(ValueError, KeyError):
                    out.append(float(json.loads(line)["duration_ms"]))
        return out

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill_leftover_shims(self) -> int:
        """Last resort after the server is gone: SIGKILL shims still alive (each is its job's PID 1, so
        the job's processes die with it), then remove those jobs' emptied cgroups, which a killed shim
        cannot. A few passes, for starts that were in flight when the server stopped."""
        killed: dict[str, int] = {}
        for _ in range(3):  # bounded: 3 passes, 1 s apart
            pids = {k: v for k, v in self.shim_pids().items() if k not in killed}
            for pid in pids.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed |= pids
            time.sleep(1)
        for job_id in killed:
            try:
                spec = json.loads((self.state / "jobs" / job_id / "spec.json").read_text())
            except (OSError, ValueError):
                continue
            for path in sorted(_cgroup_paths(spec.get("cgroup")), key=len, reverse=True):
                for _ in range(20):  # bounded: the killed processes leave the cgroup within moments
                    try:
                        os.rmdir(path)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)
        return len(killed)


def _cgroup_paths(state: Any) -> list[str]:
    """Every cgroup directory named in a job's cgroup state (spec.json), whatever the backend."""
    if isinstance(state, str):
        return [state] if state.startswith("/sys/fs/cgroup/") else []
    if isinstance(state, dict):
        return [p for v in state.values() for p in _cgroup_paths(v)]
    if isinstance(state, list):
        return [p for v in state for p in _cgroup_paths(v)]
    return []


def stop_all_jobs(address: str, timeout: float = 120) -> int:
    """Stop every job not yet ended (carl is an admin: he sees everyone's); returns how many."""
    with Client(address, credentials=Credentials.for_user("carl"), timeout=30) as admin:
        live = [j for j in admin.list(all_users=True) if not j.ended]
        if not live:
            return 0
        ids = iter([j.id for j in live])
        lock = threading.Lock()
        deadline = time.monotonic() + timeout

        def worker() -> None:
            while time.monotonic() < deadline:
                with lock:
                    job_id = next(ids, None)
                if job_id is None:
                    return
                with contextlib.suppress(Exception):
                    admin.stop(job_id, grace=2)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()) + 5)
        return len(live)


# ---------------------------------------------------------------------------------------------- memory


def smaps_rollup(pid: int) -> dict[str, int]:
    """kB figures of /proc/PID/smaps_rollup (Rss, Pss, Private_Dirty, ...); {} when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}


def smaps_by_mapping(pid: int) -> dict[str, dict[str, int]]:
    """Per mapping name ([heap], [anon], libpython..., ...): summed Pss, Private_Dirty, Rss (kB)."""
    out: dict[str, dict[str, int]] = {}
    name = "?"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return out
    header = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")
    for line in lines:
        m = header.match(line)
        if m:
            path = m.group(1).strip()
            name = os.path.basename(path) if path.startswith("/") else (path or "[anon]")
            continue
        field_match = re.match(r"^(Pss|Private_Dirty|Rss):\s+(\d+) kB", line)
        if field_match:
            entry = out.setdefault(name, {"Pss": 0, "Private_Dirty": 0, "Rss": 0})
            entry[field_match.group(1)] += int(field_match.group(2))
    return out


# ---------------------------------------------------------------------------------------------- phases


#: The gap before each call of the spaced ListJobs rows: longer than the server keeps a built page
#: (jobserver.listing.Pages, half of jobcore's LIST_USAGE_MAX_AGE), so every call builds its page.
SPACED_LIST_GAP = 0.6


@dataclass
class Settings:
    starts: int
    jobctl_starts: int
    runs: int
    stream_bytes: int
    stream_reps: int
    fanout_followers: int
    fanout_bytes: int
    idle_jobs: int
    rpc_samples: int
    spaced_list_samples: int
    burst_clients: int
    burst_jobs: int


FULL = Settings(
    starts=100,
    jobctl_starts=40,
    runs=50,
    stream_bytes=GIB,
    stream_reps=3,
    fanout_followers=50,
    fanout_bytes=200 * MIB,
    idle_jobs=500,
    rpc_samples=200,
    spaced_list_samples=20,
    burst_clients=20,
    burst_jobs=200,
)
QUICK = Settings(
    starts=10,
    jobctl_starts=5,
    runs=5,
    stream_bytes=64 * MIB,
    stream_reps=1,
    fanout_followers=10,
    fanout_bytes=16 * MIB,
    idle_jobs=30,
    rpc_samples=20,
    spaced_list_samples=3,
    burst_clients=5,
    burst_jobs=20,
)


class Bench:
    def __init__(self, server: Server, ssh: SshAnchor | None, settings: Settings, report: Report) -> None:
        self.server = server
        self.ssh = ssh
        self.s = settings
        self.r = report
        self.alice = Client(server.address, credentials=Credentials.for_user("alice"), timeout=60)
        #: Whose certificates the concurrency phase's clients use, in turn.
        self.burst_users = ["alice"]

    def close(self) -> None:
        self.alice.close()

    # -- start latency --------------------------------------------------------------------------------

    def start_latency(self) -> None:
        self.r.load("start latency")
        n = self.s.starts
        true = ["/bin/true"]
        local = pct(timed(lambda: subprocess.run(true, check=True), n))
        ssh = None
        if self.ssh:
            argv = [*self.ssh.argv, "true"]
            subprocess.run(argv, check=True, timeout=30)  # warm-up
            ssh = pct(timed(lambda: subprocess.run(argv, check=True, timeout=30), n))

        failures = 0

        def sdk_start() -> None:
            nonlocal failures
            job = self.alice.start(true, limits=BENCH_LIMITS, isolation=Isolation())
            if job.state is JobState.FAILED_TO_START:
                failures += 1

        sdk_start()  # warm-up: connects the channel
        before = len(self.server.log_durations("StartJob"))
        sdk = pct(timed(sdk_start, n))
        time.sleep(0.5)
        handler = pct(self.server.log_durations("StartJob")[before:] or [float("nan")])
        if failures:
            self.r.fail(f"{failures} of {n} SDK starts failed to start")

        jobctl_argv = [
            str(BIN / "jobctl"),
            "--server",
            self.server.address,
            "--user",
            "alice",
            "start",
            *JOBCTL_LIMITS,
            "--",
            *true,
        ]
        cli_fail = 0

        def cli_start() -> None:
            nonlocal cli_fail
            if subprocess.run(jobctl_argv, capture_output=True, timeout=60, check=False).returncode != 0:
                cli_fail += 1

        cli_start()  # warm-up (page cache)
        cli = pct(timed(cli_start, self.s.jobctl_starts))
        if cli_fail:
            self.r.fail(f"{cli_fail} jobctl starts exited non-zero")
        imports = pct(
            timed(
                lambda: subprocess.run([sys.executable, "-c", "import jobclient.cli"], check=True),
                max(3, self.s.jobctl_starts // 4),
            )
        )

        s_ssh = ssh[0] if ssh else None
        self.r.rows += [
            Row(
                "start: local subprocess.run(['/bin/true'])",
                ms(local[0]),
                ms(local[1]),
                str(n),
                ratio(local[0], s_ssh),
                "1.00x",
            ),
            Row(
                "start: ssh host true (multiplexed, SHLVL=1)",
                ms(ssh[0]),
                ms(ssh[1]),
                str(n),
                "1.00x",
                ratio(ssh[0], local[0]),
            )
            if ssh
            else Row("start: ssh host true", "skipped", "", "", "", ""),
            Row(
                "start: SDK Client.start(/bin/true), all ns + limits",
                ms(sdk[0]),
                ms(sdk[1]),
                str(n),
                ratio(sdk[0], s_ssh),
                ratio(sdk[0], local[0]),
            ),
            Row(
                "  of which: server StartJob handler (server log)",
                ms(handler[0]),
                ms(handler[1]),
                str(n),
                ratio(handler[0], s_ssh),
                "",
            ),
            Row(
                "start: `jobctl start` CLI process, all ns + limits",
                ms(cli[0]),
                ms(cli[1]),
                str(self.s.jobctl_starts),
                ratio(cli[0], s_ssh),
                ratio(cli[0], local[0]),
            ),
            Row(
                "  of which: `python -c 'import jobclient.cli'`",
                ms(imports[0]),
                ms(imports[1]),
                "",
                ratio(imports[0], s_ssh),
                "",
            ),
        ]
        self.r.values.update(sdk_start=sdk[0], cli_start=cli[0], ssh_start=s_ssh or 0, local_start=local[0])

    # -- run round trip -------------------------------------------------------------------------------

    def run_round_trip(self) -> None:
        self.r.load("run round trip")
        n = self.s.runs
        bad = 0

        def sdk_run() -> None:
            nonlocal bad
            buf = io.BytesIO()
            job = self.alice.run(["echo", "hi"], limits=BENCH_LIMITS, out=buf)
            if job.exit_code != 0 or buf.getvalue() != b"hi\n":
                bad += 1

        sdk_run()
        sdk = pct(timed(sdk_run, n))
        if bad:
            self.r.fail(f"{bad} of {n} SDK runs of `echo hi` did not print hi / exit 0")
        local = pct(timed(lambda: subprocess.run(["echo", "hi"], check=True, capture_output=True), n))
        ssh = None
        if self.ssh:
            argv = [*self.ssh.argv, "echo", "hi"]

            def ssh_run() -> None:
                nonlocal bad
                if subprocess.run(argv, capture_output=True, timeout=30, check=False).stdout != b"hi\n":
                    bad += 1

            ssh = pct(timed(ssh_run, n))
        s_ssh = ssh[0] if ssh else None
        self.r.rows += [
            Row(
                "run: local subprocess.run(['echo','hi'])",
                ms(local[0]),
                ms(local[1]),
                str(n),
                ratio(local[0], s_ssh),
                "1.00x",
            ),
            Row(
                "run: ssh host echo hi (multiplexed, SHLVL=1)",
                ms(ssh[0]),
                ms(ssh[1]),
                str(n),
                "1.00x",
                ratio(ssh[0], local[0]),
            )
            if ssh
            else Row("run: ssh host echo hi", "skipped", ""),
            Row(
                "run: SDK Client.run(['echo','hi']) start+stream+exit",
                ms(sdk[0]),
                ms(sdk[1]),
                str(n),
                ratio(sdk[0], s_ssh),
                ratio(sdk[0], local[0]),
            ),
        ]
        self._run_true()

    def _run_true(self) -> None:
        """Issue 14's two run targets, each against its ssh in the same interleaved loop: SDK
        `Client.run(['true'])` (all namespaces, the server's default limits, the sandbox) vs multiplexed
        `ssh host true`; `jobctl run -- true` (a new process) vs a new-connection `ssh host true`."""
        n, k = self.s.runs, self.s.jobctl_starts
        bad = 0

        def sdk_true() -> None:
            nonlocal bad
            if self.alice.run(["true"], isolation=Isolation(), out=lambda _c: None).exit_code != 0:
                bad += 1

        jobctl = [str(BIN / "jobctl"), "--server", self.server.address, "--user", "alice"]
        jobctl += ["run", "--", "true"]

        def run_ok(argv: list[str]) -> None:
            nonlocal bad
            if subprocess.run(argv, capture_output=True, timeout=60, check=False).returncode != 0:
                bad += 1

        sdk_true()
        run_ok(jobctl)  # warm-up (page cache)
        sdk: list[float] = []
        mux: list[float] = []
        cli: list[float] = []
        new: list[float] = []
        new_ssh = self.ssh.new_connection_argv() if self.ssh else None
        for i in range(max(n, k)):
            if i < n:
                sdk += timed(sdk_true, 1)
                if self.ssh:
                    mux += timed(lambda: run_ok([*self.ssh.argv, "true"]), 1)  # type: ignore[union-attr]
            if i < k:
                cli += timed(lambda: run_ok(jobctl), 1)
                if new_ssh:
                    new += timed(lambda: run_ok([*new_ssh, "true"]), 1)
        if bad:
            self.r.fail(f"{bad} runs of `true` (SDK, jobctl or ssh) did not exit 0")
        p_sdk, p_cli = pct(sdk), pct(cli)
        p_mux = pct(mux) if mux else None
        p_new = pct(new) if new else None

        def paired(name: str, ours: tuple[float, float], peer_name: str, peer: Any, count: int) -> list[Row]:
            """Our row with its ratio to the peer measured in the same loop, and the peer's row."""
            return [
                Row(name, ms(ours[0]), ms(ours[1]), str(count), ratio(ours[0], peer[0] if peer else None)),
                Row(f"  {peer_name}, same loop", ms(peer[0]), ms(peer[1]), str(count), "1.00x")
                if peer
                else Row(f"  {peer_name}", "skipped", ""),
            ]

        self.r.rows += paired(
            "run: SDK Client.run(['true']), all ns + default limits + sandbox",
            p_sdk,
            "ssh host true (multiplexed)",
            p_mux,
            n,
        )
        self.r.rows += paired(
            "run: `jobctl run -- true` (new process)", p_cli, "ssh host true (new connection)", p_new, k
        )
        if p_mux:
            self.r.targets.append(
                (
                    "SDK Client.run(['true']) <= 1.0x multiplexed ssh host true",
                    p_sdk[0] <= p_mux[0],
                    f"{ms(p_sdk[0])} vs {ms(p_mux[0])} ({p_sdk[0] / p_mux[0]:.2f}x)",
                )
            )
        if p_new:
            self.r.targets.append(
                (
                    "`jobctl run -- true` <= 0.5x a new-connection ssh host true",
                    p_cli[0] <= 0.5 * p_new[0],
                    f"{ms(p_cli[0])} vs {ms(p_new[0])} ({p_cli[0] / p_new[0]:.2f}x)",
                )
            )

    # -- throughput -----------------------------------------------------------------------------------

    def _sdk_stream(self, nbytes: int, tuned: bool) -> float:
        """SDK start + output() in a process of its own (bench/stream_client.py), with or without the
        allocator tuning jobserver and jobctl apply to themselves."""
        argv = [sys.executable, str(HERE / "stream_client.py"), self.server.address, str(nbytes)]
        done = subprocess.run(
            [*argv, *(["--keep-freed-buffers"] if tuned else [])],
            capture_output=True,
            text=True,
            timeout=700,
            check=False,
        )
        try:
            result = json.loads(done.stdout)
        except ValueError:
            self.r.fail(f"SDK stream client exited {done.returncode}: {done.stderr.strip()[-300:]}")
            return float("nan")
        if result["bytes"] != nbytes or result["exit_code"] != 0:
            self.r.fail(f"SDK stream got {result['bytes']} of {nbytes} bytes, job exit {result['exit_code']}")
        return float(result["rate"])

    def _ssh_stream(self, nbytes: int) -> float:
        assert self.ssh is not None
        return self._command_stream(
            [*self.ssh.argv, "head", "-c", str(nbytes), "/dev/zero"], nbytes, "ssh stream"
        )

    def _jobctl_stream(self, nbytes: int) -> float:
        """`jobctl run -- head -c N /dev/zero > /dev/null`: a new CLI process, start to exit."""
        argv = [str(BIN / "jobctl"), "--server", self.server.address, "--user", "alice"]
        return self._command_stream(
            [*argv, "run", "--", "head", "-c", str(nbytes), "/dev/zero"], nbytes, "jobctl run stream"
        )

    def _command_stream(self, argv: list[str], nbytes: int, what: str) -> float:
        """Bytes per second of `argv` writing `nbytes` to /dev/null, start to exit."""
        t = time.perf_counter()
        rc = subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=600, check=False).returncode
        elapsed = time.perf_counter() - t
        if rc != 0:
            self.r.fail(f"{what} exited {rc}")
        return nbytes / elapsed

    @staticmethod
    def _pipe_stream(nbytes: int) -> float:
        t = time.perf_counter()
        proc = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        got = 0
        while chunk := os.read(fd, CHUNK):
            got += len(chunk)
        proc.wait(timeout=60)
        elapsed = time.perf_counter() - t
        assert got == nbytes
        return nbytes / elapsed

    def throughput(self) -> None:
        self.r.load("throughput")
        nbytes, reps = self.s.stream_bytes, self.s.stream_reps
        size = f"{nbytes / GIB:g} GiB" if nbytes >= GIB else f"{nbytes // MIB} MiB"
        local = [self._pipe_stream(nbytes) for _ in range(reps)]
        # interleaved, so that a change of the machine's load hits each alike
        ssh: list[float] = []
        sdk: list[float] = []
        tuned: list[float] = []
        cli: list[float] = []
        for _ in range(reps):
            if self.ssh:
                ssh.append(self._ssh_stream(nbytes))
            sdk.append(self._sdk_stream(nbytes, tuned=False))
            tuned.append(self._sdk_stream(nbytes, tuned=True))
            cli.append(self._jobctl_stream(nbytes))

        def fmt(rates: list[float]) -> tuple[str, str]:
            return f"{statistics.median(rates) / 1e6:.0f} MB/s", f"worst {min(rates) / 1e6:.0f} MB/s"

        m_local = statistics.median(local)
        m_ssh = statistics.median(ssh) if ssh else None
        m_sdk = statistics.median(sdk)
        m_tuned = statistics.median(tuned)
        m_cli = statistics.median(cli)
        self.r.rows += [
            Row(
                f"stream {size}: local pipe (head, read by python)",
                *fmt(local),
                str(reps),
                ratio(m_local, m_ssh),
                "1.00x",
            ),
            Row(
                f"stream {size}: ssh host head ... > /dev/null",
                *fmt(ssh),
                str(reps),
                "1.00x",
                ratio(m_ssh, m_local),
            )
            if m_ssh
            else Row(f"stream {size}: ssh", "skipped", ""),
            Row(
                f"stream {size}: SDK start + output() over mTLS, 1 client process",
                *fmt(sdk),
                str(reps),
                ratio(m_sdk, m_ssh),
                ratio(m_sdk, m_local),
            ),
            Row(
                "  the same, client with keep_freed_buffers() (as jobctl)",
                *fmt(tuned),
                str(reps),
                ratio(m_tuned, m_ssh),
                ratio(m_tuned, m_local),
            ),
        ]
        self.r.rows.append(
            Row(
                f"stream {size}: `jobctl run -- head ...` > /dev/null (new process)",
                *fmt(cli),
                str(reps),
                ratio(m_cli, m_ssh),
                ratio(m_cli, m_local),
            )
        )
        self.r.values.update(stream_sdk=m_sdk)
        if m_ssh:
            self.r.targets += [
                (
                    f"{size} through the SDK >= 1.5x ssh",
                    m_sdk >= 1.5 * m_ssh,
                    f"{m_sdk / 1e6:.0f} vs {m_ssh / 1e6:.0f} MB/s ({m_sdk / m_ssh:.2f}x of ssh; with "
                    f"keep_freed_buffers() {m_tuned / 1e6:.0f} MB/s, {m_tuned / m_ssh:.2f}x)",
                ),
                (
                    f"{size} through `jobctl run > /dev/null` >= 1.0x ssh",
                    m_cli >= m_ssh,
                    f"{m_cli / 1e6:.0f} vs {m_ssh / 1e6:.0f} MB/s ({m_cli / m_ssh:.2f}x of ssh)",
                ),
            ]

    # -- fan-out --------------------------------------------------------------------------------------

    def fanout(self) -> None:
        self.r.load("fan-out")
        n, nbytes = self.s.fanout_followers, self.s.fanout_bytes
        clients = [
            Client(self.server.address, credentials=Credentials.for_user("alice"), timeout=60)
            for _ in range(n)
        ]
        try:
            job = self.alice.start(["head", "-c", str(nbytes), "/dev/urandom"])
            for c in clients:  # connect every client before the clock starts
                c.status(job.id)
            results, elapsed = follow_all(clients, job.id)
        finally:
            for c in clients:
                c.close()
        ok = [r for r in results if isinstance(r, tuple)]
        errors = [r for r in results if isinstance(r, str)]
        digests = set(ok)
        for e in errors[:5]:
            self.r.fail(f"fan-out follower: {e}")
        if len(ok) != n or len(digests) != 1 or next(iter(digests))[0] != nbytes:
            self.r.fail(f"fan-out: {len(ok)}/{n} followers finished; distinct (bytes, sha256): {digests}")
        total = sum(got for got, _ in ok)
        digest = next(iter(digests))[1] if len(digests) == 1 else "MISMATCH"
        self.r.rows.append(
            Row(
                f"fan-out: {n} followers x {nbytes // MIB} MiB (/dev/urandom)",
                f"{total / elapsed / 1e6:.0f} MB/s total",
                f"{total / elapsed / n / 1e6:.1f} MB/s each",
                str(n),
                "",
                "",
            )
        )
        single = self.r.values.get("stream_sdk", 0.0)
        aggregate = total / elapsed
        self.r.targets.append(
            (
                f"fan-out: {n} followers byte-identical at an aggregate >= 2x the single-stream SDK rate",
                single > 0 and aggregate >= 2 * single and len(digests) == 1 and len(ok) == n,
                f"{aggregate / 1e6:.0f} MB/s total vs {single / 1e6:.0f} MB/s single "
                f"({aggregate / single:.2f}x); {len(digests)} distinct digest(s)"
                if single
                else "no single-stream figure in this run (--only without stream)",
            )
        )
        self.r.notes.append(
            f"fan-out: {len(ok)}/{n} followers received {nbytes} bytes each in {elapsed:.1f} s, "
            f"all with SHA-256 {digest} ({len(digests)} distinct digest(s))"
        )

    # -- scale ----------------------------------------------------------------------------------------

    def _rpc_latency(self, client: Client, job_id: str) -> dict[str, tuple[float, float]]:
        """GetJob, SDK `Client.list()` and the raw ListJobs RPC (one page of up to `idle_jobs` through
        the generated stub: the server's share and the transport, no SDK conversion), back to back;
        and `Client.list()` (without and with live usage) asked every `SPACED_LIST_GAP` s, so that
        the server builds each page afresh rather than serving the one it kept (a slow poller)."""
        k = self.s.rpc_samples
        get = pct(timed(lambda: client.status(job_id), k))
        lst = pct(timed(client.list, k))
        stub = pb_grpc.JobWorkerStub(client._channel)  # the raw row: the SDK client's own channel
        request = pb.ListJobsRequest(scope=pb.LIST_SCOPE_OWN, page_size=self.s.idle_jobs)
        raw = pct(timed(lambda: stub.ListJobs(request, timeout=60), k))

        def spaced(fn: Any) -> tuple[float, float]:
            def after_a_gap() -> None:
                time.sleep(SPACED_LIST_GAP)
                t = time.perf_counter()
                fn()
                took.append((time.perf_counter() - t) * 1000)

            took: list[float] = []
            for _ in range(self.s.spaced_list_samples):
                after_a_gap()
            return pct(took)

        fresh = spaced(client.list)
        fresh_usage = spaced(lambda: client.list(include_usage=True))
        return {"get": get, "list": lst, "raw": raw, "fresh": fresh, "fresh_usage": fresh_usage}

    def _one_vs_many(
        self,
        label_one: str,
        label_many: str,
        one: tuple[float, float],
        many: tuple[float, float],
        more: str = "",
        *,
        samples: int = 0,
    ) -> list[Row]:
        """The rows of one RPC's latency with 1 job and with many (median, p95, the ratio)."""
        k = str(samples or self.s.rpc_samples)
        return [
            Row(label_one, ms(one[0]), ms(one[1]), k),
            Row(label_many, ms(many[0]), ms(many[1]), k, "", f"{many[0] / one[0]:.2f}x of 1 job{more}"),
        ]

    def _pss_total(self, pids: list[int]) -> int:
        return sum(smaps_rollup(p).get("Pss", 0) for p in pids)

    def scale(self) -> None:
        self.r.load("scale")
        n = self.s.idle_jobs
        srv = self.server
        launcher = srv.children(srv.pid)
        base_pids = [srv.pid, *launcher]
        with Client(srv.address, credentials=Credentials.for_user("bob"), timeout=60) as bob:
            first = bob.start(["sleep", "600"])
            started: list[Job] = [first]
            one = self._rpc_latency(bob, first.id)
            time.sleep(1)
            base_shims = srv.shim_pids()
            pss_before = self._pss_total(base_pids) + self._pss_total(list(base_shims.values()))
            running_before = len(base_shims)
            errors: list[str] = []
            lock = threading.Lock()
            remaining = iter(range(n - 1))

            def starter() -> None:
                while True:
                    with lock:
                        if next(remaining, None) is None or STOPPING.is_set():
                            return
                    try:
                        job = bob.start(["sleep", "600"])
                        with lock:
                            started.append(job)
                    except Exception as exc:
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")

            t = time.perf_counter()
            threads = [threading.Thread(target=starter, daemon=True) for _ in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=900)
            start_all = time.perf_counter() - t
            for e in errors[:5]:
                self.r.fail(f"scale start: {e}")
            if len(errors) > 5:
                self.r.fail(f"scale start: {len(errors) - 5} more errors")
            time.sleep(2)  # let the shims settle (their start-up allocations done)
            shims = srv.shim_pids()
            running = [j for j in bob.list() if j.state is JobState.RUNNING]
            if len(running) != n:
                self.r.fail(f"scale: {len(running)} of {n} jobs running")
            shim_figs = [smaps_rollup(p) for p in shims.values()]
            shim_figs = [f for f in shim_figs if f]
            pss_after = self._pss_total(base_pids) + sum(f.get("Pss", 0) for f in shim_figs)
            server_after = self._pss_total(base_pids)
            cmd_pids = [c for p in shims.values() for c in srv.children(p)]
            cmd_pss = self._pss_total(cmd_pids)
            added = len(shims) - running_before
            per_job_kib = (pss_after - pss_before) / max(1, added)
            sample = next(iter(shims.values()))
            by_map = smaps_by_mapping(sample)
            many = self._rpc_latency(bob, first.id)
            self.r.load(f"scale, {n} jobs running")
            # stop them all (bounded), and check they ended
            t = time.perf_counter()
            stop_errors: list[str] = []
            ids = iter([j.id for j in started])

            def stopper() -> None:
                while True:
                    with lock:
                        job_id = next(ids, None)
                    if job_id is None:
                        return
                    try:
                        bob.stop(job_id, grace=5)
                    except Exception as exc:
                        with lock:
                            stop_errors.append(f"{type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=stopper, daemon=True) for _ in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=600)
            stop_all = time.perf_counter() - t
            for e in stop_errors[:5]:
                self.r.fail(f"scale stop: {e}")
            still = [j for j in bob.list() if not j.ended]
            if still:
                self.r.fail(f"scale: {len(still)} jobs still running after stop")
        shim_pss = statistics.median(f["Pss"] for f in shim_figs) if shim_figs else 0
        shim_pd = statistics.median(f.get("Private_Dirty", 0) for f in shim_figs) if shim_figs else 0
        shim_rss = statistics.median(f.get("Rss", 0) for f in shim_figs) if shim_figs else 0
        self.r.values.update(per_job_kib=per_job_kib)
        self.r.rows += [
            Row(
                f"scale: memory per idle job ({added} jobs, server+launcher+shims PSS)",
                f"{per_job_kib / 1024:.2f} MiB",
                "",
                str(added),
            ),
            Row(
                "  shim alone: PSS / Private_Dirty / RSS (median)",
                f"{shim_pss / 1024:.2f} MiB",
                f"PD {shim_pd / 1024:.2f} / RSS {shim_rss / 1024:.1f} MiB",
                str(len(shim_figs)),
            ),
            Row(
                "  the job's own `sleep` (not counted above)",
                f"{cmd_pss / max(1, len(cmd_pids)) / 1024:.2f} MiB",
                "",
                str(len(cmd_pids)),
            ),
            *self._one_vs_many(
                "scale: GetJob, 1 job of the user",
                f"scale: GetJob, {n} jobs running",
                one["get"],
                many["get"],
            ),
            *self._one_vs_many(
                "scale: ListJobs, 1 job", f"scale: ListJobs, {n} jobs", one["list"], many["list"]
            ),
            *self._one_vs_many(
                "  raw ListJobs RPC (stub, 1 page, no SDK conversion), 1 job",
                f"  raw ListJobs RPC (stub, 1 page, no SDK conversion), {n} jobs",
                one["raw"],
                many["raw"],
                f"; {many['raw'][0] / many['list'][0]:.2f}x of the SDK's",
            ),
            *self._one_vs_many(
                f"  ListJobs asked every {SPACED_LIST_GAP} s (each page built afresh), 1 job",
                f"  ListJobs asked every {SPACED_LIST_GAP} s (each page built afresh), {n} jobs",
                one["fresh"],
                many["fresh"],
                samples=self.s.spaced_list_samples,
            ),
            *self._one_vs_many(
                "  the same with live usage (include_usage=True), 1 job",
                f"  the same with live usage (include_usage=True), {n} jobs",
                one["fresh_usage"],
                many["fresh_usage"],
                samples=self.s.spaced_list_samples,
            ),
            Row(
                f"scale: start {n - 1} / stop {n} idle jobs (4 / 8 threads)",
                f"{start_all:.1f} s / {stop_all:.1f} s",
                f"{(n - 1) / start_all:.0f} / {n / stop_all:.0f} jobs/s",
                str(n),
            ),
        ]
        self.r.targets += [
            (
                f"ListJobs at {n} running jobs <= 3x its time at 1 job",
                many["list"][0] <= 3 * one["list"][0],
                f"{ms(many['list'][0])} vs {ms(one['list'][0])} ({many['list'][0] / one['list'][0]:.1f}x); "
                f"asked every {SPACED_LIST_GAP} s, each page built afresh: {ms(many['fresh'][0])} vs "
                f"{ms(one['fresh'][0])} ({many['fresh'][0] / one['fresh'][0]:.1f}x)",
            ),
            (
                f"GetJob flat (at {n} running jobs <= 1.5x its time at 1 job)",
                many["get"][0] <= 1.5 * one["get"][0],
                f"{ms(many['get'][0])} vs {ms(one['get'][0])} ({many['get'][0] / one['get'][0]:.2f}x)",
            ),
        ]
        self.r.targets.append(
            (
                f"memory per idle job <= 1.5 MiB PSS at {n} jobs",
                per_job_kib <= 1.5 * 1024,
                f"{per_job_kib / 1024:.2f} MiB per job (server+launcher+shims PSS: "
                f"{pss_before / 1024:.0f} MiB before, {pss_after / 1024:.0f} MiB with {added} more jobs)",
            )
        )
        top = sorted(by_map.items(), key=lambda kv: -kv[1]["Private_Dirty"])[:8]
        self.r.notes.append(
            f"one shim (pid {sample}) by mapping, kB Private_Dirty / Pss / Rss: "
            + "; ".join(f"{k} {v['Private_Dirty']}/{v['Pss']}/{v['Rss']}" for k, v in top)
        )
        self.r.notes.append(
            f"server+launcher PSS with {added} jobs: {server_after / 1024:.1f} MiB "
            f"(server pid {srv.pid}, launcher {launcher})"
        )

    # -- concurrency ----------------------------------------------------------------------------------

    def concurrency(self) -> None:
        self.r.load("concurrency")
        k, total = self.s.burst_clients, self.s.burst_jobs
        per_client = [total // k + (1 if i < total % k else 0) for i in range(k)]
        users = self.burst_users
        clients = [
            Client(self.server.address, credentials=Credentials.for_user(users[i % len(users)]), timeout=60)
            for i in range(k)
        ]
        ok = 0
        errors: list[str] = []
        ids: list[str] = []
        lock = threading.Lock()
        latencies: list[float] = []
        try:
            for c in clients:
                c.list()  # connected before the burst
            barrier = threading.Barrier(k + 1)

            def burst(client: Client, count: int) -> None:
                nonlocal ok
                barrier.wait(timeout=60)
                for _ in range(count):
                    if STOPPING.is_set():
                        return
                    t = time.perf_counter()
                    try:
                        job = client.start(["/bin/true"], limits=BENCH_LIMITS)
                        with lock:
                            latencies.append((time.perf_counter() - t) * 1000)
                            ids.append(job.id)
                            if job.state is not JobState.FAILED_TO_START:
                                ok += 1
                            else:
                                errors.append(f"failed to start: {job.reason}")
                    except Exception as exc:
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")

            threads = [
                threading.Thread(target=burst, args=(c, m), daemon=True)
                for c, m in zip(clients, per_client, strict=True)
            ]
            elapsed = time_together(threads, barrier, timeout=600)
            bad_exit = 0
            admin = Client(self.server.address, credentials=Credentials.for_user("carl"), timeout=60)
            for job_id in ids:
                end = admin.wait(job_id, out=lambda _chunk: None)
                if end.exit_code != 0:
                    bad_exit += 1
            admin.close()
        finally:
            for c in clients:
                c.close()
        for e in errors[:5]:
            self.r.fail(f"concurrency: {e}")
        if bad_exit:
            self.r.fail(f"concurrency: {bad_exit} jobs did not exit 0")
        lat = pct(latencies) if latencies else (float("nan"), float("nan"))
        self.r.rows += [
            Row(
                f"concurrency: {k} clients ({'/'.join(users)}) x {total} starts at once",
                f"{total / elapsed:.0f} jobs/s",
                f"{ok}/{total} ok ({100 * ok / total:.0f}%)",
                str(total),
            ),
            Row("  per-start latency under that load", ms(lat[0]), ms(lat[1]), str(len(latencies))),
        ]
        self.r.values.update(burst_ok=ok, burst_total=total)
        self.r.targets.append(
            (
                f"{k} clients x {total} starts: 0 failures and >= 100 starts/s",
                ok == total and not bad_exit and total / elapsed >= 100,
                f"{ok}/{total} started, {bad_exit} did not exit 0, {total / elapsed:.0f} starts/s",
            )
        )


# ---------------------------------------------------------------------------------------------- output


def render(report: Report, info: dict[str, str], argv: list[str], jobcore: str | None) -> str:
    head = ["measure", "median", "p95 / other", "n", "vs ssh", "vs local"]
    lines = [
        f"command: {' '.join(argv)}",
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM, Linux {info['kernel']}, "
        f"Python {info['python']}, {info['cgroup']} (jobcore backend: {info.get('backend', '?')})",
        f"code measured: {info['source']}",
        "load average (1/5/15 min) per phase: " + "; ".join(f"{p} {v}" for p, v in report.loads),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in report.rows:
        lines.append(f"| {r.measure} | {r.median} | {r.p95} | {r.n} | {r.vs_ssh} | {r.vs_local} |")
    lines += ["", "targets:"]
    for name, met, detail in report.targets:
        lines.append(f"- {'MET   ' if met else 'MISSED'} {name}: {detail}")
    lines.append(
        f"- {'MET   ' if not report.failures else 'MISSED'} zero failures: "
        + (
            f"{len(report.failures)} failure(s): " + "; ".join(report.failures[:10])
            if report.failures
            else "none"
        )
    )
    lines += ["", "notes:"] + [f"- {n}" for n in report.notes]
    if jobcore:
        lines += [
            "",
            "bench/jobcore_bench.py and bench/sandbox_cost.py (library level, same run):",
            "```",
            jobcore.rstrip(),
            "```",
        ]
    return "\n".join(lines) + "\n"


def run_jobcore_bench(quick: bool) -> str:
    """jobcore_bench.py, then sandbox_cost.py (what the sandbox adds to a start), in this run."""
    here = Path(__file__).resolve().parent
    runs = [
        (
            "jobcore_bench.py",
            ["--starts", "20", "--gib", "0.05"] if quick else ["--starts", "100", "--gib", "1"],
        ),
        ("sandbox_cost.py", ["--starts", "30" if quick else "300"]),
    ]
    outputs = []
    for script, args in runs:
        argv = [sys.executable, str(here / script), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False, cwd=here)
        if proc.returncode != 0:
            outputs.append(f"$ {' '.join(argv[1:])}\nexited {proc.returncode}:\n{proc.stderr[-3000:]}")
        else:
            outputs.append(f"$ {' '.join(['python', *argv[1:]])}\n{proc.stdout}")
    return "\n".join(outputs)


WORKDIR_ENV = "RJW_BENCH_WORKDIR"


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def salvage(workdir: Path, keep: bool) -> None:
    """After the measuring process ended, however it ended: stop whatever it left in `workdir`.

    Normally nothing: the measuring process cleans up itself and removes the directory. This covers
    its sudden death (SIGKILL, or a signal whose default action won): jobs, server, shims, sshd,
    the multiplexing master, the authorized_keys line.
    """
    if not workdir.exists():
        return
    server = Server(workdir)
    pid_file, port_file = workdir / "server.pid", workdir / "port"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            alive = os.fsencode(str(workdir)) in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            alive = False
        if alive:
            if port_file.exists():
                with contextlib.suppress(Exception):
                    stopped = stop_all_jobs(f"127.0.0.1:{int(port_file.read_text())}")
                    print(f"salvage: stopped {stopped} jobs", flush=True)
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):  # bounded: 30 s, then SIGKILL
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    killed = server.kill_leftover_shims()
    if killed:
        print(f"salvage: killed {killed} leftover shims", flush=True)
    anchor = SshAnchor.load(workdir / "ssh")
    if anchor is not None:
        with contextlib.suppress(Exception):
            anchor.stop()
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)


def supervise(argv: list[str], keep: bool) -> int:
    """Run the measurements in a child process and clean up after it, whatever way it ends.

    Ctrl-C / SIGTERM reach the child (forwarded), which stops everything itself; `salvage` then checks.
    """
    workdir = Path(tempfile.mkdtemp(prefix="rjw-bench-"))
    env = dict(os.environ, **{WORKDIR_ENV: str(workdir)})
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], env=env)

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:
                continue
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        salvage(workdir, keep)
    return rc if rc >= 0 else 128 - rc


class Interrupted(BaseException):
    pass


def on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted(f"signal {signum}")


@contextlib.contextmanager
def environment(args: argparse.Namespace, report: Report) -> Iterator[tuple[Server, SshAnchor | None]]:
    """The server and the ssh anchor; everything torn down on the way out, each step on its own."""
    workdir = Path(os.environ.get(WORKDIR_ENV) or tempfile.mkdtemp(prefix="rjw-bench-"))
    server = Server(workdir)
    ssh: SshAnchor | None = None
    try:
        server.start()
        print(f"jobserver pid {server.pid} on {server.address}, state {server.state}", flush=True)
        if not args.no_ssh:
            try:
                ensure_installed(install=not args.no_install)
                ssh = SshAnchor(workdir / "ssh", free_port())
                try:
                    ssh.start()
                except BaseException:
                    ssh.stop()
                    raise
                print(f"sshd pid {ssh.pid} on 127.0.0.1:{ssh.port} (multiplexed)", flush=True)
                report.notes.append(
                    "ssh baseline: own sshd on 127.0.0.1, ed25519 keys, one multiplexed master opened before "
                    "timing; sshd sets SHLVL=1 so bash skips root's ~/.bashrc (which runs `pyenv init` on "
                    "this machine and would add its own start-up time to every ssh command)"
                )
            except (SshUnavailable, subprocess.SubprocessError, OSError) as exc:
                report.notes.append(f"ssh baselines skipped: {exc}")
                ssh = None
        yield server, ssh
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        try:
            if ssh is not None:
                with contextlib.suppress(Exception):
                    ssh.stop()
            STOPPING.set()
            if server.proc is not None and server.proc.poll() is None:
                try:
                    stopped = stop_all_jobs(server.address)
                    time.sleep(1)  # starts in flight when the first pass listed the jobs
                    stopped += stop_all_jobs(server.address)
                    if stopped:
                        print(f"clean-up: stopped {stopped} jobs still running", flush=True)
                except Exception as exc:
                    print(f"clean-up: could not stop jobs through the server: {exc}", flush=True)
            server.stop()
            killed = server.kill_leftover_shims()
            if killed:
                print(f"clean-up: killed {killed} leftover shims", flush=True)
            if args.keep:
                print(f"kept {workdir} (server log: {server.log_path})")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and counts: a smoke run")
    parser.add_argument("--skip-jobcore", action="store_true", help="do not run bench/jobcore_bench.py")
    parser.add_argument("--no-ssh", action="store_true", help="skip the ssh baselines")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install openssh-server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state dir and server log")
    parser.add_argument(
        "--only",
        default="start,run,stream,fanout,scale,burst",
        help="comma-separated phases (default: all): start,run,stream,fanout,scale,burst",
    )
    parser.add_argument(
        "--burst-users",
        default="alice",
        help="comma-separated users whose certificates the concurrency phase's clients use in turn "
        "(default alice: one user; certs/ has alice, bob, carl)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    if not os.environ.get(WORKDIR_ENV):
        return supervise(sys.argv[1:], args.keep)
    settings = QUICK if args.quick else FULL
    phases = set(args.only.split(","))
    signal.signal(signal.SIGTERM, on_sigterm)
    report = Report()
    info = machine()
    report.load("begin")
    t_begin = time.monotonic()
    try:
        with environment(args, report) as (server, ssh):
            bench = Bench(server, ssh, settings, report)
            bench.burst_users = args.burst_users.split(",")
            for line in server.log_path.read_text().splitlines():
                if '"listening"' in line:
                    info["backend"] = json.loads(line).get("controller", "?")
            try:
                for name, phase in (
                    ("start", bench.start_latency),
                    ("run", bench.run_round_trip),
                    ("stream", bench.throughput),
                    ("fanout", bench.fanout),
                    ("scale", bench.scale),
                    ("burst", bench.concurrency),
                ):
                    if name in phases:
                        print(f"[{time.monotonic() - t_begin:6.0f} s] {name} ...", flush=True)
                        phase()
            finally:
                bench.close()
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    report.load("end (whole-stack)")
    argv = [".venv/bin/python", "bench/run_all.py", *sys.argv[1:]]
    jobcore = None
    if not args.skip_jobcore:
        print("\n" + render(report, info, argv, None), flush=True)  # in case jobcore_bench is interrupted
        print(f"[{time.monotonic() - t_begin:6.0f} s] bench/jobcore_bench.py ...", flush=True)
        jobcore = run_jobcore_bench(args.quick)
    text = render(report, info, argv, jobcore)
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
