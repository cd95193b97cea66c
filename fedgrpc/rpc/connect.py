"""Both ends of ``CombinerService.Connect``: codecs that carry an inline model with one copy.

Built with protobuf, a message carrying a model copies it into the message, again into any
message that wraps it, and once more when serialized. Here the model is joined straight into
the wire bytes instead (:func:`fedgrpc.rpc.wire.encode_in_submessage`):

- combiner -> clients: a train or validate task sent to N clients with the model inline used to
  be N messages, each holding its own copy until gRPC had sent it (1,000 clients of a 40 kB
  model: 40 MB at dispatch). A :class:`SharedTask` holds the task and its model once, encoded
  once; each client's :class:`SharedModelTask` adds only its task id, and becomes bytes only
  when its stream sends it.
- client -> combiner: an inline update is queued already encoded (:func:`encode_update`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import grpc

from fedgrpc.model.chunking import Buffer
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.rpc.server import add_handlers
from fedgrpc.rpc.wire import encode_in_submessage, field_prefix, with_fields

_SERVICE = combiner_pb2.DESCRIPTOR.services_by_name["CombinerService"].full_name
_CONNECT = f"/{_SERVICE}/Connect"
_KINDS = ("train", "validate")  # the tasks that may carry a model (same field names in both)


# --- combiner side ---------------------------------------------------------------------------
class SharedTask:
    """A train or validate task sent with one inline model to many clients.

    ``message`` holds the task without its ``task_id``, ``model`` and ``model_digest``. All of
    it but the task id is the same for every client, so it is encoded once, when the first
    client's message is sent (:class:`SharedModelTask`); each client's message then costs one
    join instead of a protobuf encode, and the model is held once, in that encoding.
    """

    def __init__(
        self, message: combiner_pb2.ServerMessage, model: bytes, model_digest: str
    ) -> None:
        kind = message.WhichOneof("kind")
        if kind not in _KINDS:
            raise ValueError("a shared model rides only on a train or validate task")
        task = getattr(message, kind)
        if task.task_id:
            raise ValueError("a shared task has no task id: each client's message adds its own")
        self.message = message
        self._model: bytes | None = model
        self._model_digest = model_digest
        self._task_number = message.DESCRIPTOR.fields_by_name[kind].number
        self._id_number = task.DESCRIPTOR.fields_by_name["task_id"].number
        self._body: bytes | None = None

    def for_client(self, task_id: str) -> SharedModelTask:
        return SharedModelTask(self, task_id)

    def encode(self, task_id: str) -> bytes:
        """The ``ServerMessage`` of the client whose task is ``task_id``, as wire bytes."""
        body = self._body if self._body is not None else self._encode_body()
        task_id_bytes = task_id.encode()
        id_field = field_prefix(self._id_number, len(task_id_bytes)) + task_id_bytes
        outer = field_prefix(self._task_number, len(id_field) + len(body))
        return b"".join((outer, id_field, body))

    def _encode_body(self) -> bytes:
        assert self._model is not None  # dropped only once the body holds it
        additions = [("model_digest", self._model_digest.encode()), ("model", self._model)]
        task = getattr(self.message, str(self.message.WhichOneof("kind")))
        self._body = b"".join(with_fields(task, additions))
        self._model = None
        return self._body


@dataclass(frozen=True, eq=False)
class SharedModelTask:
    """One client's message of a :class:`SharedTask`: the task id is all it holds of its own."""

    task: SharedTask
    task_id: str

    def encode(self) -> bytes:
        return self.task.encode(self.task_id)

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


def encode_update(update: combiner_pb2.ModelUpdate, model: Buffer) -> bytes:
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
