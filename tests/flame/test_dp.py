"""Local DP: Laplace noise statistics over many draws, and what is refused."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from fedgrpc.errors import status_for
from fedgrpc.flame.dp import LocalDpError, apply_local_dp, laplace_scale

DRAWS = 20_000
TOLERANCE_SE = 5  # a seeded rng makes the test deterministic; 5 SE leaves room for any seed


@pytest.mark.parametrize(
    ("epsilon", "sensitivity", "value"),
    [(1.0, 1.0, 10.0), (0.5, 2.0, -3), (4.0, 0.5, np.float32(7.25))],
)
def test_noise_mean_and_scale(epsilon: float, sensitivity: float, value: float) -> None:
    rng = np.random.default_rng(1234)
    params = {"epsilon": epsilon, "sensitivity": sensitivity}
    scale = sensitivity / epsilon
    noise = np.array([apply_local_dp(value, params, rng=rng) for _ in range(DRAWS)]) - float(value)
    n = len(noise)
    # Laplace(0, b): mean 0, sd b*sqrt(2); |X| ~ Exp(b) with mean b and sd b;
    # Var(X) = 2b^2 and Var(X^2) = E[X^4] - (2b^2)^2 = 24b^4 - 4b^4 = 20b^4.
    assert abs(noise.mean()) < TOLERANCE_SE * scale * math.sqrt(2) / math.sqrt(n)
    assert abs(np.abs(noise).mean() - scale) < TOLERANCE_SE * scale / math.sqrt(n)
    variance = float(np.mean(noise**2))
    assert abs(variance - 2 * scale**2) < TOLERANCE_SE * math.sqrt(20) * scale**2 / math.sqrt(n)


def test_noise_is_not_constant_and_default_rng_works() -> None:
    draws = {apply_local_dp(1, {"epsilon": 1.0, "sensitivity": 1.0}) for _ in range(10)}
    assert len(draws) == 10


@pytest.mark.parametrize(
    "value", [5, 5.5, np.int64(5), np.float64(5.5), np.array(5.5), np.array(3, dtype=np.int32)]
)
def test_scalars_accepted_and_return_float(value) -> None:
    out = apply_local_dp(value, {"epsilon": 1e6, "sensitivity": 1.0})
    assert type(out) is float
    assert abs(out - float(value)) < 1e-3


@pytest.mark.parametrize(
    "value",
    [[1.0], {"a": 1.0}, "1.0", np.array([1.0]), np.zeros((2, 2)), None, True, b"1", math.nan],
)
def test_non_scalars_refused(value) -> None:
    with pytest.raises(LocalDpError) as info:
        apply_local_dp(value, {"epsilon": 1.0, "sensitivity": 1.0})
    assert status_for(info.value) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"epsilon": 0, "sensitivity": 1}, "epsilon"),
        ({"epsilon": -1.0, "sensitivity": 1}, "epsilon"),
        ({"epsilon": 1.0, "sensitivity": 0.0}, "sensitivity"),
        ({"epsilon": math.inf, "sensitivity": 1}, "epsilon"),
        ({"epsilon": math.nan, "sensitivity": 1}, "epsilon"),
        ({"epsilon": "1", "sensitivity": 1}, "epsilon"),
        ({"epsilon": True, "sensitivity": 1}, "epsilon"),
        ({"sensitivity": 1.0}, "epsilon"),
        ({"epsilon": 1.0}, "sensitivity"),
    ],
)
def test_bad_params_refused(params, match: str) -> None:
    with pytest.raises(LocalDpError, match=match):
        apply_local_dp(1.0, params)


def test_scale() -> None:
    assert laplace_scale({"epsilon": 0.5, "sensitivity": 2.0}) == 4.0
