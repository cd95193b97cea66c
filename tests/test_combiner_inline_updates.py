"""A combiner folds an inline update as soon as it reads it, or after a fold under way.

Both paths end the same: the update is folded once, its client's report carries the metadata
as the client sent it, and the round closes when every client answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest

from fedgrpc.combiner.clients import ClientConnection
from fedgrpc.combiner.core import CombinerCore
from fedgrpc.combiner.models import CachedModel
from fedgrpc.combiner.rounds import TrainingRound
from fedgrpc.model.chunking import model_digest
from fedgrpc.model.serialization import dump_model
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.rpc.connect import SharedModelTask
from fedgrpc.transfer import dict_to_struct, struct_to_dict

MODEL = dump_model({"w": np.zeros(8, dtype=np.float32)})


async def _never_fetched(model_id: str) -> CachedModel:
    raise AssertionError("the model came inline")


async def _never_uploaded(*args: object) -> str:
    raise AssertionError("the partial goes inline")


def _combiner(reports: list[network_pb2.CombinerReport]) -> CombinerCore:
    core = CombinerCore(
        name="c",
        max_clients=10,
        max_model_size=1 << 20,
        inline_model_bytes=1 << 20,
        report=reports.append,
        fetch_model=_never_fetched,
        upload_partial=_never_uploaded,
    )
    core.link_inline_bytes = 1 << 20
    return core


async def _eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def _start_round(core: CombinerCore, clients: list[ClientConnection]) -> list[str]:
    """Start a round of ``clients`` with the model inline; each client's task id."""
    assignment = network_pb2.RoundAssignment(
        round_id="r1",
        session_id="s1",
        model_id="m0",
        aggregator="fedavg",
        round_timeout=60,
        round_buffer_size=-1,
        requested_clients=len(clients),
        model=MODEL,
        model_digest=model_digest(MODEL),
    )
    core.start_round(assignment)
    tasks: list[str] = []
    for client in clients:
        task = await asyncio.wait_for(client.outbox.get(), 10)
        assert isinstance(task, SharedModelTask)
        tasks.append(task.task_id)
    return tasks


def _update(task_id: str, value: float, metadata: dict[str, object]) -> combiner_pb2.ClientMessage:
    update = combiner_pb2.ModelUpdate(
        task_id=task_id,
        session_id="s1",
        round_id="r1",
        metadata=dict_to_struct(metadata),
        model=dump_model({"w": np.full(8, value, dtype=np.float32)}),
    )
    return combiner_pb2.ClientMessage(update=update)


def _round_result(reports: list[network_pb2.CombinerReport]) -> network_pb2.RoundResult | None:
    results = [r.round_result for r in reports if r.HasField("round_result")]
    return results[0] if results else None


@pytest.mark.parametrize("fold_under_way", [False, True])
async def test_an_inline_update_is_folded_once_either_way(fold_under_way: bool) -> None:
    reports: list[network_pb2.CombinerReport] = []
    core = _combiner(reports)
    clients = [core.clients.connect(f"n{i}", "ip", inline_model_bytes=1 << 20) for i in range(2)]
    tasks = await _start_round(core, clients)
    round_ = core._rounds["r1"]
    metadata = {"num_examples": 3, "loss": 0.25, "tags": ["a", "b"]}

    if fold_under_way:
        async with round_._lock:  # as a large upload being folded holds it
            assert not round_.can_fold_now(len(MODEL))
            core.handle_client_message(clients[0], _update(tasks[0], 1.0, metadata))
            await asyncio.sleep(0)
            assert round_.accepted == 0  # waits for the fold under way
        await _eventually(lambda: round_.accepted == 1, "the waiting update's fold")
    else:
        assert round_.can_fold_now(len(MODEL))
        core.handle_client_message(clients[0], _update(tasks[0], 1.0, metadata))
        assert round_.accepted == 1  # folded on the spot, no task of its own

    core.handle_client_message(clients[1], _update(tasks[1], 3.0, {"num_examples": 1}))
    await _eventually(lambda: _round_result(reports) is not None, "the round's result")
    result = _round_result(reports)
    assert result is not None
    assert (result.num_updates, result.total_weight, result.error) == (2, 4.0, "")
    by_name = {report.client_name: report for report in result.clients}
    assert by_name["n0"].status == "ok"
    assert struct_to_dict(by_name["n0"].metadata) == struct_to_dict(dict_to_struct(metadata))
    await core.shutdown()


async def test_a_refused_inline_update_ends_its_task_and_is_recorded() -> None:
    reports: list[network_pb2.CombinerReport] = []
    core = _combiner(reports)
    client = core.clients.connect("n0", "ip", inline_model_bytes=1 << 20)
    (task,) = await _start_round(core, [client])
    round_: TrainingRound = core._rounds["r1"]
    core.handle_client_message(client, _update(task, 1.0, {"num_examples": -1}))
    assert round_.accepted == 0
    await _eventually(lambda: _round_result(reports) is not None, "the round's result")
    result = _round_result(reports)
    assert result is not None
    assert result.clients[0].status == "rejected"
    events = [r.status for r in reports if r.HasField("status")]
    assert [e.event_type for e in events] == ["update.rejected"]
    assert "num_examples" in events[0].message
    await core.shutdown()
