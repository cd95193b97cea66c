"""The aggregator plugin interface.

An aggregator has two halves. The combiners and the controller average client updates with
the accumulator from :meth:`Aggregator.new_accumulator`; the controller then turns the average
into the next global model with :meth:`Aggregator.server_update`, carrying optimizer state
(plain named arrays, storable as safetensors) from one round of a session to the next.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn

import numpy as np
import numpy.typing as npt

from fedgrpc.aggregators.accumulator import (
    Arrays,
    ArraySpec,
    WeightedMeanAccumulator,
    check_names,
)
from fedgrpc.errors import InvalidArgument


@dataclass(frozen=True)
class ParamRange:
    """The interval a numeric parameter must lie in, e.g. ``ParamRange(0, 1, high_open=True)``."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        bounds = []
        if self.low > -math.inf:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high < math.inf:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(bounds) or "finite"


class Aggregator(ABC):
    """Base of every aggregator, built-in or registered through an entry point.

    Subclasses set ``name``, declare their numeric parameters in ``defaults`` (and optionally
    ``ranges``), and implement :meth:`server_update`.
    """

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, float]] = MappingProxyType({})
    ranges: ClassVar[Mapping[str, ParamRange]] = MappingProxyType({})

    def __init__(self, **kwargs: Any) -> None:
        params = dict(self.defaults)
        for param, value in kwargs.items():
            params[param] = self._checked_param(param, value)
        self.params: Mapping[str, float] = MappingProxyType(params)

    def __repr__(self) -> str:
        settings = ", ".join(f"{param}={value!r}" for param, value in self.params.items())
        return f"{type(self).__name__}({settings})"

    def new_accumulator(
        self, reference: Mapping[str, npt.NDArray[Any]] | Mapping[str, ArraySpec]
    ) -> WeightedMeanAccumulator:
        """The accumulator combiners and the controller average updates with."""
        return WeightedMeanAccumulator(reference)

    @abstractmethod
    def server_update(
        self, global_model: Arrays, average: Arrays, state: Arrays | None
    ) -> tuple[Arrays, Arrays | None]:
        """The next global model from the current one and the clients' weighted average.

        ``state`` is what the previous round of the same session returned (None in the first
        round); return the state to keep, as named arrays with a 0-d ``step`` counter, or None.
        """

    # --- parameter validation ---------------------------------------------------------------
    def _checked_param(self, param: str, value: object) -> float:
        if param not in self.defaults:
            self._reject(param, "is not a parameter of this aggregator")
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            self._reject(param, f"must be a number, got {type(value).__name__} {value!r}")
        number = float(value)
        valid_range = self.ranges.get(param, ParamRange())
        if not (math.isfinite(number) and number in valid_range):
            self._reject(param, f"must be {valid_range}, got {value!r}")
        return number

    def _reject(self, param: str, reason: str) -> NoReturn:
        known = ", ".join(f"{known}={value:g}" for known, value in self.defaults.items())
        label = getattr(self, "name", type(self).__name__)
        raise InvalidArgument(
            f"aggregator {label!r}: parameter {param!r} {reason} "
            f"(parameters and defaults: {known or 'none'})"
        )


def check_average_matches(global_model: Arrays, average: Arrays) -> None:
    """InvalidArgument unless ``average`` has the global model's tensor names and shapes."""
    check_names(global_model, average, "the average")
    for name, tensor in global_model.items():
        if np.shape(average[name]) != tensor.shape:
            raise InvalidArgument(
                f"the average tensor {name!r} has shape {np.shape(average[name])}, "
                f"the global model's is {tensor.shape}"
            )
