"""`jobctl rm` and `jobctl prune`: help with examples, AGE parsing, usage errors (the deletion itself
runs against the real server in tests/e2e/test_hardening.py)."""

from __future__ import annotations

import argparse

import pytest
from jobctl_runner import Jobctl

from jobclient.cli_removal import parse_age


@pytest.mark.parametrize("command", ["rm", "prune"])
def test_rm_and_prune_have_help_with_examples(jobctl: Jobctl, command: str) -> None:
    result = jobctl(command, "--help")
    assert result.returncode == 0
    assert f"usage: jobctl {command}" in result.text
    assert "examples:" in result.text
    assert f"jobctl --user alice {command}" in result.text
    assert command in jobctl("--help").text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600)],
)
def test_ages(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "7x", "-1d", "d", "1.d", "7 days"])
def test_bad_ages_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected an age"):
        parse_age(text)


def test_rm_needs_a_job_id_and_prune_a_valid_age(jobctl: Jobctl) -> None:
    result = jobctl("rm")
    assert result.returncode == 2
    result = jobctl("prune", "--older-than", "soon")
    assert result.returncode == 2
    assert "expected an age such as 3600, 12h, 7d or 2w, got 'soon'" in result.stderr
