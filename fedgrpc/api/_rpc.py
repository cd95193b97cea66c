"""What every generated method shares: default metadata, typed errors, argument conversion.

The generated client (``_generated.py``) holds only the per-RPC code; the four call shapes and
the dict-to-message conversions live here, written once by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from fedgrpc.errors import InvalidArgument, from_rpc_error

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)

Metadata = Sequence[tuple[str, str]]
# A stub attribute (a grpc multi-callable); grpc ships no type information for it.
RpcMethod = Callable[..., Any]


def as_message(message_type: type[M], value: M | Mapping[str, Any] | None) -> M | None:
    """``value`` as a ``message_type`` message: passed through, parsed from a dict, or unset."""
    if value is None or isinstance(value, message_type):
        return value
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"expected a {message_type.DESCRIPTOR.name} or a dict, got {type(value).__name__}"
        )
    try:
        return json_format.ParseDict(dict(value), message_type())
    except json_format.ParseError as exc:
        raise InvalidArgument(f"not a valid {message_type.DESCRIPTOR.name}: {exc}") from None


def as_struct(value: Mapping[str, Any] | struct_pb2.Struct | None) -> struct_pb2.Struct | None:
    """A JSON-like dict as a ``google.protobuf.Struct`` (None stays unset)."""
    if value is None or isinstance(value, struct_pb2.Struct):
        return value
    struct = struct_pb2.Struct()
    try:
        struct.update(dict(value))
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(
            f"expected a JSON-like dict (str, number, bool, list, dict): {exc}"
        ) from None
    return struct


class RpcClient:
    """A sync channel plus the metadata sent with every call (e.g. an authorization header).

    The call helpers take the response type although gRPC needs none: grpc ships no type
    information, so it is what lets each generated method return its precise message type.
    """

    def __init__(self, channel: grpc.Channel, *, metadata: Metadata = ()) -> None:
        self.channel = channel
        self.default_metadata: tuple[tuple[str, str], ...] = tuple(metadata)

    def _metadata(self, extra: Metadata | None) -> tuple[tuple[str, str], ...]:
        return (*self.default_metadata, *(extra or ()))

    def _unary_unary(
        self,
        method: RpcMethod,
        request: Message,
        response_type: type[R],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> R:
        try:
            response: R = method(request, timeout=timeout, metadata=self._metadata(metadata))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        return response

    def _stream_unary(
        self,
        method: RpcMethod,
        requests: Iterable[Message],
        response_type: type[R],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> R:
        try:
            response: R = method(iter(requests), timeout=timeout, metadata=self._metadata(metadata))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        return response

    def _unary_stream(
        self,
        method: RpcMethod,
        request: Message,
        response_type: type[R],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Iterator[R]:
        call = method(request, timeout=timeout, metadata=self._metadata(metadata))
        return _responses(call, response_type)

    def _stream_stream(
        self,
        method: RpcMethod,
        requests: Iterable[Message],
        response_type: type[R],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Iterator[R]:
        call = method(iter(requests), timeout=timeout, metadata=self._metadata(metadata))
        return _responses(call, response_type)


def _responses(call: Any, response_type: type[R]) -> Iterator[R]:
    """The responses of a streaming call, with typed errors; stopping early cancels it."""
    try:
        for response in call:
            message: R = response
            yield message
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error
    finally:
        call.cancel()  # a no-op once the call has ended
