"""Issue 12 through the SDK and jobctl against the real `jobserver`: listings follow pages, a stop
longer than the server's stop wait is still followed to its end by `Client.stop`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from e2e_support import ServerProcess, jobctl, needs_root

from jobclient import AsyncClient, Client, Credentials, JobState

pytestmark = needs_root

PAGE = 100  # the server's default page size
BIG = ["true", "x" * 100_000]


def test_sdk_and_jobctl_list_every_page(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    with Client(server.target, credentials=Credentials.for_user("alice"), timeout=30) as alice:
        started = [alice.start(BIG).id for _ in range(PAGE + 20)]
        listed = alice.list()
        assert [job.id for job in listed] == started
        assert all(job.argv_truncated and len(job.argv[1]) < 2000 for job in listed)
        assert alice.status(started[0]).argv == tuple(BIG)
        assert [job.id for job in alice.iter_jobs(page_size=7)] == started
    result = jobctl(server.target, "alice", "--json", "list")
    assert result.returncode == 0, result.stderr
    assert [job["id"] for job in json.loads(result.stdout)] == started


async def _async_list(target: str) -> list[str]:
    async with AsyncClient(target, credentials=Credentials.for_user("alice"), timeout=30) as alice:
        return [job.id for job in await alice.list()]


def test_async_list_follows_pages(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    with Client(server.target, credentials=Credentials.for_user("alice"), timeout=30) as alice:
        started = [alice.start(["true"]).id for _ in range(PAGE + 5)]
    assert asyncio.run(_async_list(server.target)) == started


def test_stop_longer_than_the_server_wait_is_followed_to_the_end(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with Client(server.target, credentials=Credentials.for_user("alice"), timeout=30) as alice:
        job = alice.start(["sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"])
        assert next(iter(alice.output(job.id))) == b"up\n"
        stopped = alice.stop(job.id, grace=7)  # the server answers after its 5 s stop wait
        assert stopped.state is JobState.KILLED
        assert stopped.signal == 9


def test_jobctl_rm_and_prune(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    with Client(server.target, credentials=Credentials.for_user("alice"), timeout=30) as alice:
        ended = [alice.start(["true", str(i)]).id for i in range(4)]
        for job_id in ended:
            alice.wait(job_id, out=lambda _chunk: None)
        running = alice.start(["sleep", "300"]).id

        result = jobctl(server.target, "alice", "rm", ended[0], running)
        assert result.returncode == 4, result  # refused: the running one
        assert result.stdout.decode().split() == [ended[0]]
        assert f"job {running} is still running; stop it first" in result.stderr.decode()
        result = jobctl(server.target, "bob", "rm", ended[1])
        assert result.returncode == 4 and f"job {ended[1]} not found" in result.stderr.decode()

        result = jobctl(server.target, "alice", "prune", "--older-than", "1h")
        assert result.returncode == 0 and result.stdout == b""
        result = jobctl(server.target, "alice", "prune")
        assert result.returncode == 0, result
        assert sorted(result.stdout.decode().split()) == sorted(ended[1:])
        assert [job.id for job in alice.list()] == [running]
        alice.stop(running, grace=0)
        assert alice.delete(running).id == running
        assert alice.list() == []


async def _async_delete(target: str, job_id: str) -> str:
    async with AsyncClient(target, credentials=Credentials.for_user("carl"), timeout=30) as carl:
        return (await carl.delete(job_id)).owner


def test_async_delete_by_an_admin(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    with Client(server.target, credentials=Credentials.for_user("alice"), timeout=30) as alice:
        job = alice.run(["true"], out=lambda _chunk: None)
        assert asyncio.run(_async_delete(server.target, job.id)) == "alice"
        assert alice.list() == []
