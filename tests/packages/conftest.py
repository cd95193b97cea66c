"""Fixtures for the package tests: an in-process controller on port 0 and its stubs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedgrpc.config import ControllerConfig
from fedgrpc.controller.app import Controller
from fedgrpc.model.chunking import sha256_hex
from fedgrpc.modelstore import EmbeddedModelStore
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.control.v1 import control_pb2_grpc
from fedgrpc.rpc.channel import open_channel
from fedgrpc.security.keystore import mint_token
from fedgrpc.security.tokens import Role
from tests.packages.tarballs import BAD_PACKAGES

MAX_MESSAGE = 16 << 20


@cache
def bad_package_bytes(kind: str) -> bytes:
    """Each hostile tarball is built once per test session (some take a moment)."""
    return BAD_PACKAGES[kind].build()


@dataclass
class RunningController:
    controller: Controller
    channel: grpc.aio.Channel
    control: control_pb2_grpc.ControlServiceStub
    models_dir: Path

    @property
    def address(self) -> str:
        return self.controller.address

    @property
    def client_token(self) -> str:
        """A client token ("site-1") signed with this controller's key."""
        return mint_token(self.controller.config.data_dir, "site-1", Role.CLIENT)

    async def package_count(self) -> int:
        return int((await self.control.ListPackages(pb.ListPackagesRequest())).count)

    def package_blobs(self) -> list[str]:
        """Package blobs and half-written temp files in the model store, by name."""
        models = self.controller.models
        assert isinstance(models, EmbeddedModelStore)
        temp_files = [path.name for path in self.models_dir.glob(".*package-*")]
        return sorted([*(i for i in models.model_ids() if "package-" in i), *temp_files])

    def plant_package(self, data: bytes, *, sha256: str | None = None) -> str:
        """Store a package bypassing the upload checks (as a tampered store would hold it),
        and make it active; its id."""
        blob_id = f"package-planted{len(self.package_blobs())}"
        self.controller.models.put_bytes(blob_id, data)
        record = self.controller.store.packages.create(
            name="planted",
            file_name="planted.tar.gz",
            sha256=sha256 or sha256_hex(data),
            size=len(data),
            blob_id=blob_id,
            entry_points={},
        )
        self.controller.store.packages.set_active(record["id"])
        return str(record["id"])


ControllerFactory = Callable[..., Awaitable[RunningController]]


@pytest.fixture
async def start_controller(tmp_path: Path) -> AsyncIterator[ControllerFactory]:
    """Start in-process controllers on port 0 (config overrides as keywords)."""
    running: list[RunningController] = []

    async def start(**overrides: Any) -> RunningController:
        data_dir = tmp_path / f"controller-{len(running)}"
        settings: dict[str, Any] = {"max_model_size": 32 << 20, **overrides}
        controller = Controller(ControllerConfig(port=0, data_dir=data_dir, **settings))
        await controller.start()
        admin = mint_token(data_dir, "admin", Role.ADMIN)
        channel = open_channel(controller.address, max_message_size=MAX_MESSAGE, token=admin)
        started = RunningController(
            controller=controller,
            channel=channel,
            control=control_pb2_grpc.ControlServiceStub(channel),
            models_dir=data_dir / "models",
        )
        running.append(started)
        return started

    try:
        yield start
    finally:
        for started in running:
            await started.channel.close()
            await started.controller.stop(grace=0.5)


@pytest.fixture
async def controller(start_controller: ControllerFactory) -> RunningController:
    return await start_controller()
