"""Bad input gets a specific exception with a clear message, before anything is created."""

from __future__ import annotations

import os

import pytest

from jobcore import InvalidJobId, InvalidLimit, InvalidSpec, JobNotFound, JobSpec, Limits, Worker
from jobcore.units import parse_cpu, parse_rate, parse_size


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "argv is empty"),
        ("echo hi", "argv must be a list"),
        (b"echo", "argv must be a list"),
        (42, "argv must be a list"),
        (["echo", 3], r"argv\[1\] must be a string"),
        (["ec\x00ho"], r"argv\[0\] contains a NUL byte"),
        ([""], r"argv\[0\] is empty"),
        (["x" * (1024 * 1024 + 1)], "more than the 1048576 allowed"),
    ],
)
def test_bad_argv_is_refused(argv: object, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        JobSpec(argv)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"A": "b\x00c"}, "env value of A contains a NUL byte"),
        ({"A\x00": "b"}, "env name"),
        ({"A=B": "c"}, "env name"),
        ({"": "c"}, "env name"),
        ({"A": 1}, "must map a string to a string"),
        (["A=b"], "env must be a mapping"),
    ],
)
def test_bad_env_is_refused(env: object, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        JobSpec(["true"], env=env)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cwd", "message"),
    [("tmp", "is relative"), ("./x", "is relative"), ("/tm\x00p", "without NUL"), (3, "path string")],
)
def test_bad_cwd_is_refused(cwd: object, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        JobSpec(["true"], cwd=cwd)  # type: ignore[arg-type]


@pytest.mark.parametrize("owner", ["", "Alice", "../x", "a/b", "x" * 65, "-a", "alice\n"])
def test_bad_owner_is_refused(owner: str) -> None:
    with pytest.raises(InvalidSpec, match="owner"):
        JobSpec(["true"], owner=owner)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu": -1}, "cpu must be positive"),
        ({"cpu": 0}, "cpu must be positive"),
        ({"cpu": float("nan")}, "finite"),
        ({"cpu": 0.001}, "below the minimum"),
        ({"cpu": (os.cpu_count() or 1) + 1}, "more than this host has"),
        ({"cpu": "1"}, "number of cores"),
        ({"memory": 0}, "memory must be positive"),
        ({"memory": -5}, "memory must be positive"),
        ({"memory": 1024}, "below the minimum of 4194304"),
        ({"memory": 1 << 60}, "above the maximum"),
        ({"memory": 1.5}, "whole number"),
        ({"pids": 0}, "pids must be positive"),
        ({"pids": 1}, "below the minimum of 2"),
        ({"pids": True}, "whole number"),
        ({"io_write_bps": -1}, "io_write_bps must be positive"),
        ({"io_read_bps": 10**14}, "above the maximum"),
        ({"io_read_iops": 0}, "io_read_iops must be positive"),
        ({"io_device": "sda"}, "absolute path"),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidLimit, match=message):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_limits_take_defaults_and_respect_maximums() -> None:
    defaults = Limits(memory=256 << 20, pids=100)
    maximum = Limits(memory=512 << 20, cpu=1)
    applied = Limits(pids=50).resolve(defaults, maximum)
    assert applied.memory == 256 << 20  # the default
    assert applied.pids == 50  # asked for, below nothing
    assert applied.cpu == 1  # no default: the maximum applies
    with pytest.raises(
        InvalidLimit, match=r"memory of 1073741824 is above the maximum allowed here \(536870912\)"
    ):
        Limits(memory=1 << 30).resolve(defaults, maximum)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("512K", 512 << 10),
        ("512M", 512 << 20),
        ("1G", 1 << 30),
        ("1.5G", 3 << 29),
        ("2GiB", 2 << 30),
    ],
)
def test_sizes_parse(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "-1M", "1X", "1.5", "ten"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_rates_and_cpu_parse() -> None:
    assert parse_rate("10M/s") == 10 << 20
    assert parse_rate("10M") == 10 << 20
    assert parse_cpu("0.5") == 0.5
    with pytest.raises(ValueError, match="invalid CPU amount"):
        parse_cpu("half")


@pytest.mark.parametrize(
    "job_id", ["../x", "x", "", "/etc/passwd", "1b4e28ba-2fa1-11d2-883f-0016d3cca427/..", 7]
)
def test_malformed_job_ids_are_refused_without_touching_disk(worker: Worker, job_id: object) -> None:
    before = sorted(p.name for p in worker.state_dir.iterdir())
    for call in (worker.status, worker.stop, worker.output, worker.wait):
        with pytest.raises(InvalidJobId, match="invalid job id"):
            call(job_id)  # type: ignore[operator]
    assert sorted(p.name for p in worker.state_dir.iterdir()) == before


def test_unknown_job_is_not_found(worker: Worker) -> None:
    with pytest.raises(JobNotFound, match="job 1b4e28ba-2fa1-41d2-883f-0016d3cca427 not found"):
        worker.status("1b4e28ba-2fa1-41d2-883f-0016d3cca427")


def test_missing_cwd_is_refused_before_anything_is_created(worker: Worker) -> None:
    with pytest.raises(InvalidSpec, match="cwd '/no/such/dir' does not exist"):
        worker.start(JobSpec(["true"], cwd="/no/such/dir"))
    assert [p.name for p in worker.state_dir.iterdir() if not p.name.startswith(".lock")] == []


def test_bad_grace_is_refused(worker: Worker) -> None:
    status = worker.start(JobSpec(["true"]))
    worker.wait(status.id)
    for grace in (-1, float("nan"), float("inf"), "1"):
        with pytest.raises(InvalidSpec, match="grace must be a non-negative number"):
            worker.stop(status.id, grace=grace)  # type: ignore[arg-type]
