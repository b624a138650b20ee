"""Where a job's start time and memory go: the ways a shim-like process can spawn the command, and what
an idle shim-like forked child costs under each CPython on this machine.

    .venv/bin/python bench/spawn_candidates.py [--spawns 200] [--children 10] [--pythons 3.11,3.12,3.13]

Spawn: a "launcher" process (this interpreter, `jobcore.launcher` imported, `gc.freeze()`) forks a
"shim" child, which spawns /bin/true round-robin with each candidate, stdout/stderr on a pipe like the
shim's, and times (a) the call until the command has been exec'd and (b) until it has exited:

  * popen+preexec_fn   subprocess.Popen(..., close_fds=True, restore_signals=True, preexec_fn=noop):
                       how jobcore.command spawned before (a full fork(), Python runs in the child)
  * fork+execve        os.fork(), in-child code (dup2, signals, close_range), os.execve, error pipe:
                       the mechanism alone
  * jobcore spawn_command  jobcore.command.spawn_command itself (fork+execve, with enter_job: no
                       namespaces, no sandbox, a cgroup handle that joins nothing)
  * popen (no preexec) subprocess.Popen without preexec_fn: vfork(), no Python in the child
  * posix_spawn        os.posix_spawn: vfork() + exec in C, no Python in the child

The last two cannot run the job's set-up (cgroup join, unshare, mounts, uid switch) between fork and
exec: they are the floor, not candidates for the shim.

Memory: for each interpreter (pyenv's 3.11, 3.12, 3.13, with jobcore from this checkout on PYTHONPATH),
a launcher-like process (jobcore.launcher imported; with and without `gc.freeze()`) forks `--children`
children of each kind, all alive at once, and reads their /proc/PID/smaps_rollup after they settle:
idle (sleeps), or spawns one /bin/true (Popen+preexec_fn, fork+execve, or jobcore's spawn_command) and
then sleeps. Private_Dirty
is what each further job costs; Pss counts shared pages divided among the sharers present.

Every process it forks is killed and reaped before it exits.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRUE = "/bin/true"


def rollup(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}


def _noop() -> None:
    pass


# ------------------------------------------------------------------------------------------- spawners


def _popen(out_w: int, preexec: bool) -> int:
    proc = subprocess.Popen(
        [TRUE],
        env={"PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        stdout=out_w,
        stderr=out_w,
        close_fds=True,
        restore_signals=True,
        preexec_fn=_noop if preexec else None,  # noqa: PLW1509 - single-threaded child, as in the shim
    )
    proc.returncode = 0  # reaped below with waitpid, like the shim does
    return proc.pid


def popen_preexec(out_w: int) -> int:
    return _popen(out_w, preexec=True)


def popen_plain(out_w: int) -> int:
    return _popen(out_w, preexec=False)


def fork_execve(out_w: int) -> int:
    error_r, error_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            os.closerange(3, error_w)
            os.closerange(error_w + 1, 1 << 20)
            os.execve(TRUE, [TRUE], {"PATH": "/usr/bin:/bin"})
        except BaseException as exc:
            os.write(error_w, str(getattr(exc, "errno", 0)).encode())
        finally:
            os._exit(127)
    os.close(error_w)
    os.close(null)
    try:
        detail = os.read(error_r, 64)
    finally:
        os.close(error_r)
    if detail:
        raise OSError(int(detail), "exec failed")
    return pid


def posix_spawn(out_w: int) -> int:
    return os.posix_spawn(
        TRUE,
        [TRUE],
        {"PATH": "/usr/bin:/bin"},
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, out_w, 2),
        ],
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
    )


class _NoCgroup:
    """A controller handle whose cgroup join does nothing (the bench has no job cgroup)."""

    def enter(self, pid: int) -> None:
        pass


def jobcore_spawn(out_w: int) -> int:
    """jobcore.command.spawn_command itself: no namespaces, no sandbox, no cgroup to join."""
    from jobcore.command import spawn_command
    from jobcore.records import SpecRecord
    from jobcore.spec import Limits

    spec = SpecRecord(
        id="bench",
        owner="bench",
        argv=(TRUE,),
        cwd="/",
        namespaces=(),
        limits=Limits(),
        controller="none",
        created_at=0.0,
        env={"PATH": "/usr/bin:/bin"},
    )
    return spawn_command(spec, _NoCgroup(), out_w, out_w).pid  # type: ignore[arg-type]


SPAWNERS: dict[str, Callable[[int], int]] = {
    "popen+preexec_fn": popen_preexec,
    "fork+execve": fork_execve,
    "jobcore spawn_command": jobcore_spawn,
    "popen (no preexec)": popen_plain,
    "posix_spawn": posix_spawn,
}


def _import_like_launcher() -> None:
    import jobcore.launcher  # noqa: F401  - what every shim inherits
    from jobcore import command, sandbox  # noqa: F401


def role_spawn(spawns: int) -> None:
    """The launcher-like process: fork a shim-like child that times every spawner; print its JSON."""
    _import_like_launcher()
    gc.freeze()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(result_r)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(out_r, False)
        times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in SPAWNERS}
        try:
            for _ in range(spawns):
                for name, spawn in SPAWNERS.items():
                    t0 = time.perf_counter()
                    child = spawn(out_w)
                    t1 = time.perf_counter()
                    os.waitpid(child, 0)
                    t2 = time.perf_counter()
                    times[name][0].append((t1 - t0) * 1e3)
                    times[name][1].append((t2 - t0) * 1e3)
            os.write(result_w, json.dumps(times).encode())
        finally:
            os._exit(0)
    os.close(result_w)
    chunks = []
    while chunk := os.read(result_r, 1 << 16):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    print(b"".join(chunks).decode())


def role_memory(children: int) -> None:
    """The launcher-like process under this interpreter: children of each kind, their smaps_rollup."""
    _import_like_launcher()
    out: dict[str, dict[str, float]] = {}
    for freeze in (False, True):
        if freeze:
            gc.freeze()
        for kind in ("idle", "popen+preexec_fn", "fork+execve", "jobcore spawn_command"):
            pids = []
            ready_r, ready_w = os.pipe()
            for _ in range(children):
                pid = os.fork()
                if pid == 0:
                    os.close(ready_r)
                    try:
                        if kind != "idle":
                            child = SPAWNERS[kind](ready_w)
                            os.waitpid(child, 0)
                        os.write(ready_w, b".")
                        while True:  # idle like a shim in its poll loop
                            time.sleep(600)
                    finally:
                        os._exit(0)
                pids.append(pid)
            os.close(ready_w)
            got = 0
            while got < children:
                chunk = os.read(ready_r, 64)
                if not chunk:
                    break
                got += len(chunk)
            os.close(ready_r)
            time.sleep(0.5)
            figs = [rollup(p) for p in pids]
            for p in pids:
                os.kill(p, signal.SIGKILL)
            for p in pids:
                os.waitpid(p, 0)
            key = f"{kind}, {'gc.freeze()' if freeze else 'no freeze'}"
            out[key] = {
                field: statistics.median(f.get(field, 0) for f in figs)
                for field in ("Pss", "Private_Dirty", "Rss")
            }
    parent = rollup(os.getpid())
    out["launcher-like parent"] = {k: float(parent.get(k, 0)) for k in ("Pss", "Private_Dirty", "Rss")}
    print(json.dumps(out))


# ---------------------------------------------------------------------------------------------- driver


def pct(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def interpreters(wanted: list[str]) -> list[tuple[str, str]]:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for version in wanted:
        matches = sorted(root.glob(f"{version}.*"), key=lambda p: [int(x) for x in p.name.split(".")])
        matches = [m for m in matches if (m / "bin" / "python3").exists()]
        if matches:
            found.append((matches[-1].name, str(matches[-1] / "bin" / "python3")))
        else:
            print(f"(no pyenv Python {version} under {root}: skipped)")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spawns", type=int, default=200, help="spawns of each candidate")
    parser.add_argument("--children", type=int, default=10, help="children of each kind (memory)")
    parser.add_argument("--pythons", default="3.11,3.12,3.13")
    parser.add_argument("--role", choices=("spawn", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "spawn":
        role_spawn(args.spawns)
        return 0
    if args.role == "memory":
        role_memory(args.children)
        return 0

    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    raw = subprocess.run(
        [sys.executable, __file__, "--role", "spawn", "--spawns", str(args.spawns)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    times = json.loads(raw)
    base = pct(times["popen+preexec_fn"][0])[0]
    print(
        f"\nspawning /bin/true from a shim-like process (Python {sys.version.split()[0]}, jobcore imported, "
        f"gc.freeze(), forked), {args.spawns} each, interleaved; ms"
    )
    print(f"{'candidate':22} {'until exec p50 / p95':>22} {'until exit p50 / p95':>22}  vs popen+preexec_fn")
    for name, (spawned, exited) in times.items():
        s, e = pct(spawned), pct(exited)
        print(f"{name:22} {s[0]:10.2f} / {s[1]:7.2f}  {e[0]:10.2f} / {e[1]:7.2f}   {s[0] / base:6.2f}x")

    site = subprocess.run(
        [sys.executable, "-c", "import attrs, os; print(os.path.dirname(os.path.dirname(attrs.__file__)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = os.pathsep.join([str(REPO / "packages" / "jobcore" / "src"), site])
    print(
        f"\nan idle shim-like child forked from a launcher-like process, median of {args.children} "
        "alive at once, kB"
    )
    print(f"{'python':8} {'child':36} {'Private_Dirty':>13} {'Pss':>7} {'Rss':>7}")
    for version, exe in interpreters(args.pythons.split(",")):
        proc = subprocess.run(
            [exe, __file__, "--role", "memory", "--children", str(args.children)],
            capture_output=True,
            text=True,
            check=False,
            env=dict(os.environ, PYTHONPATH=path),
        )
        if proc.returncode != 0:
            print(f"{version:8} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        for kind, fig in json.loads(proc.stdout).items():
            print(f"{version:8} {kind:36} {fig['Private_Dirty']:13.0f} {fig['Pss']:7.0f} {fig['Rss']:7.0f}")
    print(f"\nload average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
