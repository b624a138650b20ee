"""Read workspace.toml for the Makefile and CI:
`python3 tools/workspace.py paths|names|packages|tests|check`.

`names` are the distributions' names (PyPI), `packages` their import names. `check` verifies that every
member's pyproject.toml exists and names the same distribution, that its import package is where the
manifest says and carries the same `__version__`, and prints `name version` for each member.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def members() -> list[dict[str, str]]:
    with open(ROOT / "workspace.toml", "rb") as f:
        return list(tomllib.load(f)["workspace"]["members"])


def check() -> list[str]:
    lines = []
    for m in members():
        with open(ROOT / m["path"] / "pyproject.toml", "rb") as f:
            project = tomllib.load(f)["project"]
        if project["name"] != m["name"]:
            raise SystemExit(
                f"workspace.toml names {m['name']!r} but {m['path']}/pyproject.toml names {project['name']!r}"
            )
        package = ROOT / m["path"] / "src" / m["package"]
        if not (package / "__init__.py").is_file():
            raise SystemExit(
                f"workspace.toml names package {m['package']!r} but {package} has no __init__.py"
            )
        # The constant lives in __init__.py, or in _version.py for a package that keeps imports light.
        sources = [package / name for name in ("__init__.py", "_version.py") if (package / name).is_file()]
        versions = [v for f in sources for v in re.findall(r'^__version__ = "([^"]+)"$', f.read_text(), re.M)]
        if versions != [project["version"]]:
            raise SystemExit(
                f"{package} must set __version__ = {project['version']!r} once (its pyproject.toml's version)"
            )
        lines.append(f"{m['name']} {project['version']}")
    return lines


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else "paths"
    if what == "paths":
        print(" ".join(m["path"] for m in members()))
    elif what == "names":
        print(" ".join(m["name"] for m in members()))
    elif what == "packages":
        print(" ".join(m["package"] for m in members()))
    elif what == "tests":
        print(" ".join(m["tests"] for m in members()))
    elif what == "check":
        print("\n".join(check()))
    else:
        print(f"usage: {argv[0]} paths|names|packages|tests|check", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
