"""One SDK stream, in a process of its own: `bench/run_all.py` runs it with and without the allocator
tuning that jobserver and jobctl apply to themselves (jobclient/_malloc.py), which the SDK leaves to
its host process.

    .venv/bin/python bench/stream_client.py ADDRESS BYTES [--keep-freed-buffers]

Starts `head -c BYTES /dev/zero` as alice (the checked-in certificates), times the start call to the
last byte of `Client.output()`, and prints {"rate": bytes/s, "bytes": n, "exit_code": c} as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from jobclient import Client, Credentials


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("address")
    parser.add_argument("nbytes", type=int)
    parser.add_argument("--keep-freed-buffers", action="store_true")
    args = parser.parse_args()
    if args.keep_freed_buffers:
        from jobclient._malloc import keep_freed_buffers

        keep_freed_buffers()
    with Client(args.address, credentials=Credentials.for_user("alice"), timeout=60) as client:
        client.list()  # connected before the clock starts
        t = time.perf_counter()
        job = client.start(["head", "-c", str(args.nbytes), "/dev/zero"])
        got = 0
        with client.output(job.id) as stream:
            timer = threading.Timer(600, stream.close)  # bounded: a stuck stream is cut after 10 min
            timer.start()
            try:
                for chunk in stream:
                    got += len(chunk)
            finally:
                timer.cancel()
        elapsed = time.perf_counter() - t
        end = client.status(job.id)
    print(json.dumps({"rate": got / elapsed, "bytes": got, "exit_code": end.exit_code}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
