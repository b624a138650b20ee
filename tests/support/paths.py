"""Where things are: the repository, its checked-in certificates, and this venv's entry points."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CERTS = REPO / "certs"
#: The entry points of the distributions installed in the venv that runs the tests.
BIN = Path(sys.executable).parent
JOBSERVER = BIN / "jobserver"
JOBCTL = BIN / "jobctl"
IS_ROOT = os.geteuid() == 0
