"""A combiner's round closes on the right event, with the right counts: the first of a full
buffer of accepted updates or every sampled client having answered."""

from __future__ import annotations

import numpy as np

from fedgrpc.aggregators import WeightedMeanAccumulator
from fedgrpc.combiner.clients import ClientConnection
from fedgrpc.combiner.rounds import TrainingRound
from fedgrpc.model.serialization import dump_model
from fedgrpc.proto.model.v1 import model_pb2
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.transfer import ReceivedModel, dict_to_struct

MODEL = {"w": np.zeros(4, dtype=np.float32)}


def _round(clients: int, buffer: int = -1) -> tuple[TrainingRound, list[str]]:
    assignment = network_pb2.RoundAssignment(
        round_id="r1", round_buffer_size=buffer, round_timeout=60
    )
    round_ = TrainingRound(assignment, WeightedMeanAccumulator(MODEL), max_model_size=1 << 20)
    round_.dispatch([ClientConnection(name=f"c{i}") for i in range(clients)])
    return round_, round_.task_ids


def _update(value: float) -> ReceivedModel:
    header = model_pb2.ModelHeader(metadata=dict_to_struct({"num_examples": 1}))
    return ReceivedModel(header=header, data=dump_model({"w": np.full(4, value, np.float32)}))


async def test_the_round_closes_when_every_client_answered_either_way() -> None:
    round_, tasks = _round(3)
    await round_.accept_update(tasks[0], _update(1.0))
    round_.task_failed(tasks[1], "boom")
    assert round_.close_reason == ""  # still open
    round_.client_gone("c2")
    assert round_.close_reason == "every sampled client answered"
    assert round_.accepted == 1
    assert [r.status for r in round_.reports()] == ["ok", "failed", "disconnected"]


async def test_the_round_closes_once_its_buffer_is_full() -> None:
    round_, tasks = _round(4, buffer=2)
    await round_.accept_update(tasks[0], _update(1.0))
    assert round_.close_reason == ""  # still open
    await round_.accept_update(tasks[3], _update(3.0))
    assert round_.close_reason == "buffer of 2 updates filled"
    mean, total_weight, count = await round_.partial_mean()
    assert mean is not None
    assert (count, total_weight) == (2, 2.0)
    np.testing.assert_array_equal(mean["w"], np.full(4, 2.0, np.float32))


async def test_repeated_answers_for_one_task_count_once() -> None:
    round_, tasks = _round(2)
    round_.task_failed(tasks[0], "first")
    round_.task_failed(tasks[0], "again")
    round_.client_gone("c0")
    assert round_.close_reason == ""  # still open
    assert round_.accepted == 0
    round_.task_failed(tasks[1], "second")
    assert round_.close_reason == "every sampled client answered"
