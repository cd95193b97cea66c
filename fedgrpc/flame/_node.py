"""The SDK's connection to the node service (sync gRPC on loopback, one secret per analysis)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from fedgrpc import errors
from fedgrpc.errors import FailedPrecondition, FedgrpcError
from fedgrpc.proto.messaging.v1 import node_pb2_grpc

ADDRESS_ENV = "FEDGRPC_NODE_ADDRESS"
SECRET_ENV = "FEDGRPC_ANALYSIS_SECRET"
SECRET_KEY = "x-fedgrpc-analysis-secret"
ERROR_KEY = "fedgrpc-error"
MAX_MESSAGE = 256 * 1024 * 1024

R = TypeVar("R")


def _typed(error: grpc.RpcError) -> FedgrpcError:
    """The exact fedgrpc error class the node raised (named in the trailers), else by code."""
    converted = errors.from_rpc_error(error)
    trailers = dict(getattr(error, "trailing_metadata", lambda: ())() or ())
    kind = getattr(errors, str(trailers.get(ERROR_KEY, "")), None)
    if isinstance(kind, type) and issubclass(kind, FedgrpcError) and kind is not type(converted):
        try:
            typed = kind.__new__(kind)
            FedgrpcError.__init__(typed, converted.message, code=converted.code)
            return typed
        except Exception:
            return converted
    return converted


class NodeConnection:
    """Calls NodeService with the analysis' secret; raises fedgrpc errors."""

    def __init__(self, address: str | None = None, secret: str | None = None) -> None:
        address = address or os.environ.get(ADDRESS_ENV)
        secret = secret or os.environ.get(SECRET_ENV)
        if not address or not secret:
            raise FailedPrecondition(
                f"FlameCoreSDK runs inside a fedgrpc analysis: {ADDRESS_ENV} and {SECRET_ENV} "
                "are set by the node that starts it (fedgrpc analysis start)"
            )
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        self._metadata = ((SECRET_KEY, secret),)
        self.stub = node_pb2_grpc.NodeServiceStub(self._channel)

    def call(self, method: Callable[..., R], request: Any, timeout: float | None = None) -> R:
        try:
            return method(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise _typed(error) from None

    def close(self) -> None:
        self._channel.close()
