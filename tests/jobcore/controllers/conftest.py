"""Fixtures of the resource-controller tests: the backends usable here, a fake cgroup v2 kernel over a
plain directory tree, processes born inside a job's cgroup, and leak checks (cgroup dirs, children).

Tests use their own owner name (`ctltest-<pid>`) so that they never touch, sweep or count the job
cgroups of other test runs sharing this host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from jobcore.controllers import Handle, ResourceController
from jobcore.controllers.cgroup_v1 import CgroupV1Controller
from jobcore.controllers.cgroup_v2 import CgroupV2Controller
from jobcore.controllers.cgroupfs import JOBS_DIR, CgroupFiles, CgroupWriteError
from jobcore.controllers.mounts import parse_proc_cgroup
from jobcore.controllers.none import NoneController
from jobcore.errors import ControllerError

OWNER = f"ctltest-{os.getpid()}"
V2_ROOT = Path("/sys/fs/cgroup")


# --- a fake cgroup v2 kernel -------------------------------------------------------------------------


class FakeCgroup2Kernel(CgroupFiles):
    """cgroupfs v2 semantics over a tmp_path tree: mkdir populates interface files, rmdir refuses busy
    cgroups, subtree_control enforces availability and the no-internal-processes rule, cgroup.procs
    moves pids, cgroup.kill SIGKILLs the (real) pids listed and empties the subtree. Every write is
    recorded as (path relative to the mount, value)."""

    def __init__(self, root: Path, controllers: str = "cpu memory io pids", cgroup_kill: bool = True) -> None:
        self.root = root
        self.cgroup_kill = cgroup_kill
        self.writes: list[tuple[str, str]] = []
        #: Interface file name -> errno the fake kernel answers writes to it with.
        self.refuse: dict[str, int] = {}
        # As on a host: the root delegates every controller it has.
        files = {"cgroup.controllers": controllers, "cgroup.subtree_control": controllers, "cgroup.procs": ""}
        for name, text in files.items():
            (root / name).write_text(text + ("\n" if text else ""))

    def rel(self, path: str | Path) -> str:
        return "/" + str(Path(path).relative_to(self.root)).lstrip(".")

    def make(self, rel: str, procs: str = "") -> Path:
        """Create the cgroup `rel` (e.g. "/svc") as the kernel would, optionally with processes."""
        path = self.root / rel.lstrip("/")
        self.mkdir(str(path))
        if procs:
            (path / "cgroup.procs").write_text(procs + "\n")
            self._set_populated(path)
        return path

    def mkdir(self, path: str) -> bool:
        p = Path(path)
        if p.exists():
            return False
        if not p.parent.exists():
            missing = FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            raise ControllerError(f"cannot create cgroup {path}") from missing
        p.mkdir()
        enabled = (p.parent / "cgroup.subtree_control").read_text().split()
        files = {
            "cgroup.controllers": " ".join(enabled),
            "cgroup.subtree_control": "",
            "cgroup.procs": "",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "cgroup.freeze": "0",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        if self.cgroup_kill:
            files["cgroup.kill"] = ""
        if "cpu" in enabled:
            files["cpu.max"] = "max 100000"
        if "memory" in enabled:
            files |= {
                "memory.max": "max",
                "memory.swap.max": "max",
                "memory.peak": "0",
                "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
                "memory.events.local": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            }
        if "pids" in enabled:
            files["pids.max"] = "max"
        if "io" in enabled:
            files |= {"io.max": "", "io.stat": ""}
        for name, text in files.items():
            (p / name).write_text(text)
        return True

    def rmdir(self, path: str) -> None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if (p / "cgroup.procs").read_text().split() or any(c.is_dir() for c in p.iterdir()):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        for child in p.iterdir():
            child.unlink()
        p.rmdir()

    def write(self, path: str, value: str) -> None:
        p = Path(path)
        self.writes.append((self.rel(p), value))
        try:
            self._apply(p, value)
        except OSError as e:
            raise CgroupWriteError(path, value, e) from e

    def _apply(self, p: Path, value: str) -> None:
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(p))
        if p.name in self.refuse:
            raise OSError(self.refuse[p.name], os.strerror(self.refuse[p.name]), str(p))
        cgroup = p.parent
        if p.name == "cgroup.subtree_control":
            available = (cgroup / "cgroup.controllers").read_text().split()
            enabled = p.read_text().split()
            for token in value.split():
                name = token[1:]
                if name not in available:
                    raise FileNotFoundError(errno.ENOENT, "controller not available", str(p))
                if token[0] == "+" and cgroup != self.root and (cgroup / "cgroup.procs").read_text().split():
                    raise OSError(errno.EBUSY, "Device or resource busy", str(p))
                enabled = [c for c in enabled if c != name] + ([name] if token[0] == "+" else [])
            p.write_text(" ".join(enabled) + ("\n" if enabled else ""))
        elif p.name == "cgroup.procs":
            pid = value.strip()
            if cgroup != self.root and (cgroup / "cgroup.subtree_control").read_text().split():
                raise OSError(errno.EBUSY, "Device or resource busy", str(p))
            for procs in self.root.rglob("cgroup.procs"):
                pids = procs.read_text().split()
                if pid in pids:
                    procs.write_text("".join(f"{x}\n" for x in pids if x != pid))
            p.write_text(p.read_text() + pid + "\n")
            self._set_populated(cgroup)
        elif p.name == "cgroup.kill":
            for procs in cgroup.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                procs.write_text("")
            for events in cgroup.rglob("cgroup.events"):
                events.write_text("populated 0\nfrozen 0\n")
        elif p.name == "cgroup.freeze":
            events = cgroup / "cgroup.events"
            populated = "populated 1" in events.read_text()
            events.write_text(f"populated {int(populated)}\nfrozen {value.strip()}\n")
            p.write_text(value)
        else:
            p.write_text(value)

    def _set_populated(self, cgroup: Path) -> None:
        while cgroup != self.root:
            events = cgroup / "cgroup.events"
            events.write_text(events.read_text().replace("populated 0", "populated 1"))
            cgroup = cgroup.parent

    def exit(self, pid: int) -> None:
        """What the kernel does when a process exits: drop it, update `populated`."""
        for procs in self.root.rglob("cgroup.procs"):
            procs.write_text("".join(f"{x}\n" for x in procs.read_text().split() if x != str(pid)))
        for events in self.root.rglob("cgroup.events"):
            d = events.parent
            if not any(f.read_text().split() for f in d.rglob("cgroup.procs")):
                events.write_text(events.read_text().replace("populated 1", "populated 0"))


# --- backends ---------------------------------------------------------------------------------------


@attrs.define
class Backend:
    """A backend under test and what can be asked of it here."""

    id: str
    controller: ResourceController
    #: A real kernel behind it: processes really are confined, counted and killed.
    real_kernel: bool
    #: Paths where this run's job cgroups may appear (checked to be gone after each test).
    owner_dirs: list[Path]
    fake: FakeCgroup2Kernel | None = None


def v1_controller_or_skip() -> CgroupV1Controller:
    if os.geteuid() != 0:
        pytest.skip("the real cgroup1 backend needs root")
    controller = CgroupV1Controller()
    caps = controller.probe()
    if not caps.available:
        pytest.skip(f"no usable cgroup v1 here: {caps.reason}")
    return controller


def v2_real_wanted() -> str | None:
    """None when the real-kernel v2 tests can run here, else the reason to skip them."""
    if os.environ.get("JOBCORE_TEST_CONTROLLER") == "cgroup2":
        return None
    controllers = V2_ROOT / "cgroup.controllers"
    if controllers.exists() and controllers.read_text().split():
        return None
    return (
        "no cgroup v2 with controllers at /sys/fs/cgroup (this host is cgroup v1/hybrid); the VM harness "
        "runs these with JOBCORE_TEST_CONTROLLER=cgroup2"
    )


@pytest.fixture
def v2_parent() -> Iterator[str]:
    """A fresh, empty cgroup next to the one this process runs in (e.g. /harness/ctltest-<pid> beside
    /harness/runner), used as the v2 controller's `<own>`, so the tests neither move this process nor
    touch its cgroup. Removed afterwards."""
    reason = v2_real_wanted()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("the real cgroup2 backend needs root")
    own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text()).get("")
    if own is None:
        pytest.skip("this process has no cgroup v2 line in /proc/self/cgroup")
    rel = f"{os.path.dirname(own.rstrip('/')).rstrip('/')}/ctltest-{os.getpid()}"
    path = V2_ROOT / rel.lstrip("/")
    path.mkdir(exist_ok=True)
    try:
        yield rel
    finally:
        for sub in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
            if sub.is_dir():
                kill_and_rmdir(sub)
        kill_and_rmdir(path)


def kill_and_rmdir(path: Path) -> None:
    """SIGKILL the processes of the (empty of children) cgroup `path`, then rmdir it (bounded)."""
    for pid in (path / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _v1_backend() -> Backend:
    controller = v1_controller_or_skip()
    dirs = [Path(r.split("=", 1)[1]) / OWNER for r in controller.probe().job_roots]
    return Backend("cgroup1", controller, True, dirs)


def _fake_v2_backend(tmp_path: Path) -> Backend:
    fake = FakeCgroup2Kernel(tmp_path)
    fake.make("/svc")
    controller = CgroupV2Controller(mount_point=tmp_path, self_cgroup="/svc", files=fake)
    return Backend("cgroup2-fake", controller, False, [tmp_path / "svc" / JOBS_DIR / OWNER], fake)


@pytest.fixture(params=["cgroup1", "cgroup2", "cgroup2-fake", "none"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend usable here (psutil's contract-test pattern): one suite, run against each."""
    if request.param == "cgroup1":
        b = _v1_backend()
    elif request.param == "cgroup2":
        parent = request.getfixturevalue("v2_parent")
        controller = CgroupV2Controller(self_cgroup=parent)
        caps = controller.probe()
        if not caps.available:
            pytest.skip(f"cgroup2 unusable here: {caps.reason}")
        b = Backend("cgroup2", controller, True, [Path(caps.job_roots[0]) / OWNER])
    elif request.param == "cgroup2-fake":
        b = _fake_v2_backend(tmp_path)
    else:
        b = Backend("none", NoneController(), False, [])
    yield b
    assert_no_job_cgroups(b)


@pytest.fixture(params=["cgroup1", "cgroup2"])
def real_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The backends with a real kernel behind them here (cgroup1 on this host, cgroup2 in the VM)."""
    if request.param == "cgroup1":
        b = _v1_backend()
    else:
        parent = request.getfixturevalue("v2_parent")
        controller = CgroupV2Controller(self_cgroup=parent)
        caps = controller.probe()
        if not caps.available:
            pytest.skip(f"cgroup2 unusable here: {caps.reason}")
        b = Backend("cgroup2", controller, True, [Path(caps.job_roots[0]) / OWNER])
    yield b
    assert_no_job_cgroups(b)


def assert_no_job_cgroups(b: Backend) -> None:
    left = [str(d) for d in b.owner_dirs if d.exists()]
    assert not left, f"job cgroups left behind: {left}"


# --- processes --------------------------------------------------------------------------------------


class Children:
    """Processes started by a test, born inside a job's cgroup; all killed and reaped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn_in(self, handle: Handle, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside the job: a shell waits on stdin until `handle.enter(pid)` moved it, then
        execs the command, so the command and everything it forks start in the cgroup(s)."""
        proc = subprocess.Popen(
            ["sh", "-c", 'read _ && exec "$@"', "sh", *argv],
            stdin=subprocess.PIPE,
            start_new_session=True,
            **kwargs,
        )
        self.procs.append(proc)
        handle.enter(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    try:
        yield c
    finally:
        c.close()


def process_gone(pid: int) -> bool:
    """True once `pid` is dead (a zombie awaiting its parent counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
