"""An in-process network on loopback: a real controller, combiners and clients on port 0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedgrpc.client.node import Client
from fedgrpc.combiner.app import Combiner
from fedgrpc.config import ClientConfig, CombinerConfig, ControllerConfig
from fedgrpc.controller.app import Controller
from fedgrpc.model.serialization import dump_model, load_model
from fedgrpc.proto.common.v1 import common_pb2
from fedgrpc.proto.control.v1 import control_pb2, control_pb2_grpc
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.rpc.channel import open_channel
from fedgrpc.security.keystore import mint_token
from fedgrpc.security.tokens import Role
from fedgrpc.transfer import download_model, upload_model

FAST: dict[str, Any] = {"heartbeat_interval": 0.2, "heartbeat_timeout": 2.0}
TERMINAL = ("finished", "failed", "stopped")


async def eventually(
    probe: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition"
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class LocalNetwork:
    data_dir: Path
    controller: Controller
    combiners: list[Combiner] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admin_token = self.token(Role.ADMIN, "admin")
        self.channel = open_channel(
            self.controller.address, max_message_size=64 << 20, token=self.admin_token
        )
        self.control = control_pb2_grpc.ControlServiceStub(self.channel)
        self.models = model_pb2_grpc.ModelServiceStub(self.channel)

    def token(self, role: Role, subject: str, *, scope: str | None = None) -> str:
        """A token signed with this controller's key (empty when its auth is off)."""
        if not self.controller.config.auth:
            return ""
        return mint_token(self.controller.config.data_dir, subject, role, scope=scope)

    async def add_combiner(self, name: str, **overrides: Any) -> Combiner:
        settings: dict[str, Any] = {
            "token": self.token(Role.COMBINER, name) or None,
            "auth": self.controller.config.auth,
            **FAST,
            **overrides,
        }
        config = CombinerConfig(controller=self.controller.address, name=name, **settings)
        combiner = Combiner(config)
        await combiner.start()
        self.combiners.append(combiner)
        await eventually(
            lambda: name in self.controller.network.registry.links, what=f"combiner {name} linked"
        )
        return combiner

    async def add_client(
        self,
        name: str,
        train: Callable[..., Any] | None,
        validate: Callable[..., Any] | None = None,
        **overrides: Any,
    ) -> Client:
        settings: dict[str, Any] = {
            "controller": self.controller.address,
            "name": name,
            "heartbeat_interval": 0.2,
            "reconnect_base_delay": 0.05,
            "reconnect_max_delay": 0.5,
            "token": self.token(Role.CLIENT, name) or None,
            # Keys and analysis data under the test's directory (never the home directory);
            # the same name gets the same directory, so a restarted client keeps its keys.
            "data_dir": self.data_dir / "nodes" / name,
            **overrides,
        }
        config = ClientConfig(**settings)
        client = Client(config=config, train=train, validate=validate)
        self.clients.append(client)
        self._tasks.append(asyncio.ensure_future(client.run_async()))
        await asyncio.wait_for(client.connected.wait(), 20)
        await eventually(
            lambda: self.controller.network.registry.clients_online() >= len(self.clients),
            what="clients registered with the controller",
        )
        return client

    async def stop_client(self, name: str) -> None:
        """Stop a client and wait until the controller sees it gone (its name may be reused)."""
        index = next(i for i, client in enumerate(self.clients) if client.name == name)
        client, task = self.clients.pop(index), self._tasks.pop(index)
        client.stop()
        await task
        registry = self.controller.network.registry
        await eventually(lambda: registry.link_of_client(name) is None, what=f"{name} offline")

    async def upload_seed(self, arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> str:
        response = await upload_model(
            self.models, dump_model(arrays), header=model_pb2.ModelHeader()
        )
        await self.control.SetActiveModel(
            control_pb2.SetActiveModelRequest(model_id=response.model_id)
        )
        return str(response.model_id)

    async def download(self, model_id: str) -> dict[str, np.ndarray]:
        received = await download_model(self.models, model_id, max_size=1 << 30)
        return load_model(received.data)

    async def start_session(self, **settings: Any) -> str:
        session = await self.control.StartSession(control_pb2.StartSessionRequest(**settings))
        return str(session.id)

    async def wait_session(self, session_id: str, timeout: float = 60.0) -> control_pb2.Session:
        async def ended() -> control_pb2.Session | None:
            session = await self.control.GetSession(control_pb2.GetSessionRequest(id=session_id))
            return session if session.status in TERMINAL else None

        result: control_pb2.Session = await eventually(ended, timeout=timeout, what="session end")
        return result

    async def rounds(self, session_id: str) -> list[control_pb2.Round]:
        request = control_pb2.ListRoundsRequest(session_id=session_id)
        request.page.sort_key = "round_number"
        request.page.sort_order = common_pb2.SORT_ORDER_ASCENDING
        return list((await self.control.ListRounds(request)).result)

    async def close(self) -> None:
        for client in self.clients:
            client.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for combiner in self.combiners:
            await combiner.stop(grace=0.5)
        await self.channel.close()
        await self.controller.stop(grace=0.5)


def shift_train(delta: float, num_examples: int = 100) -> Callable[..., Any]:
    """A deterministic train: every array + delta, weighted by num_examples."""

    def train(model: list[np.ndarray], settings: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        return [array + np.asarray(delta, dtype=array.dtype) for array in model], {
            "num_examples": num_examples
        }

    return train


def constant_validate(model: Any) -> dict[str, float]:
    return {"accuracy": 0.5}


@pytest.fixture
async def local_network(tmp_path: Path) -> AsyncIterator[LocalNetwork]:
    config = ControllerConfig(
        port=0, data_dir=tmp_path / "controller", max_model_size=32 << 20, **FAST
    )
    controller = Controller(config)
    await controller.start()
    network = LocalNetwork(data_dir=tmp_path, controller=controller)
    try:
        yield network
    finally:
        await network.close()
