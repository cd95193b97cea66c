"""Adaptive server optimizers: FedAdam, FedYogi and FedAdagrad.

After Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), with FEDn's defaults. The
clients' weighted average gives the pseudo-gradient ``delta = average - global``; then

    m <- beta1 * m + (1 - beta1) * delta                       (m_0 = 0)
    v <- optimizer-specific second moment of delta             (v_0 = tau ** 2)
    x <- x + learning_rate * m / (sqrt(v) + tau)

Only float tensors are optimized; integer and bool tensors (counters such as BatchNorm's
``num_batches_tracked``) take the average, as with FedAvg. Moments are kept in float64 as
state arrays ``m/<tensor>`` and ``v/<tensor>`` with a 0-d int64 ``step``.
"""

from __future__ import annotations

from abc import abstractmethod
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from fedgrpc.aggregators.accumulator import Arrays, check_names, to_model_dtype
from fedgrpc.aggregators.base import Aggregator, ParamRange, check_average_matches
from fedgrpc.errors import InvalidArgument

Float64Array = npt.NDArray[np.float64]

STEP_KEY = "step"
_BETA_RANGE = ParamRange(0.0, 1.0, high_open=True)
_POSITIVE = ParamRange(0.0, low_open=True)


def _moment_key(moment: str, tensor: str) -> str:
    return f"{moment}/{tensor}"


class FedOpt(Aggregator):
    """The shared FedOpt step; subclasses define how the second moment ``v`` evolves."""

    defaults = MappingProxyType({"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.99, "tau": 1e-4})
    ranges = MappingProxyType(
        {"learning_rate": _POSITIVE, "beta1": _BETA_RANGE, "beta2": _BETA_RANGE, "tau": _POSITIVE}
    )

    @abstractmethod
    def _second_moment(self, v: Float64Array, delta_squared: Float64Array) -> Float64Array:
        """The new ``v`` from the previous one and the squared pseudo-gradient."""

    def server_update(
        self, global_model: Arrays, average: Arrays, state: Arrays | None
    ) -> tuple[Arrays, Arrays | None]:
        check_average_matches(global_model, average)
        optimized = [name for name, tensor in global_model.items() if tensor.dtype.kind == "f"]
        step = self._checked_state(state, global_model, optimized)
        new_model: Arrays = {}
        new_state: Arrays = {STEP_KEY: np.array(step + 1, dtype=np.int64)}
        for name, tensor in global_model.items():
            if tensor.dtype.kind != "f":
                new_model[name] = to_model_dtype(average[name], tensor.dtype)
                continue
            m, v = self._moments(state, name, tensor.shape)
            new_tensor, new_m, new_v = self._step_tensor(tensor, average[name], m, v)
            new_model[name] = new_tensor.astype(tensor.dtype, copy=False)
            new_state[_moment_key("m", name)] = new_m
            new_state[_moment_key("v", name)] = new_v
        return new_model, new_state

    def _step_tensor(
        self,
        tensor: npt.NDArray[Any],
        average: npt.NDArray[Any],
        m: Float64Array,
        v: Float64Array,
    ) -> tuple[Float64Array, Float64Array, Float64Array]:
        """One optimizer step for one tensor, in float64; returns (x, m, v)."""
        learning_rate, beta1, tau = (self.params[p] for p in ("learning_rate", "beta1", "tau"))
        x = tensor.astype(np.float64)
        delta = np.subtract(average, x, dtype=np.float64)
        # asarray: arithmetic on 0-d arrays yields numpy scalars, and state must be arrays.
        new_m = np.asarray(beta1 * m + (1.0 - beta1) * delta)
        new_v = np.asarray(self._second_moment(v, np.square(delta)))
        x += learning_rate * new_m / (np.sqrt(new_v) + tau)
        return x, new_m, new_v

    def _moments(
        self, state: Arrays | None, name: str, shape: tuple[int, ...]
    ) -> tuple[Float64Array, Float64Array]:
        if state is None:
            tau = self.params["tau"]
            return np.zeros(shape), np.full(shape, tau * tau)
        m = state[_moment_key("m", name)].astype(np.float64, copy=False)
        v = state[_moment_key("v", name)].astype(np.float64, copy=False)
        return m, v

    # --- state validation -------------------------------------------------------------------
    def _checked_state(
        self, state: Arrays | None, global_model: Arrays, optimized: list[str]
    ) -> int:
        """The step count the state is at (0 without state); InvalidArgument if it does not
        belong to this model, e.g. because the model changed between rounds."""
        if state is None:
            return 0
        expected = [STEP_KEY] + [_moment_key(mo, name) for name in optimized for mo in "mv"]
        check_names(expected, state, f"the {self.name} optimizer state")
        for name in optimized:
            for moment in "mv":
                self._check_moment(state, _moment_key(moment, name), global_model[name].shape)
        return self._checked_step(state[STEP_KEY])

    def _check_moment(self, state: Arrays, key: str, shape: tuple[int, ...]) -> None:
        moment = state[key]
        problem = None
        if not isinstance(moment, np.ndarray) or moment.dtype.kind != "f":
            problem = f"is not a float array ({type(moment).__name__})"
        elif moment.shape != shape:
            problem = f"has shape {moment.shape}, the model tensor's is {shape}"
        elif not np.isfinite(moment).all():
            problem = "contains NaN or infinite values"
        elif key.startswith("v/") and (moment < 0).any():
            problem = "has negative second-moment values"
        if problem:
            raise InvalidArgument(f"{self.name} optimizer state {key!r} {problem}")

    def _checked_step(self, step: object) -> int:
        if isinstance(step, np.ndarray) and step.shape == () and step.dtype.kind in "iu":
            count = int(step)
            if count >= 0:
                return count
        raise InvalidArgument(
            f"{self.name} optimizer state {STEP_KEY!r} must be a 0-d non-negative integer "
            f"array, got {step!r}"
        )


class FedAdam(FedOpt):
    """v <- beta2 * v + (1 - beta2) * delta^2"""

    name = "fedadam"

    def _second_moment(self, v: Float64Array, delta_squared: Float64Array) -> Float64Array:
        beta2 = self.params["beta2"]
        return beta2 * v + (1.0 - beta2) * delta_squared


class FedYogi(FedOpt):
    """v <- v - (1 - beta2) * delta^2 * sign(v - delta^2): additive, so v grows slowly."""

    name = "fedyogi"

    def _second_moment(self, v: Float64Array, delta_squared: Float64Array) -> Float64Array:
        beta2 = self.params["beta2"]
        return v - (1.0 - beta2) * delta_squared * np.sign(v - delta_squared)


class FedAdagrad(FedOpt):
    """v <- v + delta^2. Takes no beta2: it would have no effect, so passing one is an error."""

    name = "fedadagrad"
    defaults = MappingProxyType(
        {param: value for param, value in FedOpt.defaults.items() if param != "beta2"}
    )

    def _second_moment(self, v: Float64Array, delta_squared: Float64Array) -> Float64Array:
        return v + delta_squared
