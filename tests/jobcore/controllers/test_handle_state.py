"""A handle comes back from its state with no controller (`jobcore.controllers.handle_from_state`),
also from states written before handles named their class; `job_cgroups()` lists exactly the job
cgroups there are.

The configured-controller tests build a controller with a non-default setting (cgroup1: a
/proc/self/cgroup that places jobs in `ctltest-cfg-<pid>` below this process's own cgroup of every
hierarchy; cgroup2, in the VM: `self_cgroup` next to this process's cgroup) and prove that a fresh
process, given only the state, enters, counts, reads and kills that job's cgroup and no other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import OWNER, Backend, Children, kill_and_rmdir, v1_controller_or_skip

from jobcore.controllers import ResourceController, handle_from_state
from jobcore.controllers.cgroup_v1 import CONTROLLERS as V1_CONTROLLERS
from jobcore.controllers.cgroup_v1 import CgroupV1Controller, CgroupV1Handle
from jobcore.controllers.cgroup_v2 import CgroupV2Controller, CgroupV2Handle
from jobcore.controllers.cgroupfs import JOBS_DIR
from jobcore.controllers.mounts import parse_proc_cgroup
from jobcore.controllers.none import NoneController, NoneHandle
from jobcore.errors import ControllerError
from jobcore.spec import Limits

REPO = str(Path(__file__).resolve().parents[3])
MiB = 1 << 20
CONFIGURED_DIR = f"ctltest-cfg-{os.getpid()}"
pytestmark = pytest.mark.cgroup


@attrs.frozen
class Configured:
    """A controller built with a non-default setting, and where that setting puts jobs."""

    controller: ResourceController
    #: /proc/self/cgroup hierarchy key ("memory", "cpu,cpuacct", "" on v2) -> the cgroup path (as
    #: /proc/self/cgroup shows it) that job cgroups are created under.
    parents: dict[str, str]


def _own_v1_paths() -> dict[str, str]:
    """This process's cgroup path in every v1 hierarchy that jobs get a directory in."""
    own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    return {key: path for key, path in own.items() if set(key.split(",")) & set(V1_CONTROLLERS)}


@pytest.fixture(params=["cgroup1", "cgroup2"])
def configured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Configured]:
    if request.param == "cgroup2":
        parent = request.getfixturevalue("v2_parent")
        controller = CgroupV2Controller(self_cgroup=parent)
        if not controller.probe().available:
            pytest.skip(f"cgroup2 unusable here: {controller.probe().reason}")
        yield Configured(controller, {"": parent})
        return
    default = v1_controller_or_skip()
    # Below this process's own cgroup of each hierarchy, never elsewhere.
    made = []
    for root in default.probe().job_roots:
        own_dir = Path(root.split("=", 1)[1]).parent
        made.append(own_dir / CONFIGURED_DIR)
    own = _own_v1_paths()
    parents = {key: f"{path.rstrip('/')}/{CONFIGURED_DIR}" for key, path in own.items()}
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    fake_proc_cgroup = tmp_path / "cgroup"
    fake_proc_cgroup.write_text(
        "".join(
            f"{n}:{key}:{parents[key]}\n" if key in parents else f"{n}:{key}:{path}\n"
            for n, key, path in (line.split(":", 2) for line in lines)
        )
    )
    try:
        for directory in made:
            directory.mkdir()
        yield Configured(CgroupV1Controller(proc_cgroup=str(fake_proc_cgroup)), parents)
    finally:
        for directory in made:
            if directory.exists():
                for sub in sorted(directory.rglob("*"), key=lambda p: -len(p.parts)):
                    if sub.is_dir():
                        kill_and_rmdir(sub)
                kill_and_rmdir(directory)


def _run(script: str, *args: str) -> str:
    """Run `script` in a fresh interpreter (nothing of this process's controller objects)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


ENTER_SELF = """
import json, sys
from jobcore.controllers import handle_from_state
handle = handle_from_state(json.loads(sys.argv[1]))
handle.enter(0)
print(json.dumps({"limits": handle.applied().requested(), "cgroup": open("/proc/self/cgroup").read()}))
"""

COUNT_READ_KILL = """
import json, sys
from jobcore.controllers import handle_from_state
handle = handle_from_state(json.loads(sys.argv[1]))
pids = handle.pids()
usage = handle.stats()
handle.kill()
print(json.dumps({"pids": pids, "cpu_seconds": usage.cpu_seconds, "after_kill": handle.pids()}))
"""


def _joined(cgroup_text: str, parents: dict[str, str]) -> dict[str, str]:
    """For each hierarchy of `parents`, the cgroup path /proc/<pid>/cgroup shows."""
    shown = parse_proc_cgroup(cgroup_text)
    return {key: shown[key] for key in parents}


def test_a_configured_controllers_handle_works_from_its_state_in_a_fresh_process(
    configured: Configured, children: Children
) -> None:
    controller = configured.controller
    limits = Limits(cpu=1, memory=64 * MiB, pids=32)
    handle = controller.create(OWNER, "cfg1", limits, REPO)
    job_paths = {key: f"{parent}/{JOBS_DIR}/{OWNER}/cfg1" for key, parent in configured.parents.items()}
    try:
        state = json.loads(json.dumps(handle.to_state()))
        assert state["handle"] in (
            "jobcore.controllers.cgroup_v1:CgroupV1Handle",
            "jobcore.controllers.cgroup_v2:CgroupV2Handle",
        )

        # Enter: the fresh process lands in the configured job cgroup of every hierarchy.
        entered = json.loads(_run(ENTER_SELF, json.dumps(state)))
        assert _joined(entered["cgroup"], configured.parents) == job_paths
        assert entered["limits"] == limits.requested()

        # Count, read and kill: a process of the job, seen and killed from another fresh process.
        spin = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo spun; exec sleep 300"
        proc = children.spawn_in(handle, ["sh", "-c", spin], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"spun\n"
        seen = json.loads(_run(COUNT_READ_KILL, json.dumps(state)))
        assert proc.pid in seen["pids"]
        assert seen["cpu_seconds"] > 0
        assert seen["after_kill"] == []
        assert proc.wait(timeout=10) == -9
    finally:
        handle.destroy()
    assert not [d for d in _state_dirs(state) if os.path.exists(d)]


def test_job_cgroups_lists_exactly_the_job_cgroups_under_a_configured_root(configured: Configured) -> None:
    controller = configured.controller
    assert controller.job_cgroups() == []  # the configured root is this test's alone
    other = f"{OWNER}-b"
    handles = {
        (OWNER, "list1"): controller.create(OWNER, "list1", Limits(), REPO),
        (OWNER, "list2"): controller.create(OWNER, "list2", Limits(pids=16), REPO),
        (other, "list3"): controller.create(other, "list3", Limits(), REPO),
    }
    try:
        listed = {(owner, job_id): h for owner, job_id, h in controller.job_cgroups()}
        assert sorted(listed) == sorted(handles)
        for key, found in listed.items():
            assert _state_dirs(found.to_state()) == _state_dirs(handles[key].to_state())
        # A listed handle is a working one: destroying it removes that job and only that one.
        listed[(OWNER, "list2")].destroy()
        assert sorted((o, j) for o, j, _ in controller.job_cgroups()) == [(OWNER, "list1"), (other, "list3")]
    finally:
        for h in handles.values():
            h.destroy()
    assert controller.job_cgroups() == []


def test_job_cgroups_lists_the_jobs_created_and_no_others(backend: Backend, children: Children) -> None:
    controller = backend.controller
    other = f"{OWNER}-c"

    def ours() -> list[tuple[str, str]]:
        # Other test runs on this host may have job cgroups under the same parent: count only ours.
        return sorted((o, j) for o, j, _ in controller.job_cgroups() if o in (OWNER, other))

    assert ours() == []
    a = controller.create(OWNER, "jc1", Limits(), REPO)
    b = controller.create(other, "jc2", Limits(), REPO)
    try:
        if backend.id == "none":
            assert ours() == []
            return
        assert ours() == [(OWNER, "jc1"), (other, "jc2")]
        if backend.real_kernel:
            proc = children.spawn_in(b, ["sleep", "300"])
            found = {(o, j): h for o, j, h in controller.job_cgroups()}
            assert found[(other, "jc2")].pids() == [proc.pid]
            assert found[(OWNER, "jc1")].pids() == []
        b.destroy()
        assert ours() == [(OWNER, "jc1")]
    finally:
        a.destroy()
        b.destroy()
    assert ours() == []


# --- states written before handles named their class ------------------------------------------------


def test_an_old_cgroup1_state_is_rebuilt_from_its_backend_name_or_its_controller_class(
    backend: Backend,
) -> None:
    if backend.id != "cgroup1":
        pytest.skip("the real cgroup1 backend's old states (the VM has no v1)")
    handle = backend.controller.create(OWNER, "old1", Limits(memory=64 * MiB), REPO)
    try:
        new = handle.to_state()
        # Exactly what spec.json's "cgroup" held before: no "handle" key.
        old = {
            "backend": "cgroup1",
            "paths": new["paths"],
            "limits": {"memory": 64 * MiB},
            "io_device_number": None,
        }
        by_name = json.loads(_run(ENTER_SELF, json.dumps(old)))
        paths = _own_v1_paths()
        expected = {key: f"{path.rstrip('/')}/{JOBS_DIR}/{OWNER}/old1" for key, path in paths.items()}
        assert _joined(by_name["cgroup"], paths) == expected
        assert by_name["limits"] == {"memory": 64 * MiB}
        by_class = handle_from_state(old, controller_class="jobcore.controllers.cgroup_v1:CgroupV1Controller")
        assert isinstance(by_class, CgroupV1Handle)
        assert by_class.to_state() == new
    finally:
        handle.destroy()


def test_an_old_cgroup2_state_is_rebuilt_from_its_backend_name(tmp_path: Path) -> None:
    old = {
        "backend": "cgroup2",
        "path": str(tmp_path / JOBS_DIR / OWNER / "old2"),
        "limits": {"cpu": 0.5, "pids": 20},
        "io_device_number": [8, 0],
    }
    handle = handle_from_state(old)
    assert isinstance(handle, CgroupV2Handle)
    assert handle.applied() == Limits(cpu=0.5, pids=20)
    assert handle.to_state() == {**old, "handle": "jobcore.controllers.cgroup_v2:CgroupV2Handle"}


def test_an_old_none_state_is_rebuilt() -> None:
    assert isinstance(handle_from_state({"backend": "none"}), NoneHandle)
    assert handle_from_state(NoneController().create(OWNER, "n1", Limits(), REPO).to_state()).pids() == []


class AcmeHandle(NoneHandle):
    """A third-party backend's handle whose state names no class of its own (as before)."""

    def __init__(self, site: str) -> None:
        self.site = site

    def to_state(self) -> dict[str, Any]:
        return {"backend": "acme", "site": self.site}


class AcmeController(NoneController):
    """A third-party backend that is not registered: only its class path finds it."""

    name = "acme"

    def attach(self, state: dict[str, Any]) -> AcmeHandle:
        return AcmeHandle(state["site"])


def test_a_state_naming_no_class_is_attached_by_the_controller_class_it_came_from() -> None:
    state = {"backend": "acme", "site": "rack-7"}
    handle = handle_from_state(state, controller_class=f"{__name__}:AcmeController")
    assert isinstance(handle, AcmeHandle) and handle.site == "rack-7"
    with pytest.raises(ControllerError, match=r"backend 'acme' is not registered"):
        handle_from_state(state)


# --- bad states -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"backend": "cgroup1", "handle": "os:path"}, r"'os:path' names module, not a class"),
        ({"backend": "cgroup1", "handle": "no_such_module_x:Handle"}, r"cannot load handle class"),
        ({"backend": "cgroup1", "handle": "jobcore.controllers.cgroup_v1:Nope"}, r"cannot load handle class"),
        ({"backend": "cgroup1", "handle": "not a path"}, r"not of the form 'module:QualName'"),
        ({"backend": "cgroup1", "handle": "jobcore.controllers.cgroupfs:CgroupFiles"}, r"has no from_state"),
        (
            {"backend": "cgroup2", "handle": "jobcore.controllers.cgroup_v1:CgroupV1Handle", "paths": {}},
            r"state of backend 'cgroup2' given to cgroup1",
        ),
        ({"backend": "cgroup1", "handle": "jobcore.controllers.cgroup_v1:CgroupV1Handle"}, r"malformed"),
        ({"backend": "cgroup2", "path": ["/x"], "limits": {}}, r"malformed"),
        (
            {
                "backend": "cgroup1",
                "paths": {"memory": f"/cg/{JOBS_DIR}/{OWNER}/j"},
                "limits": {"memory": -1},
            },
            r"memory must be",
        ),
        # A damaged state must not make destroy() empty and remove a whole hierarchy.
        ({"backend": "cgroup1", "paths": {"memory": "/sys/fs/cgroup/memory"}}, r"is not a job cgroup"),
        ({"backend": "cgroup2", "path": f"/cg/{JOBS_DIR}/{OWNER}/j/../../.."}, r"is not a job cgroup"),
        ({"backend": "cgroup2", "path": f"cg/{JOBS_DIR}/{OWNER}/j"}, r"is not a job cgroup"),
        ({"backend": "cgroup2", "path": f"/cg/{JOBS_DIR}/{OWNER}/.."}, r"is not a job cgroup"),
        ({"backend": "cgroup2", "path": f"/cg/{JOBS_DIR}/Bad Owner/j"}, r"is not a job cgroup"),
        ({"backend": "nope"}, r"backend 'nope' is not registered"),
        ({}, r"backend None is not registered"),
        (["backend", "cgroup1"], r"a handle state is a JSON object"),
    ],
)
def test_a_bad_state_is_refused_with_a_specific_error(state: Any, message: str) -> None:
    with pytest.raises(ControllerError, match=message):
        handle_from_state(state)


def _state_dirs(state: dict[str, Any]) -> list[str]:
    if "paths" in state:
        return list(dict.fromkeys(state["paths"].values()))
    return [state["path"]]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


class NotAHandle:
    """A class a state may name whose from_state() builds something that is not a Handle."""

    @classmethod
    def from_state(cls, _state: object) -> object:
        return cls()


def test_a_state_that_rebuilds_something_else_than_a_handle_is_refused_every_time() -> None:
    state = {"backend": "cgroup1", "handle": f"{__name__}:NotAHandle"}
    for _ in range(2):  # the check is remembered per class only for classes that pass it
        with pytest.raises(ControllerError, match="did not rebuild a Handle"):
            handle_from_state(state)
