"""One SDK stream, in a process of its own: `bench/run_all.py` runs it with and without the allocator
tuning that jobserver and jobctl apply to themselves (jobclient/_malloc.py), which the SDK leaves to
its host process; `bench/stream_cpu.py` also runs it with `--followers`.

    .venv/bin/python bench/stream_client.py ADDRESS BYTES [--keep-freed-buffers] [--followers N]

Starts `head -c BYTES /dev/zero` as alice (the checked-in certificates), times the start call to the
last byte of `Client.output()`, and prints {"rate": bytes/s, "bytes": n, "exit_code": c} as JSON.
With `--followers N`: N clients in this process (one thread and one connection each, all connected
before the clock starts) follow one `head -c BYTES /dev/urandom`, each hashing what it gets; "rate" is
then the aggregate, "bytes" what each received, and the run fails unless all N SHA-256 digests agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time

from jobclient import Client, Credentials


def follow(client: Client, job_id: str, hashed: bool) -> tuple[int, str]:
    """(bytes, SHA-256 if `hashed`) of the job's output; a stuck stream is cut after 10 min."""
    h = hashlib.sha256() if hashed else None
    got = 0
    with client.output(job_id) as stream:
        timer = threading.Timer(600, stream.close)
        timer.start()
        try:
            for chunk in stream:
                got += len(chunk)
                if h is not None:
                    h.update(chunk)
        finally:
            timer.cancel()
    return got, h.hexdigest() if h is not None else ""


def follow_all(clients: list[Client], job_id: str) -> tuple[list[tuple[int, str] | str], float]:
    """Each client follows `job_id` on a thread of its own, all released at once: per follower (bytes,
    SHA-256) or the error it met, and the seconds from the release to the last follower's end."""
    results: list[tuple[int, str] | str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients) + 1)

    def run(client: Client) -> None:
        try:
            barrier.wait(timeout=60)
            result: tuple[int, str] | str = follow(client, job_id, hashed=True)
        except Exception as exc:
            result = f"{type(exc).__name__}: {exc}"
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
    return results, time_together(threads, barrier, timeout=700)


def time_together(threads: list[threading.Thread], barrier: threading.Barrier, timeout: float) -> float:
    """Start `threads` (each waits on `barrier` first), release them together, wait for them all
    (each up to `timeout` seconds); the seconds from the release to the last one's end."""
    for thread in threads:
        thread.start()
    barrier.wait(timeout=60)
    t = time.perf_counter()
    for thread in threads:
        thread.join(timeout=timeout)
    return time.perf_counter() - t


def fan_out(address: str, nbytes: int, n: int) -> int:
    clients = [Client(address, credentials=Credentials.for_user("alice"), timeout=60) for _ in range(n)]
    try:
        job = clients[0].start(["head", "-c", str(nbytes), "/dev/urandom"])
        for c in clients:
            c.status(job.id)  # connected before the clock starts
        results, elapsed = follow_all(clients, job.id)
        end = clients[0].status(job.id)
        if end.ended:
            clients[0].delete(job.id)  # its output counts against alice's quota (10 GiB by default)
    finally:
        for c in clients:
            c.close()
    distinct = set(results)
    ok = len(distinct) == 1 and len(results) == n and isinstance(results[0], tuple)
    got = results[0][0] if ok and isinstance(results[0], tuple) else -1
    rate = sum(r[0] for r in results if isinstance(r, tuple)) / elapsed
    print(json.dumps({"rate": rate, "bytes": got, "exit_code": end.exit_code, "digests": len(distinct)}))
    return 0 if got == nbytes else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("address")
    parser.add_argument("nbytes", type=int)
    parser.add_argument("--keep-freed-buffers", action="store_true")
    parser.add_argument("--followers", type=int, default=0, help="N followers of one job (fan-out)")
    args = parser.parse_args()
    if args.keep_freed_buffers:
        from jobclient._malloc import keep_freed_buffers

        keep_freed_buffers()
    if args.followers:
        return fan_out(args.address, args.nbytes, args.followers)
    with Client(args.address, credentials=Credentials.for_user("alice"), timeout=60) as client:
        client.list()  # connected before the clock starts
        t = time.perf_counter()
        job = client.start(["head", "-c", str(args.nbytes), "/dev/zero"])
        got, _ = follow(client, job.id, hashed=False)
        elapsed = time.perf_counter() - t
        end = client.status(job.id)
        if end.ended:
            client.delete(job.id)  # repeated 1 GiB streams would reach alice's output quota
    print(json.dumps({"rate": got / elapsed, "bytes": got, "exit_code": end.exit_code}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
