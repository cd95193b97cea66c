"""Client-side channels and call helpers shared by combiners, clients and the API client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

import grpc

from fedgrpc.errors import from_rpc_error
from fedgrpc.rpc.server import message_size_options
from fedgrpc.security.bearer_channel import BearerChannel

# Clients ping every 30 s on idle connections (the server allows 10 s) so a dead peer is
# noticed even between application heartbeats.
CLIENT_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

P = ParamSpec("P")
T = TypeVar("T")


def open_channel(
    address: str,
    *,
    max_message_size: int,
    credentials: grpc.ChannelCredentials | None = None,
    token: str | None = None,
) -> grpc.aio.Channel:
    """An aio channel to ``address`` with the project's keepalive and size limits; with
    ``token``, every call carries it as ``authorization: Bearer <token>``."""
    options = [*CLIENT_KEEPALIVE_OPTIONS, *message_size_options(max_message_size)]
    if credentials is not None:
        channel = grpc.aio.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(address, options=options)
    return BearerChannel(channel, token) if token else channel


@asynccontextmanager
async def typed_errors() -> AsyncIterator[None]:
    """Re-raise a failed call as the :mod:`fedgrpc.errors` exception for its status code."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from error


async def call(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Await one RPC, raising typed errors instead of ``AioRpcError``."""
    async with typed_errors():
        return await fn(*args, **kwargs)
