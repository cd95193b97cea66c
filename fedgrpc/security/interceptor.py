"""The server interceptor that authenticates and authorizes every call.

It runs before the error interceptor of :mod:`fedgrpc.rpc.server`, outside its reach, so it
aborts calls with their status codes itself. Checks happen when the handler starts (that is
where the peer address is known), in this order: the peer's failure budget
(RESOURCE_EXHAUSTED), the token (UNAUTHENTICATED), the table and the scope
(PERMISSION_DENIED), the per-subject stream cap (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

import grpc

from fedgrpc.errors import FedgrpcError, Unauthenticated
from fedgrpc.rpc.server import HANDLER_FACTORIES
from fedgrpc.security.authz import ServerKind, is_allowed, is_public
from fedgrpc.security.bearer import bearer_token
from fedgrpc.security.ratelimit import DEFAULT_MAX_STREAMS, FailureLimiter, StreamLimiter
from fedgrpc.security.revocation import Verifier
from fedgrpc.security.tokens import Claims

# The verified claims of the call being handled; None where auth is off or for public calls.
# Each grpc.aio call runs in its own task (a copy of the context), so the value never leaks
# into another call.
current_claims: ContextVar[Claims | None] = ContextVar("fedgrpc_current_claims", default=None)

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]


def require_claims() -> Claims:
    """The caller's claims, for servicers that need the subject or scope."""
    claims = current_claims.get()
    if claims is None:
        raise Unauthenticated("this call carries no verified token")
    return claims


def peer_host(peer: str) -> str:
    """The address part of ``context.peer()`` (``ipv4:1.2.3.4:5``, ``ipv6:%5B::1%5D:5``)."""
    kind, _, rest = unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Bearer-token authentication plus the authorization table for one kind of server."""

    def __init__(
        self,
        verifier: Verifier,
        server: ServerKind,
        *,
        scope: str | None = None,
        failures: FailureLimiter | None = None,
        max_streams_per_subject: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        self._verifier = verifier
        self._server = server
        self._scope = scope
        self._failures = failures or FailureLimiter()
        self._streams = StreamLimiter(max_streams_per_subject)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_public(method):
            return handler
        for kind, factory in HANDLER_FACTORIES.items():
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return factory(
                    self._wrap(behaviour, method, streaming=kind != "unary_unary"),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _wrap(self, behaviour: Behaviour, method: str, *, streaming: bool) -> Behaviour:
        """Run the checks, then the handler with its claims set, for either handler shape."""
        if inspect.isasyncgenfunction(behaviour):

            async def checked_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                claims = await self._admit(context, method)
                with self._stream_slot(claims, streaming) as admitted:
                    if not admitted:
                        await _refuse_streams(context, claims)
                    current_claims.set(claims)
                    async for response in behaviour(request, context):
                        yield response

            return checked_stream

        async def checked_call(request: Any, context: Any) -> Any:
            claims = await self._admit(context, method)
            with self._stream_slot(claims, streaming) as admitted:
                if not admitted:
                    await _refuse_streams(context, claims)
                reset = current_claims.set(claims)
                try:
                    result = behaviour(request, context)
                    return await result if inspect.isawaitable(result) else result
                finally:
                    current_claims.reset(reset)

        return checked_call

    async def _admit(self, context: grpc.aio.ServicerContext, method: str) -> Claims:
        peer = peer_host(context.peer())
        if self._failures.blocked(peer):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many failed authentication attempts; try again later",
            )
        claims = await self._authenticate(context, peer)
        if not is_allowed(self._server, method, claims.role):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role '{claims.role.value}' may not call {method} on the {self._server.value}",
            )
        if self._scope is not None and claims.scope not in (None, self._scope):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"token is scoped to '{claims.scope}', this server serves '{self._scope}'",
            )
        return claims

    async def _authenticate(self, context: grpc.aio.ServicerContext, peer: str) -> Claims:
        try:
            return self._verifier.verify(bearer_token(context.invocation_metadata()))
        except Unauthenticated as error:
            self._failures.record(peer)
            code, message = grpc.StatusCode.UNAUTHENTICATED, error.message
        except FedgrpcError as error:  # e.g. the revocation list is unreachable: fail closed
            code, message = error.code, error.message
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # it always raises

    @contextlib.contextmanager
    def _stream_slot(self, claims: Claims, streaming: bool) -> Iterator[bool]:
        """Hold one of the subject's stream slots for the call; yields False when none is
        free. Unary calls need no slot."""
        if not streaming:
            yield True
            return
        if not self._streams.acquire(claims.subject):
            yield False
            return
        try:
            yield True
        finally:
            self._streams.release(claims.subject)


async def _refuse_streams(context: grpc.aio.ServicerContext, claims: Claims) -> None:
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"'{claims.subject}' has too many open streams",
    )
