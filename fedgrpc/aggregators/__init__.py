"""Aggregation plugins: the streaming weighted mean and the server-side update rules."""

from fedgrpc.aggregators.accumulator import Arrays, ArraySpec, WeightedMeanAccumulator
from fedgrpc.aggregators.base import Aggregator, ParamRange
from fedgrpc.aggregators.fedavg import FedAvg
from fedgrpc.aggregators.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedgrpc.aggregators.registry import (
    ENTRY_POINT_GROUP,
    available_aggregators,
    get_aggregator,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Aggregator",
    "ArraySpec",
    "Arrays",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedOpt",
    "FedYogi",
    "ParamRange",
    "WeightedMeanAccumulator",
    "available_aggregators",
    "get_aggregator",
]
