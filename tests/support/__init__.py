"""What every test suite shares: bounded waits, free ports, /proc identity probes, and the real
`jobserver` as a subprocess (tests/support/README.md).

Importable as `support` from any test file, on the host and in the cgroup v2 VM: pyproject.toml's
pytest section puts `tests/` on `sys.path` (`pythonpath`), and the VM runs pytest in the repository
itself (shared over 9p), so the same files are found there.
"""

from __future__ import annotations

from support.paths import BIN, CERTS, IS_ROOT, JOBCTL, JOBSERVER, REPO
from support.procfs import is_running, process_start_ticks, processes_with
from support.server import ServerProcess, server_command, server_env
from support.sockets import free_port
from support.waiting import wait_for, wait_until

__all__ = [
    "BIN",
    "CERTS",
    "IS_ROOT",
    "JOBCTL",
    "JOBSERVER",
    "REPO",
    "ServerProcess",
    "free_port",
    "is_running",
    "process_start_ticks",
    "processes_with",
    "server_command",
    "server_env",
    "wait_for",
    "wait_until",
]
