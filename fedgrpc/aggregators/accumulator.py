"""A weighted running mean of model updates, in memory proportional to one model.

A combiner folds each client update into a :class:`WeightedMeanAccumulator` as it streams in;
the controller then merges the combiners' partial means with :meth:`merge_partial`, weighted by
each combiner's total weight, which gives exactly FedAvg over all clients.

The accumulator keeps ``sum(w_i * x_i)`` per tensor in a float accumulation dtype (float64
once it has summed 256 updates, see ``_WIDEN_AFTER_UPDATES``), plus the total weight. An
update weighted like the first is added with one ``np.add``; one weighted otherwise goes
through BLAS's fused ``axpy`` (:mod:`fedgrpc.aggregators.blas`), or, where that is not
available, is scaled and added block by block through a small scratch buffer, so the scaled
block is still in cache when it is added. No temporary is the size of a tensor.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from fedgrpc.aggregators.blas import axpy
from fedgrpc.aggregators.finite import all_finite
from fedgrpc.errors import FailedPrecondition, InvalidArgument

Arrays: TypeAlias = dict[str, npt.NDArray[Any]]
"""A model or an update: tensor name -> array."""

# Work on blocks of this many bytes: scratch, the accumulator block and the input block then
# fit in L2 together. Measured 64 KiB..4 MiB; 512 KiB was at or near the best throughput.
_BLOCK_BYTES = 512 * 1024
# Float32 sums of this many updates move to float64. A float32 sum carries a rounding of its
# own magnitude per update, N times the mean's: 16,000 updates of the scale benchmark left the
# mean off by up to 1e-4..2e-4 (unbiased noise, every update present). Widening costs one more
# model of memory, only in combiners with this many clients, where models are small.
_WIDEN_AFTER_UPDATES = 256
# bool, signed int, unsigned int, float: the kinds a mean is defined for.
_SUPPORTED_KINDS = "biuf"
_MAX_LISTED_NAMES = 10


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one tensor: what every update must match."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    def __post_init__(self) -> None:
        # Normalise so specs built from lists or scalar types compare equal to ArraySpec.of().
        object.__setattr__(self, "shape", tuple(int(size) for size in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if any(size < 0 for size in self.shape):
            raise InvalidArgument(f"array shape {self.shape} has a negative dimension")

    @classmethod
    def of(cls, array: npt.NDArray[Any]) -> ArraySpec:
        return cls(tuple(array.shape), array.dtype)

    @property
    def accumulation_dtype(self) -> np.dtype[Any]:
        """float16/float32 -> float32, float64 -> float64; integers and bools -> float64."""
        if self.dtype.kind == "f":
            return np.result_type(self.dtype, np.float32)
        return np.dtype(np.float64)


class WeightedMeanAccumulator:
    """``sum(w_i * x_i) / sum(w_i)`` over updates added one at a time.

    Every update is validated completely before any state changes, so a rejected update leaves
    the accumulator exactly as it was. ``add``, ``merge_partial``, ``mean`` and ``reset`` may be
    called from several threads; validation runs outside the lock.
    """

    def __init__(self, reference: Mapping[str, npt.NDArray[Any]] | Mapping[str, ArraySpec]):
        self._specs: Mapping[str, ArraySpec] = MappingProxyType(_specs_of(reference))
        self._lock = threading.Lock()
        self._scratch: dict[np.dtype[Any], npt.NDArray[Any]] = {}
        self._reset_state()

    def _reset_state(self) -> None:
        # Sums are kept relative to the first weight, so neither tiny nor huge weights
        # underflow or overflow the float32 products; only the weights' ratios matter.
        self._sums: Arrays | None = None
        self._weight_unit = 1.0
        self._relative_total = 0.0
        self._total_weight = 0.0
        self._count = 0

    @property
    def specs(self) -> Mapping[str, ArraySpec]:
        """Name -> shape and dtype every update must have."""
        return self._specs

    @property
    def count(self) -> int:
        """Updates folded in so far (a merged partial counts as its clients)."""
        return self._count

    @property
    def total_weight(self) -> float:
        return self._total_weight

    def add(
        self, arrays: Mapping[str, npt.NDArray[Any]], weight: float, *, consume: bool = False
    ) -> None:
        """Fold one update in with ``weight`` (e.g. its number of training examples).

        With ``consume=True`` the arrays are handed over: the accumulator may overwrite them
        or keep them as its own storage, so the caller must not use them afterwards. Arrays
        that are read-only, non-contiguous, of another dtype than the accumulation dtype, or
        that overlap another array of the update are copied instead, as with ``consume=False``.
        """
        checked_weight = _checked_weight(weight, "weight")
        self._check_arrays(arrays, "update", lambda spec: {spec.dtype})
        scratch_names = _scratch_candidates(arrays, self._specs) if consume else set()
        self._fold(arrays, checked_weight, scratch_names, added_count=1)

    def merge_partial(
        self, mean: Mapping[str, npt.NDArray[Any]], total_weight: float, count: int
    ) -> None:
        """Fold in another accumulator's result, as if its ``count`` updates were added here.

        ``mean`` may be in the model dtypes (:meth:`mean`) or, losslessly, in the accumulation
        dtypes (:meth:`partial_mean`). The caller's arrays are never modified.
        """
        checked_weight = _checked_weight(total_weight, "total_weight")
        checked_count = _checked_count(count)
        self._check_arrays(mean, "partial mean", lambda spec: {spec.dtype, spec.accumulation_dtype})
        self._fold(mean, checked_weight, set(), added_count=checked_count)

    def check_partial(
        self, mean: Mapping[str, npt.NDArray[Any]], total_weight: float, count: int
    ) -> None:
        """Raise what :meth:`merge_partial` would raise for these arguments; change nothing."""
        _checked_weight(total_weight, "total_weight")
        _checked_count(count)
        self._check_arrays(mean, "partial mean", lambda spec: {spec.dtype, spec.accumulation_dtype})

    def mean(self) -> Arrays:
        """The weighted mean in the reference dtypes: ints rounded (ties to even), bools >= 0.5."""
        return {
            name: to_model_dtype(mean, self._specs[name].dtype)
            for name, mean in self.partial_mean().items()
        }

    def partial_mean(self) -> Arrays:
        """The weighted mean in the accumulation dtypes, unrounded: what a combiner should ship
        to the controller so that :meth:`merge_partial` loses nothing to rounding."""
        with self._lock:
            if self._sums is None:
                raise FailedPrecondition("the accumulator is empty: add an update first")
            return {
                name: self._divided(total, self._specs[name].accumulation_dtype)
                for name, total in self._sums.items()
            }

    def take_partial_mean(self) -> Arrays:
        """:meth:`partial_mean` computed in place over the sums, which it hands over: no second
        model in memory (but for the narrowing copy of sums widened to float64). The
        accumulator is empty afterwards (as after :meth:`reset`)."""
        with self._lock:
            if self._sums is None:
                raise FailedPrecondition("the accumulator is empty: add an update first")
            sums, divisor = self._sums, self._relative_total
            self._reset_state()
        for name, total in sums.items():
            np.divide(total, divisor, out=total)
            # Sums widened past _WIDEN_AFTER_UPDATES go back to the promised dtype.
            sums[name] = total.astype(self._specs[name].accumulation_dtype, copy=False)
        return sums

    def _divided(self, total: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        # out= keeps 0-d tensors arrays; without it numpy hands back a scalar.
        quotient: npt.NDArray[Any] = np.empty(total.shape, dtype=dtype)
        np.divide(total, self._relative_total, out=quotient)
        return quotient

    def reset(self) -> None:
        """Forget every update; the reference specs stay."""
        with self._lock:
            self._reset_state()

    # --- validation (no state is touched) ---------------------------------------------------
    def _check_arrays(
        self,
        arrays: Mapping[str, npt.NDArray[Any]],
        what: str,
        allowed_dtypes: Callable[[ArraySpec], set[np.dtype[Any]]],
    ) -> None:
        check_names(self._specs, arrays, what)
        for name, spec in self._specs.items():
            array = arrays[name]
            _check_is_array(name, array, what)
            if array.shape != spec.shape:
                raise InvalidArgument(
                    f"{what} tensor {name!r} has shape {array.shape}, the model's is {spec.shape}"
                )
            dtypes = allowed_dtypes(spec)
            if array.dtype not in dtypes:
                expected = " or ".join(sorted(str(dtype) for dtype in dtypes))
                raise InvalidArgument(
                    f"{what} tensor {name!r} has dtype {array.dtype}, expected {expected}"
                )
            _check_finite(name, array, what)

    # --- folding (under the lock) -----------------------------------------------------------
    def _fold(
        self,
        arrays: Mapping[str, npt.NDArray[Any]],
        weight: float,
        scratch_names: set[str],
        added_count: int,
    ) -> None:
        with self._lock:
            if self._sums is None:
                self._weight_unit = weight
                self._sums = {
                    name: _first_sum(arrays[name], spec, adopt=name in scratch_names)
                    for name, spec in self._specs.items()
                }
            else:
                relative = weight / self._weight_unit
                for name, total in self._sums.items():
                    self._add_scaled(total, arrays[name], relative, name in scratch_names)
            self._relative_total += weight / self._weight_unit
            self._total_weight += weight
            self._count += added_count
            if self._count - added_count < _WIDEN_AFTER_UPDATES <= self._count:
                self._sums = {name: _widened(total) for name, total in self._sums.items()}

    def _add_scaled(
        self,
        total: npt.NDArray[Any],
        array: npt.NDArray[Any],
        factor: float,
        use_input_as_scratch: bool,
    ) -> None:
        """``total += factor * array`` block by block, without a tensor-sized temporary."""
        if factor == 1.0:
            # x * 1.0 == x exactly (after the same cast), so an update weighted like the first
            # one (equal num_examples, the common case) is folded by a single in-place add.
            np.add(total, array, out=total)
            return
        if axpy(factor, array, total):
            return  # one fused pass (float32/float64 updates in their accumulation dtype)
        if not array.flags.c_contiguous:
            # Rare (transposed views); a flat view would be a full copy anyway.
            np.add(total, np.multiply(array, factor, dtype=total.dtype), out=total)
            return
        flat_total = total.reshape(-1)
        in_place = use_input_as_scratch and array.dtype == total.dtype  # not once widened
        scratch = None if in_place else self._scratch_block(total.dtype)
        for start, block in _blocks(array.reshape(-1), _block_length(total.dtype)):
            product = block if scratch is None else scratch[: block.size]
            np.multiply(block, factor, out=product, dtype=total.dtype)
            target = flat_total[start : start + block.size]
            np.add(target, product, out=target)

    def _scratch_block(self, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        if dtype not in self._scratch:
            self._scratch[dtype] = np.empty(_block_length(dtype), dtype=dtype)
        return self._scratch[dtype]


# --- helpers ---------------------------------------------------------------------------------
def _specs_of(
    reference: Mapping[str, npt.NDArray[Any]] | Mapping[str, ArraySpec],
) -> dict[str, ArraySpec]:
    if not reference:
        raise InvalidArgument("the reference model has no tensors")
    specs: dict[str, ArraySpec] = {}
    for name, value in reference.items():
        if not isinstance(name, str):
            raise InvalidArgument(f"tensor names must be strings, got {name!r}")
        if isinstance(value, ArraySpec):
            spec = value
        else:
            _check_is_array(name, value, "reference")
            spec = ArraySpec.of(value)
        if spec.dtype.kind not in _SUPPORTED_KINDS:
            raise InvalidArgument(
                f"reference tensor {name!r} has dtype {spec.dtype}; "
                "only float, integer and bool tensors can be averaged"
            )
        specs[name] = spec
    return specs


def _format_names(names: Iterable[Any]) -> str:
    ordered = sorted(names, key=str)
    shown = ", ".join(repr(name) for name in ordered[:_MAX_LISTED_NAMES])
    hidden = len(ordered) - _MAX_LISTED_NAMES
    return f"[{shown}, ... and {hidden} more]" if hidden > 0 else f"[{shown}]"


def check_names(expected: Iterable[str], actual: Iterable[Any], what: str) -> None:
    """InvalidArgument listing the missing and the unexpected tensor names, if any."""
    expected_set, actual_set = set(expected), set(actual)
    problems = []
    if missing := expected_set - actual_set:
        problems.append(f"missing tensors {_format_names(missing)}")
    if extra := actual_set - expected_set:
        problems.append(f"unexpected tensors {_format_names(extra)}")
    if problems:
        raise InvalidArgument(f"{what} does not match the model: {'; '.join(problems)}")


def _check_is_array(name: str, value: object, what: str) -> None:
    if not isinstance(value, np.ndarray):
        raise InvalidArgument(
            f"{what} tensor {name!r} is a {type(value).__name__}, not a numpy array"
        )


def _checked_weight(weight: object, what: str) -> float:
    if isinstance(weight, bool | np.bool_) or not isinstance(weight, numbers.Real):
        raise InvalidArgument(f"{what} must be a number, got {weight!r}")
    value = float(weight)
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{what} must be finite and > 0, got {weight!r}")
    return value


def _checked_count(count: object) -> int:
    if isinstance(count, bool | np.bool_) or not isinstance(count, numbers.Integral):
        raise InvalidArgument(f"count must be an integer >= 1, got {count!r}")
    if count < 1:
        raise InvalidArgument(f"count must be an integer >= 1, got {count!r}")
    return int(count)


def _check_finite(name: str, array: npt.NDArray[Any], what: str) -> None:
    if all_finite(array):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    raise InvalidArgument(
        f"{what} tensor {name!r} contains {bad} NaN or infinite values (of {array.size})"
    )


def _block_length(dtype: np.dtype[Any]) -> int:
    return max(1, _BLOCK_BYTES // dtype.itemsize)


def _blocks(flat: npt.NDArray[Any], length: int) -> Iterator[tuple[int, npt.NDArray[Any]]]:
    for start in range(0, flat.size, length):
        yield start, flat[start : start + length]


def _scratch_candidates(
    arrays: Mapping[str, npt.NDArray[Any]], specs: Mapping[str, ArraySpec]
) -> set[str]:
    """Names of the arrays a consuming add may overwrite in place."""
    candidates = {
        name
        for name, spec in specs.items()
        if arrays[name].flags.writeable
        and arrays[name].flags.c_contiguous
        and arrays[name].dtype == spec.accumulation_dtype
    }
    # Tied weights (one buffer under two names) would be scaled twice; copy those instead.
    return candidates - _overlapping_names({name: arrays[name] for name in candidates})


def _overlapping_names(arrays: Mapping[str, npt.NDArray[Any]]) -> set[str]:
    """Names of C-contiguous arrays whose memory overlaps another's (a sweep over spans)."""
    spans = sorted(
        (address, address + array.nbytes, name)
        for name, array in arrays.items()
        if array.nbytes
        for address in [array.__array_interface__["data"][0]]
    )
    overlapping: set[str] = set()
    furthest_end, furthest_name = -1, ""
    for start, end, name in spans:
        if start < furthest_end:
            overlapping |= {name, furthest_name}
        if end > furthest_end:
            furthest_end, furthest_name = end, name
    return overlapping


def _widened(total: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``total`` in float64 if it is a narrower float."""
    if total.dtype.kind == "f" and total.dtype.itemsize < 8:
        return total.astype(np.float64)
    return total


def _first_sum(array: npt.NDArray[Any], spec: ArraySpec, *, adopt: bool) -> npt.NDArray[Any]:
    # The first update has relative weight 1, so its sum is the update itself.
    if adopt:
        return array
    return np.array(array, dtype=spec.accumulation_dtype, order="C", copy=True)


def to_model_dtype(values: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """A mean in a model dtype: floats cast, ints rounded to nearest (ties to even), bools as
    ``mean >= 0.5``. Returns ``values`` itself when it has that dtype already."""
    if values.dtype == dtype:
        return values
    # out= below keeps 0-d tensors arrays; without it numpy hands back scalars.
    if values.dtype.kind == "f" and dtype.kind == "b":
        majority: npt.NDArray[np.bool_] = np.empty(values.shape, dtype=bool)
        np.greater_equal(values, 0.5, out=majority)
        return majority
    if values.dtype.kind == "f" and dtype.kind in "iu":
        rounded: npt.NDArray[Any] = np.empty_like(values)
        np.rint(values, out=rounded)
        return rounded.astype(dtype)
    return values.astype(dtype)
