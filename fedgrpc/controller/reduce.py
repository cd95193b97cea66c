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
from fedgrpc.errors import FailedPrecondition, InvalidArgument
from fedgrpc.model.serialization import dump_model, load_model
from fedgrpc.modelstore import ModelStore


@dataclass(frozen=True, kw_only=True)
class Partial:
    combiner: str
    model_id: str
    total_weight: float
    num_updates: int


@dataclass(frozen=True, kw_only=True)
class ReduceOutcome:
    model_bytes: bytes
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
) -> ReduceOutcome:
    """Merge the partials, apply the server step, and return the new model's bytes."""
    global_model = load_model(store.get_bytes(global_model_id), max_size=max_model_size)
    accumulator = WeightedMeanAccumulator({n: ArraySpec.of(a) for n, a in global_model.items()})
    rejected: dict[str, str] = {}
    for partial in partials:
        try:
            mean = load_model(store.get_bytes(partial.model_id), max_size=max_model_size)
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
