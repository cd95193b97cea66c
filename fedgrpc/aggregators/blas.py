"""``y += alpha * x`` in one pass, through the OpenBLAS that numpy's wheels ship.

numpy has no fused multiply-add, so a weighted fold is a multiply and an add per block: on
the benchmark machine 25 ms per 100 MB of float32 against 17 ms for ``np.add``. BLAS's
``axpy`` reads ``x`` and ``y`` once and writes ``y`` once, like ``np.add``. numpy does not
expose it, but its wheels link OpenBLAS (``scipy-openblas``, 64-bit integers) and export
``scipy_cblas_saxpy64_``/``scipy_cblas_daxpy64_``; we call those through ctypes.

Where that library is missing (numpy built against another BLAS) or fails the self-test run
at first use, :func:`axpy` returns False and the caller keeps its numpy path. Each call runs
single-threaded: OpenBLAS would split a large axpy over every core, and its spinning worker
threads would take CPU from the gRPC threads of the daemon doing the fold.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

# The names numpy's wheels give their bundled OpenBLAS (Linux, Windows / macOS).
_LIBRARY_GLOBS = ("numpy.libs/libscipy_openblas64_*", "numpy/.dylibs/libscipy_openblas64_*")
# Setting the thread count is global to the library: calls hold this lock from set to restore.
_THREADS_LOCK = threading.Lock()


class _Blas(NamedTuple):
    axpy: dict[np.dtype[Any], Any]
    get_threads: Any
    set_threads: Any


def axpy(alpha: float, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> bool:
    """``y += alpha * x`` in place for C-contiguous float32/float64 arrays of one shape and
    dtype. Returns False (and changes nothing) when BLAS cannot do it; the caller falls back."""
    blas = _blas()
    if blas is None or not _fits(x, y):
        return False
    function = blas.axpy.get(y.dtype)
    if function is None:
        return False
    with _THREADS_LOCK:
        threads = blas.get_threads()
        if threads != 1:
            blas.set_threads(1)
        try:
            function(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
        finally:
            if threads != 1:
                blas.set_threads(threads)
    return True


def _fits(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> bool:
    return (
        x.dtype == y.dtype
        and x.shape == y.shape
        and x.flags.c_contiguous
        and y.flags.c_contiguous
        and y.flags.writeable
    )


@functools.cache
def _blas() -> _Blas | None:
    blas = _load()
    return blas if blas is not None and _sound(blas) else None


def _load() -> _Blas | None:
    site = Path(np.__file__).resolve().parent.parent
    for pattern in _LIBRARY_GLOBS:
        for path in sorted(site.glob(pattern)):
            try:
                library = ctypes.CDLL(str(path))
                return _bind(library)
            except (OSError, AttributeError):
                continue
    return None


def _bind(library: ctypes.CDLL) -> _Blas:
    functions = {}
    for dtype, name, scalar in (
        (np.float32, "scipy_cblas_saxpy64_", ctypes.c_float),
        (np.float64, "scipy_cblas_daxpy64_", ctypes.c_double),
    ):
        function = getattr(library, name)
        function.restype = None
        function.argtypes = [
            ctypes.c_int64,
            scalar,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
        ]
        functions[np.dtype(dtype)] = function
    get_threads = library.scipy_openblas_get_num_threads64_
    get_threads.restype, get_threads.argtypes = ctypes.c_int, []
    set_threads = library.scipy_openblas_set_num_threads64_
    set_threads.restype, set_threads.argtypes = None, [ctypes.c_int]
    return _Blas(functions, get_threads, set_threads)


def _sound(blas: _Blas) -> bool:
    """Does the bound axpy compute what numpy computes (sizes around BLAS's unroll widths)?"""
    for dtype, function in blas.axpy.items():
        for size in (1, 7, 33, 1000):
            x = np.arange(size, dtype=dtype) - 3
            y = np.linspace(-1, 1, size, dtype=dtype)
            expected = y + dtype.type(0.75) * x
            function(size, 0.75, x.ctypes.data, 1, y.ctypes.data, 1)
            if not np.array_equal(y, expected):
                return False
    return True
