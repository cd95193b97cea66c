"""Keep glibc's malloc from giving model-sized buffers back to the kernel after every use.

A daemon allocates and frees buffers of a model's size many times a round: a received
message, its model field, a client's new arrays, an encoded update. glibc serves requests
above its mmap threshold (128 KiB, raised on the fly only as far as the largest block freed
so far) with a fresh ``mmap``, and trims freed memory at the top of the heap above twice
that; either way the next buffer's pages are faulted in anew (two 400 kB buffers made and
freed: 300 µs with the defaults, 28 µs with these thresholds, in the benchmark VM).

Measured in the benchmark's workloads (same machine, the tree before and after, taking
turns): the 50 fan-out clients took 220,000-232,000 minor faults in 5 s before, 7,000-41,000
after, and 8 % less CPU; a bandwidth round (4 clients, 100 MB) went from 2.71-2.74 s to
2.46-2.54 s with a tenth less CPU on both sides, and the combiner's peak grew from 310 to
334-346 MiB (the heap kept between uses). Buffers from :data:`MMAP_THRESHOLD` up (a 100 MB
model) still get their own mapping and go back to the kernel when freed; a larger
:data:`TRIM_THRESHOLD` (64 MiB) kept more heap and put the combiner's peak near 4x the model.
A 1 MiB mmap threshold made every transfer chunk a mapping of its own: bandwidth rounds of
3.3 s.

glibc's own settings win: with ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
``GLIBC_TUNABLES`` in the environment nothing is changed. Other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for this process (once); True if they are set.

    Called by the daemons (``fedgrpc controller|combiner|client start``) and by
    :meth:`fedgrpc.client.Client.run`; a program that embeds a client otherwise may call it.
    """
    global _tuned
    if _tuned is None:
        _tuned = _set_thresholds()
    return _tuned


def _set_thresholds() -> bool:
    if any(name in os.environ for name in _GLIBC_VARIABLES):
        return False  # the operator chose glibc's settings
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)
    done = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1) and done
    if not done:
        log.debug("mallopt refused the thresholds; keeping glibc's defaults")
    return done
