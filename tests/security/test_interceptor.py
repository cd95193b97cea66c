"""The auth interceptor's limits and scope, and the client-side token helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from fedgrpc.errors import Unauthenticated, Unavailable
from fedgrpc.rpc.server import RunningServer
from fedgrpc.security import (
    AuthInterceptor,
    FailureLimiter,
    Role,
    ServerKind,
    bearer_interceptors,
    bearer_token,
    require_claims,
)
from fedgrpc.security.bearer_channel import BearerChannel
from fedgrpc.security.interceptor import peer_host
from tests.security.conftest import Tokens
from tests.security.helpers import bearer, invoke, open_call, start_kind_server

pytestmark = pytest.mark.timeout(30)

STATUS = "/fedgrpc.control.v1.ControlService/GetControllerStatus"
CONNECT = "/fedgrpc.combiner.v1.CombinerService/Connect"
DOWNLOAD = "/fedgrpc.model.v1.ModelService/Download"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _serving(
    kind: ServerKind, interceptor: AuthInterceptor, hold: asyncio.Event | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    server: RunningServer = await start_kind_server(kind, interceptor, hold=hold)
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield channel
    finally:
        if hold is not None:
            hold.set()
        await channel.close()
        await server.stop(None)


async def test_failed_authentications_are_rate_limited_per_peer(tokens: Tokens) -> None:
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=3, window=60, clock=clock)
    interceptor = AuthInterceptor(tokens.verifier(), ServerKind.CONTROLLER, failures=limiter)
    good = bearer(tokens.token(Role.USER))
    async for channel in _serving(ServerKind.CONTROLLER, interceptor):
        for _ in range(3):
            assert (await invoke(channel, STATUS, bearer("junk")))[0].name == "UNAUTHENTICATED"
        # Blocked now, even with a valid token, and blocked calls do not extend the block.
        for _ in range(5):
            assert (await invoke(channel, STATUS, good))[0].name == "RESOURCE_EXHAUSTED"
        clock.now += 30
        assert (await invoke(channel, STATUS, good))[0].name == "RESOURCE_EXHAUSTED"
        clock.now += 31  # the window has passed since the failures
        assert (await invoke(channel, STATUS, good))[0] == grpc.StatusCode.OK
        # Refused roles are not authentication failures: they do not count.
        for _ in range(5):
            code, _ = await invoke(channel, STATUS, bearer(tokens.token(Role.CLIENT)))
            assert code == grpc.StatusCode.PERMISSION_DENIED
        assert (await invoke(channel, STATUS, good))[0] == grpc.StatusCode.OK


async def test_concurrent_streams_are_capped_per_subject(tokens: Tokens) -> None:
    hold = asyncio.Event()
    interceptor = AuthInterceptor(tokens.verifier(), ServerKind.COMBINER, max_streams_per_subject=2)
    site1, site2 = (
        bearer(tokens.token(Role.CLIENT, "site-1")),
        bearer(tokens.token(Role.CLIENT, "site-2")),
    )
    async for channel in _serving(ServerKind.COMBINER, interceptor, hold):
        # Two held streams (the handler answered once, so both were admitted).
        held = [open_call(channel, method, site1, timeout=20) for method in (CONNECT, DOWNLOAD)]
        for call in held:
            assert await call.read() == b"site-1"
        code, _ = await invoke(channel, CONNECT, site1)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Another subject has its own budget.
        other = open_call(channel, CONNECT, site2, timeout=20)
        assert await other.read() == b"site-2"
        other.cancel()
        # Closing a stream frees its slot (once the server has seen the cancellation).
        held[0].cancel()
        third = await _admitted_within(channel, site1, seconds=5)
        third.cancel()
        held[1].cancel()


async def _admitted_within(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], seconds: float
) -> grpc.aio.StreamStreamCall:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        call = open_call(channel, CONNECT, metadata, timeout=20)
        try:
            await call.read()
            return call
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def test_an_unreachable_revocation_list_fails_closed(tokens: Tokens) -> None:
    def revoked(token_id: str) -> bool:
        raise Unavailable("revocation list unreachable")

    verifier = tokens.verifier(revoked=revoked)
    async for channel in _serving(
        ServerKind.CONTROLLER, AuthInterceptor(verifier, ServerKind.CONTROLLER)
    ):
        code, _ = await invoke(channel, STATUS, bearer(tokens.token(Role.ADMIN)))
        assert code == grpc.StatusCode.UNAVAILABLE


async def test_scope_must_match_the_server(tokens: Tokens) -> None:
    interceptor = AuthInterceptor(tokens.verifier(), ServerKind.CONTROLLER, scope="collab-a")
    async for channel in _serving(ServerKind.CONTROLLER, interceptor):
        other = bearer(tokens.token(Role.USER, scope="collab-b"))
        assert (await invoke(channel, STATUS, other))[0] == grpc.StatusCode.PERMISSION_DENIED
        for scope in ("collab-a", None):
            same = bearer(tokens.token(Role.USER, scope=scope))
            assert (await invoke(channel, STATUS, same))[0] == grpc.StatusCode.OK


def _with_interceptors(address: str, token: str | Callable[[], str]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(token))


def _bearer_channel(address: str, token: str | Callable[[], str]) -> grpc.aio.Channel:
    return BearerChannel(grpc.aio.insecure_channel(address), token)


@pytest.mark.parametrize("open_with_token", [_with_interceptors, _bearer_channel])
async def test_the_client_side_adds_the_token_to_every_kind_of_call(
    tokens: Tokens, open_with_token: Callable[[str, str], grpc.aio.Channel]
) -> None:
    server = await start_kind_server(
        ServerKind.CONTROLLER, AuthInterceptor(tokens.verifier(), ServerKind.CONTROLLER)
    )
    channel = open_with_token(server.address, tokens.token(Role.ADMIN, "ops"))
    try:
        for method in (
            STATUS,  # unary-unary
            "/fedgrpc.control.v1.ControlService/DownloadPackage",  # unary-stream
            "/fedgrpc.control.v1.ControlService/UploadPackage",  # stream-unary
            "/fedgrpc.network.v1.NetworkService/CombinerLink",  # stream-stream
        ):
            assert await invoke(channel, method) == (grpc.StatusCode.OK, [b"ops"]), method
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_bearer_channel_asks_for_the_token_per_call_and_keeps_a_calls_own(
    tokens: Tokens,
) -> None:
    server = await start_kind_server(
        ServerKind.CONTROLLER, AuthInterceptor(tokens.verifier(), ServerKind.CONTROLLER)
    )
    issued = [tokens.token(Role.ADMIN, name) for name in ("first", "second", "third")]
    channel = BearerChannel(grpc.aio.insecure_channel(server.address), lambda: issued.pop(0))
    own = bearer(tokens.token(Role.ADMIN, "caller"))
    try:
        assert await invoke(channel, STATUS) == (grpc.StatusCode.OK, [b"first"])
        assert await invoke(channel, STATUS, own) == (grpc.StatusCode.OK, [b"caller"])
        assert await invoke(channel, STATUS) == (grpc.StatusCode.OK, [b"second"])
        # grpc.aio's own call, not an intercepted one wrapping each message of a stream
        call = open_call(channel, CONNECT, (), 5.0)
        assert "Intercepted" not in type(call).__name__, type(call)
        call.cancel()
    finally:
        await channel.close()
        await server.stop(None)


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("x", "y"), ("authorization", "bearer  abc ")]) == "abc"
    for metadata in ([], [("authorization", "Basic abc")], [("authorization", "Bearer ")]):
        with pytest.raises(Unauthenticated):
            bearer_token(metadata)
    with pytest.raises(Unauthenticated, match="malformed"):
        bearer_token([("authorization", "Bearer a"), ("authorization", "Bearer b")])


def test_peer_host() -> None:
    assert peer_host("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "::1"
    assert peer_host("ipv6:%5B%3A%3A1%5D:5555") == "::1"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"


def test_require_claims_outside_a_call() -> None:
    with pytest.raises(Unauthenticated):
        require_claims()
