"""jobclient is its own distribution: importing it (SDK and CLI) loads neither jobcore nor jobserver."""

from __future__ import annotations

import subprocess
import sys


def test_importing_jobclient_loads_no_other_workspace_distribution() -> None:
    code = (
        "import sys, jobclient, jobclient.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jobcore', 'jobserver'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
