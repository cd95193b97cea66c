"""The one server factory every daemon uses, and the interceptor that applies the error table.

Servicers stay thin: they raise :mod:`fedgrpc.errors` exceptions and the interceptor turns
them into statuses, so no servicer ever picks a status code or formats a traceback for a peer.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedgrpc.errors import FedgrpcError

log = logging.getLogger(__name__)

# Keepalive: the server pings an idle connection every 30 s and drops it when no answer comes
# within 10 s, so a half-open TCP connection (a client whose host vanished) is noticed within
# ~40 s even when the application heartbeat is not running. Clients may ping every 10 s.
# gRPC core rejects new calls (RST_STREAM, seen by clients as CANCELLED) once the queue of calls
# the Python server has not yet accepted passes ~1,000; a combiner dispatching a round to a few
# thousand clients opens that many model downloads at once. The benchmark's scale workload
# failed at 1,500 clients with the defaults and completed 3,000 with these.
PENDING_REQUEST_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
)

KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True, kw_only=True)
class Service:
    """A servicer and how to mount it: the generated ``add_*_to_server`` and its full name."""

    servicer: object
    add_to_server: Callable[[Any, Any], None]
    name: str


@dataclass(frozen=True, kw_only=True)
class RunningServer:
    """A started server and the port it actually bound (port 0 picks a free one)."""

    server: grpc.aio.Server
    host: str
    port: int
    health: health.aio.HealthServicer

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float | None = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def warn_if_plaintext(host: str, serves_tls: bool) -> None:
    """Say loudly when a daemon serves plaintext to other hosts (allowed only with insecure)."""
    if not serves_tls and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "serving PLAINTEXT on %s: anyone on the network can read and alter the traffic; "
            "use --tls-cert/--tls-key (see `fedgrpc certs init`)",
            host,
        )


def service_name(module: Any, service: str) -> str:
    """The full name of ``service`` in a generated ``*_pb2`` module (for reflection/health)."""
    return str(module.DESCRIPTOR.services_by_name[service].full_name)


def add_handlers(
    server: grpc.aio.Server, service: str, handlers: dict[str, grpc.RpcMethodHandler]
) -> None:
    """Register a service built by hand (our own codecs instead of the generated ones)."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def message_size_options(max_message_size: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_size),
        ("grpc.max_send_message_length", max_message_size),
    ]


async def start_server(
    *,
    host: str,
    port: int,
    services: Sequence[Service],
    max_message_size: int,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> RunningServer:
    """Build, bind and start a grpc.aio server with health and reflection served.

    The error interceptor runs innermost, after any authentication interceptors.
    """
    server = grpc.aio.server(
        interceptors=[*interceptors, ErrorInterceptor()],
        options=[
            *KEEPALIVE_OPTIONS,
            *PENDING_REQUEST_OPTIONS,
            *message_size_options(max_message_size),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in services:
        service.add_to_server(service.servicer, server)
    names = [s.name for s in services]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    target = f"{host}:{port}"
    bound = (
        server.add_secure_port(target, credentials)
        if credentials is not None
        else server.add_insecure_port(target)
    )
    if bound == 0:
        raise OSError(f"could not bind {target}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, host=host, port=bound, health=health_servicer)


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps :class:`FedgrpcError` to its status code and hides unexpected errors' internals."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        for kind, factory in HANDLER_FACTORIES.items():
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return factory(
                    _guard(behaviour, method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


# How to rebuild a method handler of each kind around a wrapped behaviour (interceptors).
HANDLER_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


async def _abort_for(error: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(error, FedgrpcError):
        await context.abort(error.code, error.message)
    log.exception("unexpected error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def _guard(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    """Wrap a handler (coroutine or async generator) so domain errors become statuses."""
    if inspect.isasyncgenfunction(behaviour):

        async def guarded_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for response in behaviour(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _abort_for(error, context, method)

        return guarded_stream

    async def guarded_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort_for(error, context, method)

    return guarded_call
