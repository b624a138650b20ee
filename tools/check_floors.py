"""Test the dependency floors: `python3 tools/check_floors.py` (`make check-floors`).

Reads every `NAME>=FLOOR` requirement of the three distributions (docs/packaging.md), installs exactly
those floor versions (from the package index) into a throwaway venv, installs the three distributions
from their folders (not editable) and runs the jobcore, jobclient and jobserver suites there. Needs
the index, hence not part of `make test`. Two kinds of tests are left out, for what they check rather
than the floors: the generated-code freshness check (needs grpcio-tools) and the two tests of the
certificate folder an editable install finds (a wheel install has none; JOBCTL_CERTS is set instead).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)")
NOT_ABOUT_FLOORS = [
    "tests/jobclient/test_credentials.py::test_without_jobctl_certs_the_checked_in_folder_is_found",
    "tests/jobclient/test_credentials.py::test_an_unknown_user_names_the_file_and_folder",
]


def workspace_members() -> list[dict[str, str]]:
    with open(ROOT / "workspace.toml", "rb") as f:
        return list(tomllib.load(f)["workspace"]["members"])


def floors() -> dict[str, str]:
    members = workspace_members()
    ours = {m["name"] for m in members}
    found: dict[str, str] = {}
    for member in members:
        with open(ROOT / member["path"] / "pyproject.toml", "rb") as f:
            for requirement in tomllib.load(f)["project"]["dependencies"]:
                match = FLOOR.match(requirement)
                if match is None or match[1] in ours:
                    continue
                name, version = match[1].lower(), match[2]
                if found.get(name, version) != version:
                    raise SystemExit(f"{name}: two floors ({found[name]}, {version}); make them agree")
                found[name] = version
    return found


def run(*argv: str | Path, **kwargs: object) -> None:
    print("+", " ".join(str(a) for a in argv), flush=True)
    subprocess.run([str(a) for a in argv], check=True, **kwargs)  # type: ignore[call-overload]


def main() -> int:
    pins = [f"{name}=={version}" for name, version in sorted(floors().items())]
    # Not under /tmp: jobs get a private /tmp (the sandbox), and some tests run this venv's python as a job.
    cache = ROOT / ".cache"
    cache.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="floors-", dir=cache) as tmp:
        venv = Path(tmp) / "venv"
        run(sys.executable, "-m", "venv", venv)
        python = venv / "bin" / "python"
        run(python, "-m", "pip", "install", "-q", *pins, "pytest", "pytest-timeout")
        # Copies: pip builds in the folder it is given (build/, *.egg-info), not in the checkout.
        copies = []
        for member in workspace_members():
            copy = Path(tmp) / "src" / Path(member["path"]).name
            shutil.copytree(
                ROOT / member["path"],
                copy,
                ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
            )
            copies.append(copy)
        run(python, "-m", "pip", "install", "-q", "--no-deps", *copies)
        run(python, "-m", "pip", "check")
        deselect = [arg for test in NOT_ABOUT_FLOORS for arg in ("--deselect", test)]
        deselect += ["--ignore", "tests/jobclient/test_generated_code_is_fresh.py"]
        env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "JOBCTL_CERTS": str(ROOT / "certs")}
        suites = [m["tests"] for m in workspace_members()]
        run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suites, *deselect, cwd=ROOT, env=env)
    print("floors hold:", " ".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
