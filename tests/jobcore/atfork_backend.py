"""A backend module that registers an os.register_at_fork hook when imported, for
test_fork.py: the launcher imports a backend's module before it forks any shim, so the hook is
registered in the launcher, and whoever runs it in a child appends that child's pid to the file named
by $JOBCORE_TEST_ATFORK_FILE."""

from __future__ import annotations

import os

from jobcore.controllers.none import NoneController


def _record_child() -> None:
    path = os.environ.get("JOBCORE_TEST_ATFORK_FILE")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)


os.register_at_fork(after_in_child=_record_child)


class AtForkController(NoneController):
    """The `none` backend, from a module that registers an at-fork hook."""
