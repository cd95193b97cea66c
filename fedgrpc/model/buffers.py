"""Buffers that receive whole models: mapped with their pages faulted in, and reused.

A model received in chunks is written into one buffer of its announced size (see
:class:`fedgrpc.model.chunking.BufferAssembler`). Fresh pages cost the kernel a fault and a
zeroing each: perf on the ModelService kernel's receivers put 18 % of their CPU in zeroing the
100 MB buffer of every transfer. So the last large buffer is kept mapped and handed out again
for the next model of the same size, once nothing references it any more: every view, numpy
array or buffer export of it holds a reference, so CPython's reference count says when the
previous model is gone. One is kept: an idle process holds at most one model-sized buffer it
no longer uses, which the next transfer takes instead of mapping another.
"""

from __future__ import annotations

import mmap
import sys
import threading

# Buffers from this size on are anonymous memory maps, and reused.
MAP_BYTES = 1024 * 1024
# Linux's MADV_POPULATE_WRITE (5.14+); Python 3.11's mmap module does not name it.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


class ReceiveBuffers:
    """Hands out writeable buffers; the last large one is reused once it is unreferenced."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: mmap.mmap | None = None
        # Reference counts only mean "unused" on CPython; elsewhere nothing is reused.
        self._reuse = hasattr(sys, "getrefcount")

    def take(self, size: int) -> bytearray | mmap.mmap:
        """A buffer of ``size`` bytes: zeroed, or, when reused, holding an earlier model's
        bytes, which the caller overwrites (an assembler hands out a buffer only once every
        byte of it has been received)."""
        if size < MAP_BYTES:
            return bytearray(size)
        with self._lock:
            last = self._last
            if self._reuse and last is not None and len(last) == size and _unused(last):
                return last
            self._last = _mapped(size)
            return self._last

    def forget(self) -> None:
        """Stop keeping the last buffer (it is unmapped once nothing references it)."""
        with self._lock:
            self._last = None


def _unused(buffer: mmap.mmap) -> bool:
    # Referenced by ReceiveBuffers._last, by take()'s `last`, by our parameter and by
    # getrefcount's own argument; any view, array or export of the buffer adds one more.
    return sys.getrefcount(buffer) <= 4


RECEIVE_BUFFERS = ReceiveBuffers()


def zeroed(size: int) -> bytearray | mmap.mmap:
    """A writeable zeroed buffer; a large one mapped with its pages already faulted in."""
    return bytearray(size) if size < MAP_BYTES else _mapped(size)


def _mapped(size: int) -> mmap.mmap:
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if not sys.platform.startswith("linux"):
        return mmap.mmap(-1, size, flags=flags)
    buffer = mmap.mmap(-1, size, flags=flags)
    try:
        # 2 MiB pages where the kernel allows them (THP "madvise" mode), then every page
        # faulted in by one call: 100 MB took 18 ms this way against 41 ms with 4 KiB pages
        # and MAP_POPULATE, and the copy into huge pages is faster too.
        if hasattr(mmap, "MADV_HUGEPAGE"):
            buffer.madvise(mmap.MADV_HUGEPAGE)
        buffer.madvise(MADV_POPULATE_WRITE)
    except OSError:  # kernels before 5.14 have no MADV_POPULATE_WRITE
        buffer.close()
        buffer = mmap.mmap(-1, size, flags=flags | getattr(mmap, "MAP_POPULATE", 0))
    return buffer
