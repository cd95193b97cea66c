"""The ``authorization: Bearer <token>`` metadata, on both sides of a call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from fedgrpc.errors import Unauthenticated

AUTHORIZATION_KEY = "authorization"
SCHEME = "Bearer"


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata to pass as ``metadata=`` on a call."""
    return ((AUTHORIZATION_KEY, f"{SCHEME} {token}"),)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token in call metadata; Unauthenticated when it is missing or not a Bearer value."""
    values = [v for k, v in metadata or () if k.lower() == AUTHORIZATION_KEY]
    if not values:
        raise Unauthenticated("missing authorization metadata (expected 'Bearer <token>')")
    if len(values) > 1 or not isinstance(values[0], str):
        raise Unauthenticated("malformed authorization metadata")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != SCHEME.lower() or not token.strip():
        raise Unauthenticated("malformed authorization metadata (expected 'Bearer <token>')")
    return token.strip()


class _BearerPlugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._metadata = bearer_metadata(token)

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._metadata, None)


def bearer_call_credentials(token: str) -> grpc.CallCredentials:
    """Call credentials adding the token to every call. gRPC sends call credentials only over
    TLS: combine with :func:`fedgrpc.security.channel_credentials` via
    ``grpc.composite_channel_credentials``. For plaintext channels use
    :class:`fedgrpc.security.BearerChannel` (or :func:`bearer_interceptors`)."""
    return grpc.metadata_call_credentials(_BearerPlugin(token), name="fedgrpc-bearer")


class _BearerInterceptor:
    """Adds the authorization metadata unless the call already carries one."""

    def __init__(self, token: str | Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if AUTHORIZATION_KEY not in metadata:
            token = self._token() if callable(self._token) else self._token
            metadata.add(AUTHORIZATION_KEY, f"{SCHEME} {token}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def _continue(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _UnaryUnary(_BearerInterceptor, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._continue(continuation, details, request)


class _UnaryStream(_BearerInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._continue(continuation, details, request)


class _StreamUnary(_BearerInterceptor, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._continue(continuation, details, requests)


class _StreamStream(_BearerInterceptor, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._continue(continuation, details, requests)


def bearer_interceptors(token: str | Callable[[], str]) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors adding the token to every call of a ``grpc.aio`` channel
    (``grpc.aio.insecure_channel(address, interceptors=...)``). A callable ``token`` is
    called per call, so a refreshed token is picked up without a new channel.
    :class:`fedgrpc.security.BearerChannel` does the same without making every call an
    intercepted one (fedgrpc's own channels use it).

    One per call kind: grpc.aio files each interceptor under the first kind it implements.
    """
    return [_UnaryUnary(token), _UnaryStream(token), _StreamUnary(token), _StreamStream(token)]


class _SyncBearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """The same for synchronous channels (one object serves the four call kinds)."""

    def __init__(self, token: str) -> None:
        self._metadata = bearer_metadata(token)

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if not any(key == AUTHORIZATION_KEY for key, _ in metadata):
            metadata.extend(self._metadata)
        return _SyncDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _SyncDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def bearer_channel(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """A synchronous ``channel`` whose every call carries ``token`` (unchanged without one)."""
    return grpc.intercept_channel(channel, _SyncBearer(token)) if token else channel
