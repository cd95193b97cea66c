"""Tokens on a real network: identities, revocation and the token RPCs.

A client or combiner acts only as itself (its token's subject); a revoked token is refused by
the controller and, once the revocation reaches them over their link, by the combiners.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from fedgrpc.combiner.app import Combiner
from fedgrpc.config import CombinerConfig
from fedgrpc.errors import PermissionDenied, Unauthenticated
from fedgrpc.model.serialization import dump_model
from fedgrpc.proto.combiner.v1 import combiner_pb2, combiner_pb2_grpc
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.control.v1 import control_pb2_grpc
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.proto.network.v1 import network_pb2, network_pb2_grpc
from fedgrpc.rpc.channel import open_channel
from fedgrpc.security.tokens import Role
from fedgrpc.transfer import model_stream
from tests.integration.conftest import FAST, LocalNetwork, eventually, shift_train
from tests.integration.test_bad_input import expect_status, raw_upload

CODE = grpc.StatusCode
pytestmark = pytest.mark.timeout(60)


def channel_as(net: LocalNetwork, address: str, role: Role, subject: str) -> grpc.aio.Channel:
    return open_channel(address, max_message_size=16 << 20, token=net.token(role, subject))


async def hello_stream(
    outbox: asyncio.Queue[combiner_pb2.ClientMessage],
) -> AsyncIterator[combiner_pb2.ClientMessage]:
    while True:
        yield await outbox.get()


def connect(channel: grpc.aio.Channel, name: str) -> tuple[object, asyncio.Queue[object]]:
    outbox: asyncio.Queue[combiner_pb2.ClientMessage] = asyncio.Queue()
    outbox.put_nowait(combiner_pb2.ClientMessage(hello=combiner_pb2.ClientHello(name=name)))
    stream = combiner_pb2_grpc.CombinerServiceStub(channel).Connect(hello_stream(outbox))
    return stream, outbox  # type: ignore[return-value]


async def test_controller_refuses_calls_without_a_valid_token(local_network: LocalNetwork) -> None:
    net = local_network
    request = pb.GetControllerStatusRequest()
    for token in (None, "garbage"):
        channel = open_channel(net.controller.address, max_message_size=1 << 20, token=token)
        try:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            await expect_status(stub.GetControllerStatus(request), CODE.UNAUTHENTICATED)
        finally:
            await channel.close()
    channel = channel_as(net, net.controller.address, Role.CLIENT, "site-1")
    try:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        await expect_status(stub.ListSessions(pb.ListSessionsRequest()), CODE.PERMISSION_DENIED)
    finally:
        await channel.close()


async def test_a_client_can_only_be_assigned_and_connect_as_itself(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    combiner = await net.add_combiner("alpha")
    channel = channel_as(net, net.controller.address, Role.CLIENT, "alice")
    try:
        stub = network_pb2_grpc.NetworkServiceStub(channel)
        assign = network_pb2.AssignCombinerRequest(client_name="bob")
        await expect_status(stub.AssignCombiner(assign), CODE.PERMISSION_DENIED, "'alice'")
        own = await stub.AssignCombiner(network_pb2.AssignCombinerRequest(client_name="alice"))
        assert own.combiner_name == "alpha"
    finally:
        await channel.close()

    channel = channel_as(net, combiner.address, Role.CLIENT, "alice")
    try:
        stream, _ = connect(channel, "bob")
        await expect_status(stream.read(), CODE.PERMISSION_DENIED, "'bob'")  # type: ignore[attr-defined]
    finally:
        await channel.close()
    assert combiner.core is not None
    assert not combiner.core.clients.online()
    assert net.controller.network.registry.clients_online() == 0

    # The Client itself gives up at once: a permission error is not retried.
    token = net.token(Role.CLIENT, "alice")
    with pytest.raises(PermissionDenied):
        await asyncio.wait_for(
            _run_client_as(net, "bob", token),
            timeout=20,
        )


async def _run_client_as(net: LocalNetwork, name: str, token: str) -> None:
    from fedgrpc.client.node import Client
    from fedgrpc.config import ClientConfig

    config = ClientConfig(controller=net.controller.address, name=name, token=token)
    await Client(config=config, train=shift_train(1.0)).run_async()


async def test_a_combiner_registers_only_under_its_token_subject(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    config = CombinerConfig(
        controller=net.controller.address,
        name="impostor",
        token=net.token(Role.COMBINER, "alpha"),
        **FAST,
    )
    combiner = Combiner(config)
    await combiner.start()
    try:
        with pytest.raises(PermissionDenied, match="'impostor'"):
            await asyncio.wait_for(combiner.link_ended(), 20)
        assert "impostor" not in net.controller.network.registry.links
        assert net.controller.store.combiners.count() == 0
    finally:
        await combiner.stop(grace=0.1)


async def test_a_combiner_refuses_clients_until_it_has_registered(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    # A controller address nobody listens on: the combiner never registers.
    config = CombinerConfig(
        controller="127.0.0.1:1", name="alone", token=net.token(Role.COMBINER, "alone"), **FAST
    )
    combiner = Combiner(config)
    await combiner.start()
    channel = channel_as(net, combiner.address, Role.CLIENT, "site-1")
    try:
        stream, _ = connect(channel, "site-1")
        await expect_status(stream.read(), CODE.UNAVAILABLE, "not registered")  # type: ignore[attr-defined]
        models = model_pb2_grpc.ModelServiceStub(channel)
        download = models.Download(model_pb2.DownloadRequest(model_id="m"))
        await expect_status(download.read(), CODE.UNAVAILABLE)
    finally:
        await channel.close()
        await combiner.stop(grace=0.1)


async def test_a_client_uploads_only_for_its_own_task(local_network: LocalNetwork) -> None:
    net = local_network
    combiner = await net.add_combiner("alpha")
    await net.add_client("fast", shift_train(1.0))
    laggard = channel_as(net, combiner.address, Role.CLIENT, "laggard")
    thief = channel_as(net, combiner.address, Role.CLIENT, "thief")
    try:
        stream, _ = connect(laggard, "laggard")
        await eventually(
            lambda: net.controller.network.registry.clients_online() == 2, what="laggard online"
        )
        await net.upload_seed([np.zeros(3, dtype=np.float32)])
        session_id = await net.start_session(
            rounds=1, round_timeout=20, requested_clients=2, validate=False
        )
        task = None
        async for message in stream:  # type: ignore[attr-defined]
            if message.HasField("train"):
                task = message.train
                break
        assert task is not None
        header = model_pb2.ModelHeader(
            task_id=task.task_id, session_id=task.session_id, round_id=task.round_id
        )
        header.metadata.update({"num_examples": 5})
        data = dump_model([np.full(3, 9.0, dtype=np.float32)])
        stolen = raw_upload(
            model_pb2_grpc.ModelServiceStub(thief), list(model_stream(data, header=header))
        )
        await expect_status(stolen, CODE.PERMISSION_DENIED, "laggard")
        # The owner's upload of the same task still counts: the refusal changed nothing.
        header.metadata.update({"num_examples": 100})
        own = list(model_stream(dump_model([np.full(3, 1.0, dtype=np.float32)]), header=header))
        await raw_upload(model_pb2_grpc.ModelServiceStub(laggard), own)
        session = await net.wait_session(session_id)
        assert session.status == "finished"
        committed = await net.download(session.model_id)
        np.testing.assert_allclose(committed["0"], [1.0] * 3)
    finally:
        await laggard.close()
        await thief.close()


async def test_create_and_revoke_tokens(local_network: LocalNetwork) -> None:
    net = local_network
    combiner = await net.add_combiner("alpha")
    created = await net.control.CreateToken(
        pb.CreateTokenRequest(role="client", subject="site-9", expires_in=3600)
    )
    assert created.subject == "site-9"
    assert created.role == "client"
    assert created.expires_at > 0
    channel = open_channel(combiner.address, max_message_size=1 << 20, token=created.token)
    assign_channel = open_channel(
        net.controller.address, max_message_size=1 << 20, token=created.token
    )
    try:
        assign = network_pb2_grpc.NetworkServiceStub(assign_channel)
        request = network_pb2.AssignCombinerRequest(client_name="site-9")
        assert (await assign.AssignCombiner(request)).combiner_name == "alpha"
        models = model_pb2_grpc.ModelServiceStub(channel)
        unknown = models.Download(model_pb2.DownloadRequest(model_id="nothing"))
        await expect_status(unknown.read(), CODE.NOT_FOUND)  # authenticated, then not found

        revoked = await net.control.RevokeToken(pb.RevokeTokenRequest(token_id=created.token_id))
        assert revoked.token_id == created.token_id
        assert revoked.revoked_at
        await net.control.RevokeToken(pb.RevokeTokenRequest(token_id=created.token_id))  # again
        await expect_status(assign.AssignCombiner(request), CODE.UNAUTHENTICATED, "revoked")

        async def refused_by_combiner() -> bool:
            call = models.Download(model_pb2.DownloadRequest(model_id="nothing"))
            try:
                await call.read()
            except grpc.aio.AioRpcError as error:
                return bool(error.code() == CODE.UNAUTHENTICATED)
            return False

        await eventually(refused_by_combiner, what="the combiner to refuse the revoked token")
    finally:
        await channel.close()
        await assign_channel.close()
    assert net.controller.store.revocations.token_ids() == [created.token_id]

    # A combiner that registers later gets the list with its registration.
    late = await net.add_combiner("beta")
    # The controller lists it as linked before the combiner has read its registration answer.
    await eventually(
        lambda: late.verifier.revocations.revoked(created.token_id),
        what="the revocation list in beta's registration",
    )

    # Only admins: a user token may not create or revoke tokens.
    user = channel_as(net, net.controller.address, Role.USER, "operator")
    try:
        stub = control_pb2_grpc.ControlServiceStub(user)
        create = stub.CreateToken(pb.CreateTokenRequest(role="admin", subject="me"))
        await expect_status(create, CODE.PERMISSION_DENIED)
    finally:
        await user.close()
    bad = net.control.CreateToken(pb.CreateTokenRequest(role="root", subject="x"))
    await expect_status(bad, CODE.INVALID_ARGUMENT, "role")
    bad_subject = net.control.CreateToken(pb.CreateTokenRequest(role="client", subject="a/b"))
    await expect_status(bad_subject, CODE.INVALID_ARGUMENT, "subject")
    never = net.control.RevokeToken(pb.RevokeTokenRequest(token_id="../x"))
    await expect_status(never, CODE.INVALID_ARGUMENT, "token_id")
    assert net.controller.store.revocations.token_ids() == [created.token_id]


async def test_revocations_survive_a_controller_restart(local_network: LocalNetwork) -> None:
    net = local_network
    created = await net.control.CreateToken(pb.CreateTokenRequest(role="user", subject="u"))
    await net.control.RevokeToken(pb.RevokeTokenRequest(token_id=created.token_id))
    from fedgrpc.controller.app import Controller

    await net.channel.close()
    await net.controller.stop(grace=0.1)
    restarted = Controller(net.controller.config)
    await restarted.start()
    net.controller = restarted
    net.__post_init__()
    channel = open_channel(restarted.address, max_message_size=1 << 20, token=created.token)
    try:
        stub = control_pb2_grpc.ControlServiceStub(channel)
        status = stub.GetControllerStatus(pb.GetControllerStatusRequest())
        await expect_status(status, CODE.UNAUTHENTICATED, "revoked")
    finally:
        await channel.close()


async def test_user_errors_surface_as_typed_exceptions(local_network: LocalNetwork) -> None:
    """Unauthenticated is fatal for a client: it stops instead of retrying forever."""
    net = local_network
    await net.add_combiner("alpha")
    with pytest.raises(Unauthenticated):
        await asyncio.wait_for(_run_client_as(net, "site-1", "not-a-token"), timeout=20)


async def test_a_scoped_user_sees_only_its_collaboration(local_network: LocalNetwork) -> None:
    net = local_network
    await net.add_combiner("alpha")
    await net.add_client("site-1", shift_train(1.0))
    a = channel_as_scoped(net, "user-a", "collab-a")
    b = channel_as_scoped(net, "user-b", "collab-b")
    try:
        a_control, b_control = (
            control_pb2_grpc.ControlServiceStub(a),
            control_pb2_grpc.ControlServiceStub(b),
        )
        a_models, b_models = model_pb2_grpc.ModelServiceStub(a), model_pb2_grpc.ModelServiceStub(b)
        data = dump_model([np.zeros(3, dtype=np.float32)])
        seed = await raw_upload(a_models, list(model_stream(data, header=model_pb2.ModelHeader())))
        await a_control.SetActiveModel(pb.SetActiveModelRequest(model_id=seed.model_id))
        session = await a_control.StartSession(
            pb.StartSessionRequest(rounds=1, round_timeout=20, validate=False)
        )
        ended = await net.wait_session(session.id)
        assert ended.status == "finished"

        # Collaboration A sees its session and both its models.
        assert (await a_control.ListSessions(pb.ListSessionsRequest())).count == 1
        assert (await a_control.GetSession(pb.GetSessionRequest(id=session.id))).id == session.id
        listed = await a_control.ListModels(pb.ListModelsRequest())
        assert {m.id for m in listed.result} == {seed.model_id, ended.model_id}

        # Collaboration B sees none of it: every read is NOT_FOUND or an empty list.
        assert (await b_control.ListSessions(pb.ListSessionsRequest())).count == 0
        assert (await b_control.ListModels(pb.ListModelsRequest())).count == 0
        for call in (
            b_control.GetSession(pb.GetSessionRequest(id=session.id)),
            b_control.StopSession(pb.StopSessionRequest(session_id=session.id)),
            b_control.ContinueSession(pb.ContinueSessionRequest(session_id=session.id)),
            b_control.GetModel(pb.GetModelRequest(id=ended.model_id)),
            b_control.GetActiveModel(pb.GetActiveModelRequest()),
            b_control.SetActiveModel(pb.SetActiveModelRequest(model_id=seed.model_id)),
            b_control.GetModelAncestors(pb.ModelLineageRequest(model_id=ended.model_id)),
            b_control.StartSession(pb.StartSessionRequest(model_id=seed.model_id, rounds=1)),
        ):
            await expect_status(call, CODE.NOT_FOUND)
        download = b_models.Download(model_pb2.DownloadRequest(model_id=ended.model_id))
        await expect_status(download.read(), CODE.NOT_FOUND)
        # The unscoped admin sees everything.
        assert (await net.control.ListSessions(pb.ListSessionsRequest())).count == 1
    finally:
        await a.close()
        await b.close()


def channel_as_scoped(net: LocalNetwork, subject: str, scope: str) -> grpc.aio.Channel:
    token = net.token(Role.USER, subject, scope=scope)
    return open_channel(net.controller.address, max_message_size=16 << 20, token=token)


async def test_revoking_a_token_closes_the_streams_opened_with_it(
    local_network: LocalNetwork,
) -> None:
    """Revocation does not wait for the next call: open streams of that token end at once,
    and the client and the combiner (which cannot get back in) stop for good."""
    net = local_network
    combiner_token = await net.control.CreateToken(
        pb.CreateTokenRequest(role="combiner", subject="gamma")
    )
    await net.add_combiner("steady")
    gamma = await net.add_combiner("gamma", token=combiner_token.token)
    client_token = await net.control.CreateToken(
        pb.CreateTokenRequest(role="client", subject="site-r")
    )
    client = await net.add_client(
        "site-r", shift_train(0.1), token=client_token.token, preferred_combiner="steady"
    )
    task = net._tasks[net.clients.index(client)]
    registry = net.controller.network.registry

    await net.control.RevokeToken(pb.RevokeTokenRequest(token_id=client_token.token_id))
    await eventually(task.done, what="the client to stop after its token was revoked")
    assert isinstance(task.exception(), Unauthenticated)
    await eventually(lambda: registry.link_of_client("site-r") is None, what="client gone")

    await net.control.RevokeToken(pb.RevokeTokenRequest(token_id=combiner_token.token_id))
    with pytest.raises(Unauthenticated, match="revoked"):
        await asyncio.wait_for(gamma.link_ended(), 20)
    await eventually(
        lambda: "gamma" not in {link.name for link in registry.online()}, what="gamma unlinked"
    )
    assert "steady" in {link.name for link in registry.online()}
