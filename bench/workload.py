"""The benchmark workload, shared by both frameworks (numpy only).

Model element ``j`` starts at ``(j % 1000) / 1000 - 0.5``; client ``i`` returns the arrays it
received plus ``0.001 * (i + 1)`` with ``num_examples = 100``. All clients have the same weight,
so after ``R`` rounds of FedAvg over ``N`` clients every element is
``start + R * 0.001 * (N + 1) / 2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

STEP = 0.001
NUM_EXAMPLES = 100
TOLERANCE = 1e-4
# Flower sends a model in one gRPC message; 1 GiB leaves room for the 100 MB workload.
FLOWER_MAX_MESSAGE = 1 << 30
_CHECK_BLOCK = 65_536

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Workload:
    """One benchmark configuration."""

    name: str
    clients: int
    params: int
    rounds: int

    @property
    def model_bytes(self) -> int:
        return 4 * self.params


def initial_model(params: int) -> list[Array]:
    """The seed model: one float32 array of ``params`` elements."""
    start: Array = ((np.arange(params, dtype=np.int64) % 1000) / 1000 - 0.5).astype(np.float32)
    return [start]


def train_step(arrays: list[Array], client_index: int) -> list[Array]:
    """The trivial local step: add ``0.001 * (client_index + 1)``, in place when allowed."""
    delta = np.float32(STEP * (client_index + 1))
    result: list[Array] = []
    for array in arrays:
        if array.flags.writeable:
            np.add(array, delta, out=array)
            result.append(array)
        else:
            result.append(np.add(array, delta))
    return result


def max_error(arrays: Sequence[npt.NDArray[Any]], workload: Workload) -> float:
    """Largest distance of any element from its expected value after ``workload.rounds``.

    Blockwise, so checking a 100 MB model inside a measured process adds almost nothing to
    its peak memory.
    """
    if len(arrays) != 1 or arrays[0].size != workload.params:
        return float("inf")
    flat = arrays[0].reshape(-1)
    shift = workload.rounds * STEP * (workload.clients + 1) / 2
    worst = 0.0
    for begin in range(0, flat.size, _CHECK_BLOCK):
        index = np.arange(begin, min(begin + _CHECK_BLOCK, flat.size), dtype=np.int64)
        expected = ((index % 1000) / 1000 - 0.5).astype(np.float32).astype(np.float64) + shift
        error = np.abs(flat[begin : begin + index.size].astype(np.float64) - expected)
        worst = max(worst, float(error.max(initial=0.0)))
        if not np.isfinite(error).all():
            return float("inf")
    return worst


def is_correct(error: float) -> bool:
    return error <= TOLERANCE
