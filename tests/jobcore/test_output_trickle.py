"""A command that writes its output a few bytes at a time costs one round of its shim's loop (one index
record per stream, one inotify event of the Worker) per TRICKLE_HOLD, not one per write; output that
comes faster is never held (jobcore.shim.trickle_hold, docs/output.md "Trickles")."""

from __future__ import annotations

import signal

import pytest
from jobcore_testing import JOB_PYTHON
from support.waiting import wait_until

from jobcore import JobSpec, JobState, Worker
from jobcore.output_log import STDERR, read_index
from jobcore.shim import INDEX_ALLOWANCE, SPARSE_HOLD, TRICKLE_BYTES, TRICKLE_HOLD, trickle_hold

#: 1-byte writes in a tight loop for about a second (the write count printed at the end, to stderr).
TRICKLE = r"""
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    os.write(1, b"x")
    if len(sys.argv) > 2:
        os.write(2, b"y")
    n += 1
time.sleep(0.05)
os.write(2, b"\n%d\n" % n)
"""


@pytest.mark.parametrize("both_streams", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_a_trickle_is_read_in_rounds_a_hold_apart_and_kept_whole(worker: Worker, both_streams: bool) -> None:
    argv = [JOB_PYTHON, "-c", TRICKLE, "1.0", *(["both"] if both_streams else [])]
    status = worker.start(JobSpec(argv))
    final = worker.wait(status.id, timeout=60)
    assert final.state is JobState.EXITED and final.exit_code == 0
    out = b"".join(worker.output(status.id))
    writes = int(out.rsplit(b"\n", 2)[-2])
    assert writes > 2000  # it did trickle: thousands of 1-byte writes
    body = out[: -len(b"\n%d\n" % writes)]
    assert body.count(b"x") == writes and body.count(b"y") == (writes if both_streams else 0)
    records = read_index(worker.state_dir / status.id)
    assert sum(length for _, length, _, _ in records) == len(out)
    assert final.started_at is not None and final.ended_at is not None
    rounds = (final.ended_at - final.started_at) / TRICKLE_HOLD
    # At most a record per stream per round (and the last line's): one per write before.
    assert len(records) <= 2 * rounds + 10, (len(records), writes)
    times = [t for _, _, _, t in records]
    assert times == sorted(times)
    if not both_streams:  # stderr has only the count's line
        assert [stream for _, _, stream, _ in records].count(STDERR) == 1


def test_a_fast_writers_output_is_whole_in_few_records(worker: Worker) -> None:
    # 64 MiB from head's 8 KiB writes: every round moves plenty, or little in no time.
    status = worker.start(JobSpec(["head", "-c", str(64 << 20), "/dev/zero"]))
    assert worker.wait(status.id, timeout=60).exit_code == 0
    assert worker.status(status.id).output_bytes == 64 << 20
    records = read_index(worker.state_dir / status.id)
    # Not a record per 8 KiB write: the shim's rounds each take what the pipe holds.
    assert len(records) < (64 << 20) // (64 << 10)


def test_the_hold_rule() -> None:
    quiet = 1.0  # seconds since the round before
    assert trickle_hold(0, quiet, 0, 0) is None  # nothing moved (a hang-up, an end of file)
    assert trickle_hold(1, quiet, 24, 1) == TRICKLE_HOLD
    assert trickle_hold(TRICKLE_BYTES - 1, quiet, 24, 1 << 20) == TRICKLE_HOLD
    assert trickle_hold(TRICKLE_BYTES, quiet, 24, 1 << 20) is None  # bulk
    # A fast writer caught as it refills the pipe: little, but in no time.
    assert trickle_hold(8192, 1e-4, 24, 1 << 20) is None
    assert trickle_hold(100, TRICKLE_HOLD, 24, 1 << 20) == TRICKLE_HOLD
    # An index outgrowing the output by more than the allowance: the long hold.
    assert trickle_hold(1, quiet, 1000 + INDEX_ALLOWANCE + 1, 1000) == SPARSE_HOLD
    assert trickle_hold(1, quiet, 1000 + INDEX_ALLOWANCE, 1000) == TRICKLE_HOLD


def test_a_stop_is_not_held(worker: Worker) -> None:
    # Trickling until stopped: the stop's SIGTERM reaches the command during a hold, and it dies of
    # it (not of the SIGKILL at the end of the grace period).
    status = worker.start(JobSpec([JOB_PYTHON, "-c", TRICKLE, "600"]))
    wait_until(lambda: worker.status(status.id).output_bytes > 1000, 30, "the trickle")
    final = worker.stop(status.id, grace=30)
    assert final.state is JobState.KILLED
    assert final.signal == signal.SIGTERM
    assert final.stop_requested
