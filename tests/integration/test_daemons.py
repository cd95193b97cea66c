"""Every server serves grpc.health.v1 and reflection; the controller runs on MongoDB too."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pymongo
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fedgrpc.config import ControllerConfig
from fedgrpc.controller.app import Controller
from fedgrpc.rpc.channel import open_channel
from tests.integration.conftest import FAST, LocalNetwork, shift_train


async def test_health_and_reflection_on_controller_and_combiner(
    local_network: LocalNetwork,
) -> None:
    combiner = await local_network.add_combiner("alpha")
    expected = {
        local_network.controller.address: "fedgrpc.control.v1.ControlService",
        combiner.address: "fedgrpc.combiner.v1.CombinerService",
    }
    for address, service in expected.items():
        channel = open_channel(address, max_message_size=4 << 20)
        try:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def ask() -> object:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            async for reply in reflection.ServerReflectionInfo(ask()):
                names = {s.name for s in reply.list_services_response.service}
                assert service in names
                assert "fedgrpc.model.v1.ModelService" in names
                break
        finally:
            await channel.close()


async def test_session_on_mongodb_statestore_and_gridfs(tmp_path: Path, mongo_uri: str) -> None:
    database = f"fedgrpc_it_{uuid.uuid4().hex[:10]}"
    config = ControllerConfig(
        port=0, data_dir=tmp_path / "unused", mongo_uri=mongo_uri, mongo_database=database, **FAST
    )
    controller = Controller(config)
    await controller.start()
    net = LocalNetwork(data_dir=tmp_path, controller=controller)
    try:
        await net.add_combiner("alpha")
        await net.add_client("a", shift_train(1.0, 10))
        await net.add_client("b", shift_train(3.0, 30))
        await net.upload_seed([np.zeros(4, dtype=np.float32)])
        session_id = await net.start_session(rounds=2, round_timeout=20, validate=False)
        session = await net.wait_session(session_id)
        assert session.status == "finished"
        committed = await net.download(session.model_id)
        np.testing.assert_allclose(committed["0"], [5.0] * 4)  # 2 rounds of (1*10 + 3*30) / 40
        # Nothing went to the embedded store: data_dir holds only the token keys.
        assert sorted(p.name for p in (tmp_path / "unused").iterdir()) == ["admin.token", "keys"]
    finally:
        await net.close()
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri)
    try:
        db = client[database]
        assert db["sessions"].count_documents({"status": "finished"}) == 1
        assert db["models.files"].count_documents({}) >= 3  # seed + 2 rounds
    finally:
        client.drop_database(database)
        client.close()
