"""The job sandbox at the library's level: a job as a boundary (docs/sandbox.md).

Each test runs a real job and checks the effect on the host, not only the command's exit code.
Runs here on cgroup1 and in the VM suite on cgroup2.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from jobcore_testing import CONTROLLER, requires_root

from jobcore import Isolation, JobSpec, JobState, RunAs, Worker
from jobcore.errors import InvalidSpec

pytestmark = requires_root

#: An unprivileged uid no account of this host uses (the server's default range starts here).
JOB_UID = 500123


def run(worker: Worker, argv: list[str], **kwargs: object) -> tuple[str, object]:
    status = worker.start(JobSpec(argv, **kwargs))  # type: ignore[arg-type]
    out = b"".join(worker.output(status.id)).decode(errors="replace")
    final = worker.wait(status.id, timeout=60)
    assert final.state is not JobState.FAILED_TO_START, final.reason
    return out, final


def sh(worker: Worker, script: str, **kwargs: object) -> tuple[str, object]:
    return run(worker, ["sh", "-c", script], **kwargs)


AS_USER = RunAs(JOB_UID, JOB_UID)


def test_the_job_runs_as_the_given_uid_with_no_groups_and_the_status_says_so(worker: Worker) -> None:
    out, status = sh(worker, "id -u; id -g; id -G", user=AS_USER)
    assert out.split() == [str(JOB_UID)] * 3  # no supplementary group besides its own gid
    assert (status.uid, status.gid, status.sandboxed) == (JOB_UID, JOB_UID, True)  # type: ignore[attr-defined]


def test_without_a_user_the_job_runs_as_the_worker_but_with_no_capability(worker: Worker) -> None:
    out, status = sh(worker, "id -u; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)|^NoNewPrivs' /proc/self/status")
    lines = out.splitlines()
    assert lines[0] == "0" and status.uid == 0  # type: ignore[attr-defined]
    caps = dict(line.split(":\t") for line in lines[1:])
    assert caps == {
        "CapInh": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapBnd": "0000000000000000",
        "CapAmb": "0000000000000000",
        "NoNewPrivs": "1",
    }


def test_core_dumps_are_off(worker: Worker) -> None:
    out, _ = sh(worker, "ulimit -c; ulimit -H -c", user=AS_USER)
    assert out.split() == ["0", "0"]


def test_the_hosts_filesystem_is_read_only(worker: Worker, tmp_path: Path) -> None:
    # Even for uid 0: the mounts themselves are read-only, not just the permissions.
    marker = Path("/var/lib") / f"jobcore-sandbox-test-{os.getpid()}"
    out, _ = sh(worker, f"touch {marker} 2>&1; echo x >> /etc/hostname 2>&1; echo done")
    assert "Read-only file system" in out and "done\n" in out
    assert not marker.exists()
    assert not Path("/etc/hostname").read_text().endswith("x\n")


def test_tmp_is_private_to_each_job_and_writable(worker: Worker, tmp_path: Path) -> None:
    host_file = tmp_path / "host-secret"
    host_file.write_text("the host's /tmp")
    out, _ = sh(worker, f"cat {host_file} 2>&1; echo mine > /tmp/f && cat /tmp/f; ls -A /tmp", user=AS_USER)
    assert "the host's /tmp" not in out and "No such file" in out
    assert "mine\nf\n" in out
    out2, _ = sh(worker, "cat /tmp/f 2>&1 || echo absent", user=AS_USER)
    assert out2.strip().endswith("absent")  # the next job's /tmp is its own


def test_the_scratch_directory_is_the_default_cwd_writable_and_owned_by_the_job(worker: Worker) -> None:
    out, status = sh(worker, "pwd; echo data > f; stat -c %u f", user=AS_USER)
    cwd = Path(status.cwd)  # type: ignore[attr-defined]
    assert out.splitlines() == [str(cwd), str(JOB_UID)]
    assert cwd.parent.parent == worker.state_dir  # <state>/<job id>/work
    assert (cwd / "f").read_text() == "data\n"
    assert cwd.stat().st_uid == JOB_UID and cwd.stat().st_mode & 0o777 == 0o700


def test_an_explicit_cwd_is_writable_where_its_user_may_write(worker: Worker, tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    os.chown(work, JOB_UID, JOB_UID)
    out, _ = sh(worker, "pwd; echo built > out.txt && echo ok", cwd=str(work), user=AS_USER)
    assert out.splitlines() == [str(work), "ok"]
    assert (work / "out.txt").read_text() == "built\n"
    # ...and only there: the parent (root's, under the host's /tmp) is not even visible.
    assert not (tmp_path / "out.txt").exists()


def test_the_state_directory_and_hidden_paths_are_inaccessible(tmp_path: Path) -> None:
    # A state directory outside /tmp (the private /tmp would hide it anyway), like /var/lib/jobworker.
    base = Path(tempfile_dir())
    try:
        secret = base / "server.key"
        secret.write_text("PRIVATE KEY")
        secret_dir = base / "config"
        secret_dir.mkdir()
        (secret_dir / "server.toml").write_text("secret config")
        with Worker(base / "jobs", controller=CONTROLLER, hidden_paths=[secret, secret_dir]) as worker:
            _, first = sh(worker, "echo first job output; sleep 0")
            script = (
                f"cat {secret} 2>&1; cat {secret_dir}/server.toml 2>&1; "
                f"cat {base}/jobs/{first.id}/output 2>&1; "  # type: ignore[attr-defined]
                f"echo pwned > {secret} 2>&1; touch {base}/jobs/new 2>&1; echo end"
            )
            for user in (AS_USER, None):  # also uid 0 without capabilities
                out, _ = sh(worker, script, user=user)
                assert "PRIVATE KEY" not in out and "secret config" not in out
                assert "first job output" not in out
                assert "end\n" in out
                listing, _ = sh(worker, f"ls -A {base}/jobs {base} 2>/dev/null; echo", user=user)
                assert first.id not in listing  # type: ignore[attr-defined]
            assert secret.read_text() == "PRIVATE KEY"
            assert not (base / "jobs" / "new").exists()
            assert (base / "jobs").stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(base, ignore_errors=True)


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="jobcore-sandbox-", dir="/var/lib")


def test_cwd_tmp_is_the_jobs_private_tmp(worker: Worker, tmp_path: Path) -> None:
    out, _ = sh(worker, f"pwd; ls -A; ls {tmp_path} 2>&1 | head -1", cwd="/tmp", user=AS_USER)
    assert out.splitlines()[:2] == ["/tmp", f"ls: cannot access '{tmp_path}': No such file or directory"]


def test_pid_1_shows_nothing_of_the_hosts_network_or_mounts(worker: Worker) -> None:
    host_mounts = Path("/proc/self/mountinfo").read_text()
    for user in (AS_USER, None):
        out, _ = sh(
            worker, "cat /proc/1/net/tcp /proc/1/net/unix /proc/1/mountinfo 2>&1; echo end", user=user
        )
        assert "local_address" not in out and "Inode" not in out, out  # the tables' header lines
        assert not any(line in out for line in host_mounts.splitlines()[:3])


@pytest.mark.parametrize("cwd", ["/.", "//", "/proc/self/cwd", "/var/..", "/tmp/.."])
def test_no_spelling_of_root_as_cwd_makes_the_host_writable(worker: Worker, cwd: str) -> None:
    marker = Path("/var/lib") / f"jobcore-cwd-test-{os.getpid()}"
    for user in (AS_USER, None):
        try:
            status = worker.start(JobSpec(["sh", "-c", f"touch {marker} 2>&1; pwd"], cwd=cwd, user=user))
        except InvalidSpec as exc:
            assert "/proc" in str(exc)  # /proc/self/cwd: refused outright
            continue
        worker.wait(status.id, timeout=30)
        out = b"".join(worker.output(status.id)).decode()
        assert "Read-only file system" in out, out
        assert not marker.exists()


def test_cwd_on_the_hosts_dev_shm_or_proc_is_refused_or_private(worker: Worker) -> None:
    leak = Path("/dev/shm") / f"jobcore-cwd-test-{os.getpid()}"
    out, _ = sh(worker, f"pwd; echo x > {leak.name} && echo wrote", cwd="/dev/shm/", user=AS_USER)
    assert out.splitlines() == ["/dev/shm", "wrote"]  # the job's own /dev/shm...
    assert not leak.exists()  # ...not the host's
    for cwd in ("/proc/self/fd", "/proc/sys", "/sys/fs/cgroup", "/dev"):
        with pytest.raises(InvalidSpec, match="give a directory of a real file system"):
            worker.start(JobSpec(["true"], cwd=cwd, user=AS_USER))


def test_uid_0_gets_its_explicit_cwd_read_only(worker: Worker, tmp_path: Path) -> None:
    out, _ = sh(worker, "touch f 2>&1; echo x > /tmp/t && echo tmp-ok", cwd=str(tmp_path))
    assert "Read-only file system" in out and "tmp-ok" in out
    assert not (tmp_path / "f").exists()


def test_a_cwd_inside_a_hidden_path_is_refused(worker: Worker) -> None:
    with pytest.raises(InvalidSpec, match="which jobs may not see"):
        worker.start(JobSpec(["true"], cwd=str(worker.state_dir)))


def test_a_cwd_swapped_for_a_symlink_into_a_hidden_path_after_the_check_is_refused(
    worker: Worker, tmp_path: Path
) -> None:
    # The job's user owns its directory and may replace it by a symlink between the Worker's check
    # and the bind: the shim checks what it opened. (Simulated: the check is passed, then swapped.)
    work = tmp_path / "mine"
    work.mkdir()
    original = worker._sandbox_cwd  # the one way to land the swap inside the race window

    def check_then_swap(cwd: str) -> str:
        checked = original(cwd)
        work.rmdir()
        work.symlink_to(worker.state_dir)
        return checked

    worker._sandbox_cwd = check_then_swap  # type: ignore[method-assign]
    status = worker.start(JobSpec(["ls", "-A"], cwd=str(work), user=AS_USER))
    assert status.state is JobState.FAILED_TO_START
    assert status.reason is not None and "it changed since the job was started" in status.reason


def test_the_sandbox_works_without_cgroups(tmp_path: Path) -> None:
    with Worker(tmp_path / "state", controller="none") as worker:
        out, status = sh(worker, "id -u; touch /etc/x 2>&1", user=AS_USER)
        assert out.splitlines() == [str(JOB_UID), "touch: cannot touch '/etc/x': Read-only file system"]
        assert status.sandboxed  # type: ignore[attr-defined]


def test_pid_1_is_no_door_to_the_host(worker: Worker) -> None:
    script = (
        "ls /proc/1/root/ 2>&1 | head -3; cat /proc/1/environ 2>&1; "
        "for ns in mnt net uts ipc; do readlink /proc/1/ns/$ns 2>&1; done; "
        "nsenter --net=/proc/1/ns/net true 2>&1 || echo nsenter-refused; "
        "kill -TERM 1 2>&1 || echo kill-refused; echo end"
    )
    for user in (AS_USER, None):
        out, status = sh(worker, script, user=user)
        # invisible (hidepid) to another uid; unreadable (non-dumpable) to uid 0 without capabilities
        assert out.count("Permission denied") + out.count("No such file or directory") >= 3, out
        assert "nsenter-refused" in out
        # uid 0 may signal the job's init, which only passes the signal on to the job's command
        assert "kill-refused" in out or user is None
        host_ns = {os.readlink(f"/proc/self/ns/{ns}") for ns in ("mnt", "net", "uts", "ipc")}
        assert not any(ns in out for ns in host_ns)
        # uid 0's SIGTERM to its init comes back to the job's own command, and may end it first
        assert status.state is JobState.EXITED or user is None  # type: ignore[attr-defined]


def test_the_host_cannot_be_renamed_and_cgroup_files_cannot_be_written(worker: Worker) -> None:
    host_name = socket.gethostname()
    # With the host's network the job sees the host's /sys, cgroups included (read-only).
    script = (
        "hostname pwned 2>&1; "
        "for f in $(find /sys/fs/cgroup -maxdepth 3 \\( -name cgroup.procs -o -name tasks "
        "-o -name freezer.state -o -name cgroup.freeze \\) 2>/dev/null); do "
        'echo $$ 2>/dev/null > "$f" && echo "WROTE $f"; done; echo end'
    )
    out, _ = sh(worker, script, user=AS_USER, isolation=Isolation(net=False))
    assert "WROTE" not in out and out.endswith("end\n")
    out, _ = sh(worker, script, isolation=Isolation(net=False))  # uid 0 without capabilities
    assert "WROTE" not in out and out.endswith("end\n")
    assert socket.gethostname() == host_name


def test_a_set_uid_binary_or_file_capability_gives_nothing_back(worker: Worker, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    suid = tools / "id-suid"
    shutil.copy("/usr/bin/id", suid)
    os.chmod(suid, 0o4755)  # set-uid root
    capped = tools / "python-setuid"
    shutil.copy(os.path.realpath("/usr/bin/python3"), capped)  # the system's: no libraries under /root
    has_file_caps = (
        subprocess.run(["setcap", "cap_setuid+ep", str(capped)], check=False, capture_output=True).returncode
        == 0
    )
    script = f"{suid} -u; "
    if has_file_caps:
        script += f"{capped} -c 'import os; os.setuid(0); print(\"became root\")' 2>&1 | tail -1; "
    out, _ = sh(worker, script, cwd=str(tools), user=AS_USER)
    lines = out.splitlines()
    assert lines[0] == str(JOB_UID)  # not 0: nosuid and no_new_privs
    if has_file_caps:
        assert "became root" not in out and "PermissionError" in out


def test_the_job_sees_a_minimal_dev(worker: Worker) -> None:
    out, _ = sh(worker, "ls /dev; echo x > /dev/null && head -c 4 /dev/zero | wc -c", user=AS_USER)
    names = set(out.split())
    assert {"null", "zero", "urandom", "shm"} <= names
    assert not any(n.startswith(("sd", "vd", "nvme", "mem", "kmsg")) for n in names)
    assert out.rstrip().endswith("4")


def test_the_sandbox_needs_a_mount_namespace() -> None:
    with pytest.raises(InvalidSpec, match="the sandbox needs a mount namespace"):
        Isolation(mount=False)
    assert Isolation(mount=False, sandbox=False).enabled() == ("pid", "net", "uts", "ipc")


def test_run_as_rejects_bad_ids() -> None:
    assert RunAs.parse("1000") == RunAs(1000, 1000)
    assert RunAs.parse("1000:50") == RunAs(1000, 50)
    for bad in ("-1", "x", "1:y", str(2**32)):
        with pytest.raises(InvalidSpec):
            RunAs.parse(bad)


def test_without_the_sandbox_a_user_switch_still_applies(worker: Worker) -> None:
    out, status = sh(worker, "id -u; touch /tmp/jobcore-nosandbox-$$ 2>&1 && echo wrote", user=AS_USER,
                     isolation=Isolation(sandbox=False))  # fmt: skip
    assert out.splitlines()[0] == str(JOB_UID)
    assert status.sandboxed is False and status.cwd == "/"  # type: ignore[attr-defined]
    subprocess.run("rm -f /tmp/jobcore-nosandbox-*", shell=True, check=False)


def test_the_sandbox_keeps_limits_and_stop(worker: Worker) -> None:
    # A daemonized child of a sandboxed job still dies with the stop.
    status = worker.start(JobSpec(["sh", "-c", "setsid sleep 300 & echo started; sleep 300"], user=AS_USER))
    assert next(worker.output(status.id)) == b"started\n"
    final = worker.stop(status.id, grace=0)
    assert final.state is JobState.KILLED
    leftover = subprocess.run(
        ["pgrep", "-u", str(JOB_UID)], check=False, capture_output=True, text=True
    ).stdout
    assert leftover == ""
