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
