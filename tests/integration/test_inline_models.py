"""Small models travel inline on the Connect stream; large ones keep using ModelService.

ModelService calls are counted by the combiner's own servicer (``Combiner.model_service``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from fedgrpc.combiner.app import Combiner
from fedgrpc.model.chunking import model_digest
from fedgrpc.model.serialization import dump_model
from fedgrpc.modelstore.embedded import EmbeddedModelStore
from fedgrpc.proto.combiner.v1 import combiner_pb2, combiner_pb2_grpc
from fedgrpc.proto.control.v1 import control_pb2
from fedgrpc.rpc.channel import open_channel
from fedgrpc.security.tokens import Role
from fedgrpc.transfer import dict_to_struct
from tests.integration.conftest import LocalNetwork, constant_validate, eventually, shift_train

pytestmark = pytest.mark.timeout(120)


def _calls(combiner: Combiner) -> dict[str, int]:
    assert combiner.model_service is not None
    return dict(combiner.model_service.calls)


def _controller_calls(net: LocalNetwork) -> Counter[str]:
    return Counter(net.controller.model_service.calls)


async def _statuses(net: LocalNetwork, event_type: str) -> list[str]:
    request = control_pb2.ListStatusesRequest(event_type=event_type)
    return [status.message for status in (await net.control.ListStatuses(request)).result]


class RawClient:
    """A client speaking the Connect stream by hand (to send what a real client never would)."""

    def __init__(
        self, net: LocalNetwork, combiner: Combiner, name: str, *, limit: int = 1 << 20
    ) -> None:
        self.name = name
        self.limit = limit  # what the combiner's welcome must announce
        self.channel = open_channel(
            combiner.address, max_message_size=16 << 20, token=net.token(Role.CLIENT, name)
        )
        self.outbox: asyncio.Queue[combiner_pb2.ClientMessage] = asyncio.Queue()
        hello = combiner_pb2.ClientHello(name=name, inline_model_bytes=1 << 20)
        self.outbox.put_nowait(combiner_pb2.ClientMessage(hello=hello))
        stub = combiner_pb2_grpc.CombinerServiceStub(self.channel)
        self.stream = stub.Connect(self._outgoing())

    async def _outgoing(self) -> AsyncIterator[combiner_pb2.ClientMessage]:
        while True:
            yield await self.outbox.get()

    async def next_task(self) -> combiner_pb2.TrainTask:
        async for message in self.stream:
            if message.HasField("welcome"):
                assert message.welcome.inline_model_bytes == self.limit
            if message.HasField("train"):
                task: combiner_pb2.TrainTask = message.train
                return task
        raise AssertionError("stream ended before a train task")

    def send_update(
        self,
        task: combiner_pb2.TrainTask,
        value: float,
        *,
        task_id: str = "",
        corrupt: bool = False,
        digest: bool = True,
        size: int = 3,
    ) -> None:
        data = dump_model([np.full(size, value, dtype=np.float32)])
        update = combiner_pb2.ModelUpdate(
            task_id=task_id or task.task_id,
            session_id=task.session_id,
            round_id=task.round_id,
            model=data,
            digest=model_digest(data + b"x" if corrupt else data) if digest else "",
            metadata=dict_to_struct({"num_examples": 1}),
        )
        self.outbox.put_nowait(combiner_pb2.ClientMessage(update=update))

    async def close(self) -> None:
        self.stream.cancel()
        await self.channel.close()


async def test_small_models_use_no_model_service_call(local_network: LocalNetwork) -> None:
    net = local_network
    combiner = await net.add_combiner("alpha")
    for i, delta in enumerate([1.0, 2.0, 3.0]):
        await net.add_client(f"c{i}", shift_train(delta), constant_validate)
    await net.upload_seed([np.zeros(1000, dtype=np.float32)])
    before = _controller_calls(net)
    session_id = await net.start_session(rounds=3, round_timeout=20, validate=True)
    session = await net.wait_session(session_id)
    assert session.status == "finished", session.reason
    # The global models and partial means rode on the combiner link (validation passes still
    # download their model from the controller, once per round).
    assert _controller_calls(net) - before == Counter({"Download": 3})
    np.testing.assert_allclose((await net.download(session.model_id))["0"], [6.0] * 1000)
    rounds = await net.rounds(session_id)
    assert all(c.status == "ok" for r in rounds for c in r.combiners[0].clients)

    async def validated() -> bool:
        request = control_pb2.ListValidationsRequest(session_id=session_id)
        return bool((await net.control.ListValidations(request)).count >= 9)

    await eventually(validated, what="3 validations per round, from inline models")
    assert sum(_calls(combiner).values()) == 0, _calls(combiner)


async def test_models_over_the_inline_limit_use_model_service(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    small = await net.add_combiner("small", inline_model_bytes=1024)  # the model is ~4 KB
    await net.add_client("s0", shift_train(1.0))
    await net.add_client("s1", shift_train(3.0))
    await net.upload_seed([np.zeros(1000, dtype=np.float32)])
    before = _controller_calls(net)
    session_id = await net.start_session(rounds=2, round_timeout=20, validate=False)
    session = await net.wait_session(session_id)
    assert session.status == "finished", session.reason
    # The link's limit is the smaller one (1 KiB): model and partial use ModelService.
    assert _controller_calls(net) - before == Counter({"Download": 2, "Upload": 2})
    np.testing.assert_allclose((await net.download(session.model_id))["0"], [4.0] * 1000)
    assert _calls(small) == {"Download": 4, "Upload": 4}


async def test_a_model_fetched_from_the_controller_is_cached_in_one_read_only_buffer(
    local_network: LocalNetwork,
) -> None:
    # Received into one buffer, not as chunks joined at the end (which doubled a large model's
    # peak and left the chunks in the heap); read-only, since every download shares it.
    net = local_network
    combiner = await net.add_combiner("fetcher", inline_model_bytes=1024)
    arrays = [np.arange(1000, dtype=np.float32)]
    model_id = await net.upload_seed(arrays)
    assert combiner.core is not None
    cached = await combiner.core.models.get(model_id)
    assert isinstance(cached.data, memoryview)
    assert cached.data.readonly
    assert bytes(cached.data) == dump_model(arrays)
    assert cached.digest == model_digest(dump_model(arrays))
    assert _controller_calls(net)["Download"] == 1


async def test_a_client_with_inline_off_uses_model_service(local_network: LocalNetwork) -> None:
    net = local_network
    mixed = await net.add_combiner("mixed")
    await net.add_client("m0", shift_train(1.0))
    await net.add_client("m1", shift_train(3.0), inline_model_bytes=0)
    await net.upload_seed([np.zeros(1000, dtype=np.float32)])
    session_id = await net.start_session(rounds=2, round_timeout=20, validate=False)
    session = await net.wait_session(session_id)
    assert session.status == "finished", session.reason
    np.testing.assert_allclose((await net.download(session.model_id))["0"], [4.0] * 1000)
    assert _calls(mixed) == {"Download": 2, "Upload": 2}


Answer = Callable[[RawClient, combiner_pb2.TrainTask], None]


async def _one_round_beside_a_good_client(
    net: LocalNetwork, raw_name: str, answer: Answer
) -> tuple[Combiner, control_pb2.Session, dict[str, control_pb2.RoundClient]]:
    """A one-round session of a real client adding 2.0 and a raw client that ``answer``s its
    task; the combiner, the ended session and each client's outcome in the round."""
    combiner = await net.add_combiner("alpha")
    await net.add_client("good", shift_train(2.0))
    raw = RawClient(net, combiner, raw_name)
    try:
        await eventually(
            lambda: net.controller.network.registry.clients_online() == 2, what="raw client"
        )
        await net.upload_seed([np.zeros(3, dtype=np.float32)])
        session_id = await net.start_session(
            rounds=1, round_timeout=60, requested_clients=2, validate=False
        )
        answer(raw, await raw.next_task())
        # Decided by the answers, not by the 60 s timeout.
        session = await net.wait_session(session_id, timeout=20)
    finally:
        await raw.close()
    assert session.status == "finished", session.reason
    (round_,) = await net.rounds(session_id)
    return combiner, session, {c.client_name: c for c in round_.combiners[0].clients}


async def test_corrupted_inline_update_is_refused_and_round_goes_on(
    local_network: LocalNetwork,
) -> None:
    net = local_network

    def corrupt(raw: RawClient, task: combiner_pb2.TrainTask) -> None:
        assert task.model
        assert task.model_digest == model_digest(task.model)
        raw.send_update(task, 100.0, corrupt=True)

    combiner, session, outcome = await _one_round_beside_a_good_client(net, "corrupt", corrupt)
    assert outcome["good"].status == "ok"
    assert outcome["corrupt"].status == "rejected"
    assert "DATA_LOSS" in outcome["corrupt"].message
    np.testing.assert_allclose((await net.download(session.model_id))["0"], [2.0] * 3)
    assert any("DATA_LOSS" in m for m in await _statuses(net, "update.rejected"))
    assert sum(_calls(combiner).values()) == 0


async def test_an_inline_update_without_its_optional_digest_is_folded(
    local_network: LocalNetwork,
) -> None:
    net = local_network

    def plain(raw: RawClient, task: combiner_pb2.TrainTask) -> None:
        raw.send_update(task, 4.0, digest=False)

    _, session, clients = await _one_round_beside_a_good_client(net, "plain", plain)
    assert {name: c.status for name, c in clients.items()} == {"good": "ok", "plain": "ok"}
    good, plain_weight = clients["good"].num_examples, clients["plain"].num_examples
    expected = (2.0 * good + 4.0 * plain_weight) / (good + plain_weight)
    np.testing.assert_allclose((await net.download(session.model_id))["0"], [expected] * 3)


async def test_inline_update_for_another_clients_task_is_refused(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    combiner = await net.add_combiner("alpha")
    alice = RawClient(net, combiner, "alice")
    mallory = RawClient(net, combiner, "mallory")
    try:
        await eventually(
            lambda: net.controller.network.registry.clients_online() == 2, what="raw clients"
        )
        await net.upload_seed([np.zeros(3, dtype=np.float32)])
        session_id = await net.start_session(
            rounds=1, round_timeout=60, requested_clients=2, validate=False
        )
        alice_task, mallory_task = await asyncio.gather(alice.next_task(), mallory.next_task())
        mallory.send_update(mallory_task, 100.0, task_id=alice_task.task_id)

        async def refused() -> bool:
            return any("not to 'mallory'" in m for m in await _statuses(net, "update.dropped"))

        await eventually(refused, what="the forged update refused and recorded")
        alice.send_update(alice_task, 1.0)  # alice's own task is still open
        mallory.send_update(mallory_task, 3.0)
        session = await net.wait_session(session_id, timeout=20)
    finally:
        await alice.close()
        await mallory.close()
    assert session.status == "finished", session.reason
    (round_,) = await net.rounds(session_id)
    assert {c.client_name: c.status for c in round_.combiners[0].clients} == {
        "alice": "ok",
        "mallory": "ok",
    }
    np.testing.assert_allclose((await net.download(session.model_id))["0"], [2.0] * 3)
    assert sum(_calls(combiner).values()) == 0


async def test_inline_update_over_the_limit_is_refused(local_network: LocalNetwork) -> None:
    net = local_network
    combiner = await net.add_combiner("alpha", inline_model_bytes=1024)
    await net.add_client("good", shift_train(2.0))
    raw = RawClient(net, combiner, "big", limit=1024)  # asked for 1 MiB, the combiner's is less
    try:
        await eventually(
            lambda: net.controller.network.registry.clients_online() == 2, what="raw client"
        )
        await net.upload_seed([np.zeros(3, dtype=np.float32)])
        session_id = await net.start_session(
            rounds=1, round_timeout=60, requested_clients=2, validate=False
        )
        task = await raw.next_task()
        raw.send_update(task, 1.0, size=1000)  # ~4 KB
        session = await net.wait_session(session_id, timeout=20)
    finally:
        await raw.close()
    assert session.status == "finished", session.reason
    (round_,) = await net.rounds(session_id)
    outcome = {c.client_name: c for c in round_.combiners[0].clients}
    assert outcome["good"].status == "ok"
    assert outcome["big"].status == "rejected"
    assert "RESOURCE_EXHAUSTED" in outcome["big"].message
    assert "inline limit of 1024 bytes" in outcome["big"].message


async def test_a_small_model_and_its_records_commit_together_or_not_at_all(
    local_network: LocalNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small model is a row of the statestore's database, written in the same transaction
    # as the records naming it: when the records fail, no orphan model is left behind.
    net = local_network
    await net.add_combiner("alpha")
    await net.add_client("c0", shift_train(1.0), constant_validate)
    seed_id = await net.upload_seed([np.zeros(100, dtype=np.float32)])
    models = net.controller.models
    assert isinstance(models, EmbeddedModelStore)
    assert models.writes_into_statestore(400)

    def refuse(**fields: object) -> None:
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(net.controller.store.models, "create", refuse)
    session_id = await net.start_session(rounds=1, round_timeout=20, validate=False)
    session = await net.wait_session(session_id)
    assert session.status == "failed"
    assert "disk full (simulated)" in session.reason
    assert models.model_ids() == [seed_id]
    assert session.model_id == seed_id
