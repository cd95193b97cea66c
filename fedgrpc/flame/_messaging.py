"""FLAME's message broker calls, on top of the node service.

``send_message`` follows the seed exactly: with ``timeout`` set, all attempts share that
budget and each is bound to ``attempt_timeout``; with ``timeout=None`` each attempt waits
``attempt_timeout`` except the last, which waits until the receipts come. Attempts after the
first go only to the receivers that have not acknowledged, with the same message ids, after
an exponentially growing, fully jittered pause (FLAME retries at once, in lockstep).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fedgrpc.backoff import Backoff
from fedgrpc.errors import InvalidArgument
from fedgrpc.flame._node import NodeConnection
from fedgrpc.flame.message import Message, encode_body
from fedgrpc.proto.messaging.v1 import node_pb2

RETRY_BACKOFF = Backoff(base=0.5, cap=10.0)


class MessagingMixin:
    _node: NodeConnection

    def send_message(
        self,
        receivers: list[str],
        message_category: str,
        message: dict[str, Any],
        max_attempts: int = 1,
        timeout: float | None = None,
        attempt_timeout: int = 10,
    ) -> tuple[list[str], list[str]]:
        """Send to every receiver; ``(acknowledged, not_acknowledged)``."""
        if max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be at least 1, got {max_attempts}")
        body = encode_body(message)
        send_id = uuid.uuid4().hex
        pending = list(dict.fromkeys(receivers))
        acked: list[str] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(max_attempts):
            if attempt:
                pause = RETRY_BACKOFF.delay(attempt - 1)
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                time.sleep(pause)
            wait = _attempt_wait(attempt, max_attempts, attempt_timeout, deadline)
            if wait is not None and wait <= 0:
                break
            response = self._node.call(
                self._node.stub.SendMessage,
                node_pb2.SendMessageRequest(
                    receivers=pending,
                    category=message_category,
                    body=body,
                    send_id=send_id,
                    attempt_timeout=wait or 0.0,
                ),
            )
            acked += list(response.acknowledged)
            pending = list(response.not_acknowledged)
            if not pending:
                break
        return acked, pending

    def await_messages(
        self,
        senders: list[str],
        message_category: str,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, list[Message] | None]:
        """Block until every sender's message came (or the timeout); None for those missing."""
        response = self._node.call(
            self._node.stub.AwaitMessages,
            node_pb2.AwaitMessagesRequest(
                senders=senders,
                category=message_category,
                message_id=message_id or "",
                timeout=0.0 if timeout is None else max(float(timeout), 0.001),
            ),
        )
        found = response.by_sender
        return {
            sender: [Message.from_proto(m) for m in found[sender].messages]
            if sender in found
            else None
            for sender in senders
        }

    def get_messages(self, status: Literal["unread", "read"] = "unread") -> list[Message]:
        response = self._node.call(
            self._node.stub.GetMessages, node_pb2.GetMessagesRequest(status=status)
        )
        return [Message.from_proto(m) for m in response.messages]

    def delete_messages(self, message_ids: list[str]) -> int:
        response = self._node.call(
            self._node.stub.DeleteMessages, node_pb2.DeleteMessagesRequest(message_ids=message_ids)
        )
        return int(response.count)

    def clear_messages(
        self, status: Literal["read", "unread", "all"] = "read", min_age: int | None = None
    ) -> int:
        response = self._node.call(
            self._node.stub.ClearMessages,
            node_pb2.ClearMessagesRequest(status=status, min_age=float(min_age or 0)),
        )
        return int(response.count)

    def send_message_and_wait_for_responses(
        self,
        receivers: list[str],
        message_category: str,
        message: dict[str, Any],
        max_attempts: int = 1,
        timeout: float | None = None,
        attempt_timeout: int = 10,
    ) -> dict[str, list[Message] | None]:
        """Send, then wait for an answer of the same category from every receiver.

        ``timeout=None`` waits as long as it takes (FLAME crashes computing a deadline here).
        """
        started = time.monotonic()
        acked, _ = self.send_message(
            receivers, message_category, message, max_attempts, timeout, attempt_timeout
        )
        remaining = None if timeout is None else max(0.001, timeout - (time.monotonic() - started))
        responses = self.await_messages(acked, message_category, timeout=remaining) if acked else {}
        return {r: responses.get(r) for r in receivers}


def _attempt_wait(
    attempt: int, max_attempts: int, attempt_timeout: float, deadline: float | None
) -> float | None:
    """Seconds this attempt waits for receipts; None = until they come."""
    if deadline is not None:
        return min(attempt_timeout, deadline - time.monotonic())
    return None if attempt == max_attempts - 1 else attempt_timeout
