"""The plugin point: backends come from the `jobcore.controllers` entry-point group, and `auto` picks."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from jobcore_testing import requires_root

PLUGIN = '''
from typing import ClassVar
from jobcore.controllers.base import Capabilities
from jobcore.controllers.none import NoneController

class CountingController(NoneController):
    """A third party's backend: claims to enforce more than any other, so `auto` must pick it."""

    name: ClassVar[str] = "thirdparty"

    def probe(self) -> Capabilities:
        return Capabilities(backend="thirdparty", available=True, mode="test",
                            enforceable=("cpu", "memory", "pids", "io_read_bps", "io_write_bps",
                                         "io_read_iops", "io_write_iops", "and-more"))

class BrokenController(CountingController):
    name: ClassVar[str] = "broken"

    def probe(self) -> Capabilities:
        return Capabilities(backend="broken", available=False, reason="not on this host")
'''

CHECK = """
from jobcore.controllers import available_backends, load_controller
from jobcore.errors import ControllerError
print(sorted(available_backends()))
print(load_controller("auto").name)
print(load_controller("thirdparty").name)
try:
    load_controller("broken")
except ControllerError as exc:
    print(exc)
"""


def test_a_third_party_backend_registers_by_entry_point_and_auto_prefers_the_most_capable(
    tmp_path: Path,
) -> None:
    # A distribution of someone else's, installed on the path: a module and its dist-info's entry points.
    (tmp_path / "thirdparty_backend.py").write_text(PLUGIN)
    info = tmp_path / "thirdparty_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""\
        [jobcore.controllers]
        thirdparty = thirdparty_backend:CountingController
        broken = thirdparty_backend:BrokenController
        """)
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n{CHECK}"],
        capture_output=True,
        text=True,
        check=True,
    )
    backends, auto, named, refused = result.stdout.splitlines()
    assert ast.literal_eval(backends) == ["broken", "cgroup1", "cgroup2", "none", "thirdparty"]
    assert auto == "thirdparty"
    assert named == "thirdparty"
    assert refused == "resource-controller backend 'broken' cannot run here: not on this host"


@requires_root
def test_auto_without_plugins_picks_a_real_backend_here() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from jobcore.controllers import load_controller; print(load_controller().name)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    # cgroup1 on the build machines, cgroup2 on a pure v2 host; never `none` where cgroups work (root).
    assert result.stdout.strip() in ("cgroup1", "cgroup2")
