"""Helpers for the whole-stack tests: the real `jobserver` and `jobctl` executables as subprocesses,
the real certificates, real sockets on 127.0.0.1, and /proc and cgroupfs probes for leaks.

Nothing here imports from the per-distribution test folders; what every suite shares (waits, the
server subprocess, /proc identity) comes from tests/support.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
from support import (
    BIN,
    CERTS,
    IS_ROOT,
    JOBCTL,
    JOBSERVER,
    REPO,
    ServerProcess,
    is_running,
    process_start_ticks,
    wait_for,
)

#: Re-exported from tests/support for the e2e test files.
__all__ = [
    "BIN",
    "CERTS",
    "IS_ROOT",
    "JOBCTL",
    "JOBSERVER",
    "REPO",
    "ServerProcess",
    "process_start_ticks",
    "wait_for",
]

needs_root = pytest.mark.skipif(
    not IS_ROOT,
    reason="the server's jobs run in cgroups and namespaces (and the tests mount tmpfs): needs root",
)
#: Thread names of the two pools that keep idle threads for later calls (see thread_counts).
RPC_THREAD_NAME = "jobserver-rpc"
GRPC_POOL_THREAD_NAME = "event_engine"


def jobctl_env(server: str) -> dict[str, str]:
    """The environment of a jobctl run: ours, minus any JOBCTL_/GRPC_ settings, plus the server and
    the checked-in certificates folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_"))}
    env.update(JOBCTL_SERVER=server, JOBCTL_CERTS=str(CERTS))
    return env


def jobctl(server: str, user: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run the real `jobctl --user USER ARGS...`; stdout and stderr captured as bytes."""
    return subprocess.run(
        [str(JOBCTL), "--user", user, *args],
        env=jobctl_env(server),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def popen_jobctl(server: str, user: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(JOBCTL), "--user", user, *args],
        env=jobctl_env(server),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def assert_one_line_diagnostic(stderr: bytes, *needles: str) -> str:
    """stderr is exactly one `jobctl: ...` line (no traceback) containing every needle."""
    text = stderr.decode(errors="replace")
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{text}"
    assert lines[0].startswith("jobctl: "), text
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# ---------------------------------------------------------------------------- /proc probes


def thread_counts(pid: int) -> tuple[int, int, int]:
    """(threads outside the two pools, RPC pool threads, gRPC event_engine threads) of a process.

    The RPC pool (bounded by the server's config) and gRPC's own event_engine pool keep idle threads
    for later calls, so only the other threads must return exactly to where they were.
    """
    other = rpc = engine = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # the thread just ended
        if name == RPC_THREAD_NAME:
            rpc += 1
        elif name == GRPC_POOL_THREAD_NAME:
            engine += 1
        else:
            other += 1
    return other, rpc, engine


def thread_names(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
        except OSError:
            continue
    return sorted(names)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return sorted(out)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


# ---------------------------------------------------------------------------- leftovers


def cgroup_dirs_of(job_ids: Iterable[str]) -> list[str]:
    """Directories under /sys/fs/cgroup in a `remote-jobs` subtree named after one of `job_ids`."""
    wanted = set(job_ids)
    found = []
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if d in wanted and "remote-jobs" in root:
                found.append(os.path.join(root, d))
    return sorted(found)


JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def live_job_processes(jobs_dir: Path, job_ids: Iterable[str] | None = None) -> list[str]:
    """Shims and job init processes recorded in `jobs_dir/<id>/{shim,run}.json` that still run (pid and
    start time both match, so a reused pid is not mistaken for a survivor; a zombie runs nothing)."""
    import json

    wanted = set(job_ids) if job_ids is not None else None
    alive: list[str] = []
    if not jobs_dir.exists():
        return alive
    for entry in sorted(jobs_dir.iterdir()):
        if not entry.is_dir() or (wanted is not None and entry.name not in wanted):
            continue
        for name in ("shim.json", "run.json"):
            try:
                record = json.loads((entry / name).read_text())
            except (FileNotFoundError, ValueError):
                continue
            pid, ticks = record.get("pid"), _recorded_start_ticks(record)
            if pid and isinstance(ticks, int) and is_running(pid, ticks):
                alive.append(f"{entry.name}/{name}: pid {pid}")
    return alive


def _recorded_start_ticks(record: dict[str, object]) -> object:
    """A record's start time of its process (run.json called it pid_start_ticks before jobcore.records)."""
    return record.get("start_ticks", record.get("pid_start_ticks"))


def kill_job_processes(jobs_dir: Path) -> None:
    """Last-resort teardown: SIGKILL every job init and shim still alive under `jobs_dir`."""
    import json

    if not jobs_dir.exists():
        return
    for entry in jobs_dir.iterdir():
        if not entry.is_dir():
            continue
        for name in ("run.json", "shim.json"):
            try:
                record = json.loads((entry / name).read_text())
            except (FileNotFoundError, ValueError, OSError):
                continue
            pid, ticks = record.get("pid"), _recorded_start_ticks(record)
            if pid and ticks is not None and process_start_ticks(pid) == ticks:  # a zombie too: harmless
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def seq_output(n: int) -> bytes:
    """What `seq 1 N` prints."""
    return b"".join(b"%d\n" % i for i in range(1, n + 1))


def mint_client_cert(work_dir: Path, name: str, role: str = "user") -> tuple[Path, Path]:
    """A client certificate for CN=`name`, OU=`role`, signed by certs/ca.key now (nothing checked in);
    (certificate, key)."""
    key, csr, cert, ext = (work_dir / f"{name}.{kind}" for kind in ("key", "csr", "crt", "ext"))
    ext.write_text(
        "[ext]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = clientAuth\n"
    )
    for args in (
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key)],
        ["req", "-new", "-key", str(key), "-subj", f"/O=JobWorker/OU={role}/CN={name}", "-out", str(csr)],
        ["x509", "-req", "-in", str(csr), "-CA", str(CERTS / "ca.crt"), "-CAkey", str(CERTS / "ca.key"),
         "-set_serial", "0x" + os.urandom(8).hex(), "-sha256", "-days", "7", "-extfile", str(ext),
         "-extensions", "ext", "-out", str(cert)],
    ):  # fmt: skip
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    return cert, key


def ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    """A jobctl run's stdout, once it is known to have succeeded."""
    assert result.returncode == 0, (result.returncode, result.stderr.decode(errors="replace"))
    return result.stdout
