"""What a stream costs in CPU time and page faults, ours against ssh's, per GiB moved.

    .venv/bin/python bench/stream_cpu.py [--mib 512] [--reps 2]

On a machine whose cores are shared, a stream's rate follows its share of the CPUs more than anything
else; this says where that share goes. It starts a jobserver (bench/run_all.py's, same settings) and a
throwaway sshd (bench/ssh_anchor.py), then, round-robin, streams `head -c N /dev/zero` through:

  * the SDK, default allocator (bench/stream_client.py, a process of its own),
  * the SDK with `keep_freed_buffers()` (as jobctl and jobserver do),
  * `jobctl run -- head ... > /dev/null`,
  * `ssh host head ... > /dev/null` (multiplexed),
  * with `--followers N`: N SDK followers of one `head -c M /dev/urandom` in one process
    (bench/stream_client.py --followers; `--fanout-mib M`), all digests checked; per GiB delivered,
  * with `--before DIR`: the SDK and jobctl (and the followers) of another tree against a jobserver of
    that tree,

and prints the wall rate and the CPU seconds and minor page faults per GiB: of the client process (its
rusage from wait4), of the server process (/proc/PID/stat), and for ssh of sshd with its reaped session
descendants and the multiplexing master. `head` itself is left out on both sides. Everything it started
is stopped on exit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_all import BIN, CERTS, HERE, Server, free_port, stop_all_jobs
from ssh_anchor import SshAnchor, ensure_installed

GIB = 1 << 30


def proc_cpu(pid: int) -> tuple[float, int]:
    """(CPU seconds, minor faults) of a live process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def run_client(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, minor faults, exit status) of one client process."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, **env)
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t, usage.ru_utime + usage.ru_stime, usage.ru_minflt, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=512, help="MiB per stream")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="also a second jobserver, and the SDK and jobctl, from the packages/ of another tree "
        "(e.g. `git archive main packages | tar -x -C DIR`), first on PYTHONPATH",
    )
    parser.add_argument("--followers", type=int, default=0, help="also N followers of one job (fan-out)")
    parser.add_argument("--fanout-mib", type=int, default=100, help="MiB each follower receives")
    args = parser.parse_args()
    nbytes = args.mib << 20
    fan_bytes = args.fanout_mib << 20
    workdir = Path(tempfile.mkdtemp(prefix="rjw-stream-cpu-"))
    server = Server(workdir)
    old_server: Server | None = None
    old_env: dict[str, str] = {}
    ssh: SshAnchor | None = None
    try:
        server.start()
        if args.before:
            src = Path(args.before).resolve() / "packages"
            path = os.pathsep.join(str(src / m / "src") for m in ("jobcore", "jobclient", "jobserver"))
            old_env = {"PYTHONPATH": path, "JOBCTL_CERTS": str(CERTS)}  # its certs/ lookup starts there
            (workdir / "before").mkdir()
            old_server = Server(workdir / "before")
            saved = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = path  # the server and its launcher import the other tree
            try:
                old_server.start()
            finally:
                if saved is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = saved
        ensure_installed(install=True)
        ssh = SshAnchor(workdir / "ssh", free_port())
        ssh.start()
        assert ssh.pid is not None
        mux = [
            int(p)
            for p in os.listdir("/proc")
            if p.isdigit()
            and _cmdline(int(p)).startswith(b"ssh\0")
            and b"ControlMaster=yes" in _cmdline(int(p))
            and str(workdir).encode() in _cmdline(int(p))
        ]
        client = [sys.executable, str(HERE / "stream_client.py"), server.address, str(nbytes)]
        jobctl = [str(BIN / "jobctl"), "--server", server.address, "--user", "alice", "run", "--"]
        head = ["head", "-c", str(nbytes), "/dev/zero"]
        fan = [sys.executable, str(HERE / "stream_client.py"), server.address, str(fan_bytes)]
        fan += ["--followers", str(args.followers)]
        fan_name = f"fan-out, {args.followers} followers"
        ways: dict[str, tuple[list[str], Server | None, dict[str, str]]] = {
            "SDK, default malloc": (client, server, {}),
            "SDK + keep_freed_buffers()": ([*client, "--keep-freed-buffers"], server, {}),
            "jobctl run > /dev/null": ([*jobctl, *head], server, {}),
            "ssh (multiplexed) > /dev/null": ([*ssh.argv, *head], None, {}),
        }
        if args.followers:
            ways[fan_name] = (fan, server, {})
        if old_server is not None:
            old_client = [sys.executable, str(HERE / "stream_client.py"), old_server.address, str(nbytes)]
            old_jobctl = [str(BIN / "jobctl"), "--server", old_server.address, "--user", "alice", "run", "--"]
            ways["before: SDK"] = (old_client, old_server, old_env)
            ways["before: jobctl run > /dev/null"] = ([*old_jobctl, *head], old_server, old_env)
            if args.followers:
                old_fan = [*fan[:2], old_server.address, *fan[3:]]
                ways[f"before: {fan_name}"] = (old_fan, old_server, old_env)
        print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        print(f"{args.mib} MiB per stream, {args.reps} rounds; per GiB: CPU seconds (minor faults)")
        print(f"{'path':32} {'MB/s':>6} {'client':>16} {'server side':>18}")
        for _ in range(args.reps):
            for name, (argv, target, env) in ways.items():
                moved = args.followers * fan_bytes if fan_name in name else nbytes
                g = moved / GIB
                # ssh: sshd and its descendants alive throughout (with multiplexing the session's
                # channel work stays in one long-lived sshd process), and the multiplexing master
                side = [*_tree(ssh.pid), *mux] if target is None else [target.pid]
                before = {p: _cpu_or_none(p) for p in side}
                wall, cpu, faults, rc = run_client(argv, env)
                after = {p: _cpu_or_none(p) for p in side}
                pairs = [(a, b) for p in side if (a := after[p]) is not None and (b := before[p]) is not None]
                s_cpu = sum(a[0] - b[0] for a, b in pairs)
                s_flt = sum(a[1] - b[1] for a, b in pairs)
                note = "" if rc == 0 else f"  (exit {rc})"
                print(
                    f"{name:32} {moved / wall / 1e6:6.0f} {cpu / g:7.2f} s ({faults / g / 1000:4.0f}k) "
                    f"{s_cpu / g:7.2f} s ({s_flt / g / 1000:5.0f}k){note}",
                    flush=True,
                )
        print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    finally:
        if ssh is not None:
            ssh.stop()
        for srv in (server, old_server):
            if srv is None:
                continue
            if srv.proc is not None and srv.proc.poll() is None:
                stop_all_jobs(srv.address)
            srv.stop()
            srv.kill_leftover_shims()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _cpu_or_none(pid: int) -> tuple[float, int] | None:
    try:
        return proc_cpu(pid)
    except OSError:
        return None


def _tree(root: int) -> list[int]:
    """`root` and its live descendants."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out = [root]
    for pid in parent:
        p = pid
        while p in parent and p > 1:
            p = parent[p]
            if p == root:
                out.append(pid)
                break
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


if __name__ == "__main__":
    sys.exit(main())
