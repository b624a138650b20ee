"""Issue 15's everyday jobctl, through the real `jobctl` executable and a real `jobserver`.

logs --stdout/--stderr/--tail/--since/-t/--offset (the server reads the output's index), wait,
several ids per stop/status, id prefixes, list -q/--state/--format, --env NAME and --env-file,
exit statuses 126/127, the stdin note, named contexts (`--context`, `current-context`) and the SDK's
`Client.from_env()` with the same config file.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import CERTS, JOBCTL, ServerProcess, jobctl, jobctl_env, needs_root, ok, wait_for

from jobclient import Client, Credentials

pytestmark = needs_root

# Writes to both streams in a known order, with pauses so that the chunks (and their times) differ.
TWO_STREAMS = (
    "echo out1; echo err1 >&2; sleep 0.3; echo out2; echo err2 >&2; sleep 0.3; "
    "printf 'a\\nb\\nc\\n'; echo err3 >&2"
)
STAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (.*)$")


def start(server: ServerProcess, *command: str, user: str = "alice") -> str:
    return ok(jobctl(server.target, user, "start", "--", *command)).decode().strip()


def status_json(server: ServerProcess, job_id: str, user: str = "alice") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(jobctl(server.target, user, "--json", "status", job_id)))
    return data


def ended(server: ServerProcess, job_id: str) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def done() -> bool:
        nonlocal last
        last = status_json(server, job_id)
        return bool(last["state"] != "running")

    assert wait_for(done, 60, interval=0.1), last
    return last


def logs(server: ServerProcess, job_id: str, *options: str) -> bytes:
    return ok(jobctl(server.target, "alice", "logs", *options, job_id))


def test_logs_select_a_stream_the_last_lines_and_a_start_time(server: ServerProcess) -> None:
    job_id = start(server, "sh", "-c", TWO_STREAMS)
    assert ended(server, job_id)["exit_code"] == 0

    everything = logs(server, job_id)
    assert sorted(everything.splitlines()) == sorted(
        [b"out1", b"err1", b"out2", b"err2", b"a", b"b", b"c", b"err3"]
    )
    assert logs(server, job_id, "--stdout") == b"out1\nout2\na\nb\nc\n"
    assert logs(server, job_id, "--stderr") == b"err1\nerr2\nerr3\n"
    assert logs(server, job_id, "--stdout", "--tail", "2") == b"b\nc\n"
    assert logs(server, job_id, "--stderr", "--tail", "1") == b"err3\n"
    assert logs(server, job_id, "--tail", "0") == b""
    assert logs(server, job_id, "--tail", "100") == everything
    assert logs(server, job_id, "--tail", "1") == everything.splitlines(keepends=True)[-1]

    # -t: every line, each with the time its chunk was written, in order.
    stamped = logs(server, job_id, "--stderr", "-t").splitlines()
    matches = [STAMP.match(line) for line in stamped]
    assert all(matches), stamped
    assert [m.group(2) for m in matches if m] == [b"err1", b"err2", b"err3"]
    times = [datetime.datetime.fromisoformat(m.group(1).decode()) for m in matches if m]
    assert times == sorted(times)

    # --since a time between err1 and what follows (the job slept 0.3 s there): what was written after
    # it and nothing before, for one stream and for both. The time is far from every chunk's, so the
    # expectation follows from the -t times whatever a loaded machine did to the chunks.
    moment = times[0] + datetime.timedelta(seconds=0.15)
    since = moment.isoformat().replace("+00:00", "Z")

    def written_since(stamped_lines: list[bytes]) -> bytes:
        found = [STAMP.match(line) for line in stamped_lines]
        return b"".join(
            m.group(2) + b"\n"
            for m in found
            if m and datetime.datetime.fromisoformat(m.group(1).decode()) >= moment
        )

    expected = written_since(stamped)
    assert expected.endswith(b"err3\n")
    assert not expected.startswith(b"err1")
    assert logs(server, job_id, "--stderr", "--since", since) == expected
    every = logs(server, job_id, "-t").splitlines()
    assert logs(server, job_id, "--since", since) == written_since(every)
    assert logs(server, job_id, "--since", "1h") == everything
    assert logs(server, job_id, "--since", str(time.time() + 3600)) == b""


def test_logs_offset_resumes_at_a_byte(server: ServerProcess) -> None:
    job_id = start(server, "sh", "-c", "seq 1 1000")
    assert ended(server, job_id)["exit_code"] == 0
    everything = logs(server, job_id)
    assert logs(server, job_id, "--offset", "100") == everything[100:]
    assert logs(server, job_id, "--offset", str(len(everything))) == b""
    result = jobctl(server.target, "alice", "logs", "--offset", str(len(everything) + 1), job_id)
    assert result.returncode == 4
    assert b"past the end" in result.stderr


def gate_of(server: ServerProcess, job_id: str) -> Path:
    """The file `while [ ! -e gate ]` waits for: in the job's own scratch directory (its cwd), which
    the sandbox lets the job see and the test (root, on the host) write."""
    return Path(status_json(server, job_id)["cwd"]) / "gate"


def test_logs_follow_with_a_filter_and_timestamps_streams_live(server: ServerProcess) -> None:
    script = "echo early; echo e-early >&2; while [ ! -e gate ]; do sleep 0.05; done; echo late >&2; exit 3"
    job_id = start(server, "sh", "-c", script)
    gate = gate_of(server, job_id)
    proc = subprocess.Popen(
        [str(JOBCTL), "--user", "alice", "logs", "-f", "-t", "--stderr", job_id],
        env=jobctl_env(server.target),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # readline() must not read ahead of what communicate() reads
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # arrives while the job still runs
        assert STAMP.match(first.rstrip(b"\n")), first
        assert first.endswith(b" e-early\n")
        assert proc.poll() is None
        gate.touch()
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert rest.endswith(b" late\n")
    assert b"early\n" not in rest


def test_wait_prints_each_jobs_exit_status(server: ServerProcess) -> None:
    quick = start(server, "sh", "-c", "exit 3")
    slow = start(server, "sh", "-c", "sleep 1; kill -9 $$")
    result = jobctl(server.target, "alice", "wait", quick, slow[:8])
    assert ok(result) == b"3\n137\n"
    assert status_json(server, slow)["state"] == "killed"


def test_stop_and_status_take_several_ids_and_prefixes(server: ServerProcess) -> None:
    ids = [start(server, "sleep", "600") for _ in range(3)]
    text = ok(jobctl(server.target, "alice", "status", ids[0], ids[1][:6])).decode()
    assert text.count("Job:") == 2
    assert ids[0] in text
    assert ids[1] in text
    data = json.loads(ok(jobctl(server.target, "alice", "--json", "status", *ids)))
    assert [job["id"] for job in data] == ids

    # One bad id among good ones: the others are still stopped; the exit status says one failed.
    result = jobctl(server.target, "alice", "stop", "--grace", "0", ids[0], ids[1][:8], "ffffffff")
    assert result.returncode == 4
    assert result.stderr.decode().strip() == "jobctl: job ffffffff not found"
    lines = result.stdout.decode().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(ids[:2])
    assert all(" killed " in line for line in lines)
    assert status_json(server, ids[2])["state"] == "running"

    stopped = json.loads(ok(jobctl(server.target, "alice", "--json", "stop", "--grace", "0", ids[2])))
    assert stopped["id"] == ids[2]  # one id: one object, as before


def test_an_ambiguous_prefix_is_a_clear_error(server: ServerProcess) -> None:
    # 20 random ids share some first hex digit. Started through the SDK: jobctl's prefix lookup is what
    # is under test, and 20 jobctl processes would only add their start-up time.
    with Client(server.target, credentials=Credentials.for_user("alice", CERTS)) as alice:
        ids = [alice.start(["true"]).id for _ in range(20)]
    first_digits = [job_id[0] for job_id in ids]
    shared = next(d for d in first_digits if first_digits.count(d) > 1)
    result = jobctl(server.target, "alice", "status", shared)
    assert result.returncode == 4
    line = result.stderr.decode().strip()
    assert line.startswith(f"jobctl: job id prefix '{shared}' is ambiguous: it matches ")
    assert "give more characters" in line
    assert result.stdout == b""


def test_someone_elses_job_does_not_resolve_from_a_prefix(server: ServerProcess) -> None:
    job_id = start(server, "sleep", "600")
    result = jobctl(server.target, "bob", "status", job_id[:8])
    assert (result.returncode, result.stdout) == (4, b"")
    assert result.stderr.decode().strip() == f"jobctl: job {job_id[:8]} not found"
    # An admin's prefix reaches every user's jobs.
    assert job_id.encode() in ok(jobctl(server.target, "carl", "status", job_id[:8]))


def test_list_quiet_state_and_format(server: ServerProcess) -> None:
    running = start(server, "sleep", "600")
    done = start(server, "sh", "-c", "exit 2")
    ended(server, done)
    assert ok(jobctl(server.target, "alice", "list", "-q")).decode().split() == [running, done]
    assert ok(jobctl(server.target, "alice", "list", "-q", "--state", "running")).decode().split() == [
        running
    ]
    table = ok(jobctl(server.target, "alice", "list", "--format", "id,status,exit")).decode().splitlines()
    assert table[0].split() == ["ID", "STATUS", "EXIT"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert re.search(r"\bUp (Less than a second|\d+ seconds?)\b", rows[running]), rows[running]
    assert re.search(r"Exited \(2\) .* ago\s+2$", rows[done]), rows[done]


def test_env_passthrough_and_env_file(server: ServerProcess, tmp_path: Path) -> None:
    env_file = tmp_path / "job.env"
    env_file.write_text("# the job's settings\nA=1\n\nB=from file\nPASSED\n")
    env = jobctl_env(server.target) | {"PASSED": "from jobctl", "FOO": "bar"}
    result = subprocess.run(
        [str(JOBCTL), "--user", "alice", "run", "--env-file", str(env_file), "--env", "FOO",
         "--env", "B=from option", "--", "env"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.decode().splitlines())
    assert {"A=1", "B=from option", "PASSED=from jobctl", "FOO=bar"} <= lines
    assert not any(line.startswith("JOBCTL_") for line in lines)  # nothing else is inherited


@pytest.mark.parametrize(
    ("command", "expected"),
    [(["/nonexistent/tool"], 127), (["/etc/passwd"], 126), (["/tmp"], 126)],
    ids=["not-found", "not-executable", "a-directory"],
)
def test_a_command_that_cannot_run_exits_like_docker(
    server: ServerProcess, command: list[str], expected: int
) -> None:
    for subcommand in ("run", "start"):
        result = jobctl(server.target, "alice", subcommand, "--", *command)
        assert result.returncode == expected, (subcommand, result)
        assert b"failed to start" in result.stderr


def test_piped_stdin_is_reported_as_not_sent(server: ServerProcess) -> None:
    result = subprocess.run(
        [str(JOBCTL), "--user", "alice", "run", "--", "cat"],
        env=jobctl_env(server.target),
        input=b"some input\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout == b""  # the job's stdin is /dev/null
    assert b"stdin is not sent to the job" in result.stderr


def _write_config(path: Path, server: ServerProcess, current: str | None) -> None:
    lines = [f'current-context = "{current}"'] if current else []
    lines += [
        "[contexts.as-alice]",
        f'server = "{server.target}"',
        f'ca = "{CERTS / "ca.crt"}"',
        f'cert = "{CERTS / "alice.crt"}"',
        f'key = "{CERTS / "alice.key"}"',
        "[contexts.as-carl]",
        f'server = "{server.target}"',
        'ca = "certs/ca.crt"',  # relative: from the config file's folder
        'cert = "certs/carl.crt"',
        'key = "certs/carl.key"',
        'tls-server-name = "localhost"',
    ]
    path.write_text("\n".join(lines) + "\n")


def _bare_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCTL_", "GRPC_"))}
    env["JOBCTL_CONFIG"] = str(config)
    return env


def test_contexts_select_server_and_identity(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "certs").symlink_to(CERTS)
    config = tmp_path / "config.toml"
    _write_config(config, server, current="as-alice")
    job_id = start(server, "sleep", "600")

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(JOBCTL), *args], env=_bare_env(config) | extra, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip

    # current-context: alice, on the server of the context (no --server, no $JOBCTL_SERVER).
    assert ok(run("list", "-q")).decode().split() == [job_id]
    # --context: carl (an admin), with paths relative to the config file and a TLS server name.
    assert job_id.encode() in ok(run("--context", "as-carl", "list", "-q", "--all"))
    assert job_id.encode() in ok(run("list", "-q", "--all", JOBCTL_CONTEXT="as-carl"))
    # The environment wins over the context, the command line over both.
    as_bob = ok(run("list", "-q", JOBCTL_USER="bob", JOBCTL_CERTS=str(CERTS)))
    assert as_bob == b""
    result = run("--server", "127.0.0.1:1", "list")
    assert result.returncode == 3
    assert b"127.0.0.1:1" in result.stderr
    # An unknown context: a usage error naming the file and the contexts it has.
    result = run("--context", "nope", "list")
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        f"jobctl: no context 'nope' in {config} (contexts: as-alice, as-carl)"
    )


def test_client_from_env_uses_the_same_contexts(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobclient import Client, ConfigError

    (tmp_path / "certs").symlink_to(CERTS)
    config = tmp_path / "config.toml"
    _write_config(config, server, current="as-alice")
    for name in [k for k in os.environ if k.startswith("JOBCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("JOBCTL_CONFIG", str(config))
    with Client.from_env() as client:
        assert client.target == server.target
        job = client.run(["sh", "-c", "echo from env"], out=(sink := _Sink()))
        assert (job.exit_code, sink.data) == (0, b"from env\n")
        assert job.owner == "alice"
    with Client.from_env(context="as-carl") as admin:
        assert admin.tls_server_name == "localhost"
        assert job.id in {j.id for j in admin.list(all_users=True)}
    monkeypatch.setenv("JOBCTL_CONTEXT", "missing")
    with pytest.raises(ConfigError, match="no context 'missing'"):
        Client.from_env()


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk


def test_sdk_output_filters_and_chunks_sync_and_async(server: ServerProcess) -> None:
    import asyncio

    from jobclient import AsyncClient, Client, Credentials

    alice = Credentials.for_user("alice", CERTS)
    with Client(server.target, credentials=alice) as client:
        job = client.run(["sh", "-c", TWO_STREAMS], out=_Sink())
        assert b"".join(client.output(job.id, stream="stderr")) == b"err1\nerr2\nerr3\n"
        assert b"".join(client.output(job.id, stream="stdout", tail=1)) == b"c\n"
        chunks = list(client.output_chunks(job.id))
        assert {c.stream for c in chunks} == {"stdout", "stderr"}
        assert all(c.time is not None and c.time.tzinfo is not None for c in chunks)
        assert b"".join(c.data for c in chunks) == b"".join(client.output(job.id))
        stderr_chunks = [c for c in chunks if c.stream == "stderr"]
        later = stderr_chunks[-1]  # err3, or more if a stalled shim read several writes at once
        assert later.time is not None
        since_later = b"".join(c.data for c in stderr_chunks if c.time is not None and c.time >= later.time)
        assert b"".join(client.output(job.id, since=later.time, stream="stderr")) == since_later
        assert since_later.endswith(b"err3\n")
        stream = client.output(job.id, stream="stderr", follow=False)
        first = next(stream)
        stream.close()
        # The offset of a filtered stream is one of the whole output: it resumes without repeating.
        rest = b"".join(client.output(job.id, offset=stream.offset, stream="stderr"))
        assert first.startswith(b"err1\n")
        assert first + rest == b"err1\nerr2\nerr3\n"

    async def run_async() -> list[tuple[str | None, bytes]]:
        async with AsyncClient(server.target, credentials=alice) as aclient:
            return [(c.stream, c.data) async for c in aclient.output_chunks(job.id, stream="stderr")]

    async_chunks = asyncio.run(run_async())
    assert {name for name, _ in async_chunks} == {"stderr"}
    assert b"".join(data for _, data in async_chunks) == b"err1\nerr2\nerr3\n"


def test_a_second_ctrl_c_to_run_kills_the_job_at_once(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # The job ignores SIGTERM and the server's default grace is 300 s: after the first Ctrl-C the job
    # would outlive the 60 s bound below; the second asks for SIGKILL now, and run exits 128+9.
    config = tmp_path / "jobserver.toml"
    config.write_text("[requests]\ndefault_stop_grace_seconds = 300\n")
    server = start_server("--config", str(config))
    script = "trap '' TERM; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(
        [str(JOBCTL), "--user", "alice", "run", "--", "sh", "-c", script],
        env=jobctl_env(server.target),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        (job,) = json.loads(ok(jobctl(server.target, "alice", "--json", "list")))
        assert wait_for(lambda: status_json(server, job["id"])["stop_requested"], 30)
        assert proc.poll() is None  # still waiting: SIGTERM is ignored
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert b"killing job" in err
    assert status_json(server, job["id"])["signal"] == signal.SIGKILL


def test_logs_follow_resumes_across_a_server_restart(server: ServerProcess) -> None:
    script = "echo before; echo e-before >&2; while [ ! -e gate ]; do sleep 0.05; done; echo after >&2"
    job_id = start(server, "sh", "-c", script)
    gate = gate_of(server, job_id)
    assert wait_for(lambda: status_json(server, job_id)["output_bytes"] == len(b"before\ne-before\n"), 30)
    followers = {
        name: subprocess.Popen(
            [str(JOBCTL), "--user", "alice", "logs", *options, job_id],
            env=jobctl_env(server.target),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # readline() below must not read ahead of what communicate() reads
        )
        for name, options in (("plain", ["-f"]), ("stamped", ["-f", "--stderr", "-t"]))
    }
    first: dict[str, bytes] = {}
    try:
        for name, proc in followers.items():
            assert proc.stdout is not None
            first[name] = proc.stdout.readline()  # following before the restart
        assert server.terminate() == 0
        server.restart()
        gate.touch()
        results = {name: proc.communicate(timeout=60) for name, proc in followers.items()}
    finally:
        for proc in followers.values():
            proc.kill()
    for name, proc in followers.items():
        assert proc.returncode == 0, (name, results[name][1])
    # Nothing lost, nothing repeated: the whole output, as stored.
    plain = first["plain"] + results["plain"][0]
    assert plain == logs(server, job_id)
    stamped = (first["stamped"] + results["stamped"][0]).splitlines()
    assert [m.group(2) for m in map(STAMP.match, stamped) if m] == [b"e-before", b"after"], stamped


@pytest.mark.parametrize(
    "fields",
    [{"stream": 99}, {"since": float("nan")}, {"since": float("inf")}],
    ids=["unknown-stream", "nan-since", "infinite-since"],
)
def test_a_bad_indexed_request_is_invalid_argument(server: ServerProcess, fields: dict[str, Any]) -> None:
    import grpc

    from jobclient.proto.jobworker.v1 import jobworker_pb2 as pb
    from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc

    job_id = start(server, "true")
    credentials = grpc.ssl_channel_credentials(
        (CERTS / "ca.crt").read_bytes(),
        (CERTS / "alice.key").read_bytes(),
        (CERTS / "alice.crt").read_bytes(),
    )
    # A raw stub: the SDK never sends such a request, so the server's own check is what is under test.
    with grpc.secure_channel(server.target, credentials) as channel:
        request = pb.StreamOutputRequest(job_id=job_id, **fields)
        with pytest.raises(grpc.RpcError) as info:
            list(pb_grpc.JobWorkerStub(channel).StreamOutput(request, timeout=30))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
