"""Training sessions over real gRPC on loopback: aggregation math, policies and failures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest

from fedgrpc.errors import FailedPrecondition
from fedgrpc.model.serialization import dump_model
from fedgrpc.proto.combiner.v1 import combiner_pb2, combiner_pb2_grpc
from fedgrpc.proto.control.v1 import control_pb2
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.rpc.channel import open_channel
from fedgrpc.security.tokens import Role
from fedgrpc.transfer import struct_to_dict, upload_model
from tests.integration.conftest import (
    LocalNetwork,
    constant_validate,
    eventually,
    shift_train,
)

pytestmark = pytest.mark.timeout(120)

SEED: list[np.ndarray] = [
    np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    np.arange(5, dtype=np.float64),
]


def fedavg_step(
    model: list[np.ndarray], deltas: list[float], weights: list[int]
) -> list[np.ndarray]:
    """Reference: weighted average of (model + delta_i)."""
    shift = float(np.average(deltas, weights=weights))
    return [array + shift for array in model]


async def test_fedavg_rounds_across_two_combiners_match_reference(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    await net.add_combiner("alpha")
    await net.add_combiner("beta")
    deltas, weights = [0.01, 0.02, 0.04], [100, 300, 50]
    for i, (delta, weight) in enumerate(zip(deltas, weights, strict=True)):
        await net.add_client(f"site-{i}", shift_train(delta, weight), constant_validate)
    await net.upload_seed(SEED)
    session_id = await net.start_session(
        rounds=3, round_timeout=20, requested_clients=3, min_clients=3
    )

    session = await net.wait_session(session_id)
    assert (session.status, session.rounds_completed) == ("finished", 3)
    rounds = await net.rounds(session_id)
    assert [r.status for r in rounds] == ["success"] * 3
    expected = list(SEED)
    for round_ in rounds:
        expected = fedavg_step(expected, deltas, weights)
        committed = await net.download(round_.committed_model_id)
        for i, array in enumerate(expected):
            np.testing.assert_allclose(committed[str(i)], array, rtol=1e-6)
            assert committed[str(i)].dtype == SEED[i].dtype
        assert round_.num_updates == 3
        assert {c.name for c in round_.combiners} == {"alpha", "beta"}
    validations = await net.control.ListValidations(
        control_pb2.ListValidationsRequest(model_id=rounds[-1].committed_model_id)
    )
    assert validations.count == 3
    assert {v.sender_name for v in validations.result} == {"site-0", "site-1", "site-2"}


async def test_fedadam_keeps_optimizer_state_across_rounds(local_network: LocalNetwork) -> None:
    net = local_network
    await net.add_combiner("alpha")
    await net.add_client("a", shift_train(0.5, 1))
    await net.add_client("b", shift_train(1.5, 1))
    seed = [np.zeros(4, dtype=np.float32)]
    await net.upload_seed(seed)
    lr, beta1, beta2, tau = 0.1, 0.9, 0.99, 1e-3
    kwargs = {"learning_rate": lr, "beta1": beta1, "beta2": beta2, "tau": tau}
    request = control_pb2.StartSessionRequest(
        rounds=3, round_timeout=20, validate=False, aggregator="fedadam"
    )
    request.aggregator_kwargs.update(kwargs)
    session = await net.control.StartSession(request)
    assert (await net.wait_session(session.id)).status == "finished"

    x, m, v = np.zeros(4), np.zeros(4), np.full(4, tau**2)
    rounds = await net.rounds(session.id)
    for round_ in rounds:
        delta = np.ones(4)  # the average update moves every element by (0.5 + 1.5) / 2
        m = beta1 * m + (1 - beta1) * delta
        v = beta2 * v + (1 - beta2) * delta**2
        x = x + lr * m / (np.sqrt(v) + tau)
        committed = await net.download(round_.committed_model_id)
        np.testing.assert_allclose(committed["0"], x, rtol=1e-5)


async def test_buffer_closes_round_and_late_update_is_dropped(local_network: LocalNetwork) -> None:
    """A raw client holds its task past the round's close, then uploads: refused, recorded."""
    net = local_network
    combiner = await net.add_combiner("alpha")
    await net.add_client("fast", shift_train(1.0))
    channel = open_channel(
        combiner.address, max_message_size=16 << 20, token=net.token(Role.CLIENT, "laggard")
    )
    outbox: asyncio.Queue[combiner_pb2.ClientMessage] = asyncio.Queue()
    outbox.put_nowait(combiner_pb2.ClientMessage(hello=combiner_pb2.ClientHello(name="laggard")))

    async def outgoing() -> AsyncIterator[combiner_pb2.ClientMessage]:
        while True:
            yield await outbox.get()

    async def heartbeats() -> None:
        # Like a real client, the laggard stays alive while it holds its task; the interval is
        # a heartbeat period, not a wait for a condition.
        while True:
            outbox.put_nowait(combiner_pb2.ClientMessage(heartbeat=combiner_pb2.Heartbeat()))
            await asyncio.sleep(0.2)

    stream = combiner_pb2_grpc.CombinerServiceStub(channel).Connect(outgoing())
    beating = asyncio.ensure_future(heartbeats())
    await eventually(
        lambda: net.controller.network.registry.clients_online() == 2, what="laggard registered"
    )
    await net.upload_seed([np.zeros(3, dtype=np.float32)])
    session_id = await net.start_session(
        rounds=1, round_timeout=20, round_buffer_size=1, requested_clients=2, validate=False
    )
    task = None
    async for message in stream:
        if message.HasField("train"):
            task = message.train
            break
    assert task is not None
    session = await net.wait_session(session_id)  # closed by the fast client's update
    assert session.status == "finished"
    (round_,) = await net.rounds(session_id)
    np.testing.assert_allclose((await net.download(round_.committed_model_id))["0"], [1.0] * 3)

    header = model_pb2.ModelHeader(
        task_id=task.task_id, round_id=task.round_id, session_id=session_id
    )
    header.metadata.update({"num_examples": 1})
    late = dump_model([np.full(3, 100, dtype=np.float32)])
    with pytest.raises(FailedPrecondition, match="closed"):
        await upload_model(model_pb2_grpc.ModelServiceStub(channel), late, header=header)
    beating.cancel()
    stream.cancel()
    await channel.close()

    async def dropped() -> bool:
        request = control_pb2.ListStatusesRequest(event_type="update.dropped")
        return bool((await net.control.ListStatuses(request)).count >= 1)

    await eventually(dropped, what="a status event for the late update")


async def test_failing_train_is_reported_and_client_stays(local_network: LocalNetwork) -> None:
    net = local_network
    await net.add_combiner("alpha")
    calls = {"n": 0}

    def flaky_train(model: list[np.ndarray], settings: Any) -> tuple[Any, dict[str, Any]]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("disk full")
        return [a + 1 for a in model], {"num_examples": 10}

    await net.add_client("steady", shift_train(1.0))
    flaky = await net.add_client("flaky", flaky_train)
    await net.upload_seed([np.zeros(2, dtype=np.float32)])
    session_id = await net.start_session(rounds=2, round_timeout=20, min_clients=1, validate=False)
    assert (await net.wait_session(session_id)).status == "finished"
    first, second = await net.rounds(session_id)
    statuses = {c.client_name: c.status for c in first.combiners[0].clients}
    assert statuses == {"steady": "ok", "flaky": "failed"}
    assert second.num_updates == 2
    assert flaky.connected.is_set()
    events = await net.control.ListStatuses(
        control_pb2.ListStatusesRequest(event_type="task.failed")
    )
    assert events.count == 1
    assert "disk full" in events.result[0].message


@pytest.mark.parametrize("inline_model_bytes", [None, 1024], ids=["inline", "model-service"])
async def test_a_diverged_clients_non_finite_metrics_are_kept_by_name(
    local_network: LocalNetwork, inline_model_bytes: int | None
) -> None:
    """A loss of inf or NaN is a report, not a malformed message: the update is folded and
    the metrics are stored under proto3's JSON names (the model, finite, is still checked)."""
    net = local_network
    settings = {} if inline_model_bytes is None else {"inline_model_bytes": inline_model_bytes}
    await net.add_combiner("alpha", **settings)

    def diverged_train(model: list[np.ndarray], _: Any) -> tuple[Any, dict[str, Any]]:
        return [a + 3 for a in model], {"num_examples": 100, "loss": float("inf")}

    def diverged_validate(model: Any) -> dict[str, Any]:
        return {"loss": float("nan"), "per_class": [0.5, float("-inf")]}

    await net.add_client("steady", shift_train(1.0))
    await net.add_client("diverged", diverged_train, diverged_validate)
    await net.upload_seed([np.zeros(1000, dtype=np.float32)])
    session_id = await net.start_session(rounds=1, round_timeout=20, validate=True)
    session = await net.wait_session(session_id, timeout=15)
    assert session.status == "finished", session.reason
    (round_,) = await net.rounds(session_id)
    assert round_.status == "success", round_.reason
    assert {c.client_name: c.status for c in round_.combiners[0].clients} == {
        "steady": "ok",
        "diverged": "ok",
    }
    np.testing.assert_allclose((await net.download(session.model_id))["0"], [2.0] * 1000)

    async def validation_of_diverged() -> list[dict[str, Any]]:
        request = control_pb2.ListValidationsRequest(session_id=session_id)
        found = (await net.control.ListValidations(request)).result
        return [struct_to_dict(v.metrics) for v in found if v.sender_name == "diverged"]

    found = await eventually(validation_of_diverged, what="the diverged client's validation")
    assert found == [{"loss": "NaN", "per_class": [0.5, "-Infinity"]}]


async def test_round_without_enough_updates_fails_and_policy_applies(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    await net.add_combiner("alpha")

    def broken(model: Any, settings: Any) -> Any:
        raise RuntimeError("no data")

    await net.add_client("only", broken)
    await net.upload_seed([np.zeros(2, dtype=np.float32)])
    session_id = await net.start_session(
        rounds=5, round_timeout=10, max_consecutive_failures=2, validate=False
    )
    session = await net.wait_session(session_id)
    assert session.status == "failed"
    assert "2 rounds in a row failed" in session.reason
    rounds = await net.rounds(session_id)
    assert [r.status for r in rounds] == ["failed", "failed"]
    assert "min_clients" in rounds[0].reason


async def test_mismatched_update_is_rejected_and_round_goes_on(local_network: LocalNetwork) -> None:
    net = local_network
    await net.add_combiner("alpha")

    def wrong_shape(model: list[np.ndarray], settings: Any) -> tuple[Any, dict[str, Any]]:
        return [np.zeros(7, dtype=np.float32)], {"num_examples": 1}

    await net.add_client("good", shift_train(2.0))
    await net.add_client("bad", wrong_shape)
    await net.upload_seed([np.zeros(3, dtype=np.float32)])
    session_id = await net.start_session(rounds=1, round_timeout=20, validate=False)
    assert (await net.wait_session(session_id)).status == "finished"
    (round_,) = await net.rounds(session_id)
    outcome = {c.client_name: c for c in round_.combiners[0].clients}
    assert outcome["bad"].status in ("rejected", "failed")
    assert "shape" in outcome["bad"].message
    np.testing.assert_allclose((await net.download(round_.committed_model_id))["0"], [2.0] * 3)


async def test_stop_session_ends_current_round_cleanly(local_network: LocalNetwork) -> None:
    net = local_network
    await net.add_combiner("alpha")
    release = threading.Event()

    def blocking_train(model: Any, settings: Any) -> Any:
        release.wait(30)
        return model, {"num_examples": 1}

    await net.add_client("busy", blocking_train)
    await net.upload_seed([np.zeros(2, dtype=np.float32)])
    session_id = await net.start_session(rounds=3, round_timeout=60, validate=False)

    async def round_running() -> bool:
        return any(r.status == "running" for r in await net.rounds(session_id))

    await eventually(round_running, what="the first round to start")
    stopped = await net.control.StopSession(control_pb2.StopSessionRequest(session_id=session_id))
    release.set()
    assert stopped.status == "stopped"
    (round_,) = await net.rounds(session_id)
    assert round_.status == "aborted"
    assert not round_.committed_model_id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await net.control.StopSession(control_pb2.StopSessionRequest(session_id=session_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_clients_are_balanced_and_preferred_combiner_honoured(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    await net.add_combiner("alpha")
    await net.add_combiner("beta")
    for i in range(4):
        await net.add_client(f"n{i}", shift_train(0.0))
    await net.add_client("picky", shift_train(0.0), preferred_combiner="alpha")
    links = net.controller.network.registry.links
    assert "picky" in links["alpha"].clients
    assert abs(len(links["alpha"].clients) - len(links["beta"].clients)) <= 1

    async def all_listed_online() -> bool:
        # The registry has them at once; their "online" records are written a moment later.
        request = control_pb2.ListClientsRequest(status="online")
        listed = await net.control.ListClients(request)
        return bool(listed.count == 5)

    await eventually(all_listed_online, what="all five clients listed online")


async def test_second_session_while_one_runs_is_refused(local_network: LocalNetwork) -> None:
    net = local_network
    await net.add_combiner("alpha")
    release = threading.Event()

    def blocking_train(model: Any, settings: Any) -> Any:
        release.wait(30)
        return model, {"num_examples": 1}

    await net.add_client("busy", blocking_train)
    await net.upload_seed([np.zeros(2, dtype=np.float32)])
    first = await net.start_session(rounds=1, round_timeout=30, validate=False)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await net.start_session(rounds=1)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert first in info.value.details()
    release.set()
    assert (await net.wait_session(first)).status == "finished"
    continued = await net.control.ContinueSession(
        control_pb2.ContinueSessionRequest(session_id=first, rounds=1)
    )
    assert continued.status == "running"
    assert (await net.wait_session(first)).rounds_completed == 2


async def test_round_waiting_for_clients_fails_at_timeout_and_stop_is_prompt(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    await net.add_combiner("alpha")
    await net.add_client("lonely", shift_train(1.0))
    await net.upload_seed([np.zeros(2, dtype=np.float32)])
    session_id = await net.start_session(
        rounds=2,
        round_timeout=1,
        min_clients=3,
        requested_clients=3,
        validate=False,
        round_failure_policy="stop",
    )
    session = await net.wait_session(session_id)
    assert session.status == "failed"
    (round_,) = await net.rounds(session_id)
    assert "min_clients=3" in round_.reason
    assert "connected" in round_.reason

    waiting = await net.start_session(
        rounds=1, round_timeout=600, min_clients=3, requested_clients=3, validate=False
    )

    async def round_running() -> bool:
        return any(r.status == "running" for r in await net.rounds(waiting))

    await eventually(round_running, what="the round to start waiting for clients")
    request = control_pb2.StopSessionRequest(session_id=waiting)
    stopped = await asyncio.wait_for(net.control.StopSession(request), 15)  # not 600 s
    assert stopped.status == "stopped"


async def test_one_upload_at_a_time_still_folds_every_update(local_network: LocalNetwork) -> None:
    net = local_network
    await net.add_combiner("narrow", max_concurrent_uploads=1)
    deltas, weights = [0.5, 1.0, 2.0], [1, 2, 4]
    for i, (delta, weight) in enumerate(zip(deltas, weights, strict=True)):
        await net.add_client(f"n{i}", shift_train(delta, weight))
    await net.upload_seed([np.zeros(8, dtype=np.float32)])
    session_id = await net.start_session(
        rounds=1, round_timeout=20, validate=False, requested_clients=3
    )
    session = await net.wait_session(session_id)
    assert session.status == "finished"
    expected = np.average(deltas, weights=weights)
    np.testing.assert_allclose(
        (await net.download(session.model_id))["0"], [expected] * 8, rtol=1e-6
    )


async def test_async_train_and_validate_run_on_the_clients_event_loop(
    local_network: LocalNetwork,
) -> None:
    """``async def`` user functions run on the loop (no worker thread), mixed freely with
    plain ones across clients, with the same results."""
    net = local_network
    await net.add_combiner("alpha")
    threads: set[int] = set()
    plain = shift_train(0.01)

    async def train(model: list[np.ndarray], settings: Any) -> tuple[Any, dict[str, Any]]:
        threads.add(threading.get_ident())
        await asyncio.sleep(0)  # a coroutine may await while it trains
        result: tuple[Any, dict[str, Any]] = plain(model, settings)
        return result

    async def validate(model: list[np.ndarray]) -> dict[str, float]:
        threads.add(threading.get_ident())
        return {"accuracy": 0.75}

    await net.add_client("async-site", train, validate)
    await net.add_client("plain-site", shift_train(0.03), constant_validate)
    await net.upload_seed(SEED)
    session_id = await net.start_session(
        rounds=2, round_timeout=20, requested_clients=2, min_clients=2
    )
    session = await net.wait_session(session_id)
    assert (session.status, session.rounds_completed) == ("finished", 2)
    rounds = await net.rounds(session_id)
    committed = await net.download(rounds[-1].committed_model_id)
    expected = fedavg_step(fedavg_step(SEED, [0.01, 0.03], [100, 100]), [0.01, 0.03], [100, 100])
    for i, array in enumerate(expected):
        np.testing.assert_allclose(committed[str(i)], array, rtol=1e-6)
    assert threads == {threading.get_ident()}  # the test's loop is the clients' loop
    validations = await net.control.ListValidations(
        control_pb2.ListValidationsRequest(model_id=rounds[-1].committed_model_id)
    )
    by_sender = {v.sender_name: v for v in validations.result}
    assert struct_to_dict(by_sender["async-site"].metrics) == {"accuracy": 0.75}
