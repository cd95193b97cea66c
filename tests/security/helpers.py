"""Test servers for the security tests: every service of a server kind, answered generically.

Each method answers with the subject of the caller's verified claims (empty when there are
none), so a test sees both the status code and that the servicer got the claims. Calls go
through raw ``channel.unary_unary``/``stream_stream`` with empty payloads.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import fedgrpc.proto
from fedgrpc.rpc.server import RunningServer, Service, start_server
from fedgrpc.security import AuthInterceptor, ServerKind, current_claims


def proto_services() -> list[ServiceDescriptor]:
    """Every service in the generated ``fedgrpc.proto.*_pb2`` modules."""
    services: list[ServiceDescriptor] = []
    prefix = f"{fedgrpc.proto.__name__}."
    for info in pkgutil.walk_packages(fedgrpc.proto.__path__, prefix):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(info.name)
            services.extend(module.DESCRIPTOR.services_by_name.values())
    return services


SERVICES = {service.full_name: service for service in proto_services()}
METHODS: dict[str, MethodDescriptor] = {
    f"/{service.full_name}/{method.name}": method
    for service in SERVICES.values()
    for method in service.methods
}
# What each daemon mounts (fedgrpc/controller/app.py, fedgrpc/combiner/app.py).
MOUNTED = {
    ServerKind.CONTROLLER: (
        "fedgrpc.control.v1.ControlService",
        "fedgrpc.network.v1.NetworkService",
        "fedgrpc.model.v1.ModelService",
        "fedgrpc.messaging.v1.StorageService",
    ),
    ServerKind.COMBINER: ("fedgrpc.combiner.v1.CombinerService", "fedgrpc.model.v1.ModelService"),
}
WHOAMI = "/fedgrpc.test.Identity/Whoami"


def _subject() -> bytes:
    claims = current_claims.get()
    return b"" if claims is None else claims.subject.encode()


def _method_handler(method: MethodDescriptor, hold: asyncio.Event | None) -> Any:
    async def unary(request: Any, context: Any) -> bytes:
        return _subject()

    async def streaming(request: Any, context: Any) -> AsyncIterator[bytes]:
        yield _subject()
        if hold is not None:  # keeps the stream open so tests can count open streams
            await hold.wait()

    if method.server_streaming:
        factory = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(streaming)
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.unary_unary_rpc_method_handler(unary)


def echo_service(service: ServiceDescriptor, hold: asyncio.Event | None = None) -> Service:
    handlers = {m.name: _method_handler(m, hold) for m in service.methods}
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    return Service(
        servicer=generic,
        add_to_server=lambda handler, server: server.add_generic_rpc_handlers((handler,)),
        name=service.full_name,
    )


async def start_kind_server(
    kind: ServerKind,
    interceptor: AuthInterceptor | None,
    *,
    credentials: grpc.ServerCredentials | None = None,
    hold: asyncio.Event | None = None,
    extra: Sequence[Service] = (),
) -> RunningServer:
    services = [echo_service(SERVICES[name], hold) for name in MOUNTED[kind]]
    return await start_server(
        host="127.0.0.1",
        port=0,
        services=[*services, *extra],
        max_message_size=1 << 20,
        interceptors=[interceptor] if interceptor is not None else [],
        credentials=credentials,
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def open_call(
    channel: grpc.aio.Channel,
    method: str,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 5.0,
) -> Any:
    """Start a call of ``method`` with an empty request (no messages when client-streaming)."""
    desc = METHODS[method]
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    multicallable = kinds[(desc.client_streaming, desc.server_streaming)](method)
    # Request streams are sent empty: a grpc.aio client whose write races with a server-side
    # abort reports INTERNAL instead of the server's status (grpc/grpc#36066), which would
    # make the auth assertions flaky without saying anything about the server.
    request: Any = iter(()) if desc.client_streaming else b""
    return multicallable(request, metadata=tuple(metadata), timeout=timeout)


async def invoke(
    channel: grpc.aio.Channel,
    method: str,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 5.0,
) -> tuple[grpc.StatusCode, list[bytes]]:
    """Run a call to completion: its status code and the responses it got."""
    call = open_call(channel, method, metadata, timeout)
    responses: list[bytes] = []
    try:
        if METHODS[method].server_streaming:
            async for response in call:
                responses.append(response)
        else:
            responses.append(await call)
    except grpc.aio.AioRpcError as error:
        return error.code(), responses
    return grpc.StatusCode.OK, responses
