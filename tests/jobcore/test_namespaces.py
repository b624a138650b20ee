"""Every job gets its own PID, mount, network, UTS and IPC namespaces, with our init as PID 1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from jobcore_testing import JOB_PYTHON, requires_root, wait_until

from jobcore import Isolation, JobSpec, JobState, Worker

pytestmark = requires_root


def run(worker: Worker, argv: list[str], **kwargs: object) -> tuple[bytes, object]:
    status = worker.start(JobSpec(argv, **kwargs))  # type: ignore[arg-type]
    out = b"".join(worker.output(status.id))
    return out, worker.wait(status.id, timeout=30)


def test_status_reports_the_namespaces_the_job_got(worker: Worker) -> None:
    _, status = run(worker, ["true"])
    assert status.namespaces == ("pid", "mount", "net", "uts", "ipc")  # type: ignore[attr-defined]
    _, status = run(worker, ["true"], isolation=Isolation(net=False, ipc=False))
    assert status.namespaces == ("pid", "mount", "uts")  # type: ignore[attr-defined]


def test_ps_inside_lists_only_the_jobs_processes_with_the_init_as_pid_1(worker: Worker) -> None:
    out, _ = run(worker, ["ps", "-e", "-o", "pid=,comm="], isolation=Isolation(sandbox=False))
    rows = [line.split(None, 1) for line in out.decode().strip().splitlines()]
    pids = [int(pid) for pid, _ in rows]
    assert pids[0] == 1
    assert len(rows) <= 3, rows  # the init, (sh,) ps: nothing of the host
    assert max(pids) < 10


def test_in_the_sandbox_ps_lists_the_jobs_processes_but_not_its_init(worker: Worker) -> None:
    # hidepid: the init (root, non-dumpable) is invisible; its /proc/1/net would show the host's
    out, _ = run(worker, ["ps", "-e", "-o", "pid=,comm="])
    rows = [line.split(None, 1) for line in out.decode().strip().splitlines()]
    pids = [int(pid) for pid, _ in rows]
    assert 1 not in pids and rows, rows
    assert len(rows) <= 2, rows  # (sh,) ps: nothing of the host
    assert max(pids) < 10


def test_the_job_sees_its_namespaced_pid(worker: Worker) -> None:
    out, status = run(worker, ["sh", "-c", "grep -E '^(Pid|NSpid):' /proc/self/status"])
    fields = dict(line.split(":", 1) for line in out.decode().splitlines())
    assert int(fields["Pid"]) < 10
    assert status.pid is not None and status.pid > 1  # type: ignore[attr-defined]


def test_hostname_is_the_job_id(worker: Worker) -> None:
    out, status = run(worker, ["hostname"])
    assert out.decode().strip() == status.id  # type: ignore[attr-defined]
    assert socket.gethostname() != status.id  # type: ignore[attr-defined]


def test_network_has_only_loopback_and_it_is_up(worker: Worker) -> None:
    out, _ = run(
        worker, ["sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags"]
    )
    lines = out.decode().split()
    assert lines[0] == "lo" and len(lines) == 3, lines
    assert int(lines[2], 16) & 0x1, "lo is not UP"


def test_a_tcp_server_and_client_work_on_loopback_inside(worker: Worker) -> None:
    script = (
        "import socket\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "c = socket.create_connection(s.getsockname(), timeout=5); a, _ = s.accept()\n"
        "c.sendall(b'ping'); print(a.recv(4).decode())\n"
    )
    out, status = run(worker, [JOB_PYTHON, "-c", script])
    assert status.exit_code == 0, out  # type: ignore[attr-defined]
    assert out == b"ping\n"


def test_there_is_no_route_out(worker: Worker) -> None:
    # An address of this host (not loopback) is unreachable from inside: there is no interface for it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
            host_ip = probe.getsockname()[0]
        except OSError:
            pytest.skip("this host has no non-loopback IPv4 address to try")
    listener = socket.create_server((host_ip, 0))
    try:
        port = listener.getsockname()[1]
        script = (
            "import socket\ntry:\n"
            f" socket.create_connection(('{host_ip}', {port}), timeout=3)\n print('connected')\n"
            "except OSError as e:\n print('refused', e.errno)\n"
        )
        out, _ = run(worker, [JOB_PYTHON, "-c", script])
        assert out.startswith(b"refused"), out
        # The same connection from the host network works (so the test can tell the difference).
        out, _ = run(worker, [JOB_PYTHON, "-c", script], isolation=Isolation(net=False))
        assert out == b"connected\n"
    finally:
        listener.close()


def test_host_network_option_shares_the_hosts_interfaces(worker: Worker) -> None:
    out, _ = run(worker, ["ls", "/sys/class/net"], isolation=Isolation(net=False))
    assert sorted(out.decode().split()) == sorted(os.listdir("/sys/class/net"))


def test_a_mount_made_inside_is_not_visible_on_the_host(worker: Worker, tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    out, status = run(  # without the sandbox: the job keeps root's capabilities, so it may mount
        worker,
        ["sh", "-c", f"mount -t tmpfs none {target} && touch {target}/inside && ls {target}"],
        isolation=Isolation(sandbox=False),
    )
    assert status.exit_code == 0, out  # type: ignore[attr-defined]
    assert out == b"inside\n"
    assert not (target / "inside").exists()
    assert str(target) not in Path("/proc/self/mounts").read_text()


def test_ipc_namespace_is_private(worker: Worker) -> None:
    out, _ = run(worker, ["sh", "-c", "readlink /proc/self/ns/ipc"])
    assert out.strip() != os.readlink("/proc/self/ns/ipc").encode()


def test_an_orphaned_grandchild_is_reaped_while_the_job_runs(worker: Worker) -> None:
    # The grandchild is orphaned (its parent exits) and then exits itself: the init must reap it, so
    # no zombie remains while the job goes on.
    script = (
        "sh -c 'sleep 0.2 &' ; sleep 1; "
        "for s in /proc/[0-9]*/stat; do cut -d' ' -f3 $s; done | grep -c Z || true"
    )
    out, status = run(worker, ["sh", "-c", script])
    assert status.exit_code == 0  # type: ignore[attr-defined]
    assert out.strip() == b"0"


def test_init_exits_with_128_plus_n_and_the_status_names_the_signal(worker: Worker) -> None:
    _, status = run(worker, ["sh", "-c", "kill -USR1 $$"])
    assert status.state is JobState.KILLED  # type: ignore[attr-defined]
    assert status.signal == 10  # type: ignore[attr-defined]
    assert status.shell_exit_code == 138  # type: ignore[attr-defined]


@pytest.mark.parametrize("off", ["pid", "mount", "net", "uts", "ipc"])
def test_each_namespace_can_be_turned_off(worker: Worker, off: str) -> None:
    isolation = Isolation(**{off: False}, sandbox=off != "mount")  # the sandbox needs mount
    out, status = run(
        worker, ["readlink", f"/proc/self/ns/{'mnt' if off == 'mount' else off}"], isolation=isolation
    )
    assert status.exit_code == 0  # type: ignore[attr-defined]
    assert off not in status.namespaces  # type: ignore[attr-defined]
    host = os.readlink(f"/proc/self/ns/{'mnt' if off == 'mount' else off}")
    assert out.decode().strip() == host


REFUSED = r"""
import sys
from jobcore import Worker, JobSpec, Isolation
with Worker(sys.argv[1], controller="none") as w:
    s = w.start(JobSpec(["true"]))
    print(s.state.value, "|", s.reason)
    s = w.start(JobSpec(["true"], isolation=Isolation.none()))
    w.wait(s.id)
    print(w.status(s.id).state.value, w.status(s.id).exit_code)
"""


@pytest.mark.skipif(
    shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop CAP_SYS_ADMIN"
)
def test_a_refused_namespace_fails_the_start_with_the_reason_never_a_silent_downgrade(tmp_path: Path) -> None:
    # Without CAP_SYS_ADMIN the kernel refuses new namespaces: run a Worker in such a process.
    drop = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--"]
    result = subprocess.run(
        [*drop, sys.executable, "-c", REFUSED, str(tmp_path / "state")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    first, second = result.stdout.decode().splitlines()
    assert first.startswith("failed_to_start | the host refused a new PID namespace: Operation not permitted")
    assert second == "exited 0"


def test_a_job_started_with_all_namespaces_ends_cleanly_when_stopped(worker: Worker) -> None:
    status = worker.start(JobSpec(["sh", "-c", "echo up; sleep 300 & sleep 300 & wait"]))
    wait_until(lambda: worker.status(status.id).output_bytes == 3, 10, "the job's shell to run")
    final = worker.stop(status.id, grace=0.5)
    assert final.state is JobState.KILLED
    wait_until(lambda: worker.status(status.id).state is JobState.KILLED, 5, "the job to be killed")
