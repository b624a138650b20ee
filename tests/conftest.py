"""Shared by every suite: the checked-in private keys are made 0600 before any test runs.

git does not keep file modes beyond the executable bit, so a fresh clone has them 0644, and the
server refuses a private key that group or others may read (as ssh does).
"""

from __future__ import annotations

import os
from pathlib import Path

CERTS = Path(__file__).resolve().parent.parent / "certs"


def pytest_configure() -> None:
    for key in CERTS.rglob("*.key"):
        if key.stat().st_mode & 0o077:
            os.chmod(key, 0o600)
