"""The authorization table: complete, and enforced row by row on real servers.

One server per server kind serves all of its services with generic handlers; every row of
the table is then called with no token, a foreign-key token, an expired token, each role the
row refuses and each role it allows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from fedgrpc.security import AUTHORIZATION, AuthInterceptor, FailureLimiter, Role, ServerKind
from fedgrpc.security.authz import LOCAL_SERVICES, allowed_roles, is_local, is_public
from tests.security.conftest import Tokens
from tests.security.helpers import (
    METHODS,
    MOUNTED,
    SERVICES,
    bearer,
    invoke,
    start_kind_server,
)

pytestmark = pytest.mark.timeout(60)
in_module_loop = pytest.mark.asyncio(loop_scope="module")

ROWS = [(kind, method) for kind, table in AUTHORIZATION.items() for method in table]


def test_every_rpc_has_a_row_on_each_server_that_mounts_it() -> None:
    for kind, services in MOUNTED.items():
        expected = {m for m in METHODS if m.split("/")[1] in services}
        assert set(AUTHORIZATION[kind]) == expected, kind
    served = {m for kind in MOUNTED for m in AUTHORIZATION[kind]}
    local = {m for m in METHODS if is_local(m)}
    assert not served & local, "a node-local service is also in a token table"
    assert served | local == set(METHODS), (
        "an RPC in protos/ is neither served by a server kind nor a declared local service"
    )


def test_local_services_exist_are_not_mounted_and_fail_closed_on_daemons() -> None:
    # Each declared local service is a real proto service (no stale names hiding a gap).
    assert set(LOCAL_SERVICES) <= set(SERVICES)
    for kind, services in MOUNTED.items():
        assert not set(services) & LOCAL_SERVICES, kind
    for method in (m for m in METHODS if is_local(m)):
        assert not is_public(method)
        for kind in ServerKind:  # mounted on a daemon by mistake: admin only
            assert allowed_roles(kind, method) == {Role.ADMIN}


def test_admin_everywhere_and_only_health_and_reflection_public() -> None:
    for kind, method in ROWS:
        assert Role.ADMIN in allowed_roles(kind, method)
        assert not is_public(method)
    assert is_public("/grpc.health.v1.Health/Check")
    assert is_public("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    # A method without a row fails closed: admin only.
    assert allowed_roles(ServerKind.COMBINER, "/fedgrpc.x.v1.New/Thing") == {Role.ADMIN}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def channels(tokens: Tokens) -> AsyncIterator[dict[ServerKind, grpc.aio.Channel]]:
    # A failure budget no test here can exhaust: this module calls with bad tokens on purpose.
    servers = [
        await start_kind_server(
            kind, AuthInterceptor(tokens.verifier(), kind, failures=FailureLimiter(10**9))
        )
        for kind in ServerKind
    ]
    opened = {
        s_kind: grpc.aio.insecure_channel(s.address)
        for s_kind, s in zip(ServerKind, servers, strict=True)
    }
    yield opened
    for channel in opened.values():
        await channel.close()
    for server in servers:
        await server.stop(None)


@in_module_loop
@pytest.mark.parametrize(("kind", "method"), ROWS, ids=[f"{k.value}:{m}" for k, m in ROWS])
async def test_row_is_enforced(
    channels: dict[ServerKind, grpc.aio.Channel], tokens: Tokens, kind: ServerKind, method: str
) -> None:
    channel = channels[kind]
    allowed = allowed_roles(kind, method)
    some_role = next(iter(allowed))
    refused = {
        "no token": (),
        "foreign key": bearer(tokens.foreign(some_role)),
        "expired": bearer(tokens.expired(some_role)),
        "garbage": bearer("not-a-jwt"),
    }
    for case, metadata in refused.items():
        code, _ = await invoke(channel, method, metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, case
    for role in set(Role) - allowed:
        code, _ = await invoke(channel, method, bearer(tokens.token(role)))
        assert code == grpc.StatusCode.PERMISSION_DENIED, role
    for role in allowed:
        code, responses = await invoke(channel, method, bearer(tokens.token(role)))
        assert code == grpc.StatusCode.OK, role
        assert responses == [f"{role.value}-1".encode()], "the servicer sees the caller's claims"


@in_module_loop
async def test_health_needs_no_token(channels: dict[ServerKind, grpc.aio.Channel]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for channel in channels.values():
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
