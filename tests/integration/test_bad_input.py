"""Bad input gets a specific status code, a message a person can act on, and loses nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from fedgrpc.model.serialization import dump_model
from fedgrpc.modelstore import EmbeddedModelStore
from fedgrpc.proto.control.v1 import control_pb2
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.proto.network.v1 import network_pb2, network_pb2_grpc
from fedgrpc.rpc.channel import open_channel
from fedgrpc.security.tokens import Role
from fedgrpc.transfer import model_stream
from tests.integration.conftest import LocalNetwork, shift_train

pytestmark = pytest.mark.timeout(60)

CODE = grpc.StatusCode


async def expect_status(call: object, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    details = str(info.value.details())
    for word in words:
        assert word in details, details
    return details


def stored_models(net: LocalNetwork) -> list[str]:
    """The ids of every model in the controller's store, and any half-written temp file."""
    models = net.controller.models
    assert isinstance(models, EmbeddedModelStore)
    temp_files = [path.name for path in models.files.root.glob(".*")]
    return sorted([*models.model_ids(), *temp_files])


async def raw_upload(
    stub: model_pb2_grpc.ModelServiceStub, messages: list[model_pb2.ModelChunk]
) -> model_pb2.UploadResponse:
    async def stream() -> AsyncIterator[model_pb2.ModelChunk]:
        for message in messages:
            yield message

    response: model_pb2.UploadResponse = await stub.Upload(stream())
    return response


async def test_unknown_ids_are_not_found(local_network: LocalNetwork) -> None:
    control = local_network.control
    await expect_status(
        control.GetSession(control_pb2.GetSessionRequest(id="nope")), CODE.NOT_FOUND, "nope"
    )
    await expect_status(control.GetModel(control_pb2.GetModelRequest(id="nope")), CODE.NOT_FOUND)
    await expect_status(control.GetRound(control_pb2.GetRoundRequest(id="nope")), CODE.NOT_FOUND)
    await expect_status(control.GetClient(control_pb2.GetClientRequest(id="nope")), CODE.NOT_FOUND)
    await expect_status(
        control.SetActiveModel(control_pb2.SetActiveModelRequest(model_id="nope")), CODE.NOT_FOUND
    )
    await expect_status(
        control.GetActiveModel(control_pb2.GetActiveModelRequest()), CODE.NOT_FOUND, "seed model"
    )
    await expect_status(
        local_network.models.Download(model_pb2.DownloadRequest(model_id="nope")).read(),
        CODE.NOT_FOUND,
    )


async def test_session_requests_checked_before_anything_runs(local_network: LocalNetwork) -> None:
    net = local_network
    await expect_status(
        net.control.StartSession(control_pb2.StartSessionRequest()),
        CODE.FAILED_PRECONDITION,
        "no active model",
    )
    await net.upload_seed([np.zeros(2, dtype=np.float32)])
    await expect_status(
        net.control.StartSession(control_pb2.StartSessionRequest(model_id="missing")),
        CODE.NOT_FOUND,
        "missing",
    )
    for bad, words in [
        (control_pb2.StartSessionRequest(aggregator="fedmagic"), ("fedmagic", "fedavg")),
        (control_pb2.StartSessionRequest(rounds=0), ("rounds",)),
        (control_pb2.StartSessionRequest(round_timeout=-1), ("round_timeout",)),
        (control_pb2.StartSessionRequest(round_buffer_size=0), ("round_buffer_size",)),
        (control_pb2.StartSessionRequest(min_clients=5, requested_clients=2), ("min_clients",)),
        (control_pb2.StartSessionRequest(round_failure_policy="retry"), ("round_failure_policy",)),
    ]:
        await expect_status(net.control.StartSession(bad), CODE.INVALID_ARGUMENT, *words)
    kwargs = control_pb2.StartSessionRequest(aggregator="fedadam")
    kwargs.aggregator_kwargs.update({"learning_rat": 0.1})
    await expect_status(net.control.StartSession(kwargs), CODE.INVALID_ARGUMENT, "learning_rat")
    sessions = await net.control.ListSessions(control_pb2.ListSessionsRequest())
    assert sessions.count == 0  # nothing half-created


async def test_bad_list_arguments(local_network: LocalNetwork) -> None:
    request = control_pb2.ListStatusesRequest()
    request.page.sort_key = "password"
    await expect_status(
        local_network.control.ListStatuses(request), CODE.INVALID_ARGUMENT, "password"
    )


async def test_upload_with_wrong_digest_is_refused_and_not_stored(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    messages = list(
        model_stream(dump_model([np.ones(4, dtype=np.float32)]), header=model_pb2.ModelHeader())
    )
    messages[0].header.digest = "0" * 64
    await expect_status(raw_upload(net.models, messages), CODE.DATA_LOSS, "blake3 mismatch")
    truncated = list(
        model_stream(
            dump_model([np.ones(4096, dtype=np.float32)]),
            header=model_pb2.ModelHeader(),
            chunk_size=1024,
        )
    )
    await expect_status(raw_upload(net.models, truncated[:-1]), CODE.DATA_LOSS)
    assert (await net.control.ListModels(control_pb2.ListModelsRequest())).count == 0
    assert [name for name in stored_models(net) if not name.startswith(".")] == []


async def test_malformed_and_oversized_uploads(local_network: LocalNetwork) -> None:
    net = local_network
    garbage = list(model_stream(b"definitely not safetensors", header=model_pb2.ModelHeader()))
    await expect_status(raw_upload(net.models, garbage), CODE.INVALID_ARGUMENT)
    huge = model_pb2.ModelChunk(header=model_pb2.ModelHeader(total_size=1 << 40))
    await expect_status(raw_upload(net.models, [huge]), CODE.RESOURCE_EXHAUSTED)
    no_header = [model_pb2.ModelChunk(data=b"abc")]
    await expect_status(raw_upload(net.models, no_header), CODE.INVALID_ARGUMENT, "header")
    await expect_status(raw_upload(net.models, []), CODE.INVALID_ARGUMENT, "empty")
    bad_id = list(
        model_stream(dump_model([np.ones(2)]), header=model_pb2.ModelHeader(model_id="../x"))
    )
    await expect_status(raw_upload(net.models, bad_id), CODE.INVALID_ARGUMENT)
    assert (await net.control.ListModels(control_pb2.ListModelsRequest())).count == 0
    assert [name for name in stored_models(net) if not name.startswith(".")] == []


async def test_partial_for_a_round_not_in_progress_is_refused(local_network: LocalNetwork) -> None:
    header = model_pb2.ModelHeader(round_id="no-such-round", session_id="s")
    messages = list(model_stream(dump_model([np.ones(2)]), header=header))
    await expect_status(
        raw_upload(local_network.models, messages), CODE.FAILED_PRECONDITION, "not in progress"
    )


async def test_update_for_unknown_task_is_refused_by_combiner(local_network: LocalNetwork) -> None:
    net = local_network
    combiner = await net.add_combiner("alpha")
    await net.add_client("n0", shift_train(1.0))
    channel = open_channel(
        combiner.address, max_message_size=16 << 20, token=net.token(Role.CLIENT, "n0")
    )
    try:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        header = model_pb2.ModelHeader(task_id="forged")
        messages = list(model_stream(dump_model([np.ones(2)]), header=header))
        await expect_status(raw_upload(stub, messages), CODE.FAILED_PRECONDITION, "forged")
    finally:
        await channel.close()


async def test_no_combiner_means_unavailable_assignment(local_network: LocalNetwork) -> None:
    stub = network_pb2_grpc.NetworkServiceStub(local_network.channel)
    await expect_status(
        stub.AssignCombiner(network_pb2.AssignCombinerRequest(client_name="x")), CODE.UNAVAILABLE
    )
    await expect_status(
        stub.AssignCombiner(network_pb2.AssignCombinerRequest(client_name="")),
        CODE.INVALID_ARGUMENT,
    )


async def test_link_must_start_with_registration(local_network: LocalNetwork) -> None:
    stub = network_pb2_grpc.NetworkServiceStub(local_network.channel)

    async def not_a_registration() -> AsyncIterator[network_pb2.CombinerReport]:
        yield network_pb2.CombinerReport(heartbeat=network_pb2.CombinerHeartbeat())

    call = stub.CombinerLink(not_a_registration())
    await expect_status(call.read(), CODE.INVALID_ARGUMENT, "registration")


async def test_bad_names_ids_and_metadata_are_refused_before_anything_is_written(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    control = net.control
    bad = "../escape"
    calls = [
        control.GetSession(pb.GetSessionRequest(id=bad)),
        control.StartSession(pb.StartSessionRequest(id="x" * 200)),
        control.StartSession(pb.StartSessionRequest(name="a\nforged log line")),
        control.SetActiveModel(pb.SetActiveModelRequest(model_id=bad)),
        control.ListStatuses(pb.ListStatusesRequest(sender_name="a\nforged log line")),
        control.CreateToken(pb.CreateTokenRequest(role="client", subject=bad)),
    ]
    for call in calls:
        await expect_status(call, CODE.INVALID_ARGUMENT)
    huge = pb.StartSessionRequest(rounds=1)
    huge.client_settings.update({"blob": "x" * (65 * 1024)})
    await expect_status(control.StartSession(huge), CODE.RESOURCE_EXHAUSTED, "client_settings")
    assign = network_pb2_grpc.NetworkServiceStub(net.channel).AssignCombiner(
        network_pb2.AssignCombinerRequest(client_name="x", preferred_combiner="a b")
    )
    await expect_status(assign, CODE.INVALID_ARGUMENT, "preferred_combiner")
    header = model_pb2.ModelHeader(model_id="seed")
    header.metadata.update({"blob": "x" * (65 * 1024)})
    messages = list(model_stream(dump_model([np.ones(2)]), header=header))
    await expect_status(raw_upload(net.models, messages), CODE.RESOURCE_EXHAUSTED, "metadata")
    store = net.controller.store
    assert store.sessions.count() == 0
    assert store.models.count() == 0
    assert stored_models(net) == []
