"""The inbox: de-duplication, statuses, waiting without polling."""

from __future__ import annotations

import asyncio
import time

import pytest

from fedgrpc.client.inbox import Inbox, StoredMessage
from fedgrpc.client.messenger import Uplink, receive
from fedgrpc.errors import InvalidArgument
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.messaging.v1 import messaging_pb2


def message(i: str, sender: str = "a", category: str = "c", age: float = 0.0) -> StoredMessage:
    return StoredMessage(i, sender, "me", category, b"{}", created_at=time.time() - age)


async def test_duplicate_delivery_is_acked_every_time_but_stored_once() -> None:
    inbox, uplink = Inbox(), Uplink()
    outbox: asyncio.Queue[combiner_pb2.ClientMessage] = asyncio.Queue()
    uplink.attach(outbox)
    envelope = messaging_pb2.Envelope(message_id="m1", analysis_id="a", sender="s", category="c")
    for _ in range(3):
        await receive(envelope, inbox, uplink.send)
    assert len(inbox) == 1
    acks = [outbox.get_nowait() for _ in range(outbox.qsize())]
    assert [a.ack.message_id for a in acks] == ["m1"] * 3


async def test_deleted_message_is_not_resurrected_by_a_redelivery() -> None:
    inbox = Inbox()
    assert await inbox.store(message("m1"))
    assert inbox.delete(["m1"]) == 1
    assert not await inbox.store(message("m1"))
    assert len(inbox) == 0


async def test_statuses_and_clear_by_age() -> None:
    inbox = Inbox()
    await inbox.store(message("old", age=100))
    await inbox.store(message("new"))
    assert [m.id for m in inbox.select("unread")] == ["old", "new"]
    assert inbox.clear("unread", min_age=50) == 1
    assert inbox.clear("read") == 0
    assert inbox.clear("all") == 1
    with pytest.raises(InvalidArgument):
        inbox.select("bogus")


async def test_wait_wakes_on_arrival_and_marks_read() -> None:
    inbox = Inbox()
    waiter = asyncio.ensure_future(inbox.wait_for(["a", "b"], "c", timeout=5))
    await inbox.store(message("1", "a"))
    await asyncio.sleep(0)
    assert not waiter.done()
    started = time.monotonic()
    await inbox.store(message("2", "b"))
    found = await waiter
    assert time.monotonic() - started < 0.5
    assert {s: [m.id for m in ms] for s, ms in found.items()} == {"a": ["1"], "b": ["2"]}
    assert inbox.select("unread") == []


async def test_wait_for_next_round_ignores_read_messages() -> None:
    inbox = Inbox()
    await inbox.store(message("1", "a"))
    await inbox.wait_for(["a"], "c", timeout=1)
    assert await inbox.wait_for(["a"], "c", timeout=0.1) == {}
    await inbox.store(message("2", "a"))
    found = await inbox.wait_for(["a"], "c", timeout=1)
    assert [m.id for m in found["a"]] == ["1", "2"]  # [-1] is the newest


async def test_system_messages_are_hidden() -> None:
    inbox = Inbox()
    await inbox.store(message("s", category="__fedgrpc.ready"))
    assert inbox.select("all") == []
