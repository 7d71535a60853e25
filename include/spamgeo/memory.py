"""How the pipeline's processes hold on to memory; every step calls keep_freed_memory() first.

Each step builds arrays of tens of megabytes and frees them moments later. glibc's malloc takes
blocks that large straight from the kernel and hands them back on free, so every new array is
faulted in again page by page. Where the kernel also reports free memory to its hypervisor (free
page reporting, as on this project's test machines) such a first touch costs about a hundred
times more: 200 MB took 2.5 s there instead of 0.03 s. Keeping freed memory in the process lets
the next array reuse pages that are already mapped, and routing Arrow's allocations through the
same malloc lets memory freed by numpy serve Arrow and the other way round (the whole 1M-row
processing peaked at 910 MB that way, 955 MB with Arrow on its own mimalloc). Steps that loop
over days call release_freed_memory() between them, so a long window does not fragment the heap.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import pyarrow as pa

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

KEEP_BYTES = 1 << 30
"""Blocks up to this size come from malloc's heap, and this much freed memory stays there."""


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel,
    and make it Arrow's default allocator.

    Once per process. Freed blocks are reused rather than added to, so the peak stays about the
    same, and the memory goes back when the process ends (each Airflow task is a process of its
    own). Returns False, changing nothing, where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        version = libc.gnu_get_libc_version
    except (AttributeError, OSError):
        log.debug("Not glibc: leaving the C allocator's settings alone")
        return False
    version.restype = ctypes.c_char_p
    applied = all(
        mallopt(ctypes.c_int(parameter), ctypes.c_int(KEEP_BYTES)) == 1
        for parameter in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)
    )
    if applied:
        pa.set_memory_pool(pa.system_memory_pool())
    log.debug(
        "glibc %s malloc %s up to %d MiB of freed memory for reuse, for numpy and Arrow",
        version().decode(),
        "keeps" if applied else "refused to keep",
        KEEP_BYTES >> 20,
    )
    return applied


def release_freed_memory() -> bool:
    """Hand the memory malloc kept back to the kernel, between units of work such as days.

    Memory kept across a long window fragments: day after day the heap grows by the pieces no
    later day fits into (ten days of counting crept from 830 to 1,050 MB here, thirty to
    1,100 MB). Trimming once a day caps that at about one day's peak, for about 0.1 s a day of
    pages faulted in again. Returns False where the C library is not glibc.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim(ctypes.c_size_t(0))
    return True
