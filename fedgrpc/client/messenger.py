"""Messages between analysis nodes, node side: envelopes out, receipts and deliveries in.

Out: one envelope per receiver, its id derived from the SDK's ``send_id`` so every attempt of
the same send carries the same id (the receiver de-duplicates), waiting for the broker's
receipts on futures. In: store in the analysis' inbox, then acknowledge (an ack sent before
the message is stored could lose it in a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from fedgrpc.client.inbox import Inbox, StoredMessage
from fedgrpc.errors import InvalidArgument
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.messaging.v1 import messaging_pb2

log = logging.getLogger(__name__)

MAX_BODY = 2 * 1024 * 1024  # FLAME's "around 2 MB"; the controller refuses larger ones too


class Outbox(Protocol):
    """Where a Connect stream's messages are queued (the client's queue also takes encoded
    ones; the analysis side only sends messages)."""

    def put_nowait(self, item: combiner_pb2.ClientMessage) -> None: ...


class Uplink:
    """The current Connect stream's outbox; holds messages while the node is disconnected."""

    def __init__(self) -> None:
        self._outbox: Outbox | None = None
        self._backlog: list[combiner_pb2.ClientMessage] = []

    def attach(self, outbox: Outbox) -> None:
        self._outbox = outbox
        backlog, self._backlog = self._backlog, []
        for message in backlog:
            outbox.put_nowait(message)

    def detach(self) -> None:
        self._outbox = None

    def send(self, message: combiner_pb2.ClientMessage) -> None:
        if self._outbox is None:
            self._backlog.append(message)
        else:
            self._outbox.put_nowait(message)


@dataclass(frozen=True)
class SendResult:
    acknowledged: list[str]
    not_acknowledged: list[str]
    message_ids: dict[str, str]


def envelope_id(send_id: str, receiver: str) -> str:
    """The id of the envelope for ``receiver``: the same for every attempt of one send."""
    return hashlib.sha256(f"{send_id}\0{receiver}".encode()).hexdigest()[:32]


class Messenger:
    """Sends envelopes for this node and waits for their receipts."""

    def __init__(self, uplink: Uplink, *, ttl_seconds: float = 0.0) -> None:
        self._uplink = uplink
        self._ttl = ttl_seconds
        self._sequence: dict[tuple[str, str], int] = defaultdict(int)
        self._envelopes: dict[str, messaging_pb2.Envelope] = {}
        self._waiting: dict[str, asyncio.Future[messaging_pb2.Receipt]] = {}
        self._delivered: set[str] = set()

    async def send(
        self,
        *,
        analysis_id: str,
        receivers: Sequence[str],
        category: str,
        body: bytes,
        send_id: str,
        attempt_timeout: float | None,
    ) -> SendResult:
        """One attempt to every receiver; ``attempt_timeout`` None waits until receipts come."""
        if len(body) > MAX_BODY:
            raise InvalidArgument(
                f"message body is {len(body)} bytes; at most {MAX_BODY} (2 MB) may be sent "
                "through the message broker; use save_intermediate_data for larger data"
            )
        ids = {receiver: envelope_id(send_id, receiver) for receiver in dict.fromkeys(receivers)}
        loop = asyncio.get_running_loop()
        futures = {}
        for receiver, message_id in ids.items():
            if message_id in self._delivered:
                continue
            futures[receiver] = self._waiting.setdefault(message_id, loop.create_future())
            envelope = self._envelope(analysis_id, receiver, category, body, message_id)
            self._uplink.send(combiner_pb2.ClientMessage(message=envelope))
        if futures:
            await asyncio.wait(futures.values(), timeout=attempt_timeout)
        acked = [r for r, i in ids.items() if i in self._delivered]
        return SendResult(acked, [r for r in ids if r not in acked], ids)

    def send_nowait(self, *, analysis_id: str, receiver: str, category: str, body: bytes) -> None:
        """Fire and forget (system messages): the broker still delivers it at least once."""
        message_id = uuid.uuid4().hex
        envelope = self._envelope(analysis_id, receiver, category, body, message_id)
        self._uplink.send(combiner_pb2.ClientMessage(message=envelope))

    def _envelope(
        self, analysis_id: str, receiver: str, category: str, body: bytes, message_id: str
    ) -> messaging_pb2.Envelope:
        # A retry re-sends the first attempt's envelope: same id, same sequence number.
        envelope = self._envelopes.get(message_id)
        if envelope is None:
            self._sequence[(analysis_id, receiver)] += 1
            sent_at = Timestamp()
            sent_at.GetCurrentTime()
            envelope = messaging_pb2.Envelope(
                message_id=message_id,
                analysis_id=analysis_id,
                recipient=receiver,
                category=category,
                body=body,
                sequence=self._sequence[(analysis_id, receiver)],
                sent_at=sent_at,
                ttl_seconds=self._ttl,
            )
            self._envelopes[message_id] = envelope
        return envelope

    def on_receipt(self, receipt: messaging_pb2.Receipt) -> None:
        if receipt.delivered:
            self._delivered.add(receipt.message_id)
            self._envelopes.pop(receipt.message_id, None)
        else:
            log.warning(
                "message %s to %s will not be delivered: %s",
                receipt.message_id,
                receipt.recipient,
                receipt.error,
            )
        future = self._waiting.pop(receipt.message_id, None)
        if future is not None and not future.done():
            future.set_result(receipt)

    def cancel_waits(self) -> None:
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()


async def receive(
    envelope: messaging_pb2.Envelope,
    inbox: Inbox,
    send_ack: Callable[[combiner_pb2.ClientMessage], None],
    on_new: Callable[[StoredMessage], None] | None = None,
) -> None:
    """Store a delivered envelope (once per id), then acknowledge it (every time)."""
    message = StoredMessage(
        id=envelope.message_id,
        sender=envelope.sender,
        recipient=envelope.recipient,
        category=envelope.category,
        body=bytes(envelope.body),
    )
    if await inbox.store(message) and on_new is not None:
        with contextlib.suppress(Exception):
            on_new(message)
    ack = messaging_pb2.Ack(
        message_id=envelope.message_id, analysis_id=envelope.analysis_id, sender=envelope.sender
    )
    send_ack(combiner_pb2.ClientMessage(ack=ack))
