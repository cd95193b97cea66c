"""The combiner's side of ``CombinerService.Connect``: a codec that sends one model to many
clients without a copy per client waiting in their queues.

A train or validate task sent to N clients with the model inline used to be N protobuf
messages, each holding its own copy of the model until gRPC had sent it: N models in memory
at dispatch (1,000 clients of a 40 kB model: 40 MB). A :class:`SharedModelTask` holds the task
without its model and a reference to one shared payload; it becomes wire bytes only when its
stream sends it, with the payload copied once, straight into those bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import grpc

from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.rpc.wire import field_prefix

_SERVICE = combiner_pb2.DESCRIPTOR.services_by_name["CombinerService"].full_name
_KINDS = ("train", "validate")  # the tasks that may carry a model (same field names in both)


@dataclass(frozen=True, eq=False)
class SharedModelTask:
    """A ``ServerMessage`` whose task carries ``model``, a payload shared with other messages.

    ``message`` holds a ``train`` or ``validate`` task without its ``model`` and
    ``model_sha256``; :meth:`encode` adds both on the wire.
    """

    message: combiner_pb2.ServerMessage
    model: bytes
    model_sha256: str

    def __post_init__(self) -> None:
        if self.message.WhichOneof("kind") not in _KINDS:
            raise ValueError("a shared model rides only on a train or validate task")

    def encode(self) -> bytes:
        kind = self.message.WhichOneof("kind")
        assert kind is not None  # checked at construction
        task = getattr(self.message, kind)
        fields = task.DESCRIPTOR.fields_by_name
        digest = self.model_sha256.encode()
        task_bytes = task.SerializeToString()
        model_prefix = field_prefix(fields["model"].number, len(self.model))
        digest_prefix = field_prefix(fields["model_sha256"].number, len(digest))
        size = len(task_bytes) + len(model_prefix) + len(self.model)
        size += len(digest_prefix) + len(digest)
        outer = field_prefix(self.message.DESCRIPTOR.fields_by_name[kind].number, size)
        return b"".join((outer, task_bytes, digest_prefix, digest, model_prefix, self.model))

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
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_registered_method_handlers(_SERVICE, handlers)
