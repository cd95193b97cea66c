"""FLAME's ``Message``: what ``await_messages`` and ``get_messages`` return."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fedgrpc.errors import InvalidArgument
from fedgrpc.proto.messaging.v1 import node_pb2

# FLAME's broker limit ("around 2 MB"); checked on the encoded body before anything is sent.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024


@dataclass
class Message:
    """One received message. ``body`` is the dict the sender passed to ``send_message``."""

    body: dict[str, Any]
    category: str
    id: str
    sender: str
    recipient: str
    status: str
    created_at: datetime

    @classmethod
    def from_proto(cls, proto: node_pb2.InboxMessage) -> Message:
        try:
            body = json.loads(bytes(proto.body) or b"{}")
        except ValueError:
            body = {"raw": bytes(proto.body).decode(errors="replace")}
        return cls(
            body=body,
            category=proto.category,
            id=proto.id,
            sender=proto.sender,
            recipient=proto.recipient,
            status=proto.status,
            created_at=proto.created_at.ToDatetime(tzinfo=timezone.utc),
        )


def encode_body(message: Any) -> bytes:
    """The JSON bytes of a message body; refuses non-dicts, non-JSON values and > 2 MB."""
    if not isinstance(message, dict):
        raise InvalidArgument(f"message must be a dict, got {type(message).__name__}")
    try:
        data = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"message must be JSON-serialisable (dicts, lists, str, numbers, bool, None): {exc}; "
            "send larger or binary data with send_intermediate_data"
        ) from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidArgument(
            f"message is {len(data):,} bytes encoded; the message broker takes at most "
            f"{MAX_MESSAGE_BYTES:,} (2 MB). Send it with send_intermediate_data instead"
        )
    return data
