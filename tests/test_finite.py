"""The fast finiteness check agrees with ``np.isfinite`` everywhere a NaN or infinity can hide."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedgrpc.aggregators import finite
from fedgrpc.aggregators.finite import all_finite

FLOATS: list[type[np.floating[Any]]] = [np.float16, np.float32, np.float64]
# Block boundaries are tested with short dots; the real length is checked once below.
BLOCK = 1024
# Arrays up to this size take one isfinite instead of dots (tested below).
SMALL = 16


@pytest.fixture(autouse=True)
def short_dots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finite, "_DOT_BLOCK", BLOCK)
    monkeypatch.setattr(finite, "_SMALL", SMALL)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_bad_element_in_a_small_array_is_found_without_a_dot(
    monkeypatch: pytest.MonkeyPatch, dtype: Any, bad: float
) -> None:
    def no_dot(*args: object) -> float:
        raise AssertionError("a small array is checked by isfinite")

    monkeypatch.setattr(np, "dot", no_dot)
    for position in range(SMALL):
        array = np.linspace(-1, 1, SMALL).astype(dtype)
        assert all_finite(array)
        array[position] = bad
        assert not all_finite(array)


def test_a_bad_element_past_the_first_full_length_dot_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.undo()
    length = finite._DOT_BLOCK
    array = np.ones(length + 5, dtype=np.float32)
    assert all_finite(array)
    array[length + 1] = np.inf
    assert not all_finite(array)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_the_zeros_are_read_only_and_take_no_memory_when_read() -> None:
    def resident_bytes() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * mmap.PAGESIZE

    before = resident_bytes()
    zeros = finite._zeros(np.dtype(np.float64), 8 * 1024 * 1024)  # 64 MiB
    assert not zeros.any()
    assert resident_bytes() - before < 8 * 1024 * 1024
    assert not zeros.flags.writeable


def test_the_linked_blas_propagates_nan_through_a_dot_with_zeros() -> None:
    # If this fails the check still works (it falls back to isfinite), only slower.
    assert finite._dot_is_sound(np.dtype(np.float32))
    assert finite._dot_is_sound(np.dtype(np.float64))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("position", [0, BLOCK - 1, BLOCK, 3 * BLOCK + 17, 4 * BLOCK + 99])
def test_one_bad_element_anywhere_is_found(dtype: Any, bad: float, position: int) -> None:
    array = np.linspace(-3e4, 3e4, 4 * BLOCK + 100).astype(dtype)
    assert all_finite(array)
    array[position] = bad
    assert not all_finite(array)
    assert not all_finite(array.reshape(4, -1))


def test_largest_finite_values_do_not_count_as_overflow() -> None:
    for dtype in FLOATS:
        big = np.full(2 * BLOCK + 5, np.finfo(dtype).max, dtype=dtype)
        big[::2] = np.finfo(dtype).min
        assert all_finite(big)
        assert all_finite(np.full(3, np.finfo(dtype).smallest_subnormal, dtype=dtype))


def test_non_contiguous_empty_and_integer_arrays() -> None:
    matrix = np.ones((300, 500), dtype=np.float32)
    matrix[299, 0] = np.nan
    assert not all_finite(matrix.T)
    assert all_finite(matrix[:299].T)
    assert all_finite(np.zeros(0, dtype=np.float32))
    assert all_finite(np.arange(10, dtype=np.int64))
    assert all_finite(np.array([True, False]))


def test_a_blas_that_skips_zeros_falls_back_to_isfinite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(np, "dot", lambda a, b: 0.0)
    finite._dot_is_sound.cache_clear()
    try:
        assert not finite._dot_is_sound(np.dtype(np.float32))
        array = np.ones(BLOCK + 3, dtype=np.float32)
        array[-1] = np.nan
        assert not all_finite(array)
    finally:
        monkeypatch.undo()
        finite._dot_is_sound.cache_clear()


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(FLOATS),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
        elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": True},
    )
)
def test_agrees_with_isfinite(array: np.ndarray) -> None:
    assert all_finite(array) == bool(np.isfinite(array).all())
