"""The fused ``y += alpha * x`` through numpy's bundled OpenBLAS, and the fallback without it."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedgrpc.aggregators import accumulator as accumulator_module
from fedgrpc.aggregators import blas
from fedgrpc.aggregators.accumulator import WeightedMeanAccumulator

FLOATS = [np.float32, np.float64]


@pytest.mark.skipif(sys.platform != "linux", reason="numpy's Linux wheels bundle OpenBLAS")
def test_numpys_openblas_is_found_and_passes_its_self_test() -> None:
    assert blas._blas() is not None


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("size", [1, 5, 64, 100_003])
def test_axpy_equals_numpy_multiply_then_add(dtype: Any, size: int) -> None:
    rng = np.random.default_rng(size)
    x = rng.standard_normal(size).astype(dtype)
    y = rng.standard_normal(size).astype(dtype)
    alpha = np.longdouble(dtype(0.37))
    exact = y.astype(np.longdouble) + alpha * x.astype(np.longdouble)
    if not blas.axpy(0.37, x, y):
        pytest.skip("no bundled OpenBLAS on this platform")
    # Within numpy's own bound for a multiply and an add (a fused one rounds once, not twice).
    bound = 2 * np.finfo(dtype).eps * (np.abs(exact) + np.abs(alpha * x.astype(np.longdouble)))
    assert np.all(np.abs(y.astype(np.longdouble) - exact) <= bound)


def test_axpy_leaves_blas_threads_as_they_were() -> None:
    bound = blas._blas()
    if bound is None:
        pytest.skip("no bundled OpenBLAS on this platform")
    before = bound.get_threads()
    x = np.ones(50_000, dtype=np.float32)
    assert blas.axpy(2.0, x, x.copy())
    assert bound.get_threads() == before


@pytest.mark.parametrize(
    "case",
    ["other dtype", "other shape", "non-contiguous", "read-only", "integers"],
)
def test_axpy_declines_what_it_cannot_do_and_changes_nothing(case: str) -> None:
    x: npt.NDArray[Any] = np.arange(8, dtype=np.float32)
    y: npt.NDArray[Any] = np.ones(8, dtype=np.float32)
    if case == "other dtype":
        x = x.astype(np.float64)
    elif case == "other shape":
        x = x[:4]
    elif case == "non-contiguous":
        x, y = np.arange(16, dtype=np.float32)[::2], np.ones(16, dtype=np.float32)[::2]
    elif case == "read-only":
        y.flags.writeable = False
    else:
        x, y = np.arange(8), np.ones(8, dtype=np.int64)
    before = y.copy()
    assert blas.axpy(0.5, x, y) is False
    np.testing.assert_array_equal(y, before)


@pytest.mark.parametrize("consume", [False, True])
def test_unequal_weights_give_the_same_mean_with_or_without_blas(
    monkeypatch: pytest.MonkeyPatch, consume: bool
) -> None:
    rng = np.random.default_rng(9)
    updates: list[dict[str, npt.NDArray[Any]]] = [
        {"w": rng.standard_normal((300, 7)).astype(np.float32), "b": rng.standard_normal(5)}
        for _ in range(4)
    ]
    weights = [100.0, 90.0, 7.0, 250.0]

    def mean() -> dict[str, Any]:
        accumulator = WeightedMeanAccumulator(updates[0])
        for update, weight in zip(updates, weights, strict=True):
            copies = {name: array.copy() for name, array in update.items()}
            accumulator.add(copies, weight, consume=consume)
        return accumulator.mean()

    with_blas = mean()
    monkeypatch.setattr(accumulator_module, "axpy", lambda *_: False)
    without_blas = mean()
    for name, values in with_blas.items():
        np.testing.assert_allclose(values, without_blas[name], rtol=1e-6, atol=1e-6)
    expected = sum(w * u["w"].astype(np.float64) for u, w in zip(updates, weights, strict=True))
    np.testing.assert_allclose(with_blas["w"], expected / sum(weights), rtol=1e-5, atol=1e-6)
