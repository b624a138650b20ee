"""A backend module that makes every shim's output log impossible to create while
$JOBCORE_TEST_OUTPUT_UNWRITABLE is 1, for test_start_overlap.py: the launcher imports a backend's module
before it forks any shim, so the shims it forks inherit the change (as a full state disk would, which a
test cannot arrange for exactly the log's creation: the job directory and records are written first)."""

from __future__ import annotations

import errno
import os

from jobcore import shim
from jobcore.controllers.none import NoneController


class _UnwritableLog(shim.OutputWriter):
    def __init__(self, directory: str | os.PathLike[str], cap: int | None) -> None:
        if os.environ.get("JOBCORE_TEST_OUTPUT_UNWRITABLE") == "1":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{os.fspath(directory)}/output")
        super().__init__(directory, cap)


shim.OutputWriter = _UnwritableLog  # type: ignore[misc]


class UnwritableOutputController(NoneController):
    """The `none` backend, from a module that makes the shims' output logs fail (see above)."""
