"""The job sandbox through the real server: alice's job, with default options, as a hostile user's.

Issue 11's list: each attack runs inside alice's job against bob's running job and the server, and
the test checks the effect on the host (the file unchanged, bob's job alive and unfrozen, the
hostname the same...), not only an exit code. The server's state directory is under /var/lib, as
in production (a state directory under /tmp would be hidden by the private /tmp alone).
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import (
    CERTS,
    ServerProcess,
    assert_one_line_diagnostic,
    cgroup_dirs_of,
    jobctl,
    process_start_ticks,
    wait_for,
)
from support import is_running, server_command

from jobclient import Client, Credentials, Isolation, Job, JobState, Limits
from jobclient.errors import PermissionDenied

#: Made at run time, so that no file on the disk (this one included) holds them.
BOB_SECRET = "bob-secret-" + secrets.token_hex(8)
BOB_MARKER = "bob-output-" + secrets.token_hex(8)
#: The server's default uid range (docs/sandbox.md).
UID_RANGE = range(500000, 600000)


@pytest.fixture
def var_lib() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jobworker-e2e-", dir="/var/lib"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(var_lib: Path, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    # var_lib first: set up before start_server, so torn down after it (the servers' jobs are stopped
    # while their state directory still exists)
    return start_server(state_dir=var_lib / "state")


def client(server: ServerProcess, user: str) -> Client:
    return Client(server.target, credentials=Credentials.for_user(user), timeout=60)


def run_as(server: ServerProcess, user: str, script: str, **kwargs: object) -> tuple[str, Job]:
    out = io.BytesIO()
    with client(server, user) as c:
        job = c.run(["sh", "-c", script], out=out, **kwargs)  # type: ignore[arg-type]
    assert job.state is not JobState.FAILED_TO_START, job.reason
    return out.getvalue().decode(errors="replace"), job


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[Job]:
    """Bob's job: prints a marker, then a line a second, with a secret in its environment."""
    with client(server, "bob") as c:
        job = c.start(
            ["sh", "-c", f"echo {BOB_MARKER}; while :; do echo tick; sleep 0.2; done"],
            env={"BOB_SECRET": BOB_SECRET},
        )
        assert wait_for(lambda: c.status(job.id).output_bytes > 0, 30)
        yield job


def assert_bob_unharmed(server: ServerProcess, job: Job) -> None:
    """Bob's job still runs, is not frozen (its output grows) and still belongs to bob."""
    with client(server, "bob") as c:
        before = c.status(job.id)
        assert before.state is JobState.RUNNING
        assert wait_for(lambda: c.status(job.id).output_bytes > before.output_bytes, 10), "bob's job froze"
        assert job.id in {j.id for j in c.list()}
    with client(server, "alice") as c:
        assert job.id not in {j.id for j in c.list()}


def test_alices_job_runs_as_her_own_unprivileged_uid(server: ServerProcess) -> None:
    out, job = run_as(server, "alice", "id -u; id -g; id -G")
    uid = int(out.split()[0])
    assert uid != 0 and uid in UID_RANGE
    assert out.split() == [str(uid)] * 3
    assert (job.uid, job.gid, job.sandboxed) == (uid, uid, True)
    # Another identity gets another uid; the same identity keeps its uid.
    bob_out, _ = run_as(server, "bob", "id -u")
    assert int(bob_out) != uid
    again, _ = run_as(server, "alice", "id -u")
    assert int(again) == uid


def test_the_server_and_ca_keys_cannot_be_read(server: ServerProcess) -> None:
    out, _ = run_as(server, "alice", f"cat {CERTS}/server.key {CERTS}/ca.key {CERTS}/bob.key 2>&1; echo end")
    assert "PRIVATE KEY" not in out and out.endswith("end\n")
    assert out.count("No such file or directory") == 3  # the whole certs/ directory is hidden


def test_bobs_output_and_environment_cannot_be_found(server: ServerProcess, bob: Job) -> None:
    state = server.state_dir
    script = (
        f"ls -A {state} {state}/jobs 2>&1; "
        f"cat {state}/jobs/{bob.id}/spec.json {state}/jobs/{bob.id}/output 2>&1; "
        f"grep -rs -e {BOB_SECRET} -e {BOB_MARKER} /var /run /tmp /home /srv /root 2>/dev/null | head -3; "
        f"cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c BOB_SECRET; echo end"
    )
    out, _ = run_as(server, "alice", script)
    assert BOB_SECRET not in out and BOB_MARKER not in out
    assert out.endswith("0\nend\n")
    assert_bob_unharmed(server, bob)


def test_nothing_in_the_state_directory_can_be_written(server: ServerProcess, bob: Job) -> None:
    state = server.state_dir
    db = state / "jobserver.db"
    script = (
        f"touch {state}/pwned {state}/jobs/pwned 2>&1; "
        f"sqlite3 {db} \"update jobs set owner='alice'\" 2>&1; "
        f"python3 -c \"import sqlite3; c = sqlite3.connect('{db}'); "
        'c.execute(\\"update jobs set owner=\'alice\'\\")" 2>&1 | tail -1; echo end'
    )
    out, _ = run_as(server, "alice", script)
    assert out.endswith("end\n")
    assert not (state / "pwned").exists() and not (state / "jobs" / "pwned").exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT owner FROM jobs WHERE id = ?", (bob.id,)).fetchone() == ("bob",)
    assert_bob_unharmed(server, bob)
    assert os.stat(state).st_mode & 0o777 == 0o700 and os.stat(state).st_uid == 0


def test_pid_1_leads_nowhere_outside_the_job(server: ServerProcess) -> None:
    host_ns = {os.readlink(f"/proc/self/ns/{ns}") for ns in ("mnt", "net", "uts", "ipc", "pid")}
    script = (
        "for ns in mnt net uts ipc pid; do readlink /proc/1/ns/$ns; readlink /proc/self/ns/$ns; done; "
        "ls /proc/1/root/ 2>&1 | head -2; readlink /proc/1/root; cat /proc/1/environ 2>&1; "
        "nsenter --net=/proc/1/ns/net true 2>&1 || echo nsenter-net-refused; "
        "nsenter --uts=/proc/1/ns/uts hostname pwned 2>&1 || echo nsenter-uts-refused; "
        "kill -9 1 2>&1; kill -TERM 1 2>&1 || echo kill-refused; echo end"
    )
    out, job = run_as(server, "alice", script)
    assert not any(ns in out for ns in host_ns), out  # only the job's own namespaces are visible
    assert "nsenter-net-refused" in out and "nsenter-uts-refused" in out and "kill-refused" in out
    assert "No such file or directory" in out and out.endswith("end\n")  # PID 1 is invisible (hidepid)
    assert job.state is JobState.EXITED and job.exit_code == 0


def test_the_host_cannot_be_renamed(server: ServerProcess) -> None:
    name = socket.gethostname()
    out, _ = run_as(server, "alice", "hostname pwned 2>&1; hostname")
    assert "pwned" not in out.splitlines()[-1]
    assert socket.gethostname() == name


def test_no_cgroup_control_file_can_be_written(server: ServerProcess, bob: Job) -> None:
    freezers = [d for d in cgroup_dirs_of([bob.id]) if "/freezer/" in d]
    targets = [f"{d}/freezer.state" for d in freezers] + [
        f"{d}/cgroup.procs" for d in cgroup_dirs_of([bob.id])
    ]
    script = (
        "for f in " + " ".join(targets) + " $(find /sys/fs/cgroup \\( -name cgroup.procs -o -name tasks "
        "-o -name freezer.state -o -name cgroup.freeze \\) 2>/dev/null); do "
        'echo FROZEN 2>/dev/null > "$f" && echo "WROTE $f"; echo $$ 2>/dev/null > "$f" && echo "WROTE $f"; '
        "done; echo end"
    )
    out, _ = run_as(server, "alice", script)
    assert "WROTE" not in out and out.endswith("end\n")
    for freezer in freezers:
        assert Path(f"{freezer}/freezer.state").read_text().strip() == "THAWED"
    assert_bob_unharmed(server, bob)


def test_bobs_job_and_the_server_cannot_be_signalled(server: ServerProcess, bob: Job) -> None:
    bob_pid = bob.pid
    assert bob_pid is not None
    script = f"kill -9 {bob_pid} {server.pid} 2>&1; kill -9 -1 2>&1; echo end"
    with client(server, "alice") as c:
        job = c.start(["sh", "-c", script])
        final = c.wait(job.id, out=io.BytesIO())
    assert final.state in (JobState.EXITED, JobState.KILLED)  # kill -1 may take the job's own shell
    assert server.running
    assert_bob_unharmed(server, bob)


def test_isolation_opt_outs_are_refused_for_users_and_allowed_for_admins(server: ServerProcess) -> None:
    weakenings = [
        Isolation(pid=False),
        Isolation(net=False),
        Isolation(mount=False, sandbox=False),
        Isolation(uts=False),
        Isolation(ipc=False),
        Isolation(sandbox=False),
        Isolation(run_as_root=True),
    ]
    with client(server, "alice") as c:
        for isolation in weakenings:
            with pytest.raises(PermissionDenied, match="may not ask for"):
                c.start(["true"], isolation=isolation)
        assert c.list() == []  # nothing was started
    out, job = run_as(server, "carl", "id -u", isolation=Isolation(run_as_root=True))
    assert out == "0\n" and job.uid == 0


def test_jobctl_no_pid_ns_is_refused_with_one_clear_line(server: ServerProcess) -> None:
    result = jobctl(server.target, "alice", "run", "--no-pid-ns", "--", "true")
    assert result.returncode != 0
    assert_one_line_diagnostic(result.stderr, "disable_pid")


def test_with_no_pid_ns_allowed_alice_still_cannot_signal_bob(
    var_lib: Path, start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    config = tmp_path / "server.toml"
    config.write_text('[roles.user]\nallow = ["disable_pid"]\n')
    server = start_server("--config", str(config), state_dir=var_lib / "state2")
    with client(server, "bob") as c:
        bob = c.start(["sh", "-c", "while :; do echo tick; sleep 0.2; done"])
    out, _ = run_as(
        server,
        "alice",
        f"kill -9 {bob.pid} {server.pid} 2>&1; cat {config} 2>&1; echo end",
        isolation=Isolation(pid=False),
    )
    assert "Operation not permitted" in out and "[roles.user]" not in out
    assert server.running
    assert_bob_unharmed(server, bob)


def test_a_copied_setuid_or_file_capability_binary_gives_no_root(
    server: ServerProcess, var_lib: Path
) -> None:
    tools = var_lib / "tools"
    tools.mkdir()
    os.chmod(var_lib, 0o755)
    shutil.copy("/usr/bin/id", tools / "id-suid")
    os.chmod(tools / "id-suid", 0o4755)
    shutil.copy(os.path.realpath("/usr/bin/python3"), tools / "py-caps")
    caps = subprocess.run(["setcap", "cap_setuid+ep", str(tools / "py-caps")], check=False).returncode == 0
    script = f"{tools}/id-suid -u; su -c id root </dev/null 2>&1 | tail -1; "
    if caps:
        script += f"{tools}/py-caps -c 'import os; os.setuid(0); print(\"ROOT\")' 2>&1 | tail -1"
    out, job = run_as(server, "alice", script)
    lines = out.splitlines()
    assert lines[0] == str(job.uid) and "uid=0" not in out and "ROOT" not in out
    if caps:
        assert "PermissionError" in lines[-1]


def test_output_limits_stop_and_restart_still_work_in_the_sandbox(server: ServerProcess) -> None:
    with client(server, "alice") as c:
        # stress's memory limit bites: the OOM killer ends it.
        job = c.run(
            ["stress", "--vm", "1", "--vm-bytes", "256M", "--vm-hang", "0", "--timeout", "30"],
            limits=Limits(memory=64 << 20),
            out=io.BytesIO(),
        )
        assert job.oom_killed, job
        # stop kills a daemonized child, and nothing of alice's uid is left.
        daemon = c.start(["sh", "-c", "setsid sh -c 'sleep 300' & echo up; sleep 300"])
        assert wait_for(lambda: c.status(daemon.id).output_bytes > 0, 30)
        members = processes_in_cgroups_of(daemon.id)
        assert len(members) >= 3, members  # sh, the daemon's sh and its sleep (at least)
        stopped = c.stop(daemon.id, grace=0)
        assert stopped.state is JobState.KILLED
        assert wait_for(lambda: not any(is_running(p, t) for p, t in members), 10)
        long = c.start(["sh", "-c", "echo before; sleep 3; echo after; sleep 300"])
    server.terminate()
    server.restart()
    with client(server, "alice") as c:
        assert wait_for(lambda: c.status(long.id).output_bytes >= len(b"before\nafter\n"), 30)
        again = c.status(long.id)
        assert again.state is JobState.RUNNING and again.uid == long.uid
        assert b"".join(c.output(long.id, follow=False)) == b"before\nafter\n"
        c.stop(long.id, grace=0)
        out = io.BytesIO()
        assert c.run(["id", "-u"], out=out).exit_code == 0
        assert int(out.getvalue()) == long.uid  # the uid was remembered across the restart


def processes_in_cgroups_of(job_id: str) -> list[tuple[int, int | None]]:
    """(pid, start ticks) of every process whose cgroup path names the job."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if job_id in (entry / "cgroup").read_text():
                    found.append((int(entry.name), process_start_ticks(int(entry.name))))
            except OSError:
                continue
    return found


def test_the_server_refuses_a_private_key_others_may_read(tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    shutil.copy(CERTS / "server.key", key)
    os.chmod(key, 0o644)
    result = subprocess.run(
        server_command(tmp_path / "state", key=key), capture_output=True, timeout=60, check=False
    )
    assert result.returncode != 0
    text = result.stderr.decode()
    assert f"chmod 600 {key}" in text and "readable by group or others" in text
    diagnostics = [line for line in text.splitlines() if line.startswith("jobserver: error:")]
    assert len(diagnostics) == 1 and "chmod 600" in diagnostics[0], text
    assert not (tmp_path / "state").exists()
