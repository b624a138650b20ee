"""The three distributions build as wheels, carry their metadata, and install and run on their own.

Each test installs into a fresh virtual environment that sees the workspace's third-party packages
(attrs, grpcio, ...) through a path entry, but not its editable installs of jobcore/jobclient/jobserver:
so whatever of ours gets imported there comes from the wheel (or folder) under test. Nothing is
downloaded (`--no-index`).
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def members() -> list[dict[str, str]]:
    with open(ROOT / "workspace.toml", "rb") as f:
        return list(tomllib.load(f)["workspace"]["members"])


def run(*argv: str | Path, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def sources(where: Path) -> dict[str, Path]:
    """distribution name -> a copy of its folder under `where` (pip builds in the folder it is given:
    building from the checkout itself would leave build/ and *.egg-info there)."""
    copies = {}
    for member in members():
        copy = where / Path(member["path"]).name
        shutil.copytree(
            ROOT / member["path"], copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        )
        copies[member["name"]] = copy
    return copies


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """distribution name -> its wheel, built from its folder."""
    out = tmp_path_factory.mktemp("wheels")
    folders = sources(tmp_path_factory.mktemp("sources"))
    built = {}
    for member in members():
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
            "-w", out, folders[member["name"]])  # fmt: skip
        (wheel,) = out.glob(member["name"].replace("-", "_") + "-*.whl")
        built[member["name"]] = wheel
    return built


def third_party_view(where: Path) -> Path:
    """A folder of links to everything in this venv's site-packages except our own distributions."""
    ours = tuple(m["package"] for m in members()) + tuple(m["name"].replace("-", "_") for m in members())
    where.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if entry.name.startswith((*ours, "__editable__")) or entry.suffix == ".pth":
            continue
        (where / entry.name).symlink_to(entry)
    return where


def fresh_venv(where: Path) -> Path:
    """A venv that sees this venv's third-party packages (a path entry) but none of ours; its python."""
    run(sys.executable, "-m", "venv", "--without-pip", where)
    python = where / "bin" / "python"
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    (purelib / "workspace-deps.pth").write_text(f"{third_party_view(where / 'deps')}\n")
    return python


def pip_into(python: Path, *args: str | Path) -> str:
    return run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index", *args)


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode())


def test_each_wheel_has_its_name_license_classifiers_and_typed_package(wheels: dict[str, Path]) -> None:
    for member in members():
        wheel = wheels[member["name"]]
        meta = metadata(wheel)
        assert meta["Name"] == member["name"]
        assert meta["License-Expression"] == "Apache-2.0"
        assert "Typing :: Typed" in meta.get_all("Classifier", [])
        assert "Operating System :: POSIX :: Linux" in meta.get_all("Classifier", [])
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
        license_files = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert license_files, f"{wheel.name} carries no LICENSE"
        with zipfile.ZipFile(wheel) as z:
            assert "Apache License" in z.read(license_files[0]).decode()
        assert f"{member['package']}/py.typed" in names
        assert not [n for n in names if n.startswith(("tests/", "jobcore_testing"))]
    client = zipfile.ZipFile(wheels["remote-job-worker-client"]).namelist()
    assert "jobclient/proto/jobworker/v1/jobworker.proto" in client
    assert "jobclient/_proto/jobworker/v1/jobworker_pb2.py" in client
    server_requires = metadata(wheels["remote-job-worker-server"]).get_all("Requires-Dist", [])
    assert "remote-job-worker-core~=0.1.0" in server_requires
    assert "remote-job-worker-client~=0.1.0" in server_requires


@pytest.fixture
def venv(tmp_path: Path) -> Iterator[Path]:
    python = fresh_venv(tmp_path / "venv")
    yield python
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)


CHECK_REQUIREMENTS = """
import importlib.metadata as md, sys
from packaging.requirements import Requirement
for name in sys.argv[1:]:
    dist = md.distribution(name)
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = md.version(req.name)
        assert req.specifier.contains(have, prereleases=True), f"{name} needs {req}, found {have}"
    print(name, dist.version, dist.locate_file(""))
"""


def installed_here(venv: Path, *names: str) -> None:
    """Each distribution is installed in `venv` itself, and every requirement of it is satisfied."""
    lines = run(venv, "-c", CHECK_REQUIREMENTS, *names).splitlines()
    assert len(lines) == len(names)
    for line in lines:
        assert str(venv.parent.parent) in line, f"not installed in the fresh venv: {line}"


def test_the_server_wheel_installs_by_name_with_its_siblings_and_runs(
    wheels: dict[str, Path], venv: Path, tmp_path: Path
) -> None:
    # Only the server named: pip finds its siblings by their names among the wheels.
    pip_into(venv, "--find-links", wheels["remote-job-worker-core"].parent, "remote-job-worker-server")
    installed_here(venv, *[m["name"] for m in members()])
    bindir = venv.parent
    assert run(bindir / "jobserver", "--version") == "jobserver 0.1.0 (remote-job-worker-server)\n"
    assert run(venv, "-m", "jobcore", "--version") == "python -m jobcore 0.1.0\n"
    assert "jobctl" in run(bindir / "jobctl", "--help")
    versions = run(
        venv, "-c", "import jobcore, jobclient, jobserver as s; print(jobclient.__version__, s.__file__)"
    )
    assert versions.startswith("0.1.0 " + str(venv.parent.parent))
    # The systemd unit, once installed as documented (a venv with the server in it), passes verify.
    if shutil.which("systemd-analyze"):
        unit = tmp_path / "jobserver.service"
        text = (ROOT / "deploy" / "jobserver.service").read_text()
        unit.write_text(text.replace("/opt/jobworker/venv/bin/jobserver", str(bindir / "jobserver")))
        result = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "jobserver.service" not in result.stderr, result.stderr


def test_each_distribution_installs_alone_from_its_folder(venv: Path, tmp_path: Path) -> None:
    folders = sources(tmp_path / "sources")
    # jobcore alone (no grpc anywhere near it), then the client folder alone: neither needs a sibling.
    for name in ("remote-job-worker-core", "remote-job-worker-client"):
        pip_into(venv, "--no-build-isolation", folders[name])
        installed_here(venv, name)
    # The server folder with its siblings' folders on the same command line: found by path.
    pip_into(venv, "--no-build-isolation", *folders.values())
    installed_here(venv, *folders)
