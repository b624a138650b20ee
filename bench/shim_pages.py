"""What a shim's private pages hold: how many are copies of the launcher's, or of each other (issue 14).

    .venv/bin/python bench/shim_pages.py [--jobs 50]

Starts a jobcore Worker on a temporary state directory with `--jobs` idle `sleep 600` jobs, then reads
every shim's private pages (mapped by that process alone: /proc/PID/pagemap's frame, counted once in
/proc/kpagecount; needs root) from /proc/PID/mem, and sorts them by content:

* the same bytes as the launcher's page at the same address: a page the shim copied on write and whose
  content came back to what it was (a reference count raised and dropped again);
* the same bytes as the page at the same address in every other shim: the same change in every job's
  shim (the objects each shim touches in the same way, whichever job it runs);
* the rest: what differs between jobs (its spec, pids, buffers, the pages of its own objects).

It prints the per-shim medians in kB. The first two kinds are what one process supervising many jobs
would hold once instead of once per job, and what the kernel's same-page merging (KSM) could merge;
the third is the floor of per-job state in any CPython design. Stops every job on exit. A measurement
for docs/benchmarks.md ("What a shim's pages are"), not a target row of run_all.py.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import statistics
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shim_memory import children, fresh_worker, idle_jobs, mappings

PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1


def private_pages(pid: int) -> dict[int, bytes]:
    """Address -> SHA-1 of the content, for each page of `pid` that no other process maps."""
    out: dict[int, bytes] = {}
    with (
        open(f"/proc/{pid}/pagemap", "rb") as pagemap,
        open("/proc/kpagecount", "rb") as kpagecount,
        open(f"/proc/{pid}/mem", "rb") as mem,
    ):
        for (start, end), _info in mappings(pid).items():
            pages = (end - start) // PAGE
            pagemap.seek(start // PAGE * 8)
            raw = pagemap.read(pages * 8)
            if len(raw) != pages * 8:
                continue  # [vsyscall], above the user address space pagemap covers
            entries = struct.unpack(f"{pages}Q", raw)
            for index, entry in enumerate(entries):
                if not entry & _PRESENT:
                    continue
                frame = entry & _PFN_MASK
                kpagecount.seek(frame * 8)
                if struct.unpack("Q", kpagecount.read(8))[0] != 1:
                    continue  # shared with the launcher or other shims: not this shim's memory
                address = start + index * PAGE
                try:
                    mem.seek(address)
                    content = mem.read(PAGE)
                except OSError:
                    continue  # e.g. [vvar]
                out[address] = hashlib.sha1(content).digest()
    return out


def page_hashes(pid: int, addresses: set[int]) -> dict[int, bytes]:
    """SHA-1 of `pid`'s page at each of `addresses` that it maps (private or not)."""
    out: dict[int, bytes] = {}
    with open(f"/proc/{pid}/mem", "rb") as mem:
        for address in addresses:
            try:
                mem.seek(address)
                out[address] = hashlib.sha1(mem.read(PAGE)).digest()
            except OSError:
                continue
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50, help="idle jobs (default 50)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("shim_pages.py needs root (jobs in cgroups, /proc/kpagecount)")
    with fresh_worker() as worker, idle_jobs(worker, args.jobs):
        shims = children(worker.launcher_pid)
        private = {pid: private_pages(pid) for pid in shims}
        everywhere: set[int] = set().union(*(set(p) for p in private.values()))
        launcher = page_hashes(worker.launcher_pid, everywhere)
        # How many shims hold each (address, content) privately.
        holders = collections.Counter(
            (address, digest) for pages in private.values() for address, digest in pages.items()
        )
        rows: dict[str, list[float]] = collections.defaultdict(list)
        kb = PAGE / 1024
        for pages in private.values():
            same_as_launcher = sum(1 for a, d in pages.items() if launcher.get(a) == d)
            in_every_shim = sum(
                1 for a, d in pages.items() if launcher.get(a) != d and holders[(a, d)] == len(private)
            )
            in_some = sum(
                1 for a, d in pages.items() if launcher.get(a) != d and 1 < holders[(a, d)] < len(private)
            )
            rows["private pages"].append(len(pages) * kb)
            rows["  the same as the launcher's"].append(same_as_launcher * kb)
            rows["  the same in every shim"].append(in_every_shim * kb)
            rows["  the same in some other shims"].append(in_some * kb)
            rows["  this shim's own"].append((len(pages) - same_as_launcher - in_every_shim - in_some) * kb)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{len(private)} shims of idle `sleep 600` jobs; load {load}; per-shim medians [min - max], kB")
    for name, values in rows.items():
        print(f"{name:<34} {statistics.median(values):8.0f}  [{min(values):.0f} - {max(values):.0f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
