"""A Worker given a configured controller object: the setting reaches the job (issue 13). The shim
rebuilds the job's handle from its recorded state (`handle_from_state`), not by constructing the
controller's class with no arguments, which would lose the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jobcore_testing import requires_root
from niceness_backend import NicenessController

from jobcore import Isolation, JobSpec, JobState, Worker

pytestmark = requires_root
HERE = str(Path(__file__).resolve().parent)


def test_a_configured_controllers_setting_is_visible_inside_the_job(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The launcher (a fresh interpreter) and its shims must be able to import the backend's module.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    with Worker(state_dir, controller=NicenessController(niceness=7)) as worker:
        # Field 19 of /proc/self/stat is the process's nice value.
        script = "read -r stat < /proc/self/stat; set -- ${stat##*) }; shift 16; echo $1"
        for isolation in (Isolation(), Isolation.none()):
            job = worker.start(JobSpec(["sh", "-c", script], isolation=isolation))
            final = worker.wait(job.id, timeout=30)
            assert final.state is JobState.EXITED, final.reason
            assert final.controller == "niceness"
            assert b"".join(worker.output(job.id)) == b"7\n"
