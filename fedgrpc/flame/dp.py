"""Local differential privacy for final results (FLAME's ``local_dp`` parameter).

The Laplace mechanism: a scalar result ``x`` with L1 sensitivity ``s`` leaves the node as
``x + Laplace(0, s / epsilon)``, which is epsilon-differentially private for that one release.
Only scalars are accepted: FLAME adds the same noise to whatever it is given, and noise added to
one element of a list or to a string protects nothing, so those are refused instead.

Caveat: like FLAME (and most libraries), this samples with floating-point arithmetic, whose
rounding leaks a little (Mironov 2012); the guarantee is the textbook one, not a hardened one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any, TypedDict

import numpy as np

from fedgrpc.errors import InvalidArgument

__all__ = ["LocalDifferentialPrivacyParams", "LocalDpError", "apply_local_dp", "laplace_scale"]


class LocalDifferentialPrivacyParams(TypedDict):
    epsilon: float
    sensitivity: float


class LocalDpError(InvalidArgument):
    """The result or the DP parameters cannot be used for the Laplace mechanism."""


def _positive(params: Mapping[str, Any], name: str) -> float:
    if not isinstance(params, Mapping) or name not in params:
        raise LocalDpError(f"local_dp needs '{name}' (e.g. {{'epsilon': 1.0, 'sensitivity': 1.0}})")
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, Real | np.integer | np.floating):
        raise LocalDpError(f"local_dp '{name}' must be a number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise LocalDpError(f"local_dp '{name}' must be a finite number > 0, got {number!r}")
    return number


def laplace_scale(params: Mapping[str, Any]) -> float:
    """sensitivity / epsilon, after checking both are finite and positive."""
    return _positive(params, "sensitivity") / _positive(params, "epsilon")


def _scalar(result: Any) -> float:
    if isinstance(result, np.ndarray):
        if result.ndim != 0:
            raise LocalDpError(
                f"local_dp adds noise to a single number; got an array of shape {result.shape}. "
                "Submit one scalar per result, or add noise yourself before submitting"
            )
        result = result[()]
    if isinstance(result, bool | np.bool_) or not isinstance(
        result, Real | np.integer | np.floating
    ):
        raise LocalDpError(
            f"local_dp adds noise to a single number (int or float); got "
            f"{type(result).__name__}. Submit without local_dp or reduce the result to a scalar"
        )
    value = float(result)
    if not math.isfinite(value):
        raise LocalDpError(f"local_dp needs a finite result, got {value!r}")
    return value


def apply_local_dp(
    result: Any, params: Mapping[str, float], *, rng: np.random.Generator | None = None
) -> float:
    """``result`` plus Laplace noise of scale sensitivity/epsilon, as a float."""
    scale = laplace_scale(params)
    value = _scalar(result)
    # default_rng() seeds from the OS entropy pool; a seeded rng is only for tests.
    generator = rng if rng is not None else np.random.default_rng()
    return value + float(generator.laplace(0.0, scale))
