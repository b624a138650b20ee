"""`jobctl completion bash`: the script completes commands, options and job ids in a real bash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fake_jobworker import FakeJobWorker
from jobctl_runner import JOBCTL, Jobctl

from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def complete(jobctl: Jobctl, tmp_path: Path, line: str) -> list[str]:
    """What bash offers for `line` (completing its last word; a trailing space starts a new one)."""
    script = tmp_path / "jobctl.bash"
    generated = jobctl("completion", "bash")
    assert generated.returncode == 0, generated.stderr
    script.write_bytes(generated.stdout)
    words = line.split()
    if line.endswith(" "):
        words.append("")
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"PATH={JOBCTL.parent}:$PATH; source {script}; COMP_WORDS=({quoted}); "
        f"COMP_CWORD={len(words) - 1}; _jobctl; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        env=jobctl.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return sorted(w for w in done.stdout.splitlines() if w)


def test_commands_are_completed(jobctl: Jobctl, tmp_path: Path) -> None:
    assert complete(jobctl, tmp_path, "jobctl st") == ["start", "status", "stop"]
    assert "completion" in complete(jobctl, tmp_path, "jobctl ")
    # A global option's value is not taken for the command.
    assert complete(jobctl, tmp_path, "jobctl --user alice l") == ["list", "logs"]


def test_options_of_the_command_are_completed(jobctl: Jobctl, tmp_path: Path) -> None:
    assert complete(jobctl, tmp_path, "jobctl logs --t") == ["--tail", "--timestamps"]
    assert complete(jobctl, tmp_path, "jobctl --ver") == ["--version"]
    assert complete(jobctl, tmp_path, "jobctl list --state ru") == ["running"]
    assert complete(jobctl, tmp_path, "jobctl completion ") == ["bash"]


def test_job_ids_are_completed_from_the_server(
    jobctl: Jobctl, servicer: FakeJobWorker, tmp_path: Path
) -> None:
    for job_id in ("6f1c0e52-aaaa", "6f2d0000-bbbb", "9a00ffff-cccc"):
        servicer.add_job(pb.Job(id=job_id, owner="alice", argv=["true"], state=pb.JOB_STATE_EXITED), b"")
    assert complete(jobctl, tmp_path, "jobctl stop 6f") == ["6f1c0e52-aaaa", "6f2d0000-bbbb"]
    assert complete(jobctl, tmp_path, "jobctl logs -f 9") == ["9a00ffff-cccc"]
    assert complete(jobctl, tmp_path, "jobctl run -- 6f") == []  # after `--`: the job's own words
