"""Both ends of ``CombinerService.Connect``: codecs that carry an inline model with one copy.

Built with protobuf, a message carrying a model copies it into the message, again into any
message that wraps it, and once more when serialized. Here the model is joined straight into
the wire bytes instead (:func:`fedgrpc.rpc.wire.encode_in_submessage`):

- combiner -> clients: a train or validate task sent to N clients with the model inline used to
  be N messages, each holding its own copy until gRPC had sent it (1,000 clients of a 40 kB
  model: 40 MB at dispatch). A :class:`SharedModelTask` holds the task without its model and a
  reference to one shared payload, and becomes bytes only when its stream sends it.
- client -> combiner: an inline update is queued already encoded (:func:`encode_update`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import grpc

from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.rpc.server import add_handlers
from fedgrpc.rpc.wire import encode_in_submessage

_SERVICE = combiner_pb2.DESCRIPTOR.services_by_name["CombinerService"].full_name
_CONNECT = f"/{_SERVICE}/Connect"
_KINDS = ("train", "validate")  # the tasks that may carry a model (same field names in both)


# --- combiner side ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SharedModelTask:
    """A ``ServerMessage`` whose task carries ``model``, a payload shared with other messages.

    ``message`` holds a ``train`` or ``validate`` task without its ``model`` and
    ``model_digest``; :meth:`encode` adds both on the wire.
    """

    message: combiner_pb2.ServerMessage
    model: bytes
    model_digest: str

    def __post_init__(self) -> None:
        if self.message.WhichOneof("kind") not in _KINDS:
            raise ValueError("a shared model rides only on a train or validate task")

    def encode(self) -> bytes:
        kind = str(self.message.WhichOneof("kind"))
        additions = [("model_digest", self.model_digest.encode()), ("model", self.model)]
        return encode_in_submessage(self.message, kind, additions)

    def decoded(self) -> combiner_pb2.ServerMessage:
        """The message as the client receives it (for tests and logs)."""
        return combiner_pb2.ServerMessage.FromString(self.encode())


Outgoing: TypeAlias = combiner_pb2.ServerMessage | SharedModelTask


def serialize_outgoing(message: Outgoing) -> bytes:
    """gRPC serializer for the combiner's side of Connect."""
    if isinstance(message, SharedModelTask):
        return message.encode()
    return message.SerializeToString()


class CombinerServiceServicer(Protocol):
    def Connect(  # noqa: N802 (the RPC's name)
        self,
        request_iterator: AsyncIterator[combiner_pb2.ClientMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Outgoing]: ...


def add_combiner_service(servicer: CombinerServiceServicer, server: grpc.aio.Server) -> None:
    """Register CombinerService with :func:`serialize_outgoing` for what Connect yields."""
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            servicer.Connect,
            request_deserializer=combiner_pb2.ClientMessage.FromString,
            response_serializer=serialize_outgoing,
        ),
    }
    add_handlers(server, _SERVICE, handlers)


# --- client side -----------------------------------------------------------------------------
# What a client queues for its stream: messages, or messages already encoded.
ClientOutgoing: TypeAlias = combiner_pb2.ClientMessage | bytes


def encode_update(update: combiner_pb2.ModelUpdate, model: bytes | bytearray) -> bytes:
    """``ClientMessage(update=update)`` with ``update.model = model``, the model copied once."""
    message = combiner_pb2.ClientMessage(update=update)
    return encode_in_submessage(message, "update", [("model", model)])


def serialize_client_outgoing(message: ClientOutgoing) -> bytes:
    """gRPC serializer for the client's side of Connect: encoded messages pass as they are."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def open_connect(
    channel: grpc.aio.Channel, requests: AsyncIterator[ClientOutgoing]
) -> grpc.aio.StreamStreamCall:
    """Start the Connect stream on ``channel`` with the client's codec."""
    connect = channel.stream_stream(
        _CONNECT,
        request_serializer=serialize_client_outgoing,
        response_deserializer=combiner_pb2.ServerMessage.FromString,
    )
    return connect(requests)
