"""Cross-combiner reduce and the server step: pure functions over the model store.

Each combiner sends the weighted mean of its clients' updates and the total weight behind it;
merging those means weighted by their totals equals FedAvg over every client (FEDn reduces
combiners unweighted, which skews toward small combiners). The aggregator's server step then
turns the average into the next global model, with optimizer state carried across rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedgrpc.aggregators import ArraySpec, WeightedMeanAccumulator, get_aggregator
from fedgrpc.aggregators.fedavg import FedAvg
from fedgrpc.errors import FailedPrecondition, InvalidArgument
from fedgrpc.model.serialization import dump_model, header_specs, is_canonical_model, load_model
from fedgrpc.modelstore import ModelStore

# The header of a model is read in blocks of this size (it is usually far smaller).
_HEADER_READ_BYTES = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class Partial:
    combiner: str
    model_id: str
    total_weight: float
    num_updates: int
    # The digest the controller checked when the partial arrived (None: unknown).
    digest: str | None = None
    # The partial itself when it came inline (kept in memory; ``model_id`` is then ""),
    # else None: it lies in the store under ``model_id``.
    data: bytes | None = None

    def read(self, store: ModelStore) -> bytes:
        """The partial's bytes, from memory or from the store."""
        return self.data if self.data is not None else store.get_bytes(self.model_id)


@dataclass(frozen=True, kw_only=True)
class ReduceOutcome:
    model_bytes: bytes
    # Known digest of model_bytes (a partial passed on as it arrived), saving a hash at commit.
    model_digest: str | None = None
    # The stored model whose bytes model_bytes are (that partial, when it was stored): the
    # commit copies it within the store (a hard link on a directory) instead of writing the
    # bytes again.
    source_model_id: str | None = None
    state_bytes: bytes | None
    rejected: dict[str, str]  # combiner -> why its partial was not used
    num_updates: int
    total_weight: float


def reduce_round(
    *,
    store: ModelStore,
    global_model_id: str,
    partials: Sequence[Partial],
    aggregator: str,
    aggregator_kwargs: Mapping[str, Any],
    state_id: str | None,
    max_model_size: int,
    global_model_bytes: bytes | None = None,
) -> ReduceOutcome:
    """Merge the partials, apply the server step, and return the new model's bytes.

    ``global_model_bytes``: the stored bytes of ``global_model_id`` when the caller holds them
    in memory (a small model kept for the combiner links), which saves reading the store.
    """
    passed_on = _sole_partial_as_model(
        store=store,
        global_model_id=global_model_id,
        global_model_bytes=global_model_bytes,
        partials=partials,
        aggregator=aggregator,
        aggregator_kwargs=aggregator_kwargs,
        state_id=state_id,
        max_model_size=max_model_size,
    )
    if passed_on is not None:
        return passed_on
    if global_model_bytes is None:
        global_model_bytes = store.get_bytes(global_model_id)
    global_model = load_model(global_model_bytes, max_size=max_model_size)
    accumulator = WeightedMeanAccumulator({n: ArraySpec.of(a) for n, a in global_model.items()})
    rejected: dict[str, str] = {}
    for partial in partials:
        try:
            mean = load_model(partial.read(store), max_size=max_model_size)
            accumulator.merge_partial(mean, partial.total_weight, partial.num_updates)
        except InvalidArgument as exc:
            rejected[partial.combiner] = str(exc)
    if accumulator.count == 0:
        raise FailedPrecondition("no usable update reached the controller")
    plugin = get_aggregator(aggregator, aggregator_kwargs)
    state = load_model(store.get_bytes(state_id)) if state_id else None
    new_model, new_state = plugin.server_update(global_model, accumulator.mean(), state)
    return ReduceOutcome(
        model_bytes=dump_model(new_model),
        state_bytes=dump_model(new_state) if new_state is not None else None,
        rejected=rejected,
        num_updates=accumulator.count,
        total_weight=accumulator.total_weight,
    )


def _sole_partial_as_model(
    *,
    store: ModelStore,
    global_model_id: str,
    global_model_bytes: bytes | None,
    partials: Sequence[Partial],
    aggregator: str,
    aggregator_kwargs: Mapping[str, Any],
    state_id: str | None,
    max_model_size: int,
) -> ReduceOutcome | None:
    """The outcome of the single-combiner FedAvg round without decoding anything, or None.

    With one partial, merging divides its sums by 1.0 (exact), FedAvg casts the mean to the
    model dtypes (nothing to do when those are float32/float64, the accumulation dtypes) and
    the dump re-encodes the same arrays: the new model is byte for byte the partial, provided
    the partial is canonically encoded, matches the global model's tensors and passes the
    merge's checks. Anything else (None) takes the general path, which also words the errors.
    """
    if (
        len(partials) != 1
        or state_id
        or type(get_aggregator(aggregator, aggregator_kwargs)) is not FedAvg
    ):
        return None
    partial = partials[0]
    specs = _global_specs(store, global_model_id, global_model_bytes)
    if specs is None or not all(_passes_through(spec) for spec in specs.values()):
        return None
    data = partial.read(store)
    if len(data) > max_model_size or not is_canonical_model(data):
        return None
    try:
        mean = load_model(data, max_size=max_model_size, copy=False)  # read-only views
        WeightedMeanAccumulator(specs).check_partial(
            mean, partial.total_weight, partial.num_updates
        )
    except InvalidArgument:
        return None
    if any(mean[name].dtype != spec.dtype for name, spec in specs.items()):
        return None
    return ReduceOutcome(
        model_bytes=data,
        model_digest=partial.digest,
        source_model_id=partial.model_id if partial.data is None else None,
        state_bytes=None,
        rejected={},
        num_updates=partial.num_updates,
        total_weight=partial.total_weight,
    )


def _passes_through(spec: ArraySpec) -> bool:
    """Whether the mean of this tensor is stored unrounded in its own dtype."""
    return spec.dtype == spec.accumulation_dtype


def _global_specs(
    store: ModelStore, model_id: str, data: bytes | None
) -> dict[str, ArraySpec] | None:
    """The global model's tensor specs: from ``data`` when the caller holds the model's bytes,
    else from the store."""
    if data is None:
        return _stored_specs(store, model_id)
    return _specs(header_specs(data, total_size=len(data)))


def _specs(
    specs: Mapping[str, tuple[tuple[int, ...], Any]] | None,
) -> dict[str, ArraySpec] | None:
    if specs is None:
        return None
    return {name: ArraySpec(shape, dtype) for name, (shape, dtype) in specs.items()}


def _stored_specs(store: ModelStore, model_id: str) -> dict[str, ArraySpec] | None:
    """The model's tensor specs read from its header only (not the whole model), or None."""
    total_size = store.size(model_id)
    head = bytearray()
    chunks = store.get(model_id, chunk_size=_HEADER_READ_BYTES)
    try:
        for chunk in chunks:
            head += chunk
            if len(head) >= 8 and len(head) >= 8 + int.from_bytes(head[:8], "little"):
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return _specs(header_specs(head, total_size=total_size))


def split_requested(requested: int, clients: Mapping[str, int]) -> dict[str, int]:
    """Split ``requested`` clients across combiners in proportion to their client counts.

    Largest-remainder rounding, capped by what each combiner has; combiners with no share are
    left out (FEDn sends every client to one combiner when it can).
    """
    total = sum(clients.values())
    if requested >= total:
        return {name: count for name, count in clients.items() if count > 0}
    exact = {name: requested * count / total for name, count in clients.items()}
    shares = {name: int(np.floor(value)) for name, value in exact.items()}
    leftover = requested - sum(shares.values())
    by_remainder = sorted(exact, key=lambda name: (-(exact[name] - shares[name]), name))
    for name in by_remainder[:leftover]:
        shares[name] += 1
    return {name: share for name, share in shares.items() if share > 0}
