"""The workspace is what workspace.toml says, and each distribution stands on its own."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def members() -> list[dict[str, str]]:
    with open(ROOT / "workspace.toml", "rb") as f:
        return list(tomllib.load(f)["workspace"]["members"])


def test_every_member_is_a_distribution_with_src_layout_and_its_own_tests() -> None:
    names = []
    for member in members():
        with open(ROOT / member["path"] / "pyproject.toml", "rb") as f:
            project = tomllib.load(f)["project"]
        assert project["name"] == member["name"]
        assert project["version"]
        assert (ROOT / member["path"] / "src" / member["package"] / "__init__.py").is_file()
        assert (ROOT / member["tests"]).is_dir()
        names.append(member["package"])
    assert sorted(names) == ["jobclient", "jobcore", "jobserver"]
    on_disk = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
    assert on_disk == sorted(names), "a package is missing from workspace.toml (or the reverse)"


def test_jobcore_does_not_need_grpc() -> None:
    code = (
        "import sys, jobcore, jobcore.cli, jobcore.launcher\n"
        "print(sorted(m for m in sys.modules if 'grpc' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_lock_pins_every_requirement_with_hashes() -> None:
    lock = (ROOT / "requirements" / "dev.lock").read_text()
    wanted = [
        line.split("#")[0].strip() for line in (ROOT / "requirements" / "dev.in").read_text().splitlines()
    ]
    for name in filter(None, wanted):
        assert f"\n{name}==" in lock or lock.startswith(f"{name}=="), f"{name} is not pinned in dev.lock"
    for block in lock.split("\n\n"):
        for line in block.splitlines():
            if "==" in line and not line.startswith((" ", "#")):
                assert "--hash=sha256:" in block, f"no hash for {line}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()


def test_distribution_names_are_one_family_and_import_names_stay_short() -> None:
    assert [(m["name"], m["package"]) for m in members()] == [
        ("remote-job-worker-core", "jobcore"),
        ("remote-job-worker-client", "jobclient"),
        ("remote-job-worker-server", "jobserver"),
    ]


def test_each_package_states_its_version_without_importlib_metadata() -> None:
    # A constant, not importlib.metadata: jobctl's start-up time (and it works from a source tree).
    code = (
        "import jobcore as a, jobclient as b, jobserver as c\n"
        "print(a.__version__, b.__version__, c.__version__)"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True, env=env
    )
    expected = {}
    for member in members():
        with open(ROOT / member["path"] / "pyproject.toml", "rb") as f:
            expected[member["package"]] = tomllib.load(f)["project"]["version"]
    assert out.stdout.split() == [expected[p] for p in ("jobcore", "jobclient", "jobserver")]
    code = "import sys, jobclient; jobclient.__version__; print('importlib.metadata' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"
    code = "import jobserver; print(jobserver.DISTRIBUTION)"  # shown by `jobserver --version`
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == next(m["name"] for m in members() if m["package"] == "jobserver")


def test_workspace_tool_checks_names_packages_and_versions() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "workspace.py"), "check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == [f"{m['name']} 0.1.0" for m in members()]
    packages = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "workspace.py"), "packages"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert packages.split() == ["jobcore", "jobclient", "jobserver"]
