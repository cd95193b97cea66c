"""Aggregation plugins against plain numpy reference math: accumulator, FedOpt, registry."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from fedgrpc.aggregators import (
    Aggregator,
    Arrays,
    ArraySpec,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedYogi,
    WeightedMeanAccumulator,
    available_aggregators,
    get_aggregator,
)
from fedgrpc.errors import FailedPrecondition, InvalidArgument

# --- helpers ---------------------------------------------------------------------------------
SHAPES = [(3, 4), (), (0, 3)]
DTYPES = ["float32", "float64", "float16", "int32", "int64", "uint8", "bool"]


def random_tensor(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> Any:
    kind = np.dtype(dtype).kind
    if kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    if kind in "iu":
        return np.asarray(rng.integers(0, 100, size=shape), dtype=dtype)
    return np.asarray(rng.standard_normal(shape), dtype=dtype)


def random_updates(
    rng: np.random.Generator, specs: dict[str, ArraySpec], count: int
) -> tuple[list[Arrays], list[float]]:
    updates = [
        {name: random_tensor(rng, spec.shape, str(spec.dtype)) for name, spec in specs.items()}
        for _ in range(count)
    ]
    weights = [float(w) for w in rng.uniform(0.5, 20.0, size=count)]
    return updates, weights


def reference_mean(updates: list[Arrays], weights: list[float], name: str) -> Any:
    """np.average in float64, then the model dtype's rounding rule."""
    stack = np.stack([update[name].astype(np.float64) for update in updates])
    average = np.average(stack, weights=weights, axis=0)
    dtype = updates[0][name].dtype
    if dtype.kind == "b":
        return average >= 0.5
    if dtype.kind in "iu":
        return np.rint(average).astype(dtype)
    return average


# Sums of N(0, 1) values cancel, so float32 results near 0 carry an absolute error of a few
# float32 ulps of the summands' magnitude: hence atol next to rtol.
TOLERANCE = {"float16": (2e-3, 2e-3), "float32": (1e-5, 1e-6), "float64": (1e-12, 1e-12)}


def assert_same_means(actual: Arrays, expected: Arrays) -> None:
    """Equal for integer and bool tensors, close (per the model dtype) for floats."""
    assert set(actual) == set(expected)
    for name, tensor in actual.items():
        assert isinstance(tensor, np.ndarray)
        assert tensor.shape == np.shape(expected[name])
        if tensor.dtype.kind == "f":
            rtol, atol = TOLERANCE[str(tensor.dtype)]
            np.testing.assert_allclose(tensor, expected[name], rtol=rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(tensor, expected[name], err_msg=name)


def assert_mean_matches(actual: Arrays, updates: list[Arrays], weights: list[float]) -> None:
    for name, tensor in actual.items():
        assert tensor.dtype == updates[0][name].dtype
    assert_same_means(actual, {name: reference_mean(updates, weights, name) for name in actual})


def accumulate(
    specs: dict[str, ArraySpec], updates: list[Arrays], weights: list[float], **kwargs: Any
) -> WeightedMeanAccumulator:
    accumulator = WeightedMeanAccumulator(specs)
    for update, weight in zip(updates, weights, strict=True):
        accumulator.add(update, weight, **kwargs)
    return accumulator


def copy_arrays(arrays: Arrays) -> Arrays:
    return {name: array.copy() for name, array in arrays.items()}


MIXED_SPECS = {
    "dense/kernel": ArraySpec((6, 5), np.dtype(np.float32)),
    "dense/bias": ArraySpec((5,), np.dtype(np.float64)),
    "half": ArraySpec((4,), np.dtype(np.float16)),
    "counter": ArraySpec((), np.dtype(np.int64)),
    "mask": ArraySpec((7,), np.dtype(np.bool_)),
    "empty": ArraySpec((0, 2), np.dtype(np.float32)),
}


# --- accumulator: the weighted mean ----------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_equals_numpy_weighted_average(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    specs = {"t": ArraySpec(shape, np.dtype(dtype))}
    updates, weights = random_updates(rng, specs, 7)
    accumulator = accumulate(specs, updates, weights)
    assert accumulator.count == 7
    assert accumulator.total_weight == pytest.approx(sum(weights))
    assert_mean_matches(accumulator.mean(), updates, weights)


def test_reference_may_be_arrays_or_specs() -> None:
    rng = np.random.default_rng(2)
    updates, weights = random_updates(rng, MIXED_SPECS, 3)
    from_arrays = WeightedMeanAccumulator(updates[0])
    from_specs = WeightedMeanAccumulator(MIXED_SPECS)
    assert from_arrays.specs == from_specs.specs
    for update, weight in zip(updates, weights, strict=True):
        from_arrays.add(update, weight)
    assert_mean_matches(from_arrays.mean(), updates, weights)


def test_mean_is_independent_of_order() -> None:
    rng = np.random.default_rng(3)
    updates, weights = random_updates(rng, MIXED_SPECS, 9)
    forward = accumulate(MIXED_SPECS, updates, weights).mean()
    order = rng.permutation(len(updates))
    shuffled = accumulate(
        MIXED_SPECS, [updates[i] for i in order], [weights[i] for i in order]
    ).mean()
    assert_same_means(shuffled, forward)


def test_extreme_weights_only_their_ratios_matter() -> None:
    rng = np.random.default_rng(4)
    updates, weights = random_updates(rng, MIXED_SPECS, 4)
    expected = accumulate(MIXED_SPECS, updates, weights).mean()
    for scale in (1e-42, 1e35):
        scaled = accumulate(MIXED_SPECS, updates, [w * scale for w in weights]).mean()
        assert_same_means(scaled, expected)


def test_concurrent_adds_lose_nothing() -> None:
    # Big enough that numpy releases the GIL mid-add, so unsynchronised folds would collide.
    specs = {"big": ArraySpec((512, 1024), np.dtype(np.float32)), **MIXED_SPECS}
    updates, weights = random_updates(np.random.default_rng(14), specs, 24)
    accumulator = WeightedMeanAccumulator(specs)
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(accumulator.add, updates, weights))
    assert accumulator.count == 24
    assert_mean_matches(accumulator.mean(), updates, weights)


def test_many_float32_updates_keep_the_mean_to_float32_precision() -> None:
    # 2,000 updates around 21 in random order: float32 sums left the mean off by ~5e-5 (24
    # float32 steps); past 256 updates the sums are float64 and only the result is rounded.
    rng = np.random.default_rng(3)
    base = rng.standard_normal(5000).astype(np.float32) + 20
    accumulator = WeightedMeanAccumulator({"w": base})
    exact = np.zeros(base.shape)
    for i in rng.permutation(2000):
        update = base + np.float32(0.001 * i)
        exact += update
        accumulator.add({"w": update}, 1.0 + i % 3, consume=True)
        exact += (i % 3) * update.astype(np.float64)
    weights = sum(1.0 + i % 3 for i in range(2000))
    mean = accumulator.mean()["w"]
    partial = accumulator.partial_mean()["w"]
    assert mean.dtype == partial.dtype == np.float32  # the promised dtypes, widened or not
    np.testing.assert_allclose(mean, exact / weights, rtol=0, atol=5e-6)
    merged = WeightedMeanAccumulator({"w": base})
    merged.merge_partial({"w": partial}, accumulator.total_weight, accumulator.count)
    np.testing.assert_array_equal(merged.take_partial_mean()["w"], partial)


# --- accumulator: memory ownership -----------------------------------------------------------
def test_consume_false_leaves_inputs_untouched_and_keeps_no_reference() -> None:
    rng = np.random.default_rng(5)
    updates, weights = random_updates(rng, MIXED_SPECS, 4)
    originals = [copy_arrays(update) for update in updates]
    accumulator = accumulate(MIXED_SPECS, updates, weights)
    for update, original in zip(updates, originals, strict=True):
        for name in MIXED_SPECS:
            np.testing.assert_array_equal(update[name], original[name])
    before = accumulator.mean()
    for update in updates:  # scribbling on the inputs afterwards must not reach the state
        for array in update.values():
            array[...] = 1
    for name, tensor in accumulator.mean().items():
        np.testing.assert_array_equal(tensor, before[name])


def test_consume_gives_the_same_mean_and_no_aliasing() -> None:
    rng = np.random.default_rng(6)
    updates, weights = random_updates(rng, MIXED_SPECS, 5)
    expected = accumulate(MIXED_SPECS, updates, weights).mean()
    handed_over = [copy_arrays(update) for update in updates]
    accumulator = accumulate(MIXED_SPECS, handed_over, weights, consume=True)
    consumed_mean = accumulator.mean()
    for name in MIXED_SPECS:
        np.testing.assert_array_equal(consumed_mean[name], expected[name])
        for update in handed_over:
            assert not np.shares_memory(consumed_mean[name], update[name])
    # The results belong to the caller: a second mean() is unaffected by edits to the first.
    for tensor in consumed_mean.values():
        tensor[...] = 0
    for name, tensor in accumulator.mean().items():
        np.testing.assert_array_equal(tensor, expected[name])


def test_consume_handles_read_only_and_tied_arrays() -> None:
    specs = {"a": ArraySpec((3,), np.dtype(np.float32)), "b": ArraySpec((3,), np.dtype(np.float32))}
    read_only = np.arange(3, dtype=np.float32)
    read_only.flags.writeable = False
    tied = np.full(3, 4.0, dtype=np.float32)  # one buffer under two names, like tied embeddings
    accumulator = WeightedMeanAccumulator(specs)
    accumulator.add({"a": read_only, "b": read_only}, 1.0, consume=True)
    accumulator.add({"a": tied, "b": tied}, 3.0, consume=True)
    mean = accumulator.mean()
    expected = (np.arange(3) * 1.0 + 4.0 * 3.0) / 4.0
    np.testing.assert_allclose(mean["a"], expected, rtol=1e-6)
    np.testing.assert_allclose(mean["b"], expected, rtol=1e-6)
    np.testing.assert_array_equal(read_only, np.arange(3))


def test_consume_handles_non_contiguous_inputs() -> None:
    specs = {"w": ArraySpec((4, 3), np.dtype(np.float64))}
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    accumulator = WeightedMeanAccumulator(specs)
    accumulator.add({"w": np.ones((4, 3))}, 1.0, consume=True)
    accumulator.add({"w": base.T}, 1.0, consume=True)
    np.testing.assert_allclose(accumulator.mean()["w"], (1.0 + base.T) / 2)


def peak_memory_ratio(consume: bool) -> float:
    """Peak traced memory of folding 50 updates of a 4 MB model, over the model size."""
    specs = {
        "layer1": ArraySpec((800, 1000), np.dtype(np.float32)),  # 3.2 MB
        "layer2": ArraySpec((200, 1000), np.dtype(np.float32)),  # 0.8 MB
        "bias": ArraySpec((1000,), np.dtype(np.float32)),
    }
    model_bytes = sum(int(np.prod(spec.shape)) * spec.dtype.itemsize for spec in specs.values())
    rng = np.random.default_rng(7)
    tracemalloc.start()
    try:
        accumulator = WeightedMeanAccumulator(specs)
        for _ in range(50):
            update = {
                name: rng.standard_normal(spec.shape, dtype=np.float32)
                for name, spec in specs.items()
            }
            accumulator.add(update, 2.0, consume=consume)
            del update  # drop it before the next one is drawn, as a streaming combiner does
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert accumulator.count == 50
    return peak / model_bytes


@pytest.mark.parametrize("consume", [False, True])
def test_peak_memory_is_bounded_by_model_size_not_client_count(consume: bool) -> None:
    # tracemalloc counts every thread's allocations; earlier tests leave idle gRPC and executor
    # threads behind, so measure in a fresh interpreter where nothing else allocates.
    code = f"from tests.test_aggregators import peak_memory_ratio as r; print(r({consume}))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    ratio = float(proc.stdout.strip())
    # The running sums plus the one update in flight, plus small block-sized scratch.
    assert ratio < 2.5, f"peak {ratio:.2f}x the model size"


# --- accumulator: the cross-combiner reduce --------------------------------------------------
@pytest.mark.parametrize("use_partial_mean", [True, False])
def test_merging_partials_equals_one_accumulator_over_all(use_partial_mean: bool) -> None:
    rng = np.random.default_rng(8)
    updates, weights = random_updates(rng, MIXED_SPECS, 11)
    everything = accumulate(MIXED_SPECS, updates, weights)
    combiners = [
        accumulate(MIXED_SPECS, updates[:4], weights[:4]),
        accumulate(MIXED_SPECS, updates[4:], weights[4:]),
    ]
    controller = WeightedMeanAccumulator(MIXED_SPECS)
    for combiner in combiners:
        partial = combiner.partial_mean() if use_partial_mean else combiner.mean()
        controller.merge_partial(partial, combiner.total_weight, combiner.count)
    assert controller.count == everything.count == 11
    assert controller.total_weight == pytest.approx(everything.total_weight)
    merged, direct = controller.mean(), everything.mean()
    if use_partial_mean:  # unrounded partials: exact FedAvg for integer and bool tensors too
        assert_same_means(merged, direct)
        assert_mean_matches(merged, updates, weights)
    else:  # partials rounded to the model dtypes: floats still agree, ints and bools may not
        floats = [name for name, spec in MIXED_SPECS.items() if spec.dtype.kind == "f"]
        assert_same_means({n: merged[n] for n in floats}, {n: direct[n] for n in floats})


def test_merge_partial_rejects_bad_count_and_weight() -> None:
    accumulator = WeightedMeanAccumulator(MIXED_SPECS)
    partial, _ = random_updates(np.random.default_rng(9), MIXED_SPECS, 1)
    for count in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgument, match="count"):
            accumulator.merge_partial(partial[0], 1.0, count)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="total_weight"):
        accumulator.merge_partial(partial[0], 0.0, 3)
    assert accumulator.count == 0


# --- accumulator: rejection leaves the state exactly as it was -------------------------------
def _drop(name: str) -> Callable[[Arrays], Arrays]:
    return lambda update: {k: v for k, v in update.items() if k != name}


def _set(name: str, value: Any) -> Callable[[Arrays], Arrays]:
    return lambda update: {**update, name: value}


def _with_nan(update: Arrays) -> Arrays:
    poisoned = np.array(update["dense/bias"])
    poisoned[2] = np.nan
    return {**update, "dense/bias": poisoned}


REJECTIONS: dict[str, tuple[Callable[[Arrays], Arrays], float, str]] = {
    "missing": (_drop("counter"), 1.0, "missing tensors \\['counter'\\]"),
    "extra": (_set("surprise", np.zeros(2, np.float32)), 1.0, "unexpected tensors \\['surprise'"),
    "shape": (_set("dense/kernel", np.zeros((5, 6), np.float32)), 1.0, "dense/kernel.*\\(5, 6\\)"),
    "dtype": (_set("dense/kernel", np.zeros((6, 5), np.float64)), 1.0, "dense/kernel.*float64"),
    "not-an-array": (_set("dense/bias", [0.0] * 5), 1.0, "dense/bias.*list"),
    "nan-data": (_with_nan, 1.0, "dense/bias.*1 NaN"),
    "inf-data": (_set("half", np.array([1, np.inf, 0, 0], np.float16)), 1.0, "half.*infinite"),
    "weight-zero": (lambda update: update, 0.0, "weight must be finite and > 0"),
    "weight-negative": (lambda update: update, -2.0, "weight must be finite and > 0"),
    "weight-nan": (lambda update: update, float("nan"), "weight must be finite and > 0"),
    "weight-inf": (lambda update: update, float("inf"), "weight must be finite and > 0"),
    "weight-string": (lambda update: update, "1", "weight must be a number"),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("consume", [False, True])
@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejected_update_leaves_state_unchanged(case: str, consume: bool) -> None:
    corrupt, weight, message = REJECTIONS[case]
    rng = np.random.default_rng(10)
    updates, weights = random_updates(rng, MIXED_SPECS, 3)
    accumulator = accumulate(MIXED_SPECS, updates[:2], weights[:2])
    before = (accumulator.mean(), accumulator.count, accumulator.total_weight)
    bad_update = corrupt(copy_arrays(updates[2]))
    untouched = {name: np.array(value) for name, value in bad_update.items()}
    with pytest.raises(InvalidArgument, match=message):
        accumulator.add(bad_update, weight, consume=consume)
    assert (accumulator.count, accumulator.total_weight) == before[1:]
    for name, tensor in accumulator.mean().items():
        np.testing.assert_array_equal(tensor, before[0][name])
    for name, value in bad_update.items():  # not even a consumable input was scaled
        np.testing.assert_array_equal(value, untouched[name])


def test_rejected_first_update_leaves_accumulator_empty() -> None:
    accumulator = WeightedMeanAccumulator(MIXED_SPECS)
    updates, _ = random_updates(np.random.default_rng(11), MIXED_SPECS, 1)
    with pytest.raises(InvalidArgument):
        accumulator.add(_with_nan(updates[0]), 1.0)
    assert accumulator.count == 0
    with pytest.raises(FailedPrecondition):
        accumulator.mean()


def test_mean_of_empty_accumulator_and_reset() -> None:
    accumulator = WeightedMeanAccumulator(MIXED_SPECS)
    with pytest.raises(FailedPrecondition, match="empty"):
        accumulator.mean()
    updates, weights = random_updates(np.random.default_rng(12), MIXED_SPECS, 2)
    for update, weight in zip(updates, weights, strict=True):
        accumulator.add(update, weight)
    accumulator.reset()
    assert (accumulator.count, accumulator.total_weight) == (0, 0.0)
    with pytest.raises(FailedPrecondition):
        accumulator.mean()
    accumulator.add(updates[1], 5.0)  # usable again, and the old updates are gone
    assert_mean_matches(accumulator.mean(), [updates[1]], [5.0])


@pytest.mark.parametrize(
    "reference",
    [{}, {"text": np.array(["a"])}, {"z": np.zeros(2, np.complex64)}, {"x": [1.0]}],
    ids=["empty", "strings", "complex", "list"],
)
def test_unusable_reference_is_rejected(reference: Any) -> None:
    with pytest.raises(InvalidArgument):
        WeightedMeanAccumulator(reference)


# --- server optimizers -----------------------------------------------------------------------
OPT_MODEL_SPECS = {
    "kernel": ArraySpec((4, 3), np.dtype(np.float64)),
    "bias": ArraySpec((3,), np.dtype(np.float32)),
    "scale": ArraySpec((), np.dtype(np.float64)),
    "steps_seen": ArraySpec((), np.dtype(np.int64)),
}
OPTIMIZERS: dict[str, type[Aggregator]] = {
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
}


def reference_fedopt(
    kind: str,
    start: Arrays,
    deltas: list[Arrays],
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-4,
) -> list[Arrays]:
    """Reddi et al.'s update written out once more, tensor by tensor in float64."""
    x = {name: tensor.copy() for name, tensor in start.items()}
    m = {name: 0.0 * tensor.astype(np.float64) for name, tensor in start.items()}
    v = {name: np.full(tensor.shape, tau**2) for name, tensor in start.items()}
    history = []
    for round_deltas in deltas:
        for name in x:
            average = averaged(x[name], round_deltas[name])
            if x[name].dtype.kind != "f":
                x[name] = average
                continue
            delta = average.astype(np.float64) - x[name].astype(np.float64)
            m[name] = beta1 * m[name] + (1 - beta1) * delta
            if kind == "fedadam":
                v[name] = beta2 * v[name] + (1 - beta2) * delta**2
            elif kind == "fedyogi":
                v[name] = v[name] - (1 - beta2) * delta**2 * np.sign(v[name] - delta**2)
            else:
                v[name] = v[name] + delta**2
            step = lr * m[name] / (np.sqrt(v[name]) + tau)
            x[name] = (x[name].astype(np.float64) + step).astype(x[name].dtype)
        history.append({name: tensor.copy() for name, tensor in x.items()})
    return history


def averaged(current: npt.NDArray[Any], delta: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """What the clients 'send back' in a round: the global model moved by a fixed delta."""
    return np.asarray(current + delta, dtype=current.dtype)


def opt_start_and_deltas(rounds: int = 3) -> tuple[Arrays, list[Arrays]]:
    rng = np.random.default_rng(13)
    start = {
        name: random_tensor(rng, spec.shape, str(spec.dtype))
        for name, spec in OPT_MODEL_SPECS.items()
    }
    deltas = [
        {
            name: (
                rng.integers(0, 3, spec.shape)
                if spec.dtype.kind == "i"
                else 0.1 * rng.standard_normal(spec.shape)
            ).astype(spec.dtype)
            for name, spec in OPT_MODEL_SPECS.items()
        }
        for _ in range(rounds)
    ]
    return start, deltas


def run_rounds(
    aggregator: Aggregator,
    start: Arrays,
    deltas: list[Arrays],
    store_state: Callable[[Arrays], Arrays] = lambda state: state,
) -> tuple[list[Arrays], Arrays | None]:
    model, state, history = start, None, []
    for round_deltas in deltas:
        average = {name: averaged(model[name], round_deltas[name]) for name in model}
        model, new_state = aggregator.server_update(model, average, state)
        state = None if new_state is None else store_state(new_state)
        history.append(model)
    return history, state


def through_safetensors(state: Arrays) -> Arrays:
    return dict(load_safetensors(save_safetensors(state)))


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_fedopt_matches_numpy_reference_over_three_rounds(kind: str) -> None:
    start, deltas = opt_start_and_deltas()
    kwargs = {"learning_rate": 0.05, "beta1": 0.8, "tau": 1e-3}
    if kind != "fedadagrad":
        kwargs["beta2"] = 0.95
    history, state = run_rounds(get_aggregator(kind, kwargs), start, deltas)
    expected = reference_fedopt(kind, start, deltas, lr=0.05, beta1=0.8, beta2=0.95, tau=1e-3)
    for got, want in zip(history, expected, strict=True):
        for name, tensor in got.items():
            assert tensor.dtype == start[name].dtype
            assert tensor.shape == start[name].shape
            np.testing.assert_allclose(
                tensor, want[name], rtol=1e-6 if tensor.dtype == np.float32 else 1e-12
            )
    assert state is not None
    assert set(state) == {"step"} | {
        f"{moment}/{name}" for name in ("kernel", "bias", "scale") for moment in "mv"
    }
    assert state["step"].shape == ()
    assert int(state["step"]) == 3


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_fedopt_defaults_are_fedn_s(kind: str) -> None:
    aggregator = get_aggregator(kind)
    expected = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.99, "tau": 1e-4}
    if kind == "fedadagrad":
        del expected["beta2"]
    assert dict(aggregator.params) == expected
    start, deltas = opt_start_and_deltas()
    history, _ = run_rounds(aggregator, start, deltas)
    for got, want in zip(history, reference_fedopt(kind, start, deltas), strict=True):
        for name, tensor in got.items():
            np.testing.assert_allclose(tensor, want[name], rtol=1e-6)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_fedopt_state_survives_safetensors_round_trip(kind: str) -> None:
    start, deltas = opt_start_and_deltas()
    in_memory, last_state = run_rounds(get_aggregator(kind), start, deltas)
    stored, stored_state = run_rounds(get_aggregator(kind), start, deltas, through_safetensors)
    for got, want in zip(stored, in_memory, strict=True):
        for name in got:
            np.testing.assert_array_equal(got[name], want[name])
    assert last_state is not None
    assert stored_state is not None
    for key in last_state:
        np.testing.assert_array_equal(stored_state[key], last_state[key])


def _state_after_one_round(kind: str) -> tuple[Aggregator, Arrays, Arrays]:
    start, deltas = opt_start_and_deltas(1)
    aggregator = get_aggregator(kind)
    average = {name: averaged(start[name], deltas[0][name]) for name in start}
    model, state = aggregator.server_update(start, average, None)
    assert state is not None
    return aggregator, model, state


STATE_CORRUPTIONS: dict[str, Callable[[Arrays], Arrays]] = {
    "renamed-tensor": lambda s: {("m/renamed" if k == "m/kernel" else k): v for k, v in s.items()},
    "missing-step": lambda s: {k: v for k, v in s.items() if k != "step"},
    "wrong-shape": lambda s: {**s, "v/bias": np.ones(4)},
    "negative-v": lambda s: {**s, "v/bias": -np.ones(3)},
    "nan-m": lambda s: {**s, "m/scale": np.array(np.nan)},
    "step-not-scalar": lambda s: {**s, "step": np.array([1])},
}


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("corruption", list(STATE_CORRUPTIONS))
def test_fedopt_rejects_state_that_does_not_match_the_model(kind: str, corruption: str) -> None:
    aggregator, model, state = _state_after_one_round(kind)
    with pytest.raises(InvalidArgument, match="state"):
        aggregator.server_update(model, model, STATE_CORRUPTIONS[corruption](state))


def test_fedopt_rejects_state_after_the_model_changed() -> None:
    aggregator, model, state = _state_after_one_round("fedadam")
    grown = {**model, "new_head": np.zeros(2)}
    with pytest.raises(InvalidArgument, match="missing tensors \\['m/new_head', 'v/new_head'\\]"):
        aggregator.server_update(grown, grown, state)


def test_server_update_rejects_average_of_another_model() -> None:
    start, _ = opt_start_and_deltas(1)
    for aggregator in (FedAvg(), FedAdam()):
        with pytest.raises(InvalidArgument, match="kernel"):
            aggregator.server_update(start, {**start, "kernel": np.zeros((3, 4))}, None)
        with pytest.raises(InvalidArgument, match="missing tensors \\['bias'\\]"):
            aggregator.server_update(start, {k: v for k, v in start.items() if k != "bias"}, None)


BAD_KWARGS: list[tuple[dict[str, Any], str]] = [
    ({"lr": 0.1}, "'lr' is not a parameter"),
    ({"learning_rate": "1e-3"}, "'learning_rate' must be a number"),
    ({"learning_rate": True}, "'learning_rate' must be a number"),
    ({"learning_rate": 0.0}, "'learning_rate' must be > 0"),
    ({"tau": -1e-4}, "'tau' must be > 0"),
    ({"beta1": 1.0}, "'beta1' must be >= 0 and < 1"),
    ({"beta2": -0.1}, "'beta2' must be >= 0 and < 1"),
    ({"beta1": float("nan")}, "'beta1' must be >= 0 and < 1"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_KWARGS)
def test_bad_optimizer_kwargs_are_rejected_with_known_names(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        get_aggregator("fedadam", kwargs)
    assert "learning_rate=0.001" in str(caught.value)
    assert "tau=0.0001" in str(caught.value)


def test_fedadagrad_takes_no_beta2_and_fedavg_no_parameters() -> None:
    with pytest.raises(InvalidArgument, match="'beta2' is not a parameter"):
        get_aggregator("fedadagrad", {"beta2": 0.9})
    with pytest.raises(InvalidArgument, match=r"'fedavg'.*'lr'.*none"):
        get_aggregator("fedavg", {"lr": 1.0})


def test_fedavg_returns_the_average_and_no_state() -> None:
    start, deltas = opt_start_and_deltas(1)
    average = {name: averaged(start[name], deltas[0][name]) for name in start}
    model, state = FedAvg().server_update(start, average, None)
    assert state is None
    for name, tensor in model.items():
        assert tensor.dtype == start[name].dtype
        np.testing.assert_array_equal(tensor, average[name])


def test_fedavg_rounds_an_average_given_in_accumulation_dtypes() -> None:
    global_model: Arrays = {"count": np.array([1, 2], np.int32), "half": np.zeros(2, np.float16)}
    average: Arrays = {"count": np.array([1.4, 2.6]), "half": np.array([0.5, 1.5], np.float32)}
    model, _ = FedAvg().server_update(global_model, average, None)
    np.testing.assert_array_equal(model["count"], np.array([1, 3], np.int32))
    assert model["count"].dtype == np.int32
    assert model["half"].dtype == np.float16


# --- registry --------------------------------------------------------------------------------
def test_builtin_aggregators_by_name() -> None:
    assert {"fedavg", "fedadam", "fedyogi", "fedadagrad"} <= set(available_aggregators())
    assert type(get_aggregator("fedavg")) is FedAvg
    for name, cls in OPTIMIZERS.items():
        aggregator = get_aggregator(name, {"learning_rate": 0.5})
        assert type(aggregator) is cls
        assert aggregator.name == name
        assert aggregator.params["learning_rate"] == 0.5


def test_unknown_aggregator_lists_the_available_ones() -> None:
    with pytest.raises(InvalidArgument, match="unknown aggregator 'fedmedian'") as caught:
        get_aggregator("fedmedian")
    for name in ("fedadagrad", "fedadam", "fedavg", "fedyogi"):
        assert name in str(caught.value)


PLUGIN_SOURCE = """
    import numpy as np
    from fedgrpc.aggregators import Aggregator

    class MyAgg(Aggregator):
        name = "medianish"
        defaults = {"alpha": 0.5}

        def server_update(self, global_model, average, state):
            return {k: np.asarray(v) for k, v in average.items()}, None

    def not_an_aggregator():
        return None
"""


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for throwaway distributions; their modules are unloaded after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in [name for name in sys.modules if name.partition(".")[0] == "mypkg"]:
        del sys.modules[module]
    importlib.invalidate_caches()


def install_distribution(root: Path, project: str, package_source: str, entry_points: str) -> None:
    """Lay out an installed distribution by hand: the package plus its .dist-info metadata."""
    package = root / project
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(package_source), encoding="utf-8")
    dist_info = root / f"{project}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project}\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[fedgrpc.aggregators]\n{entry_points}\n", encoding="utf-8"
    )
    importlib.invalidate_caches()


def test_entry_point_plugin_is_found_and_built(plugin_path: Path) -> None:
    install_distribution(plugin_path, "mypkg", PLUGIN_SOURCE, "medianish = mypkg:MyAgg")
    assert "medianish" in available_aggregators()
    aggregator = get_aggregator("medianish", {"alpha": 0.25})
    assert type(aggregator).__name__ == "MyAgg"
    assert aggregator.params == {"alpha": 0.25}
    with pytest.raises(InvalidArgument, match=r"'beta'.*alpha=0\.5"):
        get_aggregator("medianish", {"beta": 1.0})


def test_entry_point_cannot_shadow_a_builtin(plugin_path: Path) -> None:
    install_distribution(plugin_path, "mypkg", PLUGIN_SOURCE, "fedavg = mypkg:MyAgg")
    assert type(get_aggregator("fedavg")) is FedAvg


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("mypkg:not_an_aggregator", "is not an Aggregator subclass"),
        ("mypkg:Missing", "failed to load: AttributeError"),
        ("nosuchpkg_fedgrpc_test:Thing", "failed to load: ModuleNotFoundError"),
        ("mypkg.broken:Thing", "failed to load: ZeroDivisionError"),
        ("fedgrpc.aggregators:Aggregator", "is abstract: server_update"),
    ],
)
def test_broken_entry_point_is_invalid_argument(
    plugin_path: Path, target: str, reason: str
) -> None:
    install_distribution(plugin_path, "mypkg", PLUGIN_SOURCE, f"medianish = {target}")
    (plugin_path / "mypkg" / "broken.py").write_text("1 / 0\n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match=f"'medianish' \\({target}\\) {reason}"):
        get_aggregator("medianish")
