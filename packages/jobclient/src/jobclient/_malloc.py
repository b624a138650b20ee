"""Keep glibc's malloc from handing large buffers back to the kernel after every output message.

A stream moves 1 MiB messages, and each one passes through a few fresh buffers of that size (the read,
the message, its serialization, gRPC's copies). glibc serves blocks that large with `mmap` and gives
freed memory back (`munmap`, trimming the heap's top) at once, so every message pays for hundreds of page
faults, each zeroing a page: on this project's machines that was most of a stream's CPU time
(docs/benchmarks.md, "1 GiB through the stack"). Raising the two thresholds lets freed buffers be reused;
each of malloc's heaps keeps up to `TRIM_BYTES` of free memory instead of returning it, and there are at
most `MAX_ARENAS` thread arenas.

`jobserver` and `jobctl` (processes of our own) call `keep_freed_buffers()`; the SDK does not change
its host process's allocator behind its back.
"""

from __future__ import annotations

from typing import Any

#: Blocks up to this size come from the heap (glibc's default is dynamic, 128 KiB to 32 MiB).
MMAP_THRESHOLD_BYTES = 32 << 20
#: Free memory at the top of a heap beyond this is returned to the kernel.
TRIM_BYTES = 8 << 20
#: At most this many malloc arenas (glibc's default is 8 per CPU): each thread arena's heap keeps up to
#: TRIM_BYTES (glibc's malloc_trim() does not shrink a thread arena's top), so the number of arenas is
#: what bounds the memory kept (measured: 8 streaming threads kept 49 MiB with the default number, 17
#: MiB with 2; 15 MiB untuned).
MAX_ARENAS = 4
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None)  # the process's own symbols: libc's, if it is glibc


def keep_freed_buffers() -> bool:
    """Set glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD; False where that is not possible (another
    C library, or no ctypes)."""
    try:
        import ctypes

        mallopt = _libc().mallopt
    except (ImportError, OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Setting M_TRIM_THRESHOLD alone would switch off glibc's dynamic mmap threshold: set both.
    return bool(
        mallopt(_M_ARENA_MAX, MAX_ARENAS)
        and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)
    )
