"""A grpc.aio channel whose every call carries ``authorization: Bearer <token>``.

The token is added once, when a call starts, and the call is grpc.aio's own. A client
interceptor does the same but makes every call an intercepted one, which passes each message
of a stream through one more async generator: on the streams a combiner and its clients keep
open for every round, 43 Python calls a round trip of an echoed message instead of 41
(``bench/RESULTS.md``, session 15).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from fedgrpc.security.bearer import AUTHORIZATION_KEY, SCHEME

Token = str | Callable[[], str]


class BearerChannel(grpc.aio.Channel):  # type: ignore[misc]
    """``channel`` with ``token`` on every call (a callable is asked per call, so a refreshed
    token is picked up); a call that sets its own authorization metadata keeps it."""

    def __init__(self, channel: grpc.aio.Channel, token: Token) -> None:
        self._channel = channel
        self._token = token

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _WithToken(self._channel.unary_unary(*args, **kwargs), self._token)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _WithToken(self._channel.unary_stream(*args, **kwargs), self._token)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _WithToken(self._channel.stream_unary(*args, **kwargs), self._token)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _WithToken(self._channel.stream_stream(*args, **kwargs), self._token)

    async def __aenter__(self) -> BearerChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._channel.close()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()


class _WithToken:
    """A multi-callable that adds the token to the call's metadata."""

    def __init__(self, multicallable: Any, token: Token) -> None:
        self._multicallable = multicallable
        self._token = token

    def __call__(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        entries = list(metadata or ())
        if all(key != AUTHORIZATION_KEY for key, _ in entries):
            token = self._token() if callable(self._token) else self._token
            entries.append((AUTHORIZATION_KEY, f"{SCHEME} {token}"))
        return self._multicallable(*args, metadata=tuple(entries), **kwargs)
