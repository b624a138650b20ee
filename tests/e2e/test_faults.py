"""Issue 7's fault tests: the server SIGKILLed under load, a slow stream consumer, a full state disk.

All against `jobserver` subprocesses on 127.0.0.1, driven by the SDK (and `jobctl` where the message a
person sees is the point). Randomness is seeded; the seed is printed, and `JOBWORKER_FAULT_SEED=N`
replays a run.
"""

from __future__ import annotations

import collections
import errno
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from e2e_support import (
    JOB_ID,
    ServerProcess,
    assert_one_line_diagnostic,
    cgroup_dirs_of,
    jobctl,
    live_job_processes,
    needs_root,
    rss_bytes,
    seq_output,
    wait_for,
)

from jobclient import (
    Client,
    Credentials,
    Job,
    JobClientError,
    JobState,
    ResourceExhausted,
    ServerError,
    Unavailable,
)

pytestmark = needs_root

MIB = 1024 * 1024


def client(server: ServerProcess, user: str = "alice", timeout: float = 30) -> Client:
    return Client(server.target, credentials=Credentials.for_user(user), timeout=timeout)


def read_all(c: Client, job_id: str, *, follow: bool = True) -> bytes:
    with c.output(job_id, follow=follow) as stream:
        return b"".join(stream)


def wait_ended(c: Client, job_id: str, timeout: float = 120) -> Job:
    job = c.status(job_id)

    def ended() -> bool:
        nonlocal job
        job = c.status(job_id)
        return job.ended

    assert wait_for(ended, timeout, interval=0.1), f"job {job_id} still running after {timeout} s: {job}"
    return job


# ---------------------------------------------------------------------------- SIGKILL under load

#: Commands whose output is a pure function of their argv (see expected_output).
LONG_SLEEP = "exec sleep 600"


def seq_job(n: int) -> list[str]:
    return ["seq", "1", str(n)]


def slow_job(n: int) -> list[str]:
    # One line every ~10 ms: spans server restarts.
    return ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo $i; sleep 0.01; done"]


def long_job(n: int) -> list[str]:
    return ["sh", "-c", f"seq 1 {n}; {LONG_SLEEP}"]


def expected_output(argv: tuple[str, ...] | list[str]) -> bytes:
    if argv[0] == "seq":
        return seq_output(int(argv[2]))
    script = argv[2]
    if script.startswith("i=0;"):
        return seq_output(int(script.split("-lt ")[1].split(";")[0].rstrip("]").strip()))
    if script.endswith(LONG_SLEEP):
        return seq_output(int(script.split()[2].rstrip(";")))
    raise AssertionError(f"not a command of this test: {argv}")


@attrs.define
class LoadClient:
    """One client thread's record: the jobs the server acknowledged, and what went wrong."""

    user: str
    rng: random.Random
    acknowledged: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    long_running: list[str] = attrs.field(factory=list)
    unavailable: int = 0
    #: Starts refused because the user already ran as many jobs as the server allows (backpressure:
    #: two of the load clients are alice, and each can start dozens of short jobs a second).
    refused: int = 0
    #: Attempts to resume a follow at its offset after a server death mid-output.
    resumed: int = 0
    calls: int = 0
    errors: list[str] = attrs.field(factory=list)


def drive(server: ServerProcess, load: LoadClient, stop: threading.Event, max_long: int) -> None:
    """Starts, statuses and partial streams until `stop`; tolerates the server being down."""
    with client(server, load.user, timeout=10) as c:
        while not stop.is_set():
            load.calls += 1
            try:
                roll = load.rng.random()
                known = list(load.acknowledged)
                if roll < 0.45 or not known:
                    if load.rng.random() < 0.15 and len(load.long_running) < max_long:
                        argv = long_job(load.rng.randint(1, 2000))
                    elif load.rng.random() < 0.5:
                        argv = slow_job(load.rng.randint(20, 200))
                    else:
                        argv = seq_job(load.rng.randint(1, 60000))
                    job = c.start(argv)
                    load.acknowledged[job.id] = tuple(argv)
                    if argv[-1].endswith(LONG_SLEEP):
                        load.long_running.append(job.id)
                elif roll < 0.75:
                    c.status(load.rng.choice(known))
                else:
                    # A partial read: whatever is stored must be a prefix of what the job prints.
                    job_id = load.rng.choice(known)
                    data = read_all(c, job_id, follow=False)
                    if not expected_output(load.acknowledged[job_id]).startswith(data):
                        load.errors.append(f"job {job_id}: stored output is not a prefix of the expected")
            except (Unavailable, ServerError):
                # The server is down (or went down mid-call): try again shortly.
                load.unavailable += 1
                time.sleep(0.05)
            except ResourceExhausted:
                load.refused += 1
                time.sleep(0.2)
            except JobClientError as exc:
                load.errors.append(f"{type(exc).__name__}: {exc}")


def follow_through_restarts(
    server: ServerProcess, load: LoadClient, rng: random.Random, stop: threading.Event, followed: list[str]
) -> None:
    """Follows slow jobs to their end across server deaths, resuming each time at the offset reached:
    the bytes put together must be the job's output exactly (nothing lost, nothing repeated)."""
    with client(server, load.user, timeout=10) as c:
        while not stop.is_set():
            candidates = [
                job_id for job_id, argv in list(load.acknowledged.items()) if argv[2].startswith("i=0;")
            ]
            if not candidates:
                time.sleep(0.1)
                continue
            job_id = rng.choice(candidates[-3:])  # the latest: most likely still running
            data = bytearray()
            while True:
                try:
                    with c.output(job_id, offset=len(data)) as stream:
                        for chunk in stream:
                            data += chunk
                    break
                except (Unavailable, ServerError):
                    load.unavailable += 1
                    if data:
                        load.resumed += 1
                    time.sleep(0.1)
                except JobClientError as exc:
                    load.errors.append(f"following {job_id}: {type(exc).__name__}: {exc}")
                    return
            if bytes(data) != expected_output(load.acknowledged[job_id]):
                load.errors.append(f"job {job_id}: a follow resumed across restarts got {len(data)} bytes")
            followed.append(job_id)


def check_job_complete(c: Client, job: Job, seed: int) -> None:
    """An ended job exited 0 with exactly the output its command prints; a running one is controllable."""
    expected = expected_output(job.argv)
    where = f"job {job.id} {job.argv!r} (seed {seed})"
    if job.argv[-1].endswith(LONG_SLEEP):
        assert job.state is JobState.RUNNING, where
        assert wait_for(lambda: c.status(job.id).output_bytes >= len(expected), 30), where
        assert read_all(c, job.id, follow=False) == expected, where
        stopped = c.stop(job.id, grace=0)
        assert stopped.state is JobState.KILLED, (where, stopped)
        assert stopped.stop_requested, where
    else:
        job = wait_ended(c, job.id)
        assert job.state is JobState.EXITED and job.exit_code == 0, (where, job)
    data = read_all(c, job.id)
    assert len(data) == len(expected), f"{where}: {len(data)} bytes of output, expected {len(expected)}"
    assert data == expected, where
    assert c.status(job.id).output_bytes == len(expected), where


def test_sigkilled_server_restarted_on_the_same_state_loses_no_job_or_byte(
    start_server: Callable[..., ServerProcess],
) -> None:
    seed = int(os.environ.get("JOBWORKER_FAULT_SEED") or random.randrange(2**32))
    print(f"JOBWORKER_FAULT_SEED={seed}")
    rng = random.Random(seed)
    server = start_server()
    loads = [LoadClient(user, random.Random(rng.random())) for user in ("alice", "bob", "alice", "carl")]
    stop = threading.Event()
    threads = [
        threading.Thread(target=drive, args=(server, load, stop, 3), name=f"load-{i}")
        for i, load in enumerate(loads)
    ]
    followed: list[str] = []
    for i, load in enumerate(loads[:2]):
        args = (server, load, random.Random(rng.random()), stop, followed)
        threads.append(threading.Thread(target=follow_through_restarts, args=args, name=f"follow-{i}"))
    for t in threads:
        t.start()
    kills = 4
    # Every job id the server had begun at the moment of a kill, finished or not: a start cut short
    # by the kill is a staging directory `.ID.new` (made before the cgroup), which a restart removes.
    begun: set[str] = set()
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 3.0))
            server.kill()
            begun |= job_ids_in(server.state_dir / "jobs")
            time.sleep(rng.uniform(0.0, 0.5))
            server.restart()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads)
    for load in loads:
        assert not load.errors, (seed, load.errors)
    acknowledged = {job_id: argv for load in loads for job_id, argv in load.acknowledged.items()}
    assert sum(load.unavailable for load in loads) > 0, "the kills never interrupted a call"
    assert len(acknowledged) >= 10, f"too little load to prove anything (seed {seed})"
    assert followed, "no job was followed to its end"

    with client(server, "carl") as admin:
        listed = {job.id: job for job in admin.list(all_users=True)}
        missing = acknowledged.keys() - listed.keys()
        assert not missing, f"job records lost after SIGKILL (seed {seed}): {sorted(missing)}"
        for job_id, job in listed.items():
            assert job.argv == acknowledged.get(job_id, job.argv), job
            if job_id not in acknowledged and job.state is JobState.LOST:
                # The server died between creating this job and answering the client: the start was
                # never acknowledged, so a lost job is an honest record of an interrupted start.
                continue
            assert job.state is not JobState.LOST, (seed, job)
            check_job_complete(admin, job, seed)
        states = collections.Counter(job.state.value for job in listed.values())
        print(
            f"{len(listed)} jobs ({len(acknowledged)} acknowledged; states when listed: {dict(states)}) "
            f"across {kills} SIGKILLs, {sum(load.calls for load in loads)} calls, "
            f"{len(followed)} follows to a job's end, "
            f"{sum(x.resumed for x in loads)} retries after a server death mid-output"
        )
    jobs_dir = server.state_dir / "jobs"
    assert wait_for(lambda: not live_job_processes(jobs_dir), 30), live_job_processes(jobs_dir)
    assert wait_for(lambda: not cgroup_dirs_of(listed), 30), cgroup_dirs_of(listed)
    # Nor any other: a start cut short by a kill (never acknowledged, never listed) leaves none either.
    # (Only this server's ids: other test runs on the same host make and remove job cgroups meanwhile.)
    unlisted = begun - listed.keys()
    assert wait_for(lambda: not cgroup_dirs_of(unlisted), 30), cgroup_dirs_of(unlisted)


def job_ids_in(jobs_dir: Path) -> set[str]:
    """The job ids of a state's job directories and of its interrupted starts' staging directories."""
    if not jobs_dir.is_dir():
        return set()
    names = (entry.name.removeprefix(".").removesuffix(".new") for entry in jobs_dir.iterdir())
    return {name for name in names if JOB_ID.fullmatch(name)}


# ---------------------------------------------------------------------------- slow consumer


def test_a_stream_nobody_reads_neither_grows_the_server_nor_blocks_the_job(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    size = 500 * MIB
    with client(server) as c, client(server) as slow, client(server) as stalled:
        baseline = rss_bytes(server.pid)
        job = c.start(["head", "-c", str(size), "/dev/zero"])
        # One consumer takes one chunk and then nothing; another never asks for anything at all.
        reading = slow.output(job.id)
        first = next(reading)
        assert first and set(first) == {0}
        never = stalled.output(job.id)
        peak = baseline

        def ended() -> bool:
            nonlocal peak
            peak = max(peak, rss_bytes(server.pid))
            return c.status(job.id).ended

        assert wait_for(ended, 300, interval=0.1), "the job did not finish while its readers stalled"
        peak = max(peak, rss_bytes(server.pid))
        final = c.status(job.id)
        assert final.state is JobState.EXITED and final.exit_code == 0, final
        assert final.output_bytes == size
        # Generous: a server buffering what the stalled readers do not take would need ~1 GiB here.
        print(f"server RSS: {baseline // MIB} MiB before, at most {peak // MIB} MiB while the job wrote")
        assert peak - baseline < 128 * MIB, f"server RSS grew by {(peak - baseline) // MIB} MiB"
        with c.output(job.id, offset=size - 4096, follow=False) as tail:
            assert b"".join(tail) == bytes(4096)
        reading.close()
        never.close()
    # Both stalled streams were open on the server (each is audited when it ends: cancelled).
    cancelled = '"method": "/jobworker.v1.JobWorker/StreamOutput"'
    assert wait_for(
        lambda: (
            sum('"CANCELLED"' in line and cancelled in line for line in server.log_text().splitlines()) == 2
        ),
        30,
    ), server.log_text()[-3000:]
    assert wait_for(lambda: rss_bytes(server.pid) - baseline < 128 * MIB, 30)


# ---------------------------------------------------------------------------- full state disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted for this test (no block device: no IO limits on it)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mount_point)], check=True
    )
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def disk_server(small_disk: Path, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    # Depends on small_disk first, so the server is stopped before the file system is unmounted.
    return start_server(state_dir=small_disk / "state")


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file in `directory` until the file system is full; returns its path."""
    path = directory / name
    block = b"\xa5" * MIB
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # Whatever is smaller than a block: take it too.
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\xa5" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return path


def database_is_intact(state_dir: Path) -> list[tuple[str, ...]]:
    db = sqlite3.connect(f"file:{state_dir / 'jobserver.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return db.execute("SELECT id, owner FROM jobs ORDER BY created_at").fetchall()
    finally:
        db.close()


def test_full_state_disk_keeps_records_and_serves_again_once_space_is_freed(
    disk_server: ServerProcess, small_disk: Path
) -> None:
    server = disk_server
    before = jobctl(server.target, "alice", "run", "--", "echo", "before")
    assert (before.returncode, before.stdout) == (0, b"before\n"), before
    with client(server) as c:
        (done,) = c.list()
        quiet = c.start(["sleep", "600"])
        filler = fill(small_disk)

        # Finished jobs are still served, from records that were written before the disk filled.
        status = jobctl(server.target, "alice", "--json", "status", done.id)
        assert status.returncode == 0, status
        assert b'"exit_code": 0' in status.stdout
        logs = jobctl(server.target, "alice", "logs", done.id)
        assert (logs.returncode, logs.stdout) == (0, b"before\n")
        listing = jobctl(server.target, "alice", "list")
        assert listing.returncode == 0 and done.id.encode() in listing.stdout
        assert c.status(quiet.id).state is JobState.RUNNING

        # A start fails, as one line, and leaves nothing half-made behind.
        refused = jobctl(server.target, "alice", "start", "--", "echo", "during")
        assert (refused.returncode, refused.stdout) == (4, b""), refused
        assert_one_line_diagnostic(refused.stderr, "space")
        assert server.running
        assert [j.id for j in c.list()] == [done.id, quiet.id]

        filler.unlink()
        after = jobctl(server.target, "alice", "run", "--", "echo", "after")
        assert (after.returncode, after.stdout) == (0, b"after\n"), after
        assert c.stop(quiet.id, grace=0).state is JobState.KILLED
        ids = [j.id for j in c.list()]
    assert len(ids) == 3
    assert [row[0] for row in database_is_intact(small_disk / "state")] == ids

    # The records survive a restart on the recovered disk, unchanged.
    assert server.terminate() == 0
    server.restart()
    with client(server) as c:
        jobs = c.list()
        assert [j.id for j in jobs] == ids
        assert [j.state for j in jobs] == [JobState.EXITED, JobState.KILLED, JobState.EXITED]
        assert read_all(c, ids[2]) == b"after\n"


def test_start_on_a_full_state_disk_is_refused_with_a_clear_message(
    disk_server: ServerProcess, small_disk: Path
) -> None:
    fill(small_disk)
    refused = jobctl(disk_server.target, "alice", "start", "--", "echo", "during")
    # RESOURCE_EXHAUSTED is gRPC's code for "the entire file system is out of space": exit 4.
    assert refused.returncode == 4, refused
    line = assert_one_line_diagnostic(refused.stderr)
    assert "space" in line.lower(), line


def test_a_job_filling_the_state_disk_ends_with_a_clear_reason(
    disk_server: ServerProcess, small_disk: Path
) -> None:
    with client(disk_server) as c:
        job = c.start(["head", "-c", str(100 * MIB), "/dev/zero"])
        ended = wait_ended(c, job.id, 60)
        # Stopped (SIGKILL, like the output cap) with the reason in words; what was stored is served.
        assert ended.state is JobState.KILLED and ended.signal == signal.SIGKILL, ended
        assert "no space left on device" in ended.reason.lower(), ended
        assert 0 < ended.output_bytes < 64 * MIB, ended
        assert read_all(c, job.id) == bytes(ended.output_bytes)
    # What a person sees.
    status = jobctl(disk_server.target, "alice", "status", job.id)
    assert status.returncode == 0, status
    assert "No space left on device" in status.stdout.decode(), status


def test_the_server_keeps_working_after_a_job_ended_on_a_full_state_disk(
    disk_server: ServerProcess, small_disk: Path
) -> None:
    with client(disk_server) as c:
        job = c.start(["sleep", "1"])
        filler = fill(small_disk)
        # Its end is recorded although not one more byte fits.
        quiet = wait_ended(c, job.id, 60)
        assert quiet.state is JobState.EXITED and quiet.exit_code == 0, quiet
        filler.unlink()
        after = c.start(["echo", "after"])
        ended = wait_ended(c, after.id, 60)
        assert ended.state is JobState.EXITED and ended.exit_code == 0, ended
        assert read_all(c, after.id) == b"after\n"
    run = jobctl(disk_server.target, "alice", "run", "--", "echo", "again")
    assert (run.returncode, run.stdout) == (0, b"again\n"), run


def test_server_restart_after_a_full_disk_serves_every_record(
    disk_server: ServerProcess, small_disk: Path
) -> None:
    """Whatever happened while the disk was full, the next server reads the state and works."""
    reserve = small_disk / "reserve"
    reserve.write_bytes(bytes(16 * MIB))
    with client(disk_server) as c:
        done = c.run(["echo", "kept"], out=lambda _b: None)
        job = c.start(["head", "-c", str(100 * MIB), "/dev/zero"])
        wait_ended(c, job.id, 60)
    reserve.unlink()
    disk_server.kill()
    disk_server.restart()
    with client(disk_server) as c:
        jobs = {j.id: j for j in c.list()}
        assert jobs.keys() == {done.id, job.id}
        assert jobs[done.id].state is JobState.EXITED and jobs[done.id].exit_code == 0
        assert read_all(c, done.id) == b"kept\n"
        filled = jobs[job.id]
        assert filled.state is JobState.KILLED, filled
        assert "no space left on device" in filled.reason.lower(), filled
        assert read_all(c, job.id) == bytes(filled.output_bytes)
        fresh = c.run(["echo", "fresh"], out=lambda _b: None)
        assert fresh.state is JobState.EXITED and fresh.exit_code == 0
    database_is_intact(small_disk / "state")
