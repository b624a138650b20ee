"""What the launcher imports (issue 14): every shim is a fork of it, so every module it holds is memory
each shim maps, copies page tables for at fork and tears down at exec and exit.

The launcher imports the `jobcore` package before its own module; the package must not pull the
Worker's side (threads, asyncio, ssl, importlib.metadata...) into it. Each test runs a fresh
interpreter and checks `sys.modules`, so the module that crept back in is named. What that costs is
measured in bench/start_ab.py and bench/shim_memory.py, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import jobcore

#: Never in a launcher: the Worker's own modules, and the standard library they (or ctypes.util, or a
#: backend look-up) bring, none of which a shim uses.
NOT_IN_THE_LAUNCHER = (
    "jobcore.worker",
    "jobcore.watcher",
    "jobcore.recovery",
    "jobcore.launcher_client",
    "asyncio",
    "ssl",
    "concurrent.futures",
    "importlib.metadata",
    "email",
    "zipfile",
    "shutil",
    "subprocess",
    "tempfile",
    "ctypes.util",
    "logging",
    "bz2",
    "lzma",
)

#: Each built-in backend's handle module: the launcher imports the configured one before any fork.
HANDLE_MODULES = (
    "jobcore.controllers.cgroup_v1",
    "jobcore.controllers.cgroup_v2",
    "jobcore.controllers.none",
)


def modules_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("handle_module", HANDLE_MODULES)
def test_the_launcher_holds_none_of_the_workers_modules(handle_module: str) -> None:
    loaded = modules_after(f"import jobcore.launcher, {handle_module}")
    assert "jobcore.shim" in loaded and handle_module in loaded  # the probe imported what it says
    assert sorted(loaded & set(NOT_IN_THE_LAUNCHER)) == []


def test_importing_the_package_imports_no_submodule_until_a_name_is_used() -> None:
    loaded = modules_after("import jobcore")
    assert sorted(m for m in loaded if m.startswith("jobcore.")) == []
    loaded = modules_after("from jobcore import Limits")
    assert "jobcore.spec" in loaded and "jobcore.worker" not in loaded


def test_every_public_name_resolves_to_its_object() -> None:
    from jobcore import errors, spec, status, worker

    homes = (errors, spec, status, worker)
    for name in jobcore.__all__:
        value = getattr(jobcore, name)
        assert any(getattr(home, name, None) is value for home in homes), name
        assert name in dir(jobcore)


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="'NoSuchThing'"):
        jobcore.NoSuchThing  # noqa: B018
    # `from jobcore import ...` of an unknown name is the usual ImportError
    with pytest.raises(ImportError, match="NoSuchThing"):
        exec("from jobcore import NoSuchThing")
