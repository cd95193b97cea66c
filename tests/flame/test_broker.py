"""The message broker over real gRPC: nodes on two combiners, the controller in between."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedgrpc.proto.control.v1 import control_pb2
from fedgrpc.statestore import Record
from tests.flame.fake_nodes import FakeNode, add_node, node_offline, running_network
from tests.integration.conftest import LocalNetwork, eventually


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[LocalNetwork]:
    async with running_network(tmp_path, analysis_node_grace_seconds=60.0) as local:
        yield local


async def start(network: LocalNetwork, nodes: list[str], analysis_id: str = "a1") -> str:
    request = control_pb2.StartAnalysisRequest(
        analysis_id=analysis_id, entrypoint="m:f", nodes=nodes, aggregator=nodes[-1]
    )
    return str((await network.control.StartAnalysis(request)).analysis_id)


def stored(network: LocalNetwork, message_id: str) -> Record:
    return network.controller.store.messages.get(message_id)


async def test_stored_before_routed_and_the_sender_is_stamped(network: LocalNetwork) -> None:
    n1 = await add_node(network, "n1", 0)
    n2 = await add_node(network, "n2", 1, auto_ack=False)
    analysis = await start(network, ["n1", "n2"])
    sent = n1.message(analysis, "n2", {"x": 1})
    await eventually(lambda: n2.messages, what="delivery")
    record = await asyncio.to_thread(stored, network, sent.message_id)
    assert (record["status"], record["sender"], record["recipient"]) == ("pending", "n1", "n2")
    assert n2.messages[0].sender == "n1"  # never the name the node wrote
    n2.ack(n2.messages[0])
    await eventually(lambda: n1.receipts, what="receipt")
    assert (n1.receipts[0].message_id, n1.receipts[0].delivered) == (sent.message_id, True)
    record = await asyncio.to_thread(stored, network, sent.message_id)
    assert record["status"] == "delivered"


async def test_order_per_pair_is_kept(network: LocalNetwork) -> None:
    n1 = await add_node(network, "n1", 0)
    n2 = await add_node(network, "n2", 1)
    analysis = await start(network, ["n1", "n2"])
    for index in range(30):
        n1.message(analysis, "n2", {"i": index})
    # A re-send may beat a slow ack on a loaded machine (a receipt per ack): count distinct
    # messages, in the order each first arrived.
    await eventually(lambda: len({r.message_id for r in n1.receipts}) == 30, what="30 receipts")
    first_arrivals = {e.message_id: e for e in n2.messages}
    assert [json.loads(e.body)["i"] for e in first_arrivals.values()] == list(range(30))
    assert [e.sequence for e in first_arrivals.values()] == list(range(1, 31))


async def test_an_offline_recipient_gets_its_messages_in_order_on_reconnect(
    network: LocalNetwork,
) -> None:
    n1 = await add_node(network, "n1", 0)
    n2 = await add_node(network, "n2", 1)
    analysis = await start(network, ["n1", "n2"])
    await node_offline(network, n2)
    for index in range(3):
        n1.message(analysis, "n2", {"i": index})
    await eventually(
        lambda: network.controller.store.messages.count(status="pending") == 3, what="stored"
    )
    assert n1.receipts == []
    back = await add_node(network, "n2", 0)  # on the other combiner this time
    # At least once: on a slow machine an ack can lose the race with a re-send, so count
    # distinct messages (the node de-duplicates by id) in the order they first arrived.
    await eventually(
        lambda: len({r.message_id for r in n1.receipts}) == 3, what="receipts after reconnect"
    )
    first_arrivals = {e.message_id: json.loads(e.body) for e in back.messages}
    assert [body["i"] for body in first_arrivals.values()] == [0, 1, 2]
    assert all(receipt.delivered for receipt in n1.receipts)


async def test_a_dropped_ack_means_a_resend_and_duplicate_acks_are_harmless(
    network: LocalNetwork,
) -> None:
    n1 = await add_node(network, "n1", 0)
    n2 = await add_node(network, "n2", 1, auto_ack=False)
    analysis = await start(network, ["n1", "n2"])
    sent = n1.message(analysis, "n2", {"once": True})
    await eventually(lambda: len(n2.messages) >= 2, what="a re-send of the unacked message")
    assert {envelope.message_id for envelope in n2.messages} == {sent.message_id}
    n2.ack(n2.messages[0])
    n2.ack(n2.messages[1])  # the node acks every copy it sees
    await eventually(lambda: len(n1.receipts) >= 2, what="a receipt per ack")
    assert all(receipt.delivered for receipt in n1.receipts)
    assert (await asyncio.to_thread(stored, network, sent.message_id))["status"] == "delivered"
    await network.controller.broker.drain()
    # Nothing pending is left to re-send: the broker's outbox for n2 is empty. (A copy already
    # in flight when the ack landed may still arrive; the node de-duplicates it by id.)
    assert "n2" not in network.controller.broker._outboxes
    assert {envelope.message_id for envelope in n2.messages} == {sent.message_id}


async def test_a_message_expires_after_its_ttl_with_a_negative_receipt(
    network: LocalNetwork,
) -> None:
    n1 = await add_node(network, "n1", 0)
    n2 = await add_node(network, "n2", 1)
    analysis = await start(network, ["n1", "n2"])
    await node_offline(network, n2)
    sent = n1.message(analysis, "n2", {"late": True}, ttl=0.5)
    await eventually(lambda: n1.receipts, what="expiry receipt")
    receipt = n1.receipts[0]
    assert (receipt.message_id, receipt.delivered) == (sent.message_id, False)
    assert "expired" in receipt.error
    assert (await asyncio.to_thread(stored, network, sent.message_id))["status"] == "expired"
    back = await add_node(network, "n2", 1)
    await network.controller.broker.drain()
    assert back.messages == []


async def test_oversize_non_participant_and_unknown_analysis_are_refused(
    network: LocalNetwork,
) -> None:
    n1 = await add_node(network, "n1", 0)
    await add_node(network, "n2", 1)
    outsider: FakeNode = await add_node(network, "n3", 1)
    analysis = await start(network, ["n1", "n2"])
    n1.message(analysis, "n2", b"x" * (2 * 1024 * 1024 + 1))
    n1.message(analysis, "n3", {"to": "outsider"})
    outsider.message(analysis, "n1", {"from": "outsider"})
    n1.message("no-such-analysis", "n2", {})
    await eventually(lambda: len(n1.receipts) == 3 and outsider.receipts, what="refusals")
    errors = [receipt.error for receipt in n1.receipts]
    assert "2 MB" in errors[0]
    assert "'n3' is not a participant" in errors[1]
    assert "not found" in errors[2]
    assert "'n3' is not a participant" in outsider.receipts[0].error
    assert not any(receipt.delivered for receipt in [*n1.receipts, *outsider.receipts])
    assert network.controller.store.messages.count() == 0


async def test_a_resent_message_id_is_not_stored_twice(network: LocalNetwork) -> None:
    n1 = await add_node(network, "n1", 0)
    n2 = await add_node(network, "n2", 1)
    analysis = await start(network, ["n1", "n2"])
    n1.message(analysis, "n2", {"v": 1}, message_id="same")
    await eventually(lambda: n1.receipts, what="first receipt")
    n1.message(analysis, "n2", {"v": 1}, message_id="same")  # the node retried after a timeout
    # Under load the broker may also re-send before n2's ack lands, so count at least two.
    await eventually(lambda: len(n1.receipts) >= 2, what="receipt for the retry")
    assert all(receipt.delivered for receipt in n1.receipts)
    assert network.controller.store.messages.count() == 1
    assert {envelope.message_id for envelope in n2.messages} == {"same"}
